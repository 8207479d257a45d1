"""The offline benchmark report (benchmarks/scripts/report.py): built from asv results JSON,
self-contained, and rendered by a real headless browser with the network off."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks/scripts/report.py")
report = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("report", report)  # dataclasses look their module up there
_spec.loader.exec_module(report)

BACKENDS = ["numpy", "numpy-generic", "numpy-numba", "torch"]
SIZES = ["H256-B16-T25", "H512-B32-T25"]
PASSES = ["time_forward", "time_backward", "time_forward_backward"]
COMMITS = [f"{index:x}" * 40 for index in (10, 11, 12)]  # 'aaaa...', 'bbbb...', 'cccc...'


def _write_results(directory: Path) -> None:
    """Three commits of asv results (format version 2, as asv 0.6 writes them)."""
    machine = directory / "testbox"
    machine.mkdir(parents=True)
    (machine / "machine.json").write_text(json.dumps({"machine": "testbox", "version": 1}))
    columns = ["result", "params", "version", "started_at", "duration"]
    params = [[f"'{b}'" for b in BACKENDS], ["'float32'"], [f"'{s}'" for s in SIZES]]
    listing = {"version": 2}
    for name in PASSES:
        listing[f"bench_lstm.Sequence.{name}"] = {"unit": "seconds", "type": "time"}
    for day, commit in enumerate(COMMITS):
        results = {}
        for offset, name in enumerate(PASSES):
            values = [0.001 * (1 + offset + i + day) for i in range(len(BACKENDS) * len(SIZES))]
            # (backend, dtype, size) in product order: the last two are the second size.
            values[-1] = None  # torch at the second size: failed
            values[-3] = math.nan  # numpy-numba at the second size: asv's NaN for skipped
            results[f"bench_lstm.Sequence.{name}"] = [values, params, "v1", 0, 1.0]
        data = {
            "commit_hash": commit,
            "env_name": "existing-py",
            "date": 1_700_000_000_000 + day * 86_400_000,
            "params": {"machine": "testbox"},
            "python": "3.11",
            "requirements": {},
            "env_vars": {},
            "result_columns": columns,
            "results": results,
            "durations": {},
            "version": 2,
        }
        (machine / f"{commit[:8]}-existing-py.json").write_text(json.dumps(data))
    (directory / "benchmarks.json").write_text(json.dumps(listing))


class _Charts(HTMLParser):
    """Collects each figure's benchmark and parameters, and its polylines (series, points)."""

    def __init__(self):
        super().__init__()
        self.figures = []
        self.scripts = 0
        self.external = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])
        if tag == "figure":
            self.figures.append({"benchmark": attrs["data-benchmark"],
                                 "params": attrs["data-params"], "lines": {}})  # fmt: skip
        if tag == "polyline" and "series" in attrs.get("class", ""):
            self.figures[-1]["lines"][attrs["data-series"]] = attrs["points"].split()


def _parse(page: str) -> _Charts:
    parser = _Charts()
    parser.feed(page)
    return parser


def _check_charts(parsed: _Charts) -> None:
    assert parsed.scripts == 0
    assert parsed.external == []
    charts = {(f["benchmark"], f["params"]): f["lines"] for f in parsed.figures}
    # Forward, backward and forward+backward separately, per dtype and size.
    assert set(charts) == {
        (f"bench_lstm.Sequence.{name}", f"float32 {size}") for name in PASSES for size in SIZES
    }
    # Read row by row: each size's forward, backward and forward+backward side by side.
    assert list(charts) == [
        (f"bench_lstm.Sequence.{name}", f"float32 {size}") for size in SIZES for name in PASSES
    ]
    for (_, params), lines in charts.items():
        missing = set() if params.endswith(SIZES[0]) else {"torch", "numpy-numba"}
        expected = set(BACKENDS) - missing
        assert set(lines) == expected  # one line per backend/engine; no line without data
        for points in lines.values():
            assert len(points) == len(COMMITS)  # one point per commit
            xs = [float(point.split(",")[0]) for point in points]
            assert xs == sorted(xs)  # commits in date order


@pytest.fixture
def built(tmp_path):
    results = tmp_path / "results"
    _write_results(results)
    index = report.build([results], tmp_path / "out")
    return index


def test_report_has_one_line_per_backend_and_chart_per_pass(built):
    _check_charts(_parse(built.read_text()))


def test_a_run_in_two_folders_counts_once(tmp_path):
    """benchmarks/history copied into .asv/results: one point per commit, not two."""
    _write_results(tmp_path / "results")
    shutil.copytree(tmp_path / "results", tmp_path / "history")
    runs, _ = report.load_runs([tmp_path / "results", tmp_path / "history"])
    assert sorted(run.commit for run in runs) == COMMITS
    index = report.build([tmp_path / "results", tmp_path / "history"], tmp_path / "out")
    _check_charts(_parse(index.read_text()))


def test_values_are_placed_on_the_scale(tmp_path):
    chart = report.Chart("bench_lstm.Sequence.time_backward", ("float32",), "seconds")
    chart.points = {"numpy": {"a": 1.0, "b": 2.0}}
    svg = report.svg_chart(chart, ["a", "b"])
    (points,) = _parse(f'<figure data-benchmark="x" data-params="">{svg}</figure>').figures
    (first, second) = [tuple(map(float, p.split(","))) for p in points["lines"]["numpy"]]
    plot_bottom = report.HEIGHT - report.MARGIN["bottom"]
    top = report.MARGIN["top"]
    # y = 0 at the bottom, the largest value at 1/1.08 of the height.
    height = plot_bottom - top
    assert second[1] == pytest.approx(top + height * (1 - 2.0 / 2.16), abs=0.06)
    assert first[1] == pytest.approx(top + height * (1 - 1.0 / 2.16), abs=0.06)
    assert first[0] < second[0]


def test_results_that_are_not_asv_json_are_an_error(tmp_path):
    machine = tmp_path / "results" / "box"
    machine.mkdir(parents=True)
    (machine / "deadbeef-env.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(ValueError, match=r"deadbeef-env\.json: not asv results"):
        report.load_runs([tmp_path / "results"])


def test_no_results_is_a_clear_exit(tmp_path):
    with pytest.raises(SystemExit, match="no asv results"):
        report.build([tmp_path / "nothing"], tmp_path / "out")


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium here (Debian: apt-get install chromium)")


def test_headless_browser_renders_the_graphs(built, tmp_path):
    """Chromium with every network request refused renders every chart and line."""
    browser = _browser()
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
    ]  # fmt: skip
    url = built.as_uri()
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    _check_charts(_parse(dom.stdout))
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1400,1000", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a page of charts, not a blank one


def test_the_kept_history_loads_and_has_every_pass(tmp_path):
    """benchmarks/history is real asv output: it loads and gives the charts the docs describe."""
    history = ROOT / "benchmarks" / "history"
    runs, benchmarks = report.load_runs([history])
    machines = {run.machine for run in runs}
    assert len(machines) == 1
    assert len({run.commit for run in runs}) >= 3
    charts = report.charts_of(runs, benchmarks)
    names = {chart.benchmark for chart in charts}
    assert {f"bench_lstm.Sequence.{name}" for name in PASSES} <= names
    for chart in charts:
        if chart.benchmark.startswith("bench_lstm.Sequence.time_"):
            assert chart.unit == "seconds"
            assert {"numpy", "numpy-generic", "numpy-numpy"} <= set(chart.points)
    index = report.build([history], tmp_path / "out")
    assert index.read_text().count("<figure") == len(charts)
