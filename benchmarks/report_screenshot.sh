#!/usr/bin/env bash
# Build the offline report (benchmarks/scripts/report.py) and render it in headless Chromium,
# with the network off, to a screenshot and the rendered DOM:
#
#   bash benchmarks/report_screenshot.sh [OUT_DIR]      # default .asv/report
#
# Writes OUT_DIR/index.html, OUT_DIR/screenshot.png and OUT_DIR/dom.html, and prints how
# many charts and lines the rendered page holds. Needs chromium (Debian: apt-get install
# chromium) and the asv results (.asv/results, benchmarks/history).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.asv/report}"
python="${PYTHON:-python3}"
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "${browser}" ]; then
    echo "report_screenshot: no chromium found (apt-get install chromium)" >&2
    exit 2
fi
"${python}" benchmarks/scripts/report.py --out "${out}"
page="file://$(cd "${out}" && pwd)/index.html"
profile=$(mktemp -d)
trap 'rm -rf "${profile}"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking
       --disable-component-update --disable-sync --no-first-run --user-data-dir="${profile}"
       --proxy-server=127.0.0.1:9 --proxy-bypass-list="<-loopback>")  # no network at all
timeout 120 "${browser}" "${flags[@]}" --screenshot="${out}/screenshot.png" \
    --window-size=1400,1000 "${page}" 2>/dev/null
timeout 120 "${browser}" "${flags[@]}" --dump-dom "${page}" 2>/dev/null > "${out}/dom.html"
charts=$(grep -o '<figure' "${out}/dom.html" | wc -l)
lines=$(grep -o '<polyline class="series"' "${out}/dom.html" | wc -l)
echo "report_screenshot: ${out}/screenshot.png; the rendered page has ${charts} charts, ${lines} lines"
