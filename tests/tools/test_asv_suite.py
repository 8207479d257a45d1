"""The asv suite: configuration, parameters, skips, and every benchmark run once on a tiny size."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture(autouse=True)
def no_thread_limits(monkeypatch):
    """Benchmarks run here leave the process's BLAS and torch threads alone."""
    monkeypatch.setattr(common, "THREADS", 0)


def test_asv_conf():
    conf = json.loads((ROOT / "asv.conf.json").read_text())
    assert conf["version"] == 1
    assert conf["repo"] == "."
    assert conf["environment_type"] == "virtualenv"
    assert conf["benchmark_dir"] == "benchmarks"
    # Every figure is lower-is-better: regression detection stays on for all.
    assert "regressions_first_commits" not in conf
    # Built environments get the compiled engine and the thread limits.
    assert set(conf["matrix"]["req"]) == {"numba", "threadpoolctl"}


def test_expected_benchmarks_exist():
    names = {f"{cls.__name__}.{name}" for cls, name in benchmark_methods()}
    assert names == {
        "Sequence.time_forward",
        "Sequence.time_forward_backward",
        "Sequence.peakmem_forward_backward",
        "Sequence.track_us_per_sample_step",
        "Cell.time_cell_forward",
        "Cell.time_cell_backward",
    }
    assert bench_lstm.Sequence.track_us_per_sample_step.unit == "us/sample-step"


def test_asv_imports_only_the_suite():
    """asv imports every module of the benchmarks package: scripts live in a plain folder."""
    found = {name for _, name, _ in pkgutil.iter_modules([str(ROOT / "benchmarks")])}
    # gpu_check.py stays beside gpu_check.sh, which runs it; it imports only numpy at the top.
    assert found == {"bench_lstm", "common", "gpu_check"}
    assert not (ROOT / "benchmarks" / "scripts" / "__init__.py").exists()
    scripts = {path.name for path in (ROOT / "benchmarks" / "scripts").glob("*.py")}
    assert {"train_vs_torch.py", "layers_vs_torch.py", "gemm_schedule.py"} <= scripts
    probe = "import sys, json, benchmarks.gpu_check; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert not {"xlstm", "torch", "cupy"} & {name.split(".")[0] for name in json.loads(done.stdout)}


@pytest.mark.parametrize("cls", CLASSES)
def test_params_and_skips_are_consistent(cls):
    assert len(cls.params) == len(cls.param_names) == 3
    assert cls.params[0] == [
        "numpy",
        "numpy-generic",
        "numpy-numpy",
        "numpy-numba",
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


def test_cell_has_no_engine_variants():
    for backend in ("numpy-generic", "numpy-numpy", "numpy-numba"):
        assert "no engine variants" in common.skip_reason(backend, cell=True)
    assert common.skip_reason("numpy", cell=True) is None


def test_engine_cases_name_their_engine():
    assert common._options("numpy") == {}  # engine="auto": what users get by default
    assert common._options("numpy-generic") == {"engine": "generic"}
    assert common._options("numpy-numpy") == {"engine": "numpy"}
    assert common._options("numpy-numba") == {"engine": "numba"}
    assert common._options("cupy-graph") == {"engine": "cupy"}


def test_numba_case_runs_or_skips_in_setup():
    try:
        xlstm_engine = common.xlstm.resolve_engine("numpy", "float64", "numba")
    except ValueError:  # not installed or not registered yet
        xlstm_engine = None
    reason = common.skip_reason("numpy-numba")
    assert (reason is None) == (xlstm_engine == "numba")
    if reason is not None:
        assert "numba" in reason
        assert ("numpy-numba", "float64", common.SIZES[0]) in bench_lstm.Sequence.skip_params
        with pytest.raises(NotImplementedError, match="numba"):
            bench_lstm.Sequence().setup("numpy-numba", "float64", "tiny")


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
    assert "no `engine=` (or `fused`) switch" in reloaded.skip_reason("numpy-generic")
    assert "no `engine=` switch" in reloaded.skip_reason("numpy-numba")
    assert reloaded.skip_reason("numpy", cell=True) is not None


def test_imports_with_an_xlstm_before_engine(reload_common):
    fused_only = types.ModuleType("xlstm")
    fused_only.lstm_forward = lambda x, a0, parameters, *, fused=None: None
    fused_only.lstm_backward = lambda da, caches, dc=None, *, fused=None: None
    reloaded = reload_common(fused_only)
    assert reloaded.skip_reason("numpy-generic") is None
    assert reloaded._options("numpy-generic") == {"fused": False}
    assert reloaded._options("cupy") == {"fused": True}
    assert "no `engine=` switch" in reloaded.skip_reason("numpy-numpy")


def test_imports_with_an_empty_xlstm(reload_common):
    reloaded = reload_common(types.ModuleType("xlstm"))
    combos = set(itertools.product(*reloaded.PARAMS))
    assert set(reloaded.skipped_params()) == combos
    assert set(reloaded.skipped_params(cell=True)) == combos


@pytest.mark.parametrize(
    ("variable", "value"), [("XLSTM_ASV_SIZES", "huge"), ("XLSTM_ASV_THREADS", "two")]
)
def test_bad_environment_is_an_error(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"{variable}={value!r}"):
        importlib.reload(common)
    monkeypatch.undo()
    importlib.reload(common)


def test_limit_threads(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.setattr(common, "THREADS", 1)
    try:
        with threadpoolctl.threadpool_limits(limits=None):  # restores the BLAS on exit
            common.limit_threads()
            blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
            assert blas
            assert all(i["num_threads"] == 1 for i in blas)
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_default_to_one(monkeypatch):
    monkeypatch.delenv("XLSTM_ASV_THREADS", raising=False)
    assert importlib.reload(common).THREADS == 1


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
