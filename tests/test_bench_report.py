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


def _paired(group, backend, reference, subject_ms, reference_ms, repeats=None, pair_ratio=0.9):
    """A paired benchmark as benchutil.run_paired records it; its group also holds another
    backend's entry with the same params, which the unpaired ratios must not pick up."""
    bench = _bench("test_step_paired", "paired: " + group, subject_ms / 1e3, backend)
    bench["extra_info"] = {"reference": reference, "subject_median": subject_ms / 1e3,
                           "reference_median": reference_ms / 1e3, "ratio": subject_ms / reference_ms,
                           "pair_ratio": pair_ratio, "rounds": 12}
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


def test_the_goals_by_workload_backend_and_reference():
    assert report.speed_goal("conv resnet strided 3x3 s2 32->64 16x16 b32 forward", "numpy", "torch") == 1.0
    assert report.speed_goal("conv 3x3 64->64 32x32 b32 fwd+bwd", "opencl", "numpy") == 1.5
    assert report.speed_goal("lenet-5 b64 1x28x28 adam step", "numpy", "torch") == 0.8
    assert report.speed_goal("cifar cnn + linear 512 b8 3x32x32 adam step", "numpy", "torch") == 0.8
    assert report.speed_goal("resnet 16-32-64 b32 3x32x32 forward", "numpy", "torch") == 1.0
    assert report.speed_goal("mlp 784-512-512-10 b128 adam step", "opencl", "numpy") == 1.5
    # rows #13 sets no goal for: OpenCL's whole CNNs, the MLP against PyTorch, CUDA
    assert report.speed_goal("resnet 16-32-64 b32 3x32x32 forward", "opencl", "numpy") is None
    assert report.speed_goal("mlp 784-512-512-10 b128 adam step", "numpy", "torch") is None
    assert report.speed_goal("conv 3x3 64->64 32x32 b32 forward", "cuda", "numpy") is None


def _runs(tmp_path, rows_by_run):
    """One results file per run, each row (group, backend, reference, ratio of pairs)."""
    paths = []
    for i, rows in enumerate(rows_by_run):
        benches = [_paired(group, backend, reference, 1.0, 1.0, pair_ratio=ratio)
                   for group, backend, reference, ratio in rows]
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps({"benchmarks": benches}))
        paths.append(str(path))
    return paths


CONV = "conv 3x3 64->64 32x32 b32 forward"
LENET = "lenet-5 b64 1x28x28 adam step"
MLP = "mlp 784-512-512-10 b128 adam step"


def test_goals_over_several_runs(tmp_path, capsys):
    paths = _runs(tmp_path, [
        [(CONV, "numpy", "torch", 0.90), (CONV, "opencl", "numpy", 1.20), (MLP, "numpy", "torch", 1.3)],
        [(CONV, "numpy", "torch", 1.10), (CONV, "opencl", "numpy", 1.40), (MLP, "numpy", "torch", 1.2)],
        [(CONV, "numpy", "torch", 0.95), (CONV, "opencl", "numpy", 1.30)],
    ])
    assert report.main(paths + ["--goals"]) == 0
    lines = capsys.readouterr().out.splitlines()
    conv_numpy, conv_opencl, mlp = lines[2:5]
    assert conv_numpy.split()[-8:] == ["1.00", "0.90", "1.10", "0.95", "0.95", "within", "by", "median"]
    assert conv_opencl.split()[-6:] == ["1.50", "1.20", "1.40", "1.30", "1.30", "within"]
    assert mlp.split()[-5:] == ["-", "1.30", "1.20", "-", "1.25"]  # no goal; the third run lacks it
    assert lines[-1] == "2 rows with a goal: 2 within by their median (1 of them over in some run), 0 over"


def test_goals_exit_1_when_a_median_is_over(tmp_path, capsys):
    paths = _runs(tmp_path, [[(LENET, "numpy", "torch", 0.85), (LENET, "opencl", "numpy", 1.1)],
                             [(LENET, "numpy", "torch", 0.79), (LENET, "opencl", "numpy", 1.0)]])
    assert report.main(paths + ["--goals"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("0.80    0.85  0.79   0.82  OVER")
    assert lines[-1] == "2 rows with a goal: 1 within by their median (0 of them over in some run), 1 over"


def test_goals_refuse_what_they_cannot_read(tmp_path, capsys):
    paths = _runs(tmp_path, [[(CONV, "numpy", "torch", 0.9)], [(CONV, "numpy", "torch", 0.9)]])
    with pytest.raises(SystemExit) as exit:
        report.main(paths)
    assert exit.value.code == 2 and "one results file at a time, 2 given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main(paths[:1] + ["--goals", "--chart", str(tmp_path / "speed.png")])
    assert "--chart draws one run" in capsys.readouterr().err
    unpaired = tmp_path / "unpaired.json"
    unpaired.write_text(json.dumps({"benchmarks": RESULTS["benchmarks"][:3]}))
    with pytest.raises(SystemExit):
        report.main([str(unpaired), "--goals"])
    assert "no paired benchmark with timings" in capsys.readouterr().err
