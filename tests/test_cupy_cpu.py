"""The CuPy fast path, checked on a machine without a GPU.

What runs here, and what it proves:

* the kernel source (:data:`xlstm._engines.cupy._kernels.SOURCE`, exactly as NVRTC gets
  it) compiles with ``nvcc`` for the device, float and double (skipped without
  ``nvcc``);
* the same element functions, compiled by ``nvcc`` for the *host* and called
  through ctypes, compute what the generic engine computes (the kernels'
  arithmetic, checked without a GPU);
* the engine's bookkeeping -- segments, buffers, the order of products and
  kernels, graph capture and replay, copy-in and copy-out, no aliasing between
  calls, no allocation inside a capture -- with a NumPy stand-in for CuPy whose
  "graph capture" records the operations (with their fixed arrays) instead of
  running them, as stream capture does;
* dispatch (what ``fused="auto"`` picks, the errors for ``fused=True``), the
  graph-replay switch, and that nothing imports CuPy before it is used.

The same checks on a real GPU are in ``tests/test_cupy.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import SEQ_GRAD_KEYS, random_problem, rel_err

from xlstm._engines import cache as _cache
from xlstm._engines import generic as _engine
from xlstm._engines.cupy import _kernels
from xlstm._engines.cupy import engine as cupy_engine
from xlstm._layout import GATE_ORDER, GATE_PARAMETERS
from xlstm.parameters import pack

REPO = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


# --------------------------------------------------------------------------- nvcc: device code


def _instantiation_unit() -> str:
    """The kernel source plus a host function that instantiates every template."""
    uses = "\n".join(f"    (void)&{name};" for name in _kernels.NAME_EXPRESSIONS)
    return _kernels.SOURCE + f"\nvoid xlstm_instantiate_all()\n{{\n{uses}\n}}\n"


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xlstm_cuda")


def _nvcc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NVCC, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_90", "sm_75"])
def test_kernel_source_compiles_for_the_device(build_dir, arch):
    source = build_dir / f"kernels_{arch}.cu"
    source.write_text(_instantiation_unit())
    result = _nvcc(
        f"-arch={arch}", "-Xptxas", "-v", "-c", source.name, "-o", f"{arch}.o", cwd=build_dir
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    # ptxas reports every kernel: no spills to local memory.
    assert "xlstm_lstm_forward_step" in result.stderr
    for line in result.stderr.splitlines():
        if "spill" in line:
            assert " 0 bytes spill stores, 0 bytes spill loads" in line, line


@needs_nvcc
def test_ptx_has_every_instantiation(build_dir):
    source = build_dir / "kernels_ptx.cu"
    source.write_text(_instantiation_unit())
    result = _nvcc("-arch=sm_90", "--ptx", source.name, "-o", "kernels.ptx", cwd=build_dir)
    assert result.returncode == 0, result.stderr
    ptx = (build_dir / "kernels.ptx").read_text()
    entries = [line for line in ptx.splitlines() if line.startswith(".visible .entry")]
    assert len(entries) == len(_kernels.NAME_EXPRESSIONS)  # 4 kernels x float, double
    for base in ("xlstm_lstm_forward_step", "xlstm_lstm_backward_step", "xlstm_lstm_gates"):
        assert sum(base in line for line in entries) == (4 if "backward" in base else 2)


def test_kernel_names_are_namespaced_and_avoid_cupy_reserved_names():
    for name in _kernels.NAME_EXPRESSIONS:
        assert name.startswith("xlstm_")
    # CuPy reserves `i`, `n` and names starting with `_` in kernel parameter lists.
    import re

    for signature in re.findall(r"__global__ void \w+\(([^)]*)\)", _kernels.KERNELS):
        for parameter in signature.split(","):
            name = parameter.split()[-1].lstrip("*")
            assert name not in ("i", "n"), name
            assert not name.startswith("_"), name


# --------------------------------------------------------------------------- nvcc: host code

_HOST_SIGNATURES = {
    "forward": (
        "T* gates, const T* recurrent, const T* bias, const T* c_prev, T* c_next, "
        "T* tanh_c, T* h_next, long long total, int units",
        "xlstm_forward_element<T>(idx, units, gates, recurrent, bias, c_prev, c_next, "
        "tanh_c, h_next)",
    ),
    "backward": (
        "const T* dh_external, const T* dh_recurrent, const T* dc_external, T* dc, "
        "const T* gates, const T* c_prev, const T* tanh_c, T* dz, long long total, int units",
        "xlstm_backward_element<T, false>(idx, units, dh_external, dh_recurrent, "
        "dc_external, dc, gates, c_prev, tanh_c, dz)",
    ),
    "backward_dc": (
        "const T* dh_external, const T* dh_recurrent, const T* dc_external, T* dc, "
        "const T* gates, const T* c_prev, const T* tanh_c, T* dz, long long total, int units",
        "xlstm_backward_element<T, true>(idx, units, dh_external, dh_recurrent, "
        "dc_external, dc, gates, c_prev, tanh_c, dz)",
    ),
    "gates": (
        "T* gates, const T* recurrent, const T* bias, const T* c, T* tanh_c, "
        "long long total, int units",
        "xlstm_gates_element<T>(idx, units, gates, recurrent, bias, c, tanh_c)",
    ),
}


def _host_unit() -> str:
    """PREAMBLE + ELEMENTS (the kernels' own strings) with C entry points looping on the host."""
    parts = [_kernels.PREAMBLE, _kernels.ELEMENTS]
    for c_type, suffix in (("float", "f32"), ("double", "f64")):
        for key, (params, call) in _HOST_SIGNATURES.items():
            params_c = params.replace("T*", f"{c_type}*")
            call_c = call.replace("<T", f"<{c_type}")
            parts.append(
                f'extern "C" void xlstm_host_{key}_{suffix}({params_c})\n'
                f"{{\n    for (long long idx = 0; idx < total; ++idx) {{ {call_c}; }}\n}}\n"
            )
    return "\n".join(parts)


@pytest.fixture(scope="module")
def host_library(build_dir):
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    source = build_dir / "host_kernels.cu"
    source.write_text(_host_unit())
    result = _nvcc(
        "-shared", "-Xcompiler", "-fPIC", source.name, "-o", "libxlstm_host.so", cwd=build_dir
    )
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(build_dir / "libxlstm_host.so"))


class HostKernels:
    """The kernels' element functions compiled for the CPU, with StepKernels' interface."""

    def __init__(self, library, dtype_name: str):
        suffix = {"float32": "f32", "float64": "f64"}[dtype_name]
        self._functions = {
            key: getattr(library, f"xlstm_host_{key}_{suffix}") for key in _HOST_SIGNATURES
        }

    def _call(self, key, arrays, total, units):
        for array in arrays:
            assert array.flags.c_contiguous
        pointers = [ctypes.c_void_p(array.ctypes.data) for array in arrays]
        self._functions[key](*pointers, ctypes.c_longlong(total), ctypes.c_int(units))

    def forward_step(self, gates, recurrent, bias, c_prev, c_next, tanh_c, h_next):
        rows, units = c_next.shape
        arrays = (gates, recurrent, bias, c_prev, c_next, tanh_c, h_next)
        self._call("forward", arrays, rows * units, units)

    def backward_step(self, dh_external, dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz):
        rows, units = dc.shape
        key = "backward" if dc_external is None else "backward_dc"
        external = dc if dc_external is None else dc_external
        arrays = (dh_external, dh_recurrent, external, dc, gates, c_prev, tanh_c, dz)
        self._call(key, arrays, rows * units, units)

    def gates(self, gates, recurrent, bias, c, tanh_c):
        rows, units = c.shape
        self._call("gates", (gates, recurrent, bias, c, tanh_c), rows * units, units)


class NumpyKernels:
    """The same three kernels written with NumPy (reference for the host-compiled ones)."""

    def __getattribute__(self, name):
        method = object.__getattribute__(self, name)
        if name.startswith("_") or not callable(method):
            return method

        def checked(*arrays):
            for array in arrays:  # the CUDA kernels take raw pointers
                assert array is None or array.flags.c_contiguous, name
            return method(*arrays)

        return checked

    @staticmethod
    def _activate(gates, recurrent, bias):
        z = gates + recurrent + bias
        n_a = z.shape[1] // 4
        z[:, : 3 * n_a] = 0.5 * np.tanh(0.5 * z[:, : 3 * n_a]) + 0.5
        z[:, 3 * n_a :] = np.tanh(z[:, 3 * n_a :])
        gates[...] = z

    def forward_step(self, gates, recurrent, bias, c_prev, c_next, tanh_c, h_next):
        self._activate(gates, recurrent, bias)
        i, f, o, g = np.split(gates, 4, axis=1)
        c_next[...] = f * c_prev + i * g
        tanh_c[...] = np.tanh(c_next)
        h_next[...] = o * tanh_c

    def backward_step(self, dh_external, dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz):
        i, f, o, g = np.split(gates, 4, axis=1)
        dh = dh_external + dh_recurrent
        total = dc + (0 if dc_external is None else dc_external) + dh * o * (1 - tanh_c**2)
        dz[...] = np.concatenate(
            [
                total * g * i * (1 - i),
                total * c_prev * f * (1 - f),
                dh * tanh_c * o * (1 - o),
                total * i * (1 - g * g),
            ],
            axis=1,
        )
        dc[...] = total * f

    def gates(self, gates, recurrent, bias, c, tanh_c):
        self._activate(gates, recurrent, bias)
        tanh_c[...] = np.tanh(c)


# --------------------------------------------------------------------------- a NumPy "CuPy"


def _root(array):
    while array.base is not None:
        array = array.base
    return array


class CaptureError(AssertionError):
    """Something was done inside a capture that real stream capture would break on."""


class FakeNamespace:
    """The five array functions the engine calls, on NumPy, with stream-capture rules.

    While ``runtime.capturing`` is set, operations are recorded (with the very
    arrays they were given, as a graph records addresses) instead of run, and
    allocating raises, as does anything that would make ``cupy.matmul`` copy
    an operand into a temporary.
    """

    def __init__(self, runtime):
        self._runtime = runtime

    def _run(self, operation, *arrays):
        if not self._runtime.capturing:
            operation()
            return
        for array in arrays:
            if isinstance(array, np.ndarray) and id(_root(array)) not in self._runtime.buffers:
                # A graph records the address: a temporary's memory is reused
                # by later allocations, which a replay would then overwrite.
                raise CaptureError(
                    "a captured operation uses an array the engine did not preallocate"
                )
        self._runtime.tape.append(operation)

    def _no_allocation(self, what):
        if self._runtime.capturing:
            raise CaptureError(f"{what} allocates during a graph capture")

    def empty(self, shape, dtype):
        self._no_allocation("empty")
        array = np.full(shape, np.nan, dtype=dtype)  # poisoned: unwritten output shows
        self._runtime.buffers[id(array)] = array
        return array

    def ascontiguousarray(self, array):
        if not array.flags.c_contiguous:
            self._no_allocation("ascontiguousarray")
        return np.ascontiguousarray(array)

    def copyto(self, dst, src):
        self._run(lambda: np.copyto(dst, src), dst, src)

    def add(self, a, b, out):
        self._run(lambda: np.add(a, b, out=out), a, b, out)

    def matmul(self, a, b, out):
        if self._runtime.capturing:
            for operand in (a, b):
                if not (operand.flags.c_contiguous or operand.flags.f_contiguous):
                    raise CaptureError("matmul operand would be copied into a temporary")
            if not out.flags.c_contiguous:
                raise CaptureError("matmul `out` is not C-contiguous: CuPy would copy")
            if np.shares_memory(out, a) or np.shares_memory(out, b):
                raise CaptureError("matmul `out` overlaps an operand: CuPy would copy")
        self._runtime.products += 1
        self._run(lambda: np.matmul(a, b, out=out), a, b, out)


class TapeKernels:
    """Kernels that are recorded, not run, during a capture."""

    def __init__(self, base, runtime):
        self._base, self._runtime = base, runtime

    def __getattr__(self, name):
        method = getattr(self._base, name)

        def launch(*arrays):
            self._runtime.launches += 1
            self._runtime.fake._run(lambda: method(*arrays), *arrays)

        return launch


class FakeEvent:
    def synchronize(self):
        return None


class FakeRuntime:
    """Stands in for ``xlstm._engines.cupy.engine._CupyRuntime`` on the CPU."""

    def __init__(self, kernel_factory):
        self.kernel_factory = kernel_factory
        self.capturing = False
        self.tape: list = []
        self.fake = FakeNamespace(self)
        self.xp = self.fake
        self.captures = 0
        self.replays = 0
        self.buffers: dict = {}  # id -> every allocation (a graph may only touch these)
        self.launches = 0
        self.products = 0
        self.fail_capture = False

    def kernels(self, dtype, device_id):
        return TapeKernels(self.kernel_factory(np.dtype(dtype).name), self)

    def device(self, array):
        return contextlib.nullcontext()

    def device_id(self, array):
        return 0

    def record(self):
        return FakeEvent()

    def wait(self, event):
        return None

    def capture(self, program, device_id):
        program()  # the real run, as on the GPU
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.capturing, self.tape = True, []
        try:
            program()
        finally:
            self.capturing = False
        self.captures += 1
        return tuple(self.tape)

    def launch(self, graph):
        self.replays += 1
        for operation in graph:
            operation()


@pytest.fixture(params=["numpy-kernels", "host-compiled-kernels"])
def kernel_factory(request):
    if request.param == "numpy-kernels":
        return lambda dtype_name: NumpyKernels()
    library = request.getfixturevalue("host_library")
    return lambda dtype_name: HostKernels(library, dtype_name)


@pytest.fixture
def runtime(monkeypatch, kernel_factory):
    fake = FakeRuntime(kernel_factory)
    monkeypatch.setattr(cupy_engine, "_runtime", lambda: fake)
    cupy_engine.clear_graph_cache()
    yield fake
    cupy_engine.clear_graph_cache()
    cupy_engine.set_graph_replay(None)


# --------------------------------------------------------------------------- engine vs generic


def _engine_inputs(prob, dtype):
    params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in prob.params.items()}
    W, b = pack(params, np)
    x = prob.x.astype(dtype)
    return {
        "x": _cache.time_major(x, np),
        "h0": prob.a0.T.astype(dtype),
        "c0": prob.c0.T.astype(dtype),
        "W": W,
        "b": b,
        "da_tm": _cache.time_major(prob.Ga.astype(dtype), np),
        "dc_tm": _cache.time_major(prob.Gc.astype(dtype), np),
    }


def _run(module, inputs, *, recompute, with_dc):
    cache = module.forward(
        inputs["x"],
        inputs["h0"],
        inputs["c0"],
        inputs["W"],
        inputs["b"],
        xp=np,
        recompute=recompute,
    )
    dc_tm = inputs["dc_tm"] if with_dc else None
    grads = module.backward(cache, inputs["x"], inputs["da_tm"], dc_tm, xp=np)
    return cache, grads


GRAD_NAMES = ("dx", "dh0", "dc0", "dW", "db")
CPU_SHAPES = {  # (n_x, m, T, n_a)
    "generic": (3, 4, 7, 5),
    "ones": (1, 1, 1, 1),
    "T1": (2, 3, 1, 4),
    "m1": (4, 1, 5, 3),
}


def _compare(cache, grads, ref_cache, ref_grads, tol, label):
    for name in ("h", "c", "gates", "tanh_c"):
        actual, expected = getattr(cache, name), getattr(ref_cache, name)
        if expected is None:
            assert actual is None, name
            continue
        assert not np.isnan(actual).any(), f"{label}: {name} has unwritten elements"
        assert rel_err(actual, expected) <= tol, (label, name, rel_err(actual, expected))
    for name, actual, expected in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert actual.shape == expected.shape, (label, name)
        assert not np.isnan(actual).any(), f"{label}: {name} has unwritten elements"
        assert rel_err(actual, expected) <= tol, (label, name, rel_err(actual, expected))


@pytest.mark.parametrize("shape", list(CPU_SHAPES), ids=list(CPU_SHAPES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
@pytest.mark.parametrize("with_dc", [False, True], ids=["no-dc", "dc"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_engine_matches_generic(runtime, shape, dtype, recompute, with_dc, graph):
    n_x, m, T, n_a = CPU_SHAPES[shape]
    prob = random_problem(7, n_x, m, T, n_a, 2)
    inputs = _engine_inputs(prob, dtype)
    ref_cache, ref_grads = _run(_engine, inputs, recompute=recompute, with_dc=with_dc)
    tol = 1e-12 if dtype == "float64" else 2e-5
    cupy_engine.set_graph_replay(graph)
    for call in range(3):  # eager/capture on the first call, replays after
        cache, grads = _run(cupy_engine, inputs, recompute=recompute, with_dc=with_dc)
        _compare(cache, grads, ref_cache, ref_grads, tol, f"call {call}")
    if graph:
        assert runtime.captures == 2  # forward once, backward once
        assert runtime.replays == 4


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
def test_several_segments(runtime, monkeypatch, graph, recompute):
    """Segments of 2 steps (T = 7): weight gradients summed over segments."""
    n_x, m, T, n_a = 3, 2, 7, 4
    monkeypatch.setattr(_cache, "SEGMENT_ELEMENTS", 2 * m * 4 * n_a)
    assert _cache.segment_length(T, m, n_a) == 2
    prob = random_problem(3, n_x, m, T, n_a, 2)
    inputs = _engine_inputs(prob, "float64")
    ref = _run(_engine, inputs, recompute=recompute, with_dc=True)
    cupy_engine.set_graph_replay(graph)
    for _ in range(2):
        cache, grads = _run(cupy_engine, inputs, recompute=recompute, with_dc=True)
        _compare(cache, grads, *ref, 1e-12, "segments")


def test_graph_results_are_never_overwritten(runtime):
    """Results of one call survive later replays; a stale cache is copied back in."""
    n_x, m, T, n_a = 3, 4, 6, 5
    problems = [random_problem(seed, n_x, m, T, n_a, 2) for seed in (1, 2, 3)]
    inputs = [_engine_inputs(p, "float64") for p in problems]
    refs = [_run(_engine, i, recompute=False, with_dc=True) for i in inputs]
    cupy_engine.set_graph_replay(True)
    caches = [
        cupy_engine.forward(i["x"], i["h0"], i["c0"], i["W"], i["b"], recompute=False)
        for i in inputs
    ]
    (plan,) = cupy_engine._PLANS._plans.values()
    assert plan.holds(caches[2])
    assert not plan.holds(caches[0])
    for cache, ref in zip(caches, refs, strict=True):  # all three still intact
        assert rel_err(cache.h, ref[0].h) < 1e-12
        assert not np.shares_memory(cache.h, plan.states["h"])
    assert not np.shares_memory(caches[0].h, caches[1].h)
    # Backward on the oldest cache: its states are copied in; then on the newest.
    grads = []
    for index in (0, 2, 0):
        i = inputs[index]
        grads.append(cupy_engine.backward(caches[index], i["x"], i["da_tm"], i["dc_tm"]))
        _compare(caches[index], grads[-1], *refs[index], 1e-12, f"backward {index}")
        assert plan.holds(caches[index])
    # Earlier gradients are untouched by later replays.
    for index, result in zip((0, 2, 0), grads, strict=True):
        for name, actual, expected in zip(GRAD_NAMES, result, refs[index][1], strict=True):
            assert rel_err(actual, expected) < 1e-12, (index, name)
    assert not np.shares_memory(grads[0][3], grads[2][3])


def test_graph_backward_of_a_generic_cache(runtime):
    """Caches are interchangeable: a generic-engine cache through the graph backward."""
    prob = random_problem(5, 2, 3, 4, 3, 2)
    inputs = _engine_inputs(prob, "float64")
    cache, ref_grads = _run(_engine, inputs, recompute=False, with_dc=False)
    cupy_engine.set_graph_replay(True)
    for _ in range(2):
        grads = cupy_engine.backward(cache, inputs["x"], inputs["da_tm"], None)
        for name, actual, expected in zip(GRAD_NAMES, grads, ref_grads, strict=True):
            assert rel_err(actual, expected) < 1e-12, name


def test_eager_cache_goes_to_generic_backward(runtime):
    prob = random_problem(6, 3, 2, 5, 4, 2)
    inputs = _engine_inputs(prob, "float64")
    ref_cache, ref_grads = _run(_engine, inputs, recompute=True, with_dc=True)
    cache = cupy_engine.forward(
        inputs["x"], inputs["h0"], inputs["c0"], inputs["W"], inputs["b"], recompute=True
    )
    grads = _engine.backward(cache, inputs["x"], inputs["da_tm"], inputs["dc_tm"], xp=np)
    _compare(cache, grads, ref_cache, ref_grads, 1e-12, "fused forward, generic backward")


def test_plan_cache_is_bounded(runtime):
    cupy_engine.set_graph_replay(True)
    for T in range(1, cupy_engine.MAX_GRAPH_PLANS + 3):
        inputs = _engine_inputs(random_problem(T, 2, 2, T, 3, 2), "float64")
        _run(cupy_engine, inputs, recompute=False, with_dc=False)
    assert len(cupy_engine._PLANS) == cupy_engine.MAX_GRAPH_PLANS
    cupy_engine.clear_graph_cache()
    assert len(cupy_engine._PLANS) == 0


def test_capture_failure_is_a_clear_error(runtime):
    runtime.fail_capture = True
    cupy_engine.set_graph_replay(True)
    inputs = _engine_inputs(random_problem(1, 2, 2, 3, 3, 2), "float64")
    with pytest.raises(RuntimeError, match=r"XLSTM_CUPY_GRAPHS=0"):
        _run(cupy_engine, inputs, recompute=False, with_dc=False)


def test_two_operations_per_step(runtime):
    """One product and one fused kernel per step, each way, plus a few per segment."""
    T = 6
    inputs = _engine_inputs(random_problem(2, 3, 2, T, 4, 2), "float32")
    cupy_engine.set_graph_replay(False)
    _run(cupy_engine, inputs, recompute=False, with_dc=True)
    assert runtime.launches == 2 * T  # T forward kernels, T backward kernels
    # forward: input projection + T recurrent; backward: T recurrent + dW_h, dW_x, db, dx
    assert runtime.products == (1 + T) + (T + 4)


# --------------------------------------------------------------------------- kernels directly


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_host_compiled_kernels_match_numpy(host_library, dtype):
    rng = np.random.default_rng(0)
    rows, units = 5, 7
    host, reference = HostKernels(host_library, dtype), NumpyKernels()
    tol = 1e-14 if dtype == "float64" else 1e-6

    def draw(*shape, scale=1.0):
        return np.ascontiguousarray(scale * rng.standard_normal(shape), dtype=dtype)

    # Forward with some huge pre-activations: the tanh-form sigmoid saturates, no inf/nan.
    gates = draw(rows, 4 * units, scale=3.0)
    gates[0, :] = 1e4
    gates[1, :] = -1e4
    forward_in = (gates, draw(rows, 4 * units), draw(4 * units), draw(rows, units))
    outs = {}
    for label, kernels in (("host", host), ("numpy", reference)):
        g = forward_in[0].copy()
        c_next, tanh_c, h_next = (np.empty((rows, units), dtype) for _ in range(3))
        kernels.forward_step(g, *forward_in[1:], c_next, tanh_c, h_next)
        outs[label] = (g, c_next, tanh_c, h_next)
    for actual, expected in zip(outs["host"], outs["numpy"], strict=True):
        assert np.isfinite(actual).all()
        np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)
    assert (outs["host"][0][0, : 3 * units] == 1).all()
    assert (outs["host"][0][1, : 3 * units] == 0).all()

    activated = outs["numpy"][0]
    for dc_external in (None, draw(rows, units)):
        results = {}
        for label, kernels in (("host", host), ("numpy", reference)):
            dc = draw(rows, units) * 0 + 0.25
            dz = np.empty((rows, 4 * units), dtype)
            kernels.backward_step(
                forward_in[3] * 2,
                forward_in[3] * -1,
                dc_external,
                dc,
                activated,
                forward_in[3],
                outs["numpy"][2],
                dz,
            )
            results[label] = (dz, dc)
        for actual, expected in zip(results["host"], results["numpy"], strict=True):
            np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)

    recomputed = {}
    for label, kernels in (("host", host), ("numpy", reference)):
        g = forward_in[0].copy()
        tanh_c = np.empty((rows, units), dtype)
        kernels.gates(g, forward_in[1], forward_in[2], outs["numpy"][1], tanh_c)
        recomputed[label] = (g, tanh_c)
    for actual, expected in zip(recomputed["host"], recomputed["numpy"], strict=True):
        np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def test_unsupported_reason():
    assert cupy_engine.unsupported_reason(None, np.float32) is None
    assert cupy_engine.unsupported_reason(None, np.dtype("float64")) is None
    assert "float16" in cupy_engine.unsupported_reason(None, np.float16)


# --------------------------------------------------------------------------- switches, imports


def test_graph_switch(monkeypatch):
    monkeypatch.delenv(cupy_engine.GRAPH_ENV, raising=False)
    cupy_engine.set_graph_replay(None)
    assert cupy_engine.graph_replay_enabled() is cupy_engine.GRAPH_DEFAULT
    monkeypatch.setenv(cupy_engine.GRAPH_ENV, "1")
    assert cupy_engine.graph_replay_enabled() is True
    monkeypatch.setenv(cupy_engine.GRAPH_ENV, "0")
    assert cupy_engine.graph_replay_enabled() is False
    with cupy_engine.graph_replay(True):
        assert cupy_engine.graph_replay_enabled() is True
    assert cupy_engine.graph_replay_enabled() is False
    monkeypatch.setenv(cupy_engine.GRAPH_ENV, "yes")
    with pytest.raises(ValueError, match=cupy_engine.GRAPH_ENV):
        cupy_engine.graph_replay_enabled()
    with pytest.raises(TypeError, match="`enabled`"):
        cupy_engine.set_graph_replay("on")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_importing_the_cupy_package_does_not_import_cupy():
    result = _python(
        "import sys\n"
        "import xlstm, xlstm._engines.cupy.engine, xlstm._engines.cupy._kernels\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
    )
    assert result.returncode == 0, result.stderr


def test_using_the_engine_without_cupy_is_a_clear_import_error():
    result = _python(
        "import sys\n"
        "sys.modules['cupy'] = None  # as if CuPy were not installed\n"
        "import numpy as np\n"
        "from xlstm._engines.cupy import engine\n"
        "x = np.ones((2, 1, 3))\n"
        "try:\n"
        "    engine.forward(x, np.zeros((1, 4)), np.zeros((1, 4)), np.ones((16, 6)),\n"
        "                   np.zeros(16), recompute=False)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    assert result.returncode == 0, result.stderr
    assert "cuda13" in result.stdout
    assert "fused=False" in result.stdout


def test_gate_order_matches_the_kernels():
    """The kernels hard-code i, f, o (sigmoid) then g (tanh): GATE_ORDER must agree."""
    assert GATE_ORDER == ("i", "f", "o", "g")
    assert GATE_PARAMETERS["g"] == ("Wc", "bc")
    assert SEQ_GRAD_KEYS[0] == "dx"
