"""Data-parallel scaling: step time at 1 and 2 ranks (one thread each, batch fixed per rank),
scaling efficiency and the gradient allreduce time, for the MLP 784-512-512-10 b128/rank, the
wide MLP 784-4096-4096-10 b256/rank and LeNet-5 b64/rank on the NumPy backend.

Steps run back to back in windows (bench/distributed_step.py explains the timing). The ranks
run under mpiexec (bench/distributed_step.py), so pytest-benchmark times the whole
job once; the per-step figures measured inside it are in each entry's extra_info and printed:

    pytest bench/test_bench_distributed.py -s --benchmark-json=dist.json
    python bench/distributed_step.py            # the same figures as a table
"""

import pytest

pytest.importorskip("mpi4py", reason="pip install '.[distributed]' (mpi4py and MPICH)")
from distributed_step import MODELS, scaling  # noqa: E402


@pytest.mark.parametrize("model", sorted(MODELS))
def test_data_parallel_scaling(benchmark, model):
    steps, warmup, windows = (2, 1, 1) if benchmark.disabled else ((5, 1, 3) if model == "wide-mlp" else (20, 3, 3))
    rows = []
    benchmark.group = "data-parallel job, 1 then 2 ranks"
    benchmark.pedantic(lambda: rows.append(scaling(model, steps, warmup, windows=windows)), rounds=1, iterations=1)
    row = rows[0]
    for key in ("step_s", "samples_per_s", "allreduce_s", "allreduce_alone_s"):
        benchmark.extra_info[f"1 rank {key}"] = row["one"][key]
        benchmark.extra_info[f"2 ranks {key}"] = row["two"][key]
    for phase in row["two"]["phases_s"]:
        benchmark.extra_info[f"1 rank {phase}_s"] = row["one"]["phases_s"][phase]
        benchmark.extra_info[f"2 ranks {phase}_s"] = row["two"]["phases_s"][phase]
    benchmark.extra_info["efficiency"] = row["efficiency"]
    benchmark.extra_info["in-job efficiency"] = row["interleaved_efficiency"]
    assert row["one"]["ranks"] == 1 and row["two"]["ranks"] == 2
    print(f"\n{model}: 1 rank {row['one']['step_s'] * 1e3:.2f} ms, 2 ranks {row['two']['step_s'] * 1e3:.2f} ms, "
          f"efficiency {row['efficiency'] * 100:.1f}% (in-job {row['interleaved_efficiency'] * 100:.1f}%), allreduce {row['two']['allreduce_s'] * 1e3:.2f} ms in the step "
          f"({row['two']['allreduce_alone_s'] * 1e3:.2f} ms alone)")
