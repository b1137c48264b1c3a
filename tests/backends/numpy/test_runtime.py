"""juicepy.backends.numpy.runtime: what the NumPy backend runs on, and the notes on what slows it."""

import pytest

from juicepy.backends.numpy import blas, kernels, runtime


def test_runtime_info_names_the_c_kernels_threads_and_blas(monkeypatch):
    monkeypatch.setenv("OPENBLAS_VERBOSE", "0")
    info = runtime.runtime_info()
    conv = kernels.load("_conv_kernels")
    if conv is None:
        assert info["c_kernels"] is None and any("not built" in n for n in info["notes"])
    else:
        assert info["c_kernels"]["isa_name"] == runtime.ISA_NAMES[conv.isa]
        assert info["c_kernels"]["cpu_vendor"] == conv.cpu_vendor
    assert info["threads"] >= 1
    assert info["openblas_env"]["OPENBLAS_VERBOSE"] == "0"
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        assert isinstance(info["blas"], str)
    else:  # NumPy's own BLAS is loaded by then, whichever library it is
        assert isinstance(info["blas"], list) and info["blas"]
        assert all(lib["num_threads"] >= 1 for lib in info["blas"])
    assert info["gemm_entry"] == (blas.gemm_entry() is not None)
    lines = runtime.describe(info)
    assert lines[len(lines) - len(info["notes"]):] == [f"note: {n}" for n in info["notes"]]
    assert any(line.startswith("BLAS: ") for line in lines)
    assert ("GEMM: np.matmul" in lines) != info["gemm_entry"]


def test_a_gemm_op_without_the_c_entry_is_named():
    """Without the entry (blas.py) the gemm op's mid-sized products run on BLAS's own threads:
    `juicepy info` says so where the C kernels are otherwise built."""
    c = {"isa": 2, "isa_name": "avx512", "cpu_isa": "avx512", "cpu_vendor": "AuthenticAMD", "cpu_family": 0x1A}
    for entry in (True, False):
        notes = runtime._notes({"c_kernels": c, "openblas_env": {}, "gemm_entry": entry})
        assert any("np.matmul" in n for n in notes) != entry


@pytest.mark.parametrize("coretype, cpu_isa, warned", [
    ("Haswell", "avx512", True), ("haswell", "avx512", True), ("SkylakeX", "avx512", False),
    ("Haswell", "avx2", False), ("", "avx512", False)])
def test_a_coretype_holding_an_avx512_cpu_to_older_kernels_is_named(coretype, cpu_isa, warned):
    """OPENBLAS_CORETYPE set to a family without AVX-512 on a CPU with it (this project's
    benchmark machines do so): NumPy's GEMMs run at half width, and `juicepy info` says so."""
    info = {"c_kernels": {"isa": 2, "isa_name": "avx512", "cpu_isa": cpu_isa, "cpu_vendor": "AuthenticAMD",
                          "cpu_family": 0x1A} if cpu_isa == "avx512" else
            {"isa": 1, "isa_name": "avx2", "cpu_isa": "avx2", "cpu_vendor": "AuthenticAMD", "cpu_family": 0x17},
            "openblas_env": {"OPENBLAS_CORETYPE": coretype} if coretype else {}}
    notes = runtime._notes(info)
    assert any(f"OPENBLAS_CORETYPE={coretype} holds OpenBLAS" in n for n in notes) == warned


def test_held_isa_and_missing_c_kernels_are_named():
    held = {"c_kernels": {"isa": 1, "isa_name": "avx2", "cpu_isa": "avx512", "cpu_vendor": "GenuineIntel",
                          "cpu_family": 6}, "openblas_env": {}}
    assert runtime._notes(held) == ["JUICEPY_CPU_ISA holds the C kernels to avx2 on a CPU that runs avx512"]
    assert "not built" in runtime._notes({"c_kernels": None, "openblas_env": {}})[0]
