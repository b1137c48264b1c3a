"""The acceptance run's report: which skips count as CUDA skips, and the goal arithmetic."""

import json
import subprocess
import sys
from pathlib import Path

from gpu import acceptance_report as report


def test_cuda_skips_are_found_by_file_or_reason():
    log = "\n".join([
        "SKIPPED [1] tests/backends/cuda/test_backend.py:80: nvcc not installed",
        "SKIPPED [2] tests/layers/test_conv.py:12: no CUDA device (cupy missing)",
        "SKIPPED [1] tests/backends/opencl/test_device.py:9: no OpenCL here",
        "SKIPPED [1] tests/layers/test_pool.py:20: the C pool kernels are not loaded",
        "SKIPPED [2] tests/distributed/collective/test_overlap.py:119: real CuPy: the emulated overlap does not "
        "apply; covered by tests/gpu/multi_gpu_step.py",
    ])
    assert [line.split("]")[1].split(":")[0].strip() for line in report.cuda_skips(log)] == [
        "tests/backends/cuda/test_backend.py", "tests/layers/test_conv.py"]


def _bench(name, group, median, **extra):
    return {"name": name, "group": group, "stats": {"median": median, "min": median * 0.9, "rounds": 20},
            "extra_info": extra}


def test_goals_are_ratios_within_the_run(tmp_path):
    benches = [
        _bench("test_mlp_step[juicepy-eager]", "mlp", 2e-3, device_allocations_per_step=0.0),
        _bench("test_mlp_step[juicepy-graph]", "mlp", 1e-3, device_allocations_per_step=0.0),
        _bench("test_mlp_step_torch_eager", "mlp", 1.5e-3),
        _bench("test_lenet_step[juicepy-graph]", "lenet", 1e-3, device_allocations_per_step=0.0),
        _bench("test_lenet_step_torch_eager", "lenet", 1.1e-3),
        _bench("test_wide_mlp_step", "wide", 1e-2, gemm_tflops=40.0),
        _bench("test_wide_mlp_gemms_alone_cublas", "wide", 8e-3, gemm_tflops=50.0),
    ]
    (tmp_path / "bench.json").write_text(json.dumps({"benchmarks": benches}))
    result = subprocess.run([sys.executable, str(Path(report.__file__)), "report", str(tmp_path), "--dry-run=1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    goals = json.loads((tmp_path / "report.json").read_text())["goals"]
    assert goals["mlp_speedup_vs_torch_eager"]["value"] == 1.5 and goals["mlp_speedup_vs_torch_eager"]["met"]
    assert abs(goals["lenet_speedup_vs_torch_eager"]["value"] - 1.1) < 1e-12
    assert not goals["lenet_speedup_vs_torch_eager"]["met"]
    assert goals["mlp_replay_vs_eager"]["value"] == 2.0
    assert goals["wide_mlp_share_of_cublas"]["value"] == 0.8 and goals["wide_mlp_share_of_cublas"]["met"]
    assert goals["device_allocations_per_steady_step"]["met"]
    assert "DRY RUN" in (tmp_path / "report.md").read_text()


def _report(tmp_path, multi=None):
    (tmp_path / "bench.json").write_text(json.dumps({"benchmarks": [_bench("test_wide_mlp_step", "wide", 1e-2)]}))
    if multi is not None:
        (tmp_path / "multi_gpu.json").write_text(json.dumps(multi))
    result = subprocess.run([sys.executable, str(Path(report.__file__)), "report", str(tmp_path), "--dry-run=0"],
                            capture_output=True, text=True)
    return result, json.loads((tmp_path / "report.json").read_text()), (tmp_path / "report.md").read_text()


def test_a_multi_gpu_step_that_did_not_run_is_reported_as_not_run(tmp_path):
    for multi, reason in [({"run": False, "gpus": 1, "reason": "1 GPU(s): the multi-GPU step needs 2"}, "1 GPU(s)"),
                          (None, "no multi_gpu.json")]:
        _, rep, md = _report(tmp_path, multi)
        goal = rep["goals"]["multi_gpu_data_parallel"]
        assert goal["met"] is None and goal["value"].startswith("NOT RUN") and reason in goal["value"]
        assert "NOT RUN" in md and "passed" not in md.split("Multi-GPU")[1]
        (tmp_path / "multi_gpu.json").unlink(missing_ok=True)


def _multi(ok, err):
    return {"run": True, "ok": ok, "ranks": 2, "communicator": "nccl", "errors": [],
            "correctness": [{"model": "lenet", "optimizer": "adam", "rows_per_rank": 8, "weights_rel_err": err,
                             "replicas_identical": ok, "overlapped": True, "ok": ok}],
            "timing": [{"model": "lenet-5", "rows_per_rank": 64, "step_ms_n_ranks": 2.0, "step_ms_1_rank": 1.9,
                        "samples_per_s_n_ranks": 64000.0, "scaling_efficiency": 0.95}]}


def test_a_multi_gpu_step_that_ran_reports_its_checks_and_scaling(tmp_path):
    result, rep, md = _report(tmp_path, _multi(True, 3e-7))
    goal = rep["goals"]["multi_gpu_data_parallel"]
    assert goal["met"] is True and goal["value"] == 3e-7
    assert "| lenet-5 | 64 | 2.000 | 1.900 | 64000 | 0.950 |" in md and "3.00e-07" in md
    assert "GOALS NOT MET" in result.stdout and "multi_gpu_data_parallel" not in result.stdout.split("GOALS NOT MET")[1]
    result, rep, _ = _report(tmp_path, _multi(False, 2e-3))
    assert rep["goals"]["multi_gpu_data_parallel"]["met"] is False
    assert result.returncode == 3 and "multi_gpu_data_parallel" in result.stdout.split("GOALS NOT MET")[1]
