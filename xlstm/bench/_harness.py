"""Contestants, interleaved timing, cross-checks and memory for ``python -m xlstm bench``.

Shape legend: (n_x, n_a, m, T) = (input size, hidden size, batch, time steps).

FLOPs counted: the LSTM's matrix products only. Forward makes
``2 * T * m * 4n_a * (n_x + n_a)`` (the four gates acting on ``[a_prev; x_t]``);
backward makes twice that (gradients for ``[a_prev; x_t]`` and for the weights).
The output layer ``y = softmax(Wy a + by)``, which xlstm's ``lstm_forward`` and
the naive loop compute and ``torch.nn.LSTM`` does not, is not counted.

Three passes are timed: "inference" (xlstm ``lstm_forward(..., cache=False)``,
torch under ``torch.no_grad()``), "forward" keeping what backward needs (xlstm's
default, torch with autograd recording) and "forward_backward". Inference makes the
forward's FLOPs.

"products only" (formerly "GEMM floor") does the same FLOPs as the fewest and largest
products possible, on the same BLAS: forward ``Z = H @ W.T`` with H (T*m, n_x + n_a)
and W (4 n_a, n_x + n_a); forward+backward adds ``dZ @ W`` and ``dZ.T @ H``.  It is
what the products cost at the rate of large products: a reference, not a bound.  The
recurrence forces T smaller products, which usually run slower, but at small shapes
(S1) their operands stay in cache and a whole LSTM can beat it.

ONNX Runtime's ``LSTM`` (the model exported by :func:`xlstm.convert.to_onnx`, float32,
the bench's thread count) is an inference contestant when onnxruntime is installed.
"""

from __future__ import annotations

import gc
import importlib
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SHAPES: dict[str, tuple[int, int, int, int]] = {
    "S1": (8, 32, 16, 100),
    "S2": (64, 128, 32, 100),
    "S3": (256, 256, 64, 100),
    "S4": (512, 512, 128, 50),
    "S5": (1024, 1024, 64, 20),
}
"""Named shapes (n_x, n_a, m, T); all five are the default set."""

MODES = ("inference", "forward", "forward_backward")
GATE_KEYS = ("i", "f", "c", "o")  # torch order i, f, g, o; the seed calls g "c"
CPU_FAMILIES = frozenset({"numpy", "torch-cpu", "jax", "onnxruntime"})
PRODUCTS_ONLY = "products only"
"""Name of the contestant that makes only the pass's products (see the module docstring)."""
ONNX_RUNTIME = "ONNX Runtime"
CHECK_TOLERANCE = {"float32": 2e-3, "float64": 1e-8}


def forward_flops(n_x: int, n_a: int, m: int, T: int) -> int:
    """Matrix-product FLOPs of one forward pass (output layer excluded)."""
    return 2 * T * m * 4 * n_a * (n_x + n_a)


def pass_flops(shape: tuple[int, int, int, int], mode: str) -> int:
    """FLOPs of one call in ``mode``: inference and forward 1x, forward+backward 3x forward."""
    return forward_flops(*shape) * (3 if mode == "forward_backward" else 1)


def run_bytes(shape: tuple[int, int, int, int], dtype: str, contestants: int, n_y: int) -> int:
    """A generous estimate of the memory one shape's run holds at once.

    Per contestant: its inputs (x, da, dc), forward's cache (a, c, four gates, y),
    backward's arrays (dx, four gate gradients) and two sets of weights-sized arrays;
    plus one more set for the NumPy problem every contestant copies from.
    """
    n_x, n_a, m, T = shape
    per_contestant = m * T * (2 * n_x + 12 * n_a + n_y) + 8 * n_a * (n_a + n_x)
    return np.dtype(dtype).itemsize * (contestants + 1) * per_contestant


def available_memory() -> int | None:
    """Bytes a new allocation of this process can get (None: unknown on this OS).

    The smaller of the memory the OS has available and what the process's address-space
    limit (``RLIMIT_AS``, ``ulimit -v``) leaves above what it already maps: under such a
    limit an allocation fails however much memory is free.
    """
    limits = [_system_memory(), _address_space_left()]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def _system_memory() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:  # Linux: counts reclaimable page cache
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # other POSIX systems: the physical memory, an upper bound
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _address_space_left() -> int | None:
    """``RLIMIT_AS`` less the address space this process maps now (None: no limit)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, AttributeError, OSError, ValueError):  # Windows, no such limit
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    mapped = 0
    try:
        with open("/proc/self/statm") as statm:  # Linux: first field, pages mapped
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass  # elsewhere: the whole limit, an upper bound
    return max(0, soft - mapped)


# --------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """An array library as the bench sees it: namespace, device, how to sync."""

    name: str  # numpy | cupy | torch | jax
    xp: Any
    device: Any
    family: str  # numpy | cupy | torch-cpu | torch-cuda | jax
    sync: Callable[[Any], None]

    def asarray(self, array: np.ndarray) -> Any:
        return self.xp.asarray(array, device=self.device, copy=True)


def _no_sync(result: Any) -> None:
    return None


def _block_jax(result: Any) -> None:
    """Wait for every JAX array inside ``result`` (tuples, lists, dicts)."""
    if hasattr(result, "block_until_ready"):
        result.block_until_ready()
    elif isinstance(result, dict):
        for value in result.values():
            _block_jax(value)
    elif isinstance(result, (tuple, list)):
        for value in result:
            _block_jax(value)


class BackendUnavailable(RuntimeError):
    """The requested backend or device cannot run on this machine."""


def make_backend(name: str, device: str | None, dtype: str = "float32") -> Backend:
    """Backend ``name`` on ``device`` (torch: "cpu", "cuda", ...; others: default).

    Raises ``BackendUnavailable`` when the library is missing or has no device.
    JAX computes in float32 unless ``jax_enable_x64`` is set, so float64 sets it.
    """
    from xlstm import get_namespace

    if name == "cupy" and not _cupy_has_gpu():
        msg = "`--backend cupy` needs CuPy and a working CUDA GPU; none found"
        raise BackendUnavailable(msg)
    try:
        xp = get_namespace(name)
    except ImportError as error:
        raise BackendUnavailable(str(error)) from error
    if name == "numpy":
        return Backend(name, xp, None, "numpy", _no_sync)
    if name == "cupy":
        import cupy

        def sync_cupy(result: Any) -> None:
            cupy.cuda.get_current_stream().synchronize()

        return Backend(name, xp, None, "cupy", sync_cupy)
    if name == "torch":
        import torch

        device = device or "cpu"
        if torch.device(device).type == "cuda":
            if not torch.cuda.is_available():
                msg = f"`--device {device}`: torch sees no CUDA GPU"
                raise BackendUnavailable(msg)

            def sync_cuda(result: Any) -> None:
                torch.cuda.synchronize()

            return Backend(name, xp, device, "torch-cuda", sync_cuda)
        return Backend(name, xp, device, "torch-cpu", _no_sync)
    if name == "jax":
        if dtype == "float64":
            import jax

            jax.config.update("jax_enable_x64", True)
        return Backend(name, xp, None, "jax", _block_jax)
    msg = f"`--backend` {name!r} is not one of numpy, cupy, torch, jax"
    raise ValueError(msg)


def _cupy_has_gpu() -> bool:
    try:
        import cupy
    except ImportError:
        return False
    return bool(cupy.cuda.is_available())


def to_numpy(array: Any) -> np.ndarray:
    """Copy an array of any supported library to a NumPy array."""
    module = type(array).__module__
    if module.startswith("cupy"):
        return array.get()
    if module.startswith("torch"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


# --------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """One shape's inputs, as NumPy arrays (each contestant moves its own copy)."""

    label: str
    shape: tuple[int, int, int, int]
    dtype: str
    parameters: dict[str, np.ndarray]
    x: np.ndarray  # (n_x, m, T)
    a0: np.ndarray  # (n_a, m)
    da: np.ndarray  # (n_a, m, T)
    dc: np.ndarray  # (n_a, m, T), zero except the last step

    @property
    def input_bytes(self) -> int:
        arrays = [self.x, self.a0, self.da, self.dc, *self.parameters.values()]
        return sum(a.nbytes for a in arrays)


def make_problem(label: str, shape, dtype: str, n_y: int, seed: int = 0) -> Problem:
    from xlstm import init_parameters

    from ._torch_peer import upstream_gradients

    n_x, n_a, m, T = shape
    rng = np.random.default_rng(seed)
    parameters = init_parameters(n_x, n_a, n_y, xp="numpy", dtype=dtype, seed=seed)
    parameters = {key: np.asarray(value) for key, value in parameters.items()}
    x = rng.standard_normal((n_x, m, T)).astype(dtype)
    a0 = np.tanh(rng.standard_normal((n_a, m))).astype(dtype)
    da, dc = upstream_gradients(n_a, m, T, dtype, rng)
    return Problem(label, tuple(shape), dtype, parameters, x, a0, da, dc)


# --------------------------------------------------------------------------- contestants


@dataclass
class Contestant:
    """Something timed: one callable per pass in ``MODES`` it takes part in."""

    name: str
    family: str
    sync: Callable[[Any], None]
    calls: dict[str, Callable[[], Any]]
    # One forward+backward returning NumPy arrays to compare: the output sequence
    # "a" (n_a, m, T) and the gradients (see _stack_gradients). None: not checked.
    check: Callable[[], dict[str, np.ndarray]] | None = None
    memory: Callable[[], dict[str, int]] | None = None
    engine: str | None = None  # xlstm: the engine that ran (resolve_engine)
    first_call_s: float | None = None  # the first, untimed forward+backward (warm_up)
    times: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})


def _stack_gradients(grads: dict[str, Any]) -> dict[str, np.ndarray]:
    """Seed-layout gradient dict -> the xlstm/torch comparison layout (i, f, g, o)."""
    dW = np.concatenate([to_numpy(grads[f"dW{g}"]) for g in GATE_KEYS], axis=0)
    db = np.concatenate([to_numpy(grads[f"db{g}"]) for g in GATE_KEYS], axis=0).reshape(-1)
    return {
        "dW": dW,
        "db": db,
        "dx": to_numpy(grads["dx"]),
        "da0": to_numpy(grads["da0"]),
        "dc0": to_numpy(grads["dc0"]),
    }


def xlstm_contestant(
    problem: Problem, backend: Backend, *, engine: str = "auto", recompute: bool = False
) -> Contestant:
    """xlstm's ``lstm_forward`` / ``lstm_backward`` on ``backend`` with ``engine=``.

    ``recompute``: the memory-saving mode (gates recomputed in backward); it has no
    inference pass of its own (``cache=False`` keeps no gates in either mode).

    Raises
    ------
    ValueError
        ``engine`` cannot run on this backend and dtype (from :func:`xlstm.resolve_engine`).
    """
    from xlstm import lstm_backward, lstm_forward, resolve_engine, to_backend

    ran = resolve_engine(backend.xp, problem.dtype, engine)
    params = to_backend(problem.parameters, backend.xp, device=backend.device)
    x, a0, da, dc = (backend.asarray(a) for a in (problem.x, problem.a0, problem.da, problem.dc))
    options = {"engine": engine}
    forward_options = {**options, "recompute": recompute}

    def inference():
        return lstm_forward(x, a0, params, cache=False, **options)

    def forward():
        return lstm_forward(x, a0, params, **forward_options)

    def forward_backward():
        _, _, _, caches = lstm_forward(x, a0, params, **forward_options)
        return lstm_backward(da, caches, dc, **options)

    def check():
        a, _, _, caches = lstm_forward(x, a0, params, **forward_options)
        return {"a": to_numpy(a), **_stack_gradients(lstm_backward(da, caches, dc, **options))}

    memory = _numpy_memory(forward, forward_backward) if backend.name == "numpy" else None
    if memory is None and backend.family == "torch-cuda":
        memory = _torch_cuda_memory(forward, forward_backward)
    name = " ".join(["xlstm"] + ["generic"] * (engine == "generic") + ["recompute"] * recompute)
    calls = {"forward": forward, "forward_backward": forward_backward}
    if not recompute:
        calls = {"inference": inference, **calls}
    return Contestant(name, backend.family, backend.sync, calls, check, memory, engine=ran)


def jit_compile_seconds(engine: str, dtype: str) -> float | None:
    """Compile an engine's kernels for ``dtype`` now and return the seconds it took.

    Only for an engine module with a ``compile_seconds(dtype)`` hook (numba's): it
    compiles, or loads from the on-disk cache, and reports the time. Called before
    anything is timed, so that no timed or first call pays for compilation; ``None``
    for engines without the hook (read with ``getattr``: they need nothing).
    """
    from xlstm._engines.dispatch import ENGINES

    if engine not in ENGINES:
        return None
    hook = getattr(importlib.import_module(ENGINES[engine].module), "compile_seconds", None)
    return None if hook is None else float(hook(dtype))


def naive_contestant(problem: Problem, backend: Backend) -> Contestant:
    """The seed-style loop (:mod:`xlstm.bench._naive`) on ``backend``."""
    from ._naive import naive_backward, naive_forward

    xp = backend.xp
    params = {key: backend.asarray(value) for key, value in problem.parameters.items()}
    x, a0, da, dc = (backend.asarray(a) for a in (problem.x, problem.a0, problem.da, problem.dc))

    def forward():
        return naive_forward(x, a0, params, xp=xp)

    def forward_backward():
        _, _, _, caches = naive_forward(x, a0, params, xp=xp)
        return naive_backward(da, caches, dc, xp=xp)

    def check():
        a, _, _, caches = naive_forward(x, a0, params, xp=xp)
        return {"a": to_numpy(a), **_stack_gradients(naive_backward(da, caches, dc, xp=xp))}

    memory = _numpy_memory(forward, forward_backward) if backend.name == "numpy" else None
    # No inference pass: the seed-style loop always keeps its caches.
    calls = {"forward": forward, "forward_backward": forward_backward}
    return Contestant("naive (seed-style)", backend.family, backend.sync, calls, check, memory)


def floor_contestant(problem: Problem, backend: Backend) -> Contestant:
    """Pure matrix products with the LSTM's FLOPs, as few and as large as possible."""
    n_x, n_a, m, T = problem.shape
    rng = np.random.default_rng(1)
    H = backend.asarray(rng.standard_normal((T * m, n_x + n_a)).astype(problem.dtype))
    W = backend.asarray(rng.standard_normal((4 * n_a, n_x + n_a)).astype(problem.dtype))
    dZ = backend.asarray(rng.standard_normal((T * m, 4 * n_a)).astype(problem.dtype))

    def forward():
        return H @ W.T

    def forward_backward():
        return H @ W.T, dZ @ W, dZ.T @ H

    calls = {"inference": forward, "forward": forward, "forward_backward": forward_backward}
    return Contestant(PRODUCTS_ONLY, backend.family, backend.sync, calls)


def onnx_runtime_available(dtype: str) -> bool:
    """Whether ONNX Runtime can run the inference contestant (installed; float32 only:
    its ``LSTM`` kernel has no float64)."""
    import importlib.util

    return dtype == "float32" and all(
        importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime")
    )


def onnx_contestant(problem: Problem, threads: int) -> Contestant:
    """ONNX Runtime's ``LSTM`` on the problem's weights (exported by ``xlstm.convert``).

    Inference only, float32, ``threads`` intra-op threads (one inter-op), CPU provider.
    """
    import onnxruntime

    from xlstm import LSTM
    from xlstm._layout import GATE_KEYS, layer_key
    from xlstm.convert import to_onnx

    n_x, n_a, _, _ = problem.shape
    gates = {layer_key(key, 0): problem.parameters[key] for key in GATE_KEYS}
    model = LSTM(n_x, n_a, dtype=problem.dtype, parameters=gates)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        to_onnx(model, initial_state=True).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    h0 = np.ascontiguousarray(problem.a0.T[None])
    feeds = {
        "X": np.ascontiguousarray(problem.x.transpose(2, 1, 0)),  # (T, m, n_x)
        "initial_h": h0,
        "initial_c": np.zeros_like(h0),
    }

    def inference():
        return session.run(None, feeds)

    def check() -> dict[str, np.ndarray]:
        (outputs,) = session.run(["Y"], feeds)  # (T, m, n_a)
        return {"a": np.transpose(outputs, (2, 1, 0))}

    calls = {"inference": inference}
    return Contestant(ONNX_RUNTIME, "onnxruntime", _no_sync, calls, check)


def torch_contestant(problem: Problem, device: str) -> Contestant:
    """``torch.nn.LSTM`` (:mod:`xlstm.bench._torch_peer`) on ``device``."""
    from ._torch_peer import TorchLSTMPeer, output_numpy

    peer = TorchLSTMPeer(
        problem.parameters,
        problem.x,
        problem.a0,
        problem.da,
        problem.dc,
        dtype=problem.dtype,
        device=device,
    )
    family = "torch-cuda" if device.startswith("cuda") else "torch-cpu"

    def check() -> dict[str, np.ndarray]:
        result = peer.forward()
        peer.backward(result)
        return {"a": output_numpy(result), **peer.gradients_numpy()}

    def sync(result: Any) -> None:
        peer.sync()

    calls = {
        "inference": peer.inference,
        "forward": peer.forward,
        "forward_backward": peer.forward_backward,
    }
    memory = None
    if family == "torch-cuda":
        memory = _torch_cuda_memory(peer.forward, peer.forward_backward)
    return Contestant("torch.nn.LSTM", family, sync, calls, check, memory)


# --------------------------------------------------------------------------- memory


def _numpy_memory(forward, forward_backward):
    """Bytes NumPy allocates, seen by tracemalloc (NumPy reports its buffers to it)."""

    def measure() -> dict[str, int]:
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            kept = forward()  # outputs + caches, alive until backward ends
            kept_bytes = tracemalloc.get_traced_memory()[0] - base
            del kept
            gc.collect()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            result = forward_backward()
            peak = tracemalloc.get_traced_memory()[1] - base
            del result
        finally:
            tracemalloc.stop()
        return {"forward_kept": kept_bytes, "forward_backward_peak": peak}

    return measure


def _torch_cuda_memory(forward, forward_backward):
    import torch

    def measure() -> dict[str, int]:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        kept = forward()
        torch.cuda.synchronize()
        kept_bytes = torch.cuda.memory_allocated() - base
        del kept
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result = forward_backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del result
        return {"forward_kept": kept_bytes, "forward_backward_peak": peak}

    return measure


# --------------------------------------------------------------------------- timing


def time_once(contestant: Contestant, mode: str) -> tuple[float, Any]:
    """Seconds for one call, device synchronised before and after."""
    call = contestant.calls[mode]
    contestant.sync(None)
    start = time.perf_counter()
    result = call()
    contestant.sync(result)
    return time.perf_counter() - start, result


def warm_up(contestants: list[Contestant]) -> dict[str, dict[str, np.ndarray]]:
    """One untimed call per contestant and pass; returns the outputs to check.

    The first call pays for one-off costs (allocations, JIT or kernel compilation,
    thread pools starting up): its forward+backward (an inference-only contestant's
    inference) is timed once and kept as ``first_call_s``, never mixed into the
    timings. A further forward+backward gives the output sequence and the gradients
    that :func:`relative_difference` compares.
    """
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for contestant in contestants:
        first = "forward_backward" if "forward_backward" in contestant.calls else "inference"
        contestant.first_call_s, _ = time_once(contestant, first)
        for mode in contestant.calls:
            if mode != first:
                time_once(contestant, mode)
        if contestant.check is not None:
            outputs[contestant.name] = contestant.check()
    return outputs


def run_rounds(contestants: list[Contestant], repeat: int, pause: float, progress=None) -> None:
    """Time every contestant and mode ``repeat`` times, interleaved round-robin.

    Each round visits the contestants in turn (the order reverses every round, so
    a library switch happens once per round, not twice). Between two contestants
    of different CPU libraries it sleeps ``pause`` seconds: OpenBLAS's and OpenMP's
    worker threads keep spinning for a while after a call and would steal cores
    from whoever runs next.  After that pause each pass gets one untimed warm call
    (threads that went to sleep wake up, caches refill), then the timed call follows
    it back to back.
    """
    last_family = None
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeat):
            order = contestants if r % 2 == 0 else contestants[::-1]
            for contestant in order:
                switching = last_family is not None and last_family != contestant.family
                if switching and {last_family, contestant.family} & CPU_FAMILIES:
                    time.sleep(pause)
                last_family = contestant.family
                for mode in contestant.calls:
                    _, result = time_once(contestant, mode)  # warm, untimed
                    del result
                    seconds, result = time_once(contestant, mode)
                    del result
                    contestant.times[mode].append(seconds)
            if progress is not None:
                progress(r + 1)
    finally:
        if gc_was_enabled:
            gc.enable()


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def relative_difference(result: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """Largest ``max|result - ref| / max|ref|`` over the arrays both hold."""
    worst = 0.0
    for key, ref in reference.items():
        if key not in result:  # an inference-only contestant has no gradients
            continue
        got = result[key].astype(np.float64)
        ref = ref.astype(np.float64)
        scale = max(float(np.max(np.abs(ref))), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.max(np.abs(got - ref))) / scale)
    return worst
