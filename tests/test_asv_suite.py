"""The asv suite: configuration, parameters, skips, and every benchmark run once on a tiny size."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_lstm, common  # noqa: E402

CLASSES = (bench_lstm.Sequence, bench_lstm.Cell)
PREFIXES = ("time_", "peakmem_", "track_", "mem_", "timeraw_")


def benchmark_methods():
    for cls in CLASSES:
        for name in sorted(vars(cls)):
            if name.startswith(PREFIXES):
                yield cls, name


CASES = [
    pytest.param(cls, name, backend, dtype, id=f"{cls.__name__}.{name}-{backend}-{dtype}")
    for (cls, name), backend, dtype in itertools.product(
        benchmark_methods(), common.BACKENDS, common.DTYPES
    )
]


def test_asv_conf():
    conf = json.loads((ROOT / "asv.conf.json").read_text())
    assert conf["version"] == 1
    assert conf["repo"] == "."
    assert conf["environment_type"] == "virtualenv"
    assert conf["benchmark_dir"] == "benchmarks"
    assert conf["regressions_first_commits"] == {".*track_": None}


def test_expected_benchmarks_exist():
    names = {f"{cls.__name__}.{name}" for cls, name in benchmark_methods()}
    assert names == {
        "Sequence.time_forward",
        "Sequence.time_forward_backward",
        "Sequence.peakmem_forward_backward",
        "Sequence.track_throughput",
        "Cell.time_cell_forward",
        "Cell.time_cell_backward",
    }
    assert bench_lstm.Sequence.track_throughput.unit == "sample-steps/s"


@pytest.mark.parametrize("cls", CLASSES)
def test_params_and_skips_are_consistent(cls):
    assert len(cls.params) == len(cls.param_names) == 3
    assert cls.params[0] == [
        "numpy",
        "numpy-generic",
        "cupy",
        "cupy-graph",
        "cupy-generic",
        "torch",
    ]
    assert set(cls.params[2]) <= set(common.ALL_SIZES)
    product = set(itertools.product(*cls.params))
    assert set(cls.skip_params) <= product


def test_sizes_are_scaled_deepbench_shapes():
    for n_x, n_a, m, T in common.CPU_SIZES.values():
        assert n_x == n_a  # DeepBench: input size = hidden size
        assert n_a in (256, 512, 1024)
        assert m in (16, 32, 64, 128)
        assert T <= 150


def test_cupy_skips_decided_at_import_without_gpu():
    if common.HAS_CUDA:
        pytest.skip("a GPU is present")
    skipped = set(bench_lstm.Sequence.skip_params)
    for combo in itertools.product(*bench_lstm.Sequence.params):
        assert (combo in skipped) == (common.skip_reason(combo[0]) is not None)
        if combo[0].startswith("cupy"):
            assert combo in skipped
    with pytest.raises(NotImplementedError, match="no CUDA device"):
        bench_lstm.Sequence().setup("cupy", "float32", common.SIZES[0])


def test_cell_has_no_generic_variant():
    assert "no generic variant" in common.skip_reason("numpy-generic", cell=True)
    assert common.skip_reason("numpy", cell=True) is None


@pytest.mark.parametrize(("cls", "name", "backend", "dtype"), CASES)
def test_benchmark_runs_once(cls, name, backend, dtype):
    reason = common.skip_reason(backend, cell=cls is bench_lstm.Cell)
    if reason is not None:
        pytest.skip(reason)
    benchmark = cls()
    benchmark.setup(backend, dtype, "tiny")
    result = getattr(benchmark, name)(backend, dtype, "tiny")
    if name.startswith("track_"):
        assert result > 0
    else:
        assert result is None


def test_time_methods_only_call():
    """The timed bodies are one call (plus the device sync inside it)."""
    import inspect

    for cls, name in benchmark_methods():
        if name.startswith("time_"):
            body = inspect.getsource(getattr(cls, name)).strip().splitlines()[1:]
            assert 1 <= len(body) <= 2, (cls.__name__, name, body)


@pytest.fixture
def reload_common(monkeypatch):
    """Reload ``benchmarks.common`` against a stand-in ``xlstm``; restore afterwards."""

    def load(fake):
        monkeypatch.setitem(sys.modules, "xlstm", fake)
        return importlib.reload(common)

    yield load
    monkeypatch.undo()
    importlib.reload(common)


def test_imports_with_an_older_xlstm(reload_common):
    old = types.ModuleType("xlstm")
    old.lstm_forward = lambda x, a0, parameters: None
    old.lstm_backward = lambda da, caches: None
    reloaded = reload_common(old)
    assert reloaded.HAS_SEQUENCE
    assert not reloaded.HAS_FUSED_SWITCH
    assert not reloaded.BACKWARD_TAKES_DC
    assert not reloaded.HAS_CELL
    assert reloaded.skip_reason("numpy") is None
    assert "no `fused` switch" in reloaded.skip_reason("numpy-generic")
    assert reloaded.skip_reason("numpy", cell=True) is not None


def test_imports_with_an_empty_xlstm(reload_common):
    reloaded = reload_common(types.ModuleType("xlstm"))
    combos = set(itertools.product(*reloaded.PARAMS))
    assert set(reloaded.skipped_params()) == combos
    assert set(reloaded.skipped_params(cell=True)) == combos


def test_unknown_size_set_is_an_error(monkeypatch):
    monkeypatch.setenv("XLSTM_ASV_SIZES", "huge")
    with pytest.raises(ValueError, match="XLSTM_ASV_SIZES='huge'"):
        importlib.reload(common)
    monkeypatch.undo()
    importlib.reload(common)


def test_asv_check_passes():
    if importlib.util.find_spec("asv") is None:
        pytest.skip("asv is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "asv", "check", "--python=same"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No problems found" in done.stdout
