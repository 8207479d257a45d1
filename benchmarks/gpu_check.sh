#!/usr/bin/env bash
# The one device check of xlstm's CuPy fast path: GPU tests, then the benchmark table.
#
# Run from the repository root on the GPU machine (no network needed):
#     bash benchmarks/gpu_check.sh            # full check, < 8 minutes (3 + 5 at most)
#     bash benchmarks/gpu_check.sh --quick    # 3 shapes (passed on to gpu_check.py)
#
# xlstm runs from this source tree (PYTHONPATH).  array-api-compat, its one
# dependency missing from the GPU image, is installed from the wheel carried in
# .whl/ when it does not import.  Everything printed goes to $OUT/gpu_check.log
# (default /tmp/xlstm_gpu_check); the table comes last.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-/tmp/xlstm_gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
SITE=/tmp/xlstm_site
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
unset CUPY_TF32  # the tests run with TF32 off; gpu_check.py sets it per worker
export CUPY_CACHE_DIR="${CUPY_CACHE_DIR:-/tmp/xlstm_cupy_cache}"

{
    echo "== xlstm GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    if ! python3 -c "import array_api_compat" 2>/dev/null; then
        echo "== installing array-api-compat from .whl/"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" .whl/*.whl || { echo "wheel install failed"; exit 1; }
        export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    else
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
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
    timeout 180 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations=8 \
        "${per_test[@]}" tests
    echo "== GPU tests: exit status $? after $((SECONDS - test_started)) s"

    echo "== benchmarks"
    timeout 290 python3 benchmarks/gpu_check.py --out "$OUT_DIR" --worker-timeout 130 "$@"
    echo "== benchmarks: exit status $?"
} 2>&1 | tee "$LOG"
