"""Print each benchmark group of a pytest-benchmark JSON file as ratios to its fastest entry,
with GFLOP/s where a benchmark recorded its flops in extra_info.

    python bench/report.py results.json
"""

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    for group, benches in groups.items():
        print(f"\n{group}")
        best = min(b["stats"]["median"] for b in benches)
        for b in sorted(benches, key=lambda b: b["stats"]["median"]):
            median = b["stats"]["median"]
            flops = b.get("extra_info", {}).get("flops")
            rate = f"  {flops / median / 1e9:8.1f} GFLOP/s" if flops else ""
            print(f"  {b['name']:<60} {median * 1e3:9.3f} ms  x{median / best:5.2f}{rate}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results.json")
