"""Print each benchmark group of a pytest-benchmark JSON file as ratios to its fastest entry,
with GFLOP/s where a benchmark recorded its flops in extra_info, then the paired ratios;
``--chart PNG`` also draws juicepy's time relative to PyTorch, and each backend's time relative
to the NumPy backend, per workload (needs the plot extra: pip install 'juicepy[plot]').

    python bench/report.py results.json [--chart speed.png]
    python bench/report.py run1.json run2.json run3.json --goals

``--goals`` reads one or more runs of the paired benchmarks and sets each paired ratio ("of
pairs") against issue #13's speed goal for its workload and backend, run by run and as the median
of the runs; it exits 1 when a row's median is over its goal. Ratios move between runs of the same
code (docs/architecture.md, "Measuring speed"), hence several runs, one at a time on an idle
machine.

The unpaired ratios (and the chart) divide medians of two tests that ran minutes apart, so a slow
spell of the machine during one of them moves the ratio. The paired benchmarks (groups named
"paired: <workload>", benchutil.run_paired) call their reference before every timed round in the
same process, each side running untimed for a moment first so that the other's idle threads have
stopped spinning: PyTorch for the NumPy backend, the NumPy backend for every other backend. Their
table gives, per workload and backend, the ratio of the two medians and the median of the
round-by-round ratios, with both medians.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

from benchutil import PAIRED_PREFIX
from juicepy.backends.numpy.runtime import describe


# Issue #13's goals for the paired ratios, by workload prefix, backend and reference: the conv
# sweep and the zoo's ResNet at or below PyTorch, LeNet-5 and the CIFAR-shaped CNNs at or below
# 0.8 of it; OpenCL's LeNet, conv sweep and MLP step within 1.5 of the NumPy backend.
SPEED_GOALS = (
    ("conv ", "numpy", "torch", 1.0),
    ("resnet ", "numpy", "torch", 1.0),
    ("lenet-5 ", "numpy", "torch", 0.8),
    ("cifar cnn ", "numpy", "torch", 0.8),
    ("conv ", "opencl", "numpy", 1.5),
    ("lenet-5 ", "opencl", "numpy", 1.5),
    ("mlp ", "opencl", "numpy", 1.5),
)


def speed_goal(workload: str, backend: str, reference: str) -> float | None:
    """The goal for a paired row's ratio, or None for a row the goals do not name."""
    for prefix, goal_backend, goal_reference, goal in SPEED_GOALS:
        if workload.startswith(prefix) and backend == goal_backend and reference == goal_reference:
            return goal
    return None


def runtime_line(data: dict) -> str | None:
    """A results file's CPU and runtime_info line (conftest's machine_info hook), or None for a
    file written without them."""
    machine = data.get("machine_info", {})
    if "juicepy" not in machine:
        return None
    return f"{machine.get('cpu', {}).get('brand_raw', 'unknown CPU')}; {'; '.join(describe(machine['juicepy']))}"


def groups_of(data: dict) -> dict:
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    return groups


def load_groups(path: str) -> dict:
    with open(path) as f:
        return groups_of(json.load(f))


def print_table(groups: dict) -> None:
    for group, benches in groups.items():
        print(f"\n{group}")
        best = min(b["stats"]["median"] for b in benches)
        for b in sorted(benches, key=lambda b: b["stats"]["median"]):
            median = b["stats"]["median"]
            flops = b.get("extra_info", {}).get("flops")
            rate = f"  {flops / median / 1e9:8.1f} GFLOP/s" if flops else ""
            print(f"  {b['name']:<60} {median * 1e3:9.3f} ms  x{median / best:5.2f}{rate}")


def _backend(bench) -> str | None:
    return (bench.get("params") or {}).get("backend")


def _variant(bench) -> str:
    """The benchmark's function and its params other than the backend: what backends share."""
    others = {k: v for k, v in (bench.get("params") or {}).items() if k != "backend"}
    return bench["name"].split("[")[0] + "".join(f" {v}" for v in others.values())


def _label(bench) -> str:
    """The backend and the other params, less those the group's name already says."""
    others = [str(v) for k, v in (bench.get("params") or {}).items() if k != "backend" and str(v) not in bench["group"]]
    return ", ".join([_backend(bench)] + others)


def _paired(bench) -> bool:
    return "reference" in (bench.get("extra_info") or {})


def _unpaired(groups: dict) -> dict:
    """The groups less the paired benchmarks, whose ratios are in their own table."""
    kept = {group: [b for b in benches if not _paired(b)] for group, benches in groups.items()}
    return {group: benches for group, benches in kept.items() if benches}


def paired_ratios(groups: dict) -> list[tuple[str, str, str, dict]]:
    """(workload, juicepy entry, reference, its extra_info) of every paired benchmark that
    recorded timings (none do under --benchmark-disable)."""
    rows = []
    for group, benches in groups.items():
        for b in benches:
            info = b.get("extra_info") or {}
            if _paired(b) and "ratio" in info:
                rows.append((group.removeprefix(PAIRED_PREFIX), _label(b), info["reference"], info))
    return rows


def print_paired(groups: dict) -> None:
    rows = paired_ratios(groups)
    if not rows:
        return
    print("\npaired ratios (reference called before every timed round, same process; rounds x calls a round)")
    print(f"  {'workload':<52} {'backend':<8} {'reference':<9} {'ratio':>6} {'of pairs':>8}"
          f" {'median ms':>10} {'ref ms':>9} {'rounds':>6}")
    for workload, label, reference, info in rows:
        repeats = info.get("repeats", 1)  # runs before the repeats were recorded timed one call a round
        rounds = f"{info['rounds']}" + (f"x{repeats}" if repeats > 1 else "")
        print(f"  {workload:<52} {label:<8} {reference:<9} {info['ratio']:6.2f} {info['pair_ratio']:8.2f}"
              f" {info['subject_median'] * 1e3:10.3f} {info['reference_median'] * 1e3:9.3f} {rounds:>6}")


def goal_rows(runs: list[dict]) -> list[dict]:
    """One row per paired (workload, backend, reference) in any run: its goal (None where none is
    set), its ratio of pairs in each run (None where that run lacks it), their median, and whether
    the median and every run are within the goal."""
    ratios: dict = {}
    for i, groups in enumerate(runs):
        for workload, label, reference, info in paired_ratios(groups):
            ratios.setdefault((workload, label, reference), [None] * len(runs))[i] = info["pair_ratio"]
    rows = []
    for (workload, label, reference), per_run in ratios.items():
        measured = [r for r in per_run if r is not None]
        median = statistics.median(measured)
        goal = speed_goal(workload, label.split(",")[0], reference)
        rows.append({"workload": workload, "backend": label, "reference": reference, "goal": goal,
                     "runs": per_run, "median": median,
                     "median_within": goal is None or median <= goal,
                     "runs_within": goal is None or all(r <= goal for r in measured)})
    return rows


def print_goals(rows: list[dict], names: list[str]) -> None:
    print(f"against issue #13's speed goals: ratio of pairs by run ({', '.join(names)}) and their median")
    print(f"  {'workload':<56} {'backend':<8} {'reference':<9} {'goal':>5}  {'runs':<{6 * len(names)}}"
          f" {'median':>6}")
    for row in rows:
        goal = f"{row['goal']:5.2f}" if row["goal"] is not None else "    -"
        runs = "".join(f"{r:6.2f}" if r is not None else "     -" for r in row["runs"])
        mark = "" if row["goal"] is None else ("  within" if row["runs_within"] else
                                                 "  within by median" if row["median_within"] else "  OVER")
        print(f"  {row['workload']:<56} {row['backend']:<8} {row['reference']:<9} {goal}  {runs}"
              f" {row['median']:6.2f}{mark}")
    with_goal = [row for row in rows if row["goal"] is not None]
    over = [row for row in with_goal if not row["median_within"]]
    some_runs = [row for row in with_goal if row["median_within"] and not row["runs_within"]]
    print(f"\n{len(with_goal)} rows with a goal: {len(with_goal) - len(over)} within by their median "
          f"({len(some_runs)} of them over in some run), {len(over)} over")


def vs_torch(groups: dict) -> list[tuple[str, str, float]]:
    """(workload, juicepy entry, its median / PyTorch's) for groups with a PyTorch entry."""
    rows = []
    for group, benches in _unpaired(groups).items():
        torch = [b["stats"]["median"] for b in benches if "torch" in b["name"] and _backend(b) is None]
        if not torch:
            continue
        for b in benches:
            if _backend(b) is not None:
                rows.append((group, _label(b), b["stats"]["median"] / min(torch)))
    return rows


def vs_numpy_backend(groups: dict) -> list[tuple[str, str, float]]:
    """(workload, entry, its median / the same benchmark's on the NumPy backend) for every
    benchmark run on another backend too."""
    rows = []
    for group, benches in _unpaired(groups).items():
        numpy = {_variant(b): b["stats"]["median"] for b in benches if _backend(b) == "numpy"}
        others = [b for b in benches if _backend(b) not in (None, "numpy") and _variant(b) in numpy]
        for b in sorted(others, key=_variant):
            rows.append((group, _label(b), b["stats"]["median"] / numpy[_variant(b)]))
    return rows


def _bars(ax, rows, title, xlabel):
    """Horizontal bars on a log axis, one cluster per workload under its name in bold."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_title(title, fontsize=10)
    if not rows:
        ax.text(0.5, 0.5, "no such benchmarks in this file", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels, positions, values, colors = [], [], [], []
    y = 0
    for i, group in enumerate(dict.fromkeys(r[0] for r in rows)):
        labels.append((y, group, True))
        y += 1
        for _, label, value in (r for r in rows if r[0] == group):
            labels.append((y, label, False))
            positions.append(y)
            values.append(value)
            colors.append(f"C{i % 10}")
            y += 1
    ax.barh(positions, values, color=colors)
    ax.set_yticks([p for p, _, _ in labels], [text for _, text, _ in labels], fontsize=7)
    for tick, (_, _, heading) in zip(ax.get_yticklabels(), labels):
        tick.set_fontweight("bold" if heading else "normal")
    ax.set_ylim(y - 0.5, -0.7)  # first workload at the top
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    for p, v in zip(positions, values):
        ax.text(v, p, f" {v:.2f}x", va="center", fontsize=7)
    ax.grid(axis="x", alpha=0.3, which="both")


def draw_chart(groups: dict, path: str) -> None:
    from juicepy.plot import require_pyplot, save_figure

    plt = require_pyplot("--chart")
    torch_rows, backend_rows = vs_torch(groups), vs_numpy_backend(groups)
    lines = [len(rows) + len({r[0] for r in rows}) for rows in (torch_rows, backend_rows)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, max(1.5 + 0.16 * sum(lines), 4)), layout="constrained",
                                      height_ratios=[max(n, 1) for n in lines])
    _bars(top, torch_rows, "juicepy vs PyTorch (same workload, same run)", "juicepy time / PyTorch time (lower is better)")
    _bars(bottom, backend_rows, "backends vs the NumPy backend", "time / NumPy backend's time (lower is better)")
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", default=["results.json"],
                        help="pytest-benchmark JSON file (several with --goals: one per run)")
    parser.add_argument("--chart", metavar="PNG", help="also draw the ratios to this PNG")
    parser.add_argument("--goals", action="store_true",
                        help="set the paired ratios of each run against issue #13's goals; exit 1 if a median is over")
    args = parser.parse_args(argv)
    if args.goals:
        if args.chart:
            parser.error("--chart draws one run: give it without --goals")
        runs = [load_groups(path) for path in args.results]
        rows = goal_rows(runs)
        if not rows:
            parser.error(f"no paired benchmark with timings in {', '.join(args.results)} "
                         "(run pytest bench -k paired without --benchmark-disable)")
        print_goals(rows, args.results)
        return 0 if all(row["median_within"] for row in rows) else 1
    if len(args.results) > 1:
        parser.error(f"one results file at a time, {len(args.results)} given (several are read with --goals)")
    with open(args.results[0]) as f:
        data = json.load(f)
    groups = groups_of(data)
    if args.chart:  # fail before printing when the plot extra is missing
        from juicepy.errors import MissingExtraError

        try:
            draw_chart(groups, args.chart)
        except MissingExtraError as err:
            print(f"report.py: error: {err}", file=sys.stderr)
            return 1
    runtime = runtime_line(data)
    if runtime is not None:
        print(f"ran on: {runtime}")
    print_table(groups)
    print_paired(groups)
    if args.chart:
        print(f"\nwrote {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
