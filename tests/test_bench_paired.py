"""bench/benchutil.py's paired benchmarks: the two sides' calls alternate (each settling first),
the ratios come from the timed rounds only, and --benchmark-disable runs each side once."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import benchutil  # bench/ is on the test path (pyproject)
import report

pytest_plugins = ["pytester"]

BENCH = Path(__file__).resolve().parents[1] / "bench"

# One test file run by an inner pytest with pytest-benchmark: fake callables that advance a fake
# clock by the durations listed and record the order in which they were called.
INNER = f'''
import sys
sys.path.insert(0, {str(BENCH)!r})

import pytest

from benchutil import paired  # noqa: F401  (the fixture under test)


class Side:
    def __init__(self, name, clock, durations, calls):
        self.name, self.clock, self.durations, self.calls = name, clock, list(durations), calls

    def __call__(self):
        self.calls.append(self.name)
        self.clock.now += self.durations.pop(0) if len(self.durations) > 1 else self.durations[0]
        return 1.0  # as a training step returns its loss


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("backend", ["numpy"])  # as the bench's paired tests have
def test_alternates(benchmark, paired, backend):
    benchmark.group = "paired: fake step"
    clock, calls = Clock(), []
    # sizing call, then per round: settle call, timed call
    reference = Side("ref", clock, [2, 2, 2, 2, 4, 2, 2], calls)
    subject = Side("subj", clock, [3, 3, 3, 3, 9, 3, 5], calls)
    summary = paired(subject, reference, "the reference", settle=0, clock=clock)
    if benchmark.disabled:
        assert calls == ["ref", "subj"]
        assert summary is None and benchmark.extra_info == {{"reference": "the reference"}}
        return
    # --benchmark-max-time=10 --benchmark-min-rounds=2: a round costs 3 + 2 + 3 + 2 -> 30 / 10 = 3
    assert calls == ["ref", "subj"] + ["ref", "ref", "subj", "subj"] * 3
    assert len(benchmark.stats.stats.data) == 3
    assert benchmark.extra_info == {{"reference": "the reference", **summary}}


@pytest.mark.parametrize("backend", ["opencl"])
def test_settles_for_the_given_time(benchmark, paired, backend):
    benchmark.group = "paired: fake forward"
    clock, calls = Clock(), []
    paired(Side("subj", clock, [3], calls), Side("ref", clock, [2], calls), "ref", settle=5, clock=clock)
    if not benchmark.disabled:  # 5 s of settling: three 2 s calls, two 3 s ones, then the timed call
        assert calls == ["ref", "subj"] + (["ref"] * 4 + ["subj"] * 3) * 2


@pytest.mark.parametrize("backend", ["opencl"])
def test_repeats_short_calls(benchmark, paired, backend):
    benchmark.group = "paired: fake short forward"
    clock, calls = Clock(), []
    paired(Side("subj", clock, [3, 3, 3, 4, 3, 3, 3, 6], calls), Side("ref", clock, [2], calls), "ref", settle=0,
           clock=clock, min_timed=5)
    if not benchmark.disabled:  # the faster side's 2 s calls: 3 a side a round, the subject's last timed by pytest
        assert calls == ["ref", "subj"] + (["ref"] * 4 + ["subj"] * 4) * 2
        assert len(benchmark.stats.stats.data) == 2
'''


@pytest.fixture
def inner(pytester, monkeypatch):
    # the inner run is not an xdist worker even when this one is: pytest-benchmark reads this
    # variable and would disable itself there
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makepyfile(test_inner=INNER)
    return pytester


def test_paired_rounds_alternate_and_give_the_ratios(inner, tmp_path):
    out = tmp_path / "paired.json"
    result = inner.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-max-time=10",
                                        "--benchmark-min-rounds=2", f"--benchmark-json={out}")
    result.assert_outcomes(passed=3)
    infos = {b["name"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    # timed rounds only: subject 3, 9, 5 against reference 2, 4, 2
    assert infos["test_alternates[numpy]"] == {"reference": "the reference", "subject_median": 5.0,
                                        "reference_median": 2.0, "ratio": 2.5, "pair_ratio": 2.25, "rounds": 3,
                                        "repeats": 1}
    assert infos["test_settles_for_the_given_time[opencl]"]["rounds"] == 2  # min rounds: 30 / (5 + 5 + 3 + 2) = 2
    # 2 rounds of 3 timed calls a side (30 / (3 + 2 + 3 * 5) = 2): subject 3, 4, 3 and 3, 6, 6 (its last
    # duration repeats) against 2s, per-call ratios 1.5, 2, 1.5 and 1.5, 3, 3
    assert infos["test_repeats_short_calls[opencl]"] == {"reference": "ref", "subject_median": 3.5,
                                                         "reference_median": 2.0, "ratio": 1.75, "pair_ratio": 1.75,
                                                         "rounds": 2, "repeats": 3}
    rows = report.paired_ratios(report.load_groups(str(out)))
    assert [r[:3] + (r[3]["ratio"],) for r in rows] == [("fake step", "numpy", "the reference", 2.5),
                                                         ("fake forward", "opencl", "ref", 1.5),
                                                         ("fake short forward", "opencl", "ref", 1.75)]


def test_paired_under_benchmark_disable_calls_each_side_once(inner):
    result = inner.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-disable")
    result.assert_outcomes(passed=3)


def test_summary_pairs_round_by_round():
    summary = benchutil.paired_summary([4.0, 1.0, 3.0, 30.0], [2.0, 1.0, 1.0, 10.0])
    assert summary == {"subject_median": 3.5, "reference_median": 1.5, "ratio": pytest.approx(3.5 / 1.5),
                       "pair_ratio": 2.5, "rounds": 4, "repeats": 1}  # pairs 2, 1, 3, 3
    # the same calls as 2 rounds of 2 calls a side
    assert benchutil.paired_summary([4.0, 1.0, 3.0, 30.0], [2.0, 1.0, 1.0, 10.0], repeats=2) == {
        **summary, "rounds": 2, "repeats": 2}


def test_summary_refuses_unmatched_rounds():
    with pytest.raises(ValueError, match="got 2 and 1"):
        benchutil.paired_summary([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="repeats=2"):
        benchutil.paired_summary([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], repeats=2)


def test_paired_benchmarks_run_after_all_others():
    """They pin glibc's malloc thresholds for the rest of the process (bench/conftest.py)."""
    items = [SimpleNamespace(name=name, fixturenames=names) for name, names in [
        ("conv_paired", ["benchmark", "paired"]), ("conv", ["benchmark"]), ("lenet_paired", ["paired"]),
        ("lenet", ["benchmark", "backend"]), ("mlp", ["benchmark"])]]
    benchutil.paired_last(items)
    assert [item.name for item in items] == ["conv", "lenet", "mlp", "conv_paired", "lenet_paired"]
