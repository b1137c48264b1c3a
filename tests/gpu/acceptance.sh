#!/usr/bin/env bash
# The CUDA backend's acceptance run on a machine with an NVIDIA GPU and no network:
#   1. a fresh venv with the cuda12 extra, the test tools and a CUDA build of PyTorch, installed
#      only from the wheels carried beside the checkout (docs/cuda.md says how to fetch them),
#      or (--python) an environment that has them already, with this checkout on PYTHONPATH;
#   2. the whole test suite with the real GPU (the CPU emulator off), no CUDA test skipped;
#   3. the CUDA benchmarks (bench/test_bench_cuda.py) against PyTorch eager CUDA and cuBLAS;
#   4. with two or more GPUs (nvidia-smi -L), a real data-parallel step over NCCL on two of them
#      (tests/gpu/multi_gpu_step.py under mpiexec -n 2: 2 ranks == 1 process with the double
#      batch, replicas identical, step time and scaling); with one GPU the report says it did not run;
#   5. a JSON and a markdown report (GPU, driver, CUDA, CuPy, every figure, the goals).
# It stops at the first failing step (the test step lists every failing test); every step's log stays
# in the output folder. Goals missed
# (speed, share of cuBLAS, allocations) fail the last step after the report is written.
#
#   bash tests/gpu/acceptance.sh [--wheels DIR | --python PY] [--workers N] [--out DIR] [--dry-run]
#
# --wheels DIR  the wheel folder (default: ../juicepy-wheels beside the checkout)
# --python PY   no venv: PY's environment (CuPy, a CUDA PyTorch, pytest, pytest-benchmark,
#               pytest-timeout; pytest-xdist for --workers); the C kernels are built in place
# --workers N   run the test suite in N processes (pytest-xdist); benchmarks stay serial
# --out DIR     where logs and reports go (default: acceptance-<UTC time>/ in the checkout)
# --dry-run     no GPU: in the current environment, the CUDA-related tests and the benchmark code on the
#               CPU emulator (one round each, figures meaningless), the multi-GPU step on two emulated
#               ranks with the fake NCCL (tests/fake_nccl.py), the report marked as a dry run
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WHEELS="$ROOT/../juicepy-wheels"
OUT=""
DRY_RUN=0
PYTHON=""
WORKERS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS=$(cd "$2" && pwd); shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "acceptance: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-"$ROOT/acceptance-$(date -u +%Y%m%dT%H%M%SZ)"}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/failed.json"
START=$(date +%s)

step() {  # step NAME COMMAND...: run it with its log in $OUT/NAME.log; stop the run if it fails
    local name=$1
    shift
    echo "== $name ($(( $(date +%s) - START )) s)"
    if ! "$@" > "$OUT/$name.log" 2>&1; then
        echo "acceptance: step '$name' FAILED; its log: $OUT/$name.log" >&2
        tail -n 40 "$OUT/$name.log" >&2
        echo "{\"failed_step\": \"$name\", \"log\": \"$OUT/$name.log\"}" > "$OUT/failed.json"
        exit 1
    fi
    tail -n 3 "$OUT/$name.log"
}

if [ "$DRY_RUN" = 1 ]; then
    PY=python
    export JUICEPY_CUDA_EMULATOR=1
    BENCH_ARGS=(--benchmark-min-rounds=1 --benchmark-max-time=0.000001 --benchmark-warmup=off)
    BENCH_ENV=(env JUICEPY_CUDA_EMULATOR_SCHEDULE=forward)  # the code once; every kernel ran both ways in the tests
    step environment python -c "import juicepy, numpy; print('dry run in', juicepy.__file__)"
else
    command -v nvidia-smi > /dev/null || { echo "acceptance: no nvidia-smi: not a GPU machine (use --dry-run)" >&2; exit 1; }
    step gpu nvidia-smi
    if [ -n "$PYTHON" ]; then
        PY=$(command -v "$PYTHON") || { echo "acceptance: no interpreter $PYTHON" >&2; exit 1; }
        step environment "$PY" -c "import cupy, torch, pytest, pytest_benchmark, pytest_timeout; \
print('cupy', cupy.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
        step build "$PY" setup.py build_ext --inplace -j "$(nproc)"
        export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    else
        [ -d "$WHEELS" ] || { echo "acceptance: no wheel folder $WHEELS (see docs/cuda.md, 'GPU acceptance run')" >&2; exit 1; }
        step venv python3 -m venv "$OUT/venv"
        PY="$OUT/venv/bin/python"
        # offline: only the carried wheels; torch's CUDA build and CuPy's CUDA libraries included
        step install "$PY" -m pip install --no-index --find-links "$WHEELS" -e ".[dev,cuda12,distributed]" torch \
            nvidia-cuda-runtime-cu12 nvidia-cublas-cu12 nvidia-cuda-nvrtc-cu12
    fi
    export JUICEPY_CUDA_EMULATOR=0
    # GPU machines often run containers as root, where Open MPI's mpiexec (if that is the one
    # found) refuses to start ranks unless told to; MPICH ignores these
    if [ "$(id -u)" = 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    BENCH_ARGS=(--benchmark-min-rounds=20 --benchmark-max-time=0.5 --benchmark-warmup=on)
    BENCH_ENV=(env)
fi

# The backend must start, or every CUDA test would skip.
step cuda-backend "$PY" tests/gpu/acceptance_report.py check-backend
if [ "$DRY_RUN" = 1 ]; then
    # every CUDA-related test: tests/backends/cuda, the [cuda] cases of the conformance suite and
    # of every backend-parametrized test, the emulator's own tests
    step tests "$PY" -m pytest -x -q -rs -p no:cacheprovider tests -k "cuda or emulator or nvrtc or sanitizer"
else
    # no -x: a GPU run is rare, so it lists every failure at once (the step fails on any)
    PARALLEL=()
    [ "$WORKERS" -gt 0 ] && PARALLEL=(-n "$WORKERS")
    step tests "$PY" -m pytest -q -rs -p no:cacheprovider "${PARALLEL[@]}"
fi
# Nothing CUDA-related may be skipped (the skip reasons are in the summary of -rs).
step no-cuda-skips "$PY" tests/gpu/acceptance_report.py check-skips "$OUT/tests.log"
step benchmarks "${BENCH_ENV[@]}" "$PY" -m pytest -x -q -p no:cacheprovider bench/test_bench_cuda.py "${BENCH_ARGS[@]}" \
    --benchmark-json="$OUT/bench.json" --benchmark-columns=min,median,rounds --benchmark-group-by=group
# The data-parallel step on two GPUs through NCCL; bounded by a timeout so a rank left waiting in
# a collective fails the step instead of stalling the run.
MULTI_GPU="$OUT/multi_gpu.json"
rm -f "$MULTI_GPU"
GPUS=0
[ "$DRY_RUN" = 1 ] || GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
if [ "$DRY_RUN" = 1 ] || [ -n "$PYTHON" ]; then  # the one juicepy's launcher uses (the environment's, or PATH's)
    MPIEXEC=$("$PY" -c "from juicepy.cli import mpiexec_path; print(mpiexec_path() or '')" 2>/dev/null || true)
else
    MPIEXEC="$(dirname "$PY")/mpiexec"  # the venv's, from MPICH's wheel
fi
if [ "$DRY_RUN" != 1 ] && [ "$GPUS" -lt 2 ]; then
    echo "{\"run\": false, \"gpus\": $GPUS, \"reason\": \"$GPUS GPU(s): the multi-GPU step needs 2\"}" > "$MULTI_GPU"
    echo "== multi-gpu: NOT RUN ($GPUS GPU(s); it needs 2)"
elif [ -z "$MPIEXEC" ] || [ ! -x "$MPIEXEC" ]; then
    echo "{\"run\": false, \"gpus\": $GPUS, \"reason\": \"no mpiexec (install the distributed extra)\"}" > "$MULTI_GPU"
    echo "== multi-gpu: NOT RUN (no mpiexec)"
elif [ "$DRY_RUN" = 1 ]; then
    step multi-gpu env JUICEPY_CUDA_EMULATOR_SCHEDULE=forward OMP_NUM_THREADS=1 JUICEPY_NUM_THREADS=1 \
        timeout 900 "$MPIEXEC" -n 2 "$PY" -m mpi4py tests/gpu/multi_gpu_step.py --out "$MULTI_GPU" --dry-run
else
    step multi-gpu timeout 900 "$MPIEXEC" -n 2 "$PY" -m mpi4py tests/gpu/multi_gpu_step.py --out "$MULTI_GPU"
fi
step report "$PY" tests/gpu/acceptance_report.py report "$OUT" --dry-run="$DRY_RUN" --seconds=$(( $(date +%s) - START ))
MULTI_NOTE=$(grep -q '"run": false' "$MULTI_GPU" && echo "; the multi-GPU step was NOT RUN (see the report)" || true)
echo "acceptance: passed in $(( $(date +%s) - START )) s$MULTI_NOTE; reports: $OUT/report.md, $OUT/report.json"
