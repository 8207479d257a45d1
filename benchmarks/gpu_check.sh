#!/usr/bin/env bash
# The one device check of xlstm's CuPy fast path: GPU tests, then the benchmark table.
#
# Run from the repository root on the GPU machine (no network needed, nothing installed):
#     bash benchmarks/gpu_check.sh            # full check, < 10 minutes (4 + 6 at most)
#     bash benchmarks/gpu_check.sh --quick    # GPU tests + a few shapes per run, < 7 minutes
#
# xlstm runs from this source tree (PYTHONPATH).  array-api-compat, its one
# dependency missing from the GPU image, is imported straight from the pure-Python
# wheel carried in .whl/ (a wheel is a zip archive: Python imports from it on
# PYTHONPATH) when it does not import otherwise.  Everything printed goes to
# $OUT/gpu_check.log (default /tmp/xlstm_gpu_check); a short table comes last.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-/tmp/xlstm_gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
unset CUPY_TF32  # the tests run with TF32 off; gpu_check.py sets it per worker
export CUPY_CACHE_DIR="${CUPY_CACHE_DIR:-/tmp/xlstm_cupy_cache}"

QUICK=0
for arg in "$@"; do
    [ "$arg" = "--quick" ] && QUICK=1
done

{
    echo "== xlstm GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if ! python3 -c "import array_api_compat" 2>/dev/null; then
        wheel=$(ls .whl/array_api_compat-*.whl 2>/dev/null | head -n 1)
        [ -n "$wheel" ] || { echo "array-api-compat does not import and .whl/ has no wheel"; exit 1; }
        echo "== array-api-compat from $wheel (imported from the archive, not installed)"
        export PYTHONPATH="$PWD/$wheel:$PYTHONPATH"
    fi
    python3 - <<'EOF'
import sys, numpy, cupy, array_api_compat, xlstm
print("python", sys.version.split()[0], "| numpy", numpy.__version__, "| cupy", cupy.__version__,
      "| array-api-compat", array_api_compat.__version__, "| xlstm from", xlstm.__file__)
EOF

    echo "== GPU tests: pytest -m gpu"
    test_started=$SECONDS
    per_test=()
    python3 -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout=90)
    timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=8 \
        "${per_test[@]}" tests
    echo "== GPU tests: exit status $? after $((SECONDS - test_started)) s"

    echo "== benchmarks"
    if [ "$QUICK" = 1 ]; then
        timeout 160 python3 benchmarks/gpu_check.py --out "$OUT_DIR" --worker-timeout 50 \
            --budget 0.15 "$@"
    else
        timeout 360 python3 benchmarks/gpu_check.py --out "$OUT_DIR" --worker-timeout 115 "$@"
    fi || echo "== benchmarks: exit status $?"  # only on failure: the table stays last
} 2>&1 | tee "$LOG"
