"""What each kernel with static __local arrays needs of a device, and which of them a device can
build: the packed / Winograd / stride-2 kernels of gemm.cl size their local panels by the tile
constants (programs.CPU_GEMM: up to 693 KiB, for PoCL's 1 MiB of cache-backed local memory), a GPU
or another CPU runtime offers 32 to 64 KiB. The formulas restate the array declarations of the .cl
files for the constants passed to them (tests/backends/opencl/test_local_memory.py evaluates those
declarations to check they agree)."""

from __future__ import annotations

from typing import NamedTuple

FLOAT_BYTES = 4
WINOGRAD_SLICE = 64      # WK in gemm.cl: input channels per slice of winograd_conv / winograd5_conv
COOPERATIVE_TILE = 16    # TS in gemm.cl: gemm_tiled_gpu's work-groups are TS x TS
REDUCE_WG = 256          # REDUCE_WG in rows.cl
ELEMENTWISE_WG = 256     # the backend's _WG


class DeviceLimits(NamedTuple):
    local_mem_size: int        # bytes of __local memory per work-group
    max_work_group_size: int


def device_limits(device) -> DeviceLimits:
    """The limits the backend plans its kernels by (tests replace this to plan for a small device)."""
    return DeviceLimits(int(device.local_mem_size), int(device.max_work_group_size))


def packed_tile_bytes(t: dict) -> int:
    """PACKED_TILE_LOCALS and NT_TILE_LOCALS: an A slice, a B slice and the C tile."""
    return FLOAT_BYTES * (t["BM"] * t["BK"] + t["BK"] * t["BN"] + t["BM"] * t["BN"])


def winograd_bytes(t: dict, positions: int) -> int:
    """winograd_conv (16 positions) and winograd5_conv (36): V[positions][WK][NR] and
    M[positions][BM][NR], each panel padded by 16 floats."""
    nr = 2 * t["VW"]
    return FLOAT_BYTES * positions * ((WINOGRAD_SLICE * nr + 16) + (t["BM"] * nr + 16))


def s2_conv_bytes(t: dict) -> int:
    """s2_winograd_conv: 25 segments of S2K x NR plus padding, and M[9][S2_BM][NR]."""
    nr = 2 * t["VW"]
    return FLOAT_BYTES * ((25 * t["S2K"] * nr + 9 * 16) + 9 * (t["S2_BM"] * nr + 16))


def s2_filter_bytes(t: dict) -> int:
    """s2_winograd_filter: x's transformed rows, dy's tiles and the sums (S2F_ROWS rows)."""
    rows = 25 * t["S2F_BC"] + 9 * t["MR"]
    return FLOAT_BYTES * (rows * t["S2F_TS"] + 9 * t["S2F_BO"] * t["S2F_TS"] + rows * t["S2F_BO"])


def winograd_filter_bytes(t: dict) -> int:
    """winograd_filter: x's transformed rows, dy's tiles and the sums (WF_ROWS rows)."""
    rows = 16 * (t["WF_BC"] + t["MR"])
    return FLOAT_BYTES * (rows * t["WF_TS"] + 16 * t["WF_BO"] * t["WF_TS"] + rows * t["WF_BO"])


def s2_data_bytes(t: dict) -> int:
    """s2_winograd_data: V[25][S2DK][NR] and M[25][S2_BM][NR], each panel padded by 16 floats."""
    nr = 2 * t["VW"]
    return FLOAT_BYTES * 25 * ((t["S2DK"] * nr + 16) + (t["S2_BM"] * nr + 16))


# gemm.cl's kernel families that have a fallback: name -> (kernels, the define that leaves them out
# of the build, bytes for a tile set)
OPTIONAL_FAMILIES = {
    "packed": (("gemm_packed", "conv_gemm", "gemm_nt", "conv_filter_gemm", "conv_filter_gemm_pointwise"),
               "BUILD_PACKED", packed_tile_bytes),
    "winograd3": (("winograd_conv",), "BUILD_WINOGRAD3", lambda t: winograd_bytes(t, 16)),
    "winograd5": (("winograd5_conv",), "BUILD_WINOGRAD5", lambda t: winograd_bytes(t, 36)),
    "s2_conv": (("s2_winograd_conv",), "BUILD_S2_CONV", s2_conv_bytes),
    "s2_filter": (("s2_winograd_filter",), "BUILD_S2_FILTER", s2_filter_bytes),
    "s2_data": (("s2_winograd_data",), "BUILD_S2_DATA", s2_data_bytes),
    "winograd3_filter": (("winograd_filter",), "BUILD_WINOGRAD3_FILTER", winograd_filter_bytes),
}

# kernels every configuration launches: (file, kernels, local bytes, work-group size)
REQUIRED_KERNELS = (
    ("gemm.cl", ("gemm_tiled_gpu",), FLOAT_BYTES * 2 * COOPERATIVE_TILE * (COOPERATIVE_TILE + 1),
     COOPERATIVE_TILE * COOPERATIVE_TILE),
    ("rows.cl", ("sum_all", "all_finite"), FLOAT_BYTES * REDUCE_WG, REDUCE_WG),
    ("recurrent.cl", ("lstm_seq_step", "gru_seq_step"), FLOAT_BYTES * 8 * 3 * 6 * 2, 1),
    ("elementwise.cl", ("fill_f32", "add_f32", "..."), 0, ELEMENTWISE_WG),
)


def family_bytes(tiles: dict) -> dict[str, int]:
    return {name: size(tiles) for name, (_, _, size) in OPTIONAL_FAMILIES.items()}


def fitting_families(tiles: dict, limits: DeviceLimits) -> dict[str, bool]:
    """Whether each optional family's local arrays fit the device for these tiles (all their
    work-groups are one work-item)."""
    return {name: need <= limits.local_mem_size for name, need in family_bytes(tiles).items()}


def build_defines(fits: dict[str, bool]) -> dict[str, int]:
    """-D defines leaving the families that do not fit out of gemm.cl (a GPU compiler refuses a
    program holding a kernel whose local arrays exceed its memory); none where all fit, so such
    a device builds exactly what it did before."""
    return {OPTIONAL_FAMILIES[name][1]: 0 for name, ok in fits.items() if not ok}


def check_required(limits: DeviceLimits, device_name: str, unavailable) -> None:
    """Raise ``unavailable`` (BackendUnavailable) naming the first kernel with no fallback the
    device cannot run."""
    for filename, kernels, local, group in REQUIRED_KERNELS:
        if local > limits.local_mem_size or group > limits.max_work_group_size:
            raise unavailable(
                f"opencl backend: {device_name!r} cannot run {filename}'s {', '.join(kernels)} (needs {local} bytes of local "
                f"memory and work-groups of {group}; the device has {limits.local_mem_size} bytes and work-groups "
                f"of at most {limits.max_work_group_size})")


def describe_misfit(family: str, tiles: dict, limits: DeviceLimits, device_name: str) -> str:
    kernels, _, size = OPTIONAL_FAMILIES[family]
    return (f"{', '.join(kernels)} on {device_name!r} need {size(tiles)} bytes of local memory; the device has "
            f"{limits.local_mem_size}")
