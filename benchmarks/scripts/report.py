"""A static report of asv results that opens anywhere: one HTML file, inline SVG, no script.

asv's own report (``asv publish``) loads jQuery, flot and Bootstrap from public CDNs and
shows nothing without internet. This page is built from the same results JSON (asv's
``results_dir``, and the results kept in ``benchmarks/history/``) and needs nothing but a
browser: open it as a file or serve it.

One section per machine; in it one chart per benchmark (``Sequence.time_forward``,
``Sequence.time_backward``, ``Sequence.time_forward_backward``, ``Layers...``, the ratios)
and per value of the other parameters (dtype and size, layer configuration), with the
commits in commit-date order along x and one line per backend/engine::

    python benchmarks/scripts/report.py                  # -> .asv/report/index.html
    python benchmarks/scripts/report.py --results .asv/results --out /tmp/report

Each line is an SVG ``polyline`` with ``class="series"`` and ``data-series`` (the backend),
each chart a ``figure`` with ``data-benchmark``; tests/tools/test_report.py reads them back
from the page as a headless browser renders it.
"""

from __future__ import annotations

import argparse
import html
import itertools
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS = [ROOT / ".asv" / "results", ROOT / "benchmarks" / "history"]
DEFAULT_OUT = ROOT / ".asv" / "report"

#: One colour per backend/engine (colour-blind-safe palette, Okabe-Ito), in ENGINES order.
COLOURS = {
    "numpy": "#0072B2",
    "numpy-generic": "#E69F00",
    "numpy-numpy": "#009E73",
    "numpy-numba": "#CC79A7",
    "cupy": "#D55E00",
    "cupy-graph": "#56B4E9",
    "cupy-generic": "#F0E442",
    "torch": "#000000",
}
WIDTH, HEIGHT = 420, 220
MARGIN = {"left": 64, "right": 30, "top": 12, "bottom": 24}


@dataclass
class Run:
    """One results file: a commit benchmarked in one environment on one machine."""

    machine: str
    commit: str
    date: int  # commit date, ms since the epoch (asv's)
    env: str
    results: dict[str, tuple[list, list]]  # name -> (flat results, params)


@dataclass
class Chart:
    """One figure: a benchmark at fixed non-backend parameters; series by backend."""

    benchmark: str
    fixed: tuple[str, ...]
    unit: str
    points: dict[str, dict[str, float]] = field(default_factory=dict)  # series -> commit -> y


def _unquote(value: str) -> str:
    """asv stores parameter values as their repr: ``"'numpy'"`` -> ``numpy``."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def load_runs(results_dirs: list[Path]) -> tuple[list[Run], dict[str, dict]]:
    """Every results file under ``results_dirs`` (``<dir>/<machine>/<commit>-<env>.json``).

    Returns the runs and the benchmark descriptions (``benchmarks.json``, later
    directories filling in what earlier ones lack). A run found in several directories
    (same machine, commit and environment) counts once: the first directory's. A file that
    is not asv results JSON (version 2) is an error naming it.
    """
    runs: list[Run] = []
    seen: set[tuple[str, str, str]] = set()
    benchmarks: dict[str, dict] = {}
    for directory in results_dirs:
        if not directory.is_dir():
            continue
        listing = directory / "benchmarks.json"
        if listing.is_file():
            for name, description in json.loads(listing.read_text()).items():
                if isinstance(description, dict):
                    benchmarks.setdefault(name, description)
        for machine_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
            for path in sorted(machine_dir.glob("*.json")):
                if path.name == "machine.json":
                    continue
                data = json.loads(path.read_text())
                if data.get("version") != 2 or "result_columns" not in data:
                    raise ValueError(f"{path}: not asv results (version 2)")
                columns = data["result_columns"]
                at_result, at_params = columns.index("result"), columns.index("params")
                results = {
                    name: (row[at_result], row[at_params])
                    for name, row in data["results"].items()
                    if len(row) > max(at_result, at_params)
                }
                key = (machine_dir.name, data["commit_hash"], data.get("env_name", ""))
                if key in seen:  # the same run in two folders (history copied to results)
                    continue
                seen.add(key)
                runs.append(
                    Run(
                        machine=machine_dir.name,
                        commit=data["commit_hash"],
                        date=int(data.get("date") or 0),
                        env=data.get("env_name", ""),
                        results=results,
                    )
                )
    return runs, benchmarks


def charts_of(runs: list[Run], benchmarks: dict[str, dict]) -> list[Chart]:
    """Group the runs' numbers into charts: per benchmark and non-backend parameters.

    The first parameter of every benchmark in this suite is the backend; a benchmark
    without parameters gets one series named ``value``. Failed and skipped cases (asv
    stores ``None`` or NaN) are left out. Several environments for one commit: the
    series name carries the environment.
    """
    envs_per_commit = {}
    for run in runs:
        envs_per_commit.setdefault((run.machine, run.commit), set()).add(run.env)
    charts: dict[tuple[str, tuple[str, ...]], Chart] = {}
    for run in sorted(runs, key=lambda r: (r.date, r.commit)):
        several = len(envs_per_commit[(run.machine, run.commit)]) > 1
        for name, (values, params) in sorted(run.results.items()):
            if values is None:
                continue
            unit = benchmarks.get(name, {}).get("unit", "")
            if not isinstance(values, list):
                values = [values]
            combos = list(itertools.product(*params)) if params else [()]
            for combo, value in zip(combos, values, strict=False):
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                combo = tuple(_unquote(str(item)) for item in combo)
                series, fixed = (combo[0], combo[1:]) if combo else ("value", ())
                if several:
                    series = f"{series} ({run.env})"
                chart = charts.setdefault((name, fixed), Chart(name, fixed, unit))
                chart.points.setdefault(series, {})[run.commit] = float(value)
    return sorted(charts.values(), key=_chart_order)


#: Passes in reading order: forward, backward, forward+backward side by side.
PASS_ORDER = ("forward", "backward", "forward_backward")


def _chart_order(chart: Chart) -> tuple:
    """Class, then the fixed parameters, then the pass in :data:`PASS_ORDER`."""
    *_, cls, method = ["", *chart.benchmark.split(".")]
    kind, _, passes = method.partition("_")
    rank = PASS_ORDER.index(passes) if passes in PASS_ORDER else len(PASS_ORDER)
    return (cls, kind, chart.fixed, rank, method)


def _commit_subjects(commits: list[str]) -> dict[str, str]:
    """Commit subjects from git, where the repository has them (else empty)."""
    subjects = {}
    for commit in commits:
        done = subprocess.run(
            ["git", "log", "-1", "--format=%s", commit],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        subjects[commit] = done.stdout.strip() if done.returncode == 0 else ""
    return subjects


def _format(value: float, unit: str) -> str:
    if value == 0:
        return "0"
    if unit == "seconds":
        for scale, suffix in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if value >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value * 1e9:.3g} ns"
    return f"{value:.3g}"


def svg_chart(chart: Chart, commits: list[str]) -> str:
    """The chart as inline SVG: y from 0 to the largest value, one polyline per series."""
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]
    shown = [c for c in commits if any(c in pts for pts in chart.points.values())]
    top = max(v for pts in chart.points.values() for v in pts.values()) * 1.08 or 1.0

    def x_of(commit: str) -> float:
        index = shown.index(commit)
        return MARGIN["left"] + (
            plot_w * index / (len(shown) - 1) if len(shown) > 1 else plot_w / 2
        )

    def y_of(value: float) -> float:
        return MARGIN["top"] + plot_h * (1 - value / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        f'<rect x="{MARGIN["left"]}" y="{MARGIN["top"]}" width="{plot_w}" height="{plot_h}" '
        'fill="#fafafa" stroke="#ccc"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        value = top * fraction
        y = y_of(value)
        parts.append(
            f'<line x1="{MARGIN["left"]}" x2="{WIDTH - MARGIN["right"]}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{MARGIN["left"] - 4}" y="{y + 4:.1f}" text-anchor="end" '
            f'font-size="10">{html.escape(_format(value, chart.unit))}</text>'
        )
    for commit in shown:
        parts.append(
            f'<text x="{x_of(commit):.1f}" y="{HEIGHT - MARGIN["bottom"] + 14}" '
            f'text-anchor="middle" font-size="10" font-family="monospace">{commit[:8]}</text>'
        )
    for series, points in sorted(chart.points.items()):
        colour = COLOURS.get(series.split(" ")[0], "#777777")
        ordered = [c for c in shown if c in points]
        coordinates = " ".join(f"{x_of(c):.1f},{y_of(points[c]):.1f}" for c in ordered)
        label = html.escape(series)
        parts.append(
            f'<polyline class="series" data-series="{label}" points="{coordinates}" '
            f'fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        for commit in ordered:
            parts.append(
                f'<circle cx="{x_of(commit):.1f}" cy="{y_of(points[commit]):.1f}" r="3" '
                f'fill="{colour}"><title>{label} {commit[:8]}: '
                f"{html.escape(_format(points[commit], chart.unit))}</title></circle>"
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><span class="swatch" style="background:'
        f'{COLOURS.get(series.split(" ")[0], "#777777")}"></span>{html.escape(series)}</span>'
        for series in sorted(chart.points)
    )
    return "".join(parts) + f'<div class="legend">{legend}</div>'


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h2 { border-bottom: 1px solid #ccc; }
h3 { margin-bottom: 0.2em; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; border: 1px solid #ddd; padding: 0.4em; }
figcaption { font-size: 0.85em; font-family: monospace; }
.legend { font-size: 0.75em; max-width: 420px; }
.key { margin-right: 0.8em; white-space: nowrap; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.25em;
          vertical-align: middle; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: left; }
"""


def build(results_dirs: list[Path], out: Path) -> Path:
    """Write ``out/index.html`` from the results under ``results_dirs``; return its path."""
    runs, benchmarks = load_runs(results_dirs)
    if not runs:
        searched = ", ".join(str(d) for d in results_dirs)
        raise SystemExit(f"report: no asv results under {searched} (run `asv run` first)")
    body = ["<h1>xlstm benchmarks</h1>"]
    body.append(
        "<p>Lower is better everywhere: times, and ratios of xlstm's time to a reference "
        "timed in the same process (<code>VsGemm</code>: the same FLOPs as large products; "
        "<code>VsTorch</code>: torch.nn.LSTM). See docs/benchmarks.md.</p>"
    )
    for machine in sorted({run.machine for run in runs}):
        machine_runs = [run for run in runs if run.machine == machine]
        ordered = sorted(machine_runs, key=lambda r: (r.date, r.commit))
        commits = list(dict.fromkeys(run.commit for run in ordered))
        subjects = _commit_subjects(commits)
        body.append(f'<section data-machine="{html.escape(machine)}">')
        body.append(f"<h2>Machine {html.escape(machine)}</h2><table><tr><th>commit</th>"
                    "<th>environment</th><th>subject</th></tr>")  # fmt: skip
        for run in ordered:
            body.append(
                f"<tr><td><code>{run.commit[:8]}</code></td><td>{html.escape(run.env)}</td>"
                f"<td>{html.escape(subjects.get(run.commit, ''))}</td></tr>"
            )
        body.append("</table>")
        group = None
        for chart in charts_of(machine_runs, benchmarks):
            cls = chart.benchmark.split(".")[-2] if "." in chart.benchmark else chart.benchmark
            if cls != group:
                if group is not None:
                    body.append("</div>")
                body.append(f'<h3>{html.escape(cls)}</h3><div class="grid">')
                group = cls
            caption = " · ".join((chart.benchmark.split(".")[-1], *chart.fixed, chart.unit))
            body.append(
                f'<figure data-benchmark="{html.escape(chart.benchmark)}" '
                f'data-params="{html.escape(" ".join(chart.fixed))}">'
                f"<figcaption>{html.escape(caption)}</figcaption>"
                f"{svg_chart(chart, commits)}</figure>"
            )
        if group is not None:
            body.append("</div>")
        body.append("</section>")
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>xlstm benchmarks</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results",
        type=Path,
        action="append",
        help="an asv results folder (repeatable; default: .asv/results and benchmarks/history)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    index = build(args.results or DEFAULT_RESULTS, args.out)
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
