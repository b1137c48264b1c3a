"""bench/report.py: the table, the --chart PNG of ratios, and the missing-extra message."""

import json

import pytest

import report  # bench/ is on the test path (pyproject)


def _bench(name, group, median, backend=None, **params):
    if backend is not None:
        params = {"backend": backend, **params}
    suffix = "[" + "-".join(str(v) for v in params.values()) + "]" if params else ""
    return {"name": name + suffix, "group": group, "params": params or None,
            "stats": {"median": median}, "extra_info": {}}


def _paired(group, backend, reference, subject_ms, reference_ms, repeats=None):
    """A paired benchmark as benchutil.run_paired records it; its group also holds another
    backend's entry with the same params, which the unpaired ratios must not pick up."""
    bench = _bench("test_step_paired", "paired: " + group, subject_ms / 1e3, backend)
    bench["extra_info"] = {"reference": reference, "subject_median": subject_ms / 1e3,
                           "reference_median": reference_ms / 1e3, "ratio": subject_ms / reference_ms,
                           "pair_ratio": 0.9, "rounds": 12}
    if repeats is not None:  # recorded since session 47
        bench["extra_info"]["repeats"] = repeats
    return bench


RESULTS = {"benchmarks": [
    _bench("test_step_juicepy", "mlp step", 0.003, "numpy"),
    _bench("test_step_juicepy", "mlp step", 0.0036, "opencl"),
    _bench("test_step_torch", "mlp step", 0.0030),
    _bench("test_step_handwritten_numpy", "mlp step", 0.006),
    _bench("test_lenet_juicepy", "lenet step", 0.005, "numpy"),
    _bench("test_lenet_torch", "lenet step", 0.004),
    _bench("test_serve", "serve", 0.2, "numpy", mode="batched"),
    _bench("test_serve", "serve", 0.3, "numpy", mode="unbatched"),
    _bench("test_serve", "serve", 0.25, "opencl", mode="batched"),
    _paired("mlp step", "numpy", "torch", 3.0, 4.0),
    _paired("mlp step", "opencl", "numpy", 3.3, 3.0, repeats=5),
]}


def test_ratios_per_workload():
    groups = {}
    for b in RESULTS["benchmarks"]:
        groups.setdefault(b["group"], []).append(b)
    assert report.vs_torch(groups) == [("mlp step", "numpy", pytest.approx(1.0)),
                                       ("mlp step", "opencl", pytest.approx(1.2)),
                                       ("lenet step", "numpy", pytest.approx(1.25))]
    assert report.vs_numpy_backend(groups) == [("mlp step", "opencl", pytest.approx(1.2)),
                                               ("serve", "opencl, batched", pytest.approx(1.25))]


def test_paired_ratios_in_their_own_table(tmp_path, capsys):
    groups = {}
    for b in RESULTS["benchmarks"]:
        groups.setdefault(b["group"], []).append(b)
    rows = [(workload, label, reference, info["ratio"]) for workload, label, reference, info in report.paired_ratios(groups)]
    assert rows == [("mlp step", "numpy", "torch", pytest.approx(0.75)), ("mlp step", "opencl", "numpy", pytest.approx(1.1))]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RESULTS))
    assert report.main([str(path)]) == 0
    paired = capsys.readouterr().out.split("paired ratios")[1].splitlines()
    assert paired[2].split()[-7:] == ["numpy", "torch", "0.75", "0.90", "3.000", "4.000", "12"]
    assert paired[3].split()[-1] == "12x5"  # 12 rounds of 5 timed calls a side


def test_chart_and_table(tmp_path, capsys, assert_png):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RESULTS))
    assert report.main([str(path), "--chart", str(tmp_path / "speed.png")]) == 0
    out = capsys.readouterr().out
    assert "mlp step" in out and "x 1.20" in out and "wrote" in out
    assert_png(tmp_path / "speed.png")


def test_chart_without_matplotlib_names_the_extra(tmp_path, capsys, no_matplotlib):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(RESULTS))
    assert report.main([str(path), "--chart", str(tmp_path / "speed.png")]) == 1
    assert "pip install 'juicepy[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "speed.png").exists()


def test_the_header_names_the_blas_kernels_and_the_openblas_variables(tmp_path, capsys):
    """A run's BLAS kernels move every BLAS-bound row (OPENBLAS_CORETYPE, which some machines set,
    holds OpenBLAS to one kernel family): the report says which ran, from the machine_info that
    bench/conftest.py records; a file without it prints no header."""
    recorded = {"machine_info": {"cpu": {"brand_raw": "Test CPU"}, "juicepy": {
        "threads": 2, "openblas_env": {}, "notes": [],
        "blas": [{"internal_api": "openblas", "version": "0.3.31", "architecture": "SkylakeX", "num_threads": 2}],
        "c_kernels": {"isa": 2, "isa_name": "avx512", "cpu_isa": "avx512", "cpu_vendor": "AuthenticAMD",
                      "cpu_family": 0x1A}}}, **RESULTS}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recorded))
    assert report.main([str(path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("ran on: Test CPU; C kernels: avx512 build (CPU: AuthenticAMD family 0x1a, runs avx512); "
                     "thread lanes: 2; BLAS: openblas 0.3.31, SkylakeX kernels, 2 threads; OpenBLAS variables: none set")
    path.write_text(json.dumps(RESULTS))
    assert report.main([str(path)]) == 0
    assert not capsys.readouterr().out.startswith("ran on")
