#!/usr/bin/env bash
# xlstm's device check: a smoke stage, the GPU tests, then the benchmark; under 5.5 minutes.
#
# On the GPU machine, from the repository root (the device tool's `run`):
#     command:   timeout -k 5 330 bash benchmarks/gpu_check.sh
#     timeout_s: 345          carry: [".whl"]
# `.whl/` (git-ignored) holds the array-api-compat wheel, which the GPU image lacks and
# which cannot be downloaded there; fill it here first (docs/gpu.md):
#     pip download array-api-compat --no-deps -d .whl
# On any machine, without a GPU, to check the script itself (tiny shapes, NumPy, torch CPU):
#     bash benchmarks/gpu_check.sh --dry-run
#
# Stages run in order, each under its own `timeout`; every stage writes its results under
# $OUT (default /tmp/xlstm_gpu_check) as it goes and nothing there is ever deleted, so a
# stage cut off keeps what it finished: gpu_check.log (everything printed), stages.txt
# (each stage's exit status and seconds), versions.json, smoke.json, rows.jsonl (one line
# per benchmark row), report.md.  The short table is printed last.  Stage limits add up
# to LIMIT_TOTAL, which the command's outer `timeout 330` covers, which `timeout_s` covers.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
    esac
done

# Stage limits (seconds).  Smoke ~15 s when healthy; bench covers gpu_check.py's WORKERS
# (94 s) and its own start.  Worst case: LIMIT_TOTAL + KILL_AFTER per stage + setup
# (~10 s) = 317 s, inside the outer `timeout 330` (tests/engines/test_cupy_cpu.py checks).
LIMIT_VERSIONS=20
LIMIT_SMOKE=40
LIMIT_GPU_TESTS=85
LIMIT_CORE_TESTS=40
LIMIT_BENCH=100
LIMIT_REPORT=10
KILL_AFTER=2
if [ "$DRY" = 1 ]; then  # no device: imports and JIT compiles dominate, time is not the point
    LIMIT_VERSIONS=60 LIMIT_SMOKE=120 LIMIT_GPU_TESTS=240 LIMIT_CORE_TESTS=120
    LIMIT_BENCH=300 LIMIT_REPORT=30
fi
LIMIT_TOTAL=$((LIMIT_VERSIONS + LIMIT_SMOKE + LIMIT_GPU_TESTS + LIMIT_CORE_TESTS + LIMIT_BENCH + LIMIT_REPORT))

OUT_DIR="${OUT:-/tmp/xlstm_gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
STAGES="$OUT_DIR/stages.txt"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export CUPY_CACHE_DIR="${CUPY_CACHE_DIR:-/tmp/xlstm_cupy_cache}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX tests must not take the GPU's memory
unset CUPY_TF32  # tests with TF32 off; the benchmark sets it per worker
PY=(python3)
DRY_FLAG=()
if [ "$DRY" = 1 ]; then
    DRY_FLAG=(--dry-run)
    PY=("${PYTHON:-python3}")
fi

# Run one stage under its limit; record its exit status and time (a timeout is 124).
stage() {
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS status
    echo "== $name (limit ${limit} s): $*"
    timeout -k "$KILL_AFTER" "$limit" "$@"
    status=$?
    echo "== $name: exit status $status after $((SECONDS - started)) s"
    echo "$name status=$status seconds=$((SECONDS - started)) limit=$limit" >>"$STAGES"
    return "$status"
}

main() {
    echo "== xlstm GPU check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')," \
        "dry run: $DRY, stage limits total ${LIMIT_TOTAL} s"
    echo "check started $(date -u +%FT%TZ) dry=$DRY limit_total=$LIMIT_TOTAL" >>"$STAGES"
    if [ "$DRY" = 0 ]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if ! "${PY[@]}" -c "import array_api_compat" 2>/dev/null; then
        local wheels=(.whl/array_api_compat-*.whl)
        if [ ! -e "${wheels[0]}" ]; then
            echo "array-api-compat does not import and .whl/ has no array_api_compat wheel:" \
                "run 'pip download array-api-compat --no-deps -d .whl' here and pass carry: [\".whl\"]"
            echo "setup status=1 (no array-api-compat)" >>"$STAGES"
            return 1
        fi
        echo "== installing ${wheels[0]} into /tmp/xlstm_site (no network, no dependencies)"
        "${PY[@]}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/xlstm_site "${wheels[0]}" || return 1
        export PYTHONPATH="$PYTHONPATH:/tmp/xlstm_site"
    fi

    stage versions "$LIMIT_VERSIONS" "${PY[@]}" benchmarks/gpu_check.py versions --out "$OUT_DIR" "${DRY_FLAG[@]}"
    if ! stage smoke "$LIMIT_SMOKE" "${PY[@]}" benchmarks/gpu_check.py smoke --out "$OUT_DIR" "${DRY_FLAG[@]}"; then
        echo "== smoke stage failed: stopping here (see smoke.json)"
        stage report "$LIMIT_REPORT" "${PY[@]}" benchmarks/gpu_check.py report --out "$OUT_DIR"
        return 1
    fi

    # pytest: an unknown package stack must not abort collection (filterwarnings=error in
    # pyproject.toml): warnings are shown, not raised, and collection errors do not stop it.
    local pytest_flags=(-q -p no:cacheprovider -W default -o "filterwarnings=default"
        --continue-on-collection-errors -rfE --durations=5)
    if "${PY[@]}" -c "import pytest_timeout" 2>/dev/null; then
        pytest_flags+=(--timeout=60)
    fi
    if [ "$DRY" = 1 ]; then
        pytest_flags+=(--collect-only)  # paths and flags checked, nothing run
    fi
    stage gpu-tests "$LIMIT_GPU_TESTS" "${PY[@]}" -m pytest "${pytest_flags[@]}" -m gpu tests
    stage core-tests "$LIMIT_CORE_TESTS" "${PY[@]}" -m pytest "${pytest_flags[@]}" -m "not gpu" \
        tests/core tests/reliability
    stage bench "$LIMIT_BENCH" "${PY[@]}" benchmarks/gpu_check.py bench --out "$OUT_DIR" "${DRY_FLAG[@]}"
    stage report "$LIMIT_REPORT" "${PY[@]}" benchmarks/gpu_check.py report --out "$OUT_DIR"
}

main 2>&1 | tee -a "$LOG"
