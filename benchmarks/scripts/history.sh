#!/usr/bin/env bash
# Benchmark commits with the asv suite of the working tree, against the installed Python
# environment (no per-commit build: each commit's `xlstm/` is unpacked to a temporary folder
# and put first on the benchmarks' path), and keep the results in benchmarks/history/.
#
#   bash benchmarks/scripts/history.sh [--full] COMMIT... [-- ASV_RUN_ARGUMENTS...]
#
# --quick (one sample per benchmark) unless --full; arguments after `--` go to `asv run`
# (e.g. `-b REGEX` to select benchmarks). The results are filed under the
# machine name XLSTM_ASV_MACHINE (default: xeon-2cpu-shared, the machine kind whose
# results are checked in); `asv publish` and benchmarks/scripts/report.py read them.
set -euo pipefail
cd "$(dirname "$0")/../.."

quick=(--quick)
if [ "${1:-}" = "--full" ]; then
    quick=()
    shift
fi
commits=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    commits+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
if [ "${#commits[@]}" -eq 0 ]; then
    echo "usage: bash benchmarks/scripts/history.sh [--full] COMMIT... [-- ASV_RUN_ARGUMENTS...]" >&2
    exit 2
fi
machine="${XLSTM_ASV_MACHINE:-xeon-2cpu-shared}"
asv machine --machine "${machine}" --yes >/dev/null

for commit in "${commits[@]}"; do
    hash=$(git rev-parse --verify "${commit}^{commit}")
    source_dir=$(mktemp -d)
    trap 'rm -rf "${source_dir}"' EXIT
    git archive "${hash}" xlstm | tar -x -C "${source_dir}"
    # asv drops PYTHONPATH from the benchmarks' environment; ASV_PYTHONPATH is its own way.
    ASV_PYTHONPATH="${source_dir}" asv run --python=same --set-commit-hash "${hash}" \
        --machine "${machine}" "${quick[@]}" --show-stderr "$@"
    rm -rf "${source_dir}"
done

mkdir -p "benchmarks/history/${machine}"
cp .asv/results/benchmarks.json benchmarks/history/
cp ".asv/results/${machine}/machine.json" "benchmarks/history/${machine}/"
for commit in "${commits[@]}"; do
    hash=$(git rev-parse --verify "${commit}^{commit}")
    cp ".asv/results/${machine}/${hash:0:8}"-*.json "benchmarks/history/${machine}/"
done
echo "results in benchmarks/history/${machine}"
