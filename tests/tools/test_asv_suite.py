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

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_lstm, common  # noqa: E402

CLASSES = tuple(
    cls
    for cls in (
        bench_lstm.Sequence,
        bench_lstm.Layers,
        bench_lstm.VsGemm,
        getattr(bench_lstm, "VsTorch", None),
        bench_lstm.Cell,
    )
    if cls is not None
)
PREFIXES = ("time_", "peakmem_", "track_", "mem_", "timeraw_")


def benchmark_methods():
    for cls in CLASSES:
        for name in sorted(dir(cls)):
            if name.startswith(PREFIXES):
                yield cls, name


def tiny_cases():
    """Every benchmark and parameter set, with the size replaced by the test size."""
    for cls, name in benchmark_methods():
        combos = {(*combo[:-1], "tiny") for combo in itertools.product(*cls.params)}
        for combo in sorted(combos):
            yield pytest.param(cls, name, combo, id=f"{cls.__name__}.{name}-{'-'.join(combo)}")


def skip_reason_for(cls, backend):
    if cls is bench_lstm.Layers:
        return common.layer_skip_reason(backend)
    return common.skip_reason(backend, cell=cls is bench_lstm.Cell)


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
    ratios = {
        f"{cls}.track_{passes}"
        for cls in ("VsGemm", "VsTorch")
        for passes in ("forward", "backward", "forward_backward")
        if cls == "VsGemm" or common.HAS_TORCH
    }
    assert names == {
        "Sequence.time_forward",
        "Sequence.time_backward",
        "Sequence.time_forward_backward",
        "Sequence.track_us_per_sample_step",
        "Layers.time_forward",
        "Layers.time_backward",
        "Layers.time_forward_backward",
        "Cell.time_cell_forward",
        "Cell.time_cell_backward",
        *ratios,
    }
    assert bench_lstm.Sequence.track_us_per_sample_step.unit == "us/sample-step"
    assert bench_lstm.VsGemm.track_backward.unit == "x GEMM"


def test_no_peakmem_benchmark():
    """asv's peakmem (the process's maximum RSS) gave false regressions: none is defined."""
    assert not [name for _, name in benchmark_methods() if name.startswith(("peakmem_", "mem_"))]


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
    assert len(cls.params) == len(cls.param_names)
    # Only the backends whose library is installed, in the order of ENGINES.
    installed = [b for b in common.ALL_BACKENDS if common.library_missing(b) is None]
    assert cls.params[0] == [b for b in installed if b in cls.params[0]]
    if cls in (bench_lstm.Sequence, bench_lstm.Layers, bench_lstm.VsGemm):
        assert cls.params[0] == installed
    assert set(cls.params[-1]) <= set(common.ALL_SIZES)
    product = set(itertools.product(*cls.params))
    assert set(cls.skip_params) <= product


def test_backends_follow_what_is_installed(monkeypatch):
    assert set(common.ALL_BACKENDS) == set(common.ENGINES)
    assert ("torch" in common.BACKENDS) == (importlib.util.find_spec("torch") is not None)
    assert ("numpy-numba" in common.BACKENDS) == (importlib.util.find_spec("numba") is not None)
    monkeypatch.setattr(common, "HAS_TORCH", False)
    monkeypatch.setattr(common, "HAS_NUMBA", False)
    monkeypatch.setattr(common, "HAS_CUDA", False)
    assert common.library_missing("torch") == "torch is not installed"
    assert "numba" in common.library_missing("numpy-numba")
    assert "CUDA" in common.library_missing("cupy-graph")
    assert common.library_missing("numpy-generic") is None


def test_sizes_are_scaled_deepbench_shapes():
    for n_x, n_a, m, T in common.CPU_SIZES.values():
        assert n_x == n_a  # DeepBench: input size = hidden size
        assert n_a in (256, 512, 1024)
        assert m in (16, 32, 64, 128)
        assert T <= 150


def test_cupy_left_out_without_gpu():
    if common.HAS_CUDA:
        pytest.skip("a GPU is present")
    for cls in CLASSES:
        assert not [b for b in cls.params[0] if b.startswith("cupy")], cls.__name__
    for combo in itertools.product(*bench_lstm.Sequence.params):
        assert (combo in bench_lstm.Sequence.skip_params) == (
            common.skip_reason(combo[0]) is not None
        )
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
        if common.library_missing("numpy-numba"):  # not installed: not listed at all
            assert "numpy-numba" not in bench_lstm.Sequence.params[0]
        else:  # installed, but this xlstm has no numba engine: listed and skipped
            assert ("numpy-numba", "float64", common.SIZES[0]) in bench_lstm.Sequence.skip_params
        with pytest.raises(NotImplementedError, match="numba"):
            bench_lstm.Sequence().setup("numpy-numba", "float64", "tiny")


@pytest.mark.parametrize(("cls", "name", "combo"), list(tiny_cases()))
def test_benchmark_runs_once(cls, name, combo):
    reason = skip_reason_for(cls, combo[0])
    if reason is not None:
        pytest.skip(reason)
    benchmark = cls()
    benchmark.setup(*combo)
    result = getattr(benchmark, name)(*combo)
    if name.startswith("track_"):
        assert result > 0
    else:
        assert result is None


def test_backward_times_the_backward_alone(monkeypatch):
    """time_backward differentiates the cache made in setup: no forward, same gradients."""
    benchmark = bench_lstm.Sequence()
    benchmark.setup("numpy", "float64", "tiny")
    expected = common.forward_backward(benchmark.p)

    def no_forward(*args, **kwargs):
        raise AssertionError("time_backward ran lstm_forward")

    monkeypatch.setattr(common.xlstm, "lstm_forward", no_forward)
    calls = []
    real = common.backward
    monkeypatch.setattr(common, "backward", lambda p, caches: calls.append(real(p, caches)))
    benchmark.time_backward("numpy", "float64", "tiny")
    benchmark.time_backward("numpy", "float64", "tiny")  # the cache serves every call
    assert len(calls) == 2
    for grads in calls:
        assert set(grads) == set(expected)
        for key in expected:
            np.testing.assert_array_equal(grads[key], expected[key])


@pytest.mark.parametrize("layers", list(common.LAYER_CONFIGS))
def test_layer_backward_times_the_backward_alone(monkeypatch, layers):
    benchmark = bench_lstm.Layers()
    benchmark.setup("numpy", layers, "tiny")
    model = benchmark.p.model
    num_layers, bidirectional, variable = common.LAYER_CONFIGS[layers]
    assert (model.num_layers, model.bidirectional) == (num_layers, bidirectional)
    assert (benchmark.p.lengths is not None) == variable
    expected = common.layer_backward(benchmark.p, common.layer_forward(benchmark.p)[2])

    def no_forward(*args, **kwargs):
        raise AssertionError("time_backward ran forward_train")

    monkeypatch.setattr(model, "forward_train", no_forward)
    got = []
    real = common.layer_backward
    monkeypatch.setattr(common, "layer_backward", lambda p, cache: got.append(real(p, cache)))
    benchmark.time_backward("numpy", layers, "tiny")
    assert set(got[0]) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(got[0][key], expected[key])


def test_interleaved_ratio_alternates_and_takes_the_median():
    clock = [0.0]
    log = []

    def step(name, seconds):
        def run():
            log.append(name)
            clock[0] += seconds

        return run

    costs = iter([3.0, 3.0, 9.0, 3.0, 3.0, 3.0, 3.0, 3.0])  # one slow outlier
    subject = lambda: (log.append("s"), clock.__setitem__(0, clock[0] + next(costs)))  # noqa: E731
    original = common.time.perf_counter
    common.time.perf_counter = lambda: clock[0]
    try:
        ratio = common.interleaved_ratio(subject, step("r", 1.5), rounds=5)
    finally:
        common.time.perf_counter = original
    assert ratio == 2.0  # the median of 2, 6, 2, 2, 2: the outlier does not count
    # Untimed pair first, then alternating order.
    assert log == ["s", "r", "s", "r", "r", "s", "s", "r", "r", "s", "s", "r"]


class _RecordingLibrary:
    """Stands in for the array library: records the shapes of every product."""

    def __init__(self):
        self.products = []

    def asarray(self, array):
        return array

    def matmul(self, left, right):
        self.products.append((left.shape, right.shape))
        return left @ right


@pytest.mark.parametrize("passes", ["forward", "backward", "forward_backward"])
def test_gemm_reference_does_the_lstm_products(passes):
    p = common.inputs("numpy", "float32", "tiny")
    n_x, n_a, m, T = p.shape
    library = _RecordingLibrary()
    fake = common.Inputs(**{**vars(p), "library": library})
    run = common.gemm_reference(fake, passes)
    run()
    assert len(library.products) == common.PRODUCTS[passes]
    flops = sum(2 * a * b * d for (a, b), (_, d) in library.products)
    assert flops == common.PRODUCTS[passes] * 2 * (4 * n_a) * (n_a + n_x) * (m * T)
    expected = [
        ((4 * n_a, n_a + n_x), (n_a + n_x, m * T)),
        ((4 * n_a, m * T), (m * T, n_a + n_x)),
        ((n_a + n_x, 4 * n_a), (4 * n_a, m * T)),
    ]
    first = {"forward": 0, "backward": 1, "forward_backward": 0}[passes]
    assert library.products == expected[first : first + common.PRODUCTS[passes]]


def test_torch_reference_computes_the_gradients():
    torch = pytest.importorskip("torch")
    p = common.inputs("numpy", "float32", "tiny")
    reference = common.TorchReference(p, "cpu")
    reference.forward_backward()
    once = reference.x.grad.clone()
    reference.backward()  # from the recorded graph: the same gradients, not accumulated
    torch.testing.assert_close(reference.x.grad, once)
    assert reference.x.grad.shape == (p.shape[3], p.shape[2], p.shape[0])
    weight = reference.module.weight_hh_l0.grad
    assert weight is not None
    assert float(weight.abs().sum()) > 0


def test_vs_torch_only_where_torch_is_installed(monkeypatch):
    monkeypatch.setattr(common, "HAS_TORCH", False)
    monkeypatch.delattr(bench_lstm, "VsTorch", raising=False)  # reload keeps old names
    try:
        reloaded = importlib.reload(bench_lstm)
        assert not hasattr(reloaded, "VsTorch")
        assert hasattr(reloaded, "VsGemm")
    finally:
        monkeypatch.undo()
        importlib.reload(bench_lstm)


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
    assert set(reloaded.skipped_params(cell=True)) == set(itertools.product(*reloaded.CELL_PARAMS))
    assert not reloaded.HAS_LAYERS
    assert "no LSTM model" in reloaded.layer_skip_reason("numpy")


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
