"""Shared set-up for the xlstm asv suite: backends, sizes, inputs, skips, references.

Inputs of the sequence and cell functions (:func:`inputs`) and of ``xlstm.LSTM``
(:func:`layer_inputs`), the timed calls, and the references the ``track_`` ratios divide
by (:func:`gemm_reference`, :class:`TorchReference`, :func:`interleaved_ratio`).

Everything that depends on the machine or on the xlstm version is decided once,
at import time, so that asv can skip a parameter set without running ``setup``
(``skip_params``), and ``setup`` raises ``NotImplementedError`` for the same sets
as a second guard (older asv ignores ``skip_params``). Nothing here imports CuPy
or torch at module level unless it is installed, and any xlstm version imports:
a missing function or keyword makes the cases that need it skip.

Timings run with ``XLSTM_ASV_THREADS`` (default 1) BLAS and torch threads: one thread
per process gives the steadiest numbers on a shared machine, and what is tracked is
xlstm's own speed from commit to commit, not the machine's parallelism.

Shape legend: (n_x, n_a, m, T) = (input size, hidden size, batch, time steps).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # asv < 0.6 (or no asv at all: the suite imported by pytest)
    SkipNotImplemented = NotImplementedError

try:
    import xlstm
except ImportError:
    xlstm = None


# --------------------------------------------------------------------------- what this xlstm has


def _has(name: str) -> bool:
    return callable(getattr(xlstm, name, None))


def _accepts(name: str, keyword: str) -> bool:
    if not _has(name):
        return False
    try:
        return keyword in inspect.signature(getattr(xlstm, name)).parameters
    except (TypeError, ValueError):
        return False


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # the parent package is missing
        return False


HAS_SEQUENCE = _has("lstm_forward") and _has("lstm_backward")
HAS_CELL = _has("lstm_cell_forward") and _has("lstm_cell_backward")
HAS_FUSED_SWITCH = _accepts("lstm_forward", "fused") and _accepts("lstm_backward", "fused")
HAS_ENGINE_SWITCH = _accepts("lstm_forward", "engine") and _accepts("lstm_backward", "engine")
REGISTERED_ENGINES = tuple(getattr(xlstm, "ENGINE_CHOICES", ()))
BACKWARD_TAKES_DC = _accepts("lstm_backward", "dc")
HAS_CUPY_KERNELS = xlstm is not None and _module_exists("xlstm._engines.cupy")
HAS_TORCH = _module_exists("torch")
HAS_NUMBA = _module_exists("numba")


def _cuda_available() -> bool:
    if not _module_exists("cupy"):
        return False
    try:
        import cupy
    except ImportError:  # CuPy installed without its CUDA libraries
        return False
    return bool(cupy.cuda.is_available())


HAS_CUDA = _cuda_available()

# --------------------------------------------------------------------------- parameters

# "<library>-<engine>" names the engine (engine=); a plain library name is what users
# get by default (engine="auto": on NumPy the numba engine when it is there, else the
# numpy one). "cupy" requires the fused kernels, "cupy-graph" adds CUDA-graph replay of
# the time loops. The "-generic" cases time the array-API reference beside the fast
# paths, so that each one's gain is measured. "torch" is xlstm on torch CPU tensors.
ENGINES = {
    "numpy": "auto",
    "numpy-generic": "generic",
    "numpy-numpy": "numpy",
    "numpy-numba": "numba",
    "cupy": "cupy",
    "cupy-graph": "cupy",
    "cupy-generic": "generic",
    "torch": "auto",
}
ALL_BACKENDS = list(ENGINES)


def library_missing(backend: str) -> str | None:
    """Why the array library (or compiler) ``backend`` needs is absent here (None: present).

    Decided by what is installed, not by the xlstm version: a backend whose library is
    missing is left out of ``params`` altogether (no row of ``n/a``); one that this xlstm
    cannot run is listed and skipped (:func:`skip_reason`).
    """
    if backend.startswith("cupy") and not HAS_CUDA:
        return "no CUDA device (or no CuPy)"
    if backend == "numpy-numba" and not HAS_NUMBA:
        return "numba is not installed (the `cpu` extra)"
    if backend == "torch" and not HAS_TORCH:
        return "torch is not installed"
    return None


#: The backends of this machine: ``ALL_BACKENDS`` less those whose library is missing.
BACKENDS = [backend for backend in ALL_BACKENDS if library_missing(backend) is None]
DTYPES = ["float32", "float64"]

# Sizes come from DeepBench's LSTM training kernels (baidu-research/DeepBench,
# code/kernels/rnn_problems.h; (hidden, batch, time steps) with input size =
# hidden): H in {512, 1024, 2048, 4096} x B in {16, 32, 64, 128} x T = 25, and
# H = 256 x B in {16, 32, 64} x T = 150. On the CPU they are scaled down (fewer
# steps) so that one call takes tens of milliseconds, not seconds.
CPU_SIZES = {
    "H256-B16-T25": (256, 256, 16, 25),  # DeepBench (256, 16, 150), T / 6
    "H512-B32-T25": (512, 512, 32, 25),  # DeepBench (512, 32, 25) as is
    "H1024-B64-T5": (1024, 1024, 64, 5),  # DeepBench (1024, 64, 25), T / 5
}
# The unscaled DeepBench shapes, for a GPU: XLSTM_ASV_SIZES=deepbench.
DEEPBENCH_SIZES = {
    "H256-B64-T150": (256, 256, 64, 150),
    "H512-B64-T25": (512, 512, 64, 25),
    "H1024-B128-T25": (1024, 1024, 128, 25),
    "H2048-B32-T25": (2048, 2048, 32, 25),
}
# One small shape for a CI smoke run (XLSTM_ASV_SIZES=smoke): checks that every
# benchmark runs, in seconds; its timings mean little.
SMOKE_SIZES = {"smoke": (16, 32, 8, 10)}
# Not in params; for tests/tools/test_asv_suite.py, which runs every benchmark once.
TEST_SIZES = {"tiny": (3, 5, 4, 6)}
SIZE_SETS = {"cpu": CPU_SIZES, "deepbench": DEEPBENCH_SIZES, "smoke": SMOKE_SIZES}
ALL_SIZES = {**CPU_SIZES, **DEEPBENCH_SIZES, **SMOKE_SIZES, **TEST_SIZES}

SIZE_SET = os.environ.get("XLSTM_ASV_SIZES", "cpu")
if SIZE_SET not in SIZE_SETS:
    _message = f"XLSTM_ASV_SIZES={SIZE_SET!r}; expected one of {sorted(SIZE_SETS)}"
    raise ValueError(_message)
SIZES = list(SIZE_SETS[SIZE_SET])
# The smoke run checks that every benchmark runs under asv, in as few processes as it can
# (asv starts one per parameter set): float32 only. tests/tools/test_asv_suite.py runs
# every benchmark in both dtypes.
if SIZE_SET == "smoke":
    DTYPES = ["float32"]

PARAMS = [BACKENDS, DTYPES, SIZES]
PARAM_NAMES = ["backend", "dtype", "size"]
# The cell functions have no engines: the default backends only.
CELL_PARAMS = [[b for b in BACKENDS if b in ("numpy", "torch")], DTYPES, SIZES]

# Layers (xlstm.LSTM): name -> (num_layers, bidirectional, variable lengths). float32 and the
# size set's first shape only, to keep the suite short; the sequence benchmarks cover the rest.
LAYER_CONFIGS = {
    "stacked": (2, False, False),
    "bidirectional": (1, True, False),
    "lengths": (1, False, True),
}
LAYER_PARAMS = [BACKENDS, list(LAYER_CONFIGS), SIZES[:1]]
LAYER_PARAM_NAMES = ["backend", "layers", "size"]

# Ratios to references measured in the same process: float32, every size.
RATIO_PARAMS = [BACKENDS, SIZES]
RATIO_PARAM_NAMES = ["backend", "size"]


def skip_reason(backend: str, *, cell: bool = False) -> str | None:
    """Why ``backend`` cannot run here with this xlstm (None: it can)."""
    if not (HAS_CELL if cell else HAS_SEQUENCE):
        return "this xlstm lacks the functions benchmarked here"
    if cell and backend not in ("numpy", "torch"):
        return "the cell functions have no engines, so no engine variants"
    if backend.endswith("-generic") and not (HAS_ENGINE_SWITCH or HAS_FUSED_SWITCH):
        return "this xlstm has no `engine=` (or `fused`) switch"
    if backend in ("numpy-numpy", "numpy-numba") and not HAS_ENGINE_SWITCH:
        return "this xlstm has no `engine=` switch"
    missing = library_missing(backend)
    if missing is not None:
        return missing
    if backend == "numpy-numba" and "numba" not in REGISTERED_ENGINES:
        return "this xlstm has no numba engine"
    if backend.startswith("cupy"):
        if backend in ("cupy", "cupy-graph") and not HAS_CUPY_KERNELS:
            return "this xlstm has no fused CuPy kernels"
        if backend == "cupy-graph" and _graph_switch() is None:
            return "this xlstm has no CUDA-graph replay"
    return None


def skipped_params(params: list | None = None, *, cell: bool = False, reason=None) -> list[tuple]:
    """Every parameter tuple of ``params`` (default ``PARAMS``) asv should skip.

    The backend is the first parameter; ``reason(backend)`` (default :func:`skip_reason`)
    says whether it is skipped. The result goes to ``skip_params``.
    """
    if params is None:
        params = CELL_PARAMS if cell else PARAMS
    if reason is None:
        return [combo for combo in itertools.product(*params) if skip_reason(combo[0], cell=cell)]
    return [combo for combo in itertools.product(*params) if reason(combo[0])]


# --------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """One parameter set's arrays on the backend, and how to wait for the device."""

    library: Any  # numpy, cupy or torch
    options: dict[str, Any]  # keyword arguments for lstm_forward / lstm_backward
    sync: Any  # () -> None; waits for queued device work
    shape: tuple[int, int, int, int]
    parameters: dict[str, Any]
    x: Any  # (n_x, m, T)
    a0: Any  # (n_a, m)
    da: Any  # (n_a, m, T)
    dc: Any  # (n_a, m, T), zero except the last step
    warm: bool = False  # set once the first (compiling, allocating) call has run


def _no_sync() -> None:
    return None


def _library(backend: str):
    if backend.startswith("numpy"):
        return np, _no_sync
    if backend.startswith("cupy"):
        import cupy

        return cupy, cupy.cuda.get_current_stream().synchronize
    import torch

    return torch, _no_sync


def _options(backend: str) -> dict[str, Any]:
    engine = ENGINES[backend]
    if HAS_ENGINE_SWITCH:
        return {} if engine == "auto" else {"engine": engine}  # named: no silent fallback
    # An xlstm from before engine=: its fused switch.
    if engine == "generic":
        return {"fused": False}
    if engine == "cupy":
        return {"fused": True}
    return {}


_threads = os.environ.get("XLSTM_ASV_THREADS", "1")
if not _threads.isdigit():
    _message = f"XLSTM_ASV_THREADS={_threads!r}; expected a number of threads (0: no limit)"
    raise ValueError(_message)
THREADS = int(_threads)


def limit_threads() -> None:
    """Limit NumPy's BLAS (threadpoolctl, when installed) and torch to ``THREADS``.

    For the rest of the process: asv runs each benchmark in a process of its own.
    ``XLSTM_ASV_THREADS=0`` leaves the libraries' own defaults.
    """
    if THREADS <= 0:
        return
    if _module_exists("threadpoolctl"):
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=THREADS)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(THREADS)


def _graph_switch():
    """xlstm's process-wide CUDA-graph switch, or None if this xlstm has none."""
    try:
        from xlstm._engines.cupy import engine
    except ImportError:
        return None
    return getattr(engine, "set_graph_replay", None)


def _set_graph_replay(backend: str) -> None:
    """CUDA-graph replay on for ``cupy-graph``, off for the other CuPy cases.

    Replay is process-wide: set it every time, so that neither an earlier case nor
    XLSTM_CUPY_GRAPHS in the environment leaks in.
    """
    if backend.startswith("cupy") and _graph_switch() is not None:
        _graph_switch()(backend == "cupy-graph")


_CACHE: dict[tuple[str, str, str, bool], Inputs] = {}


def inputs(backend: str, dtype: str, size: str, *, cell: bool = False) -> Inputs:
    """The arrays for one parameter set, built once per process.

    asv re-runs ``setup`` before every sample; the arrays are cached so that this
    costs nothing after the first time. Raises ``NotImplementedError`` (asv: skip)
    where :func:`skip_reason` says the case cannot run.
    """
    reason = skip_reason(backend, cell=cell)
    if reason is not None:
        raise SkipNotImplemented(f"{backend}: {reason}")
    _set_graph_replay(backend)
    key = (backend, dtype, size, cell)
    if key not in _CACHE:
        _CACHE[key] = _build(backend, dtype, size)
        limit_threads()  # after _build, which may have imported torch
    return _CACHE[key]


def _build(backend: str, dtype: str, size: str) -> Inputs:
    n_x, n_a, m, T = ALL_SIZES[size]
    n_y = 2
    rng = np.random.default_rng(0)
    scale = 1.0 / np.sqrt(n_a + n_x)
    host = {}
    for gate in "fico":
        host[f"W{gate}"] = rng.standard_normal((n_a, n_a + n_x)) * scale
        host[f"b{gate}"] = np.full((n_a, 1), 1.0 if gate == "f" else 0.0)
    host["Wy"] = rng.standard_normal((n_y, n_a)) / np.sqrt(n_a)
    host["by"] = np.zeros((n_y, 1))
    x = rng.standard_normal((n_x, m, T))
    a0 = np.tanh(rng.standard_normal((n_a, m)))
    da = rng.standard_normal((n_a, m, T))
    dc = np.zeros((n_a, m, T))
    dc[:, :, -1] = rng.standard_normal((n_a, m))

    library, sync = _library(backend)

    def move(array: np.ndarray):
        return library.asarray(np.ascontiguousarray(array, dtype=dtype))

    return Inputs(
        library=library,
        options=_options(backend),
        sync=sync,
        shape=(n_x, n_a, m, T),
        parameters={key: move(value) for key, value in host.items()},
        x=move(x),
        a0=move(a0),
        da=move(da),
        dc=move(dc),
    )


def forward(p: Inputs):
    """``lstm_forward`` once, device synchronised."""
    result = xlstm.lstm_forward(p.x, p.a0, p.parameters, **p.options)
    p.sync()
    return result


def backward(p: Inputs, caches):
    """``lstm_backward`` once from ``caches`` (made by :func:`forward`), device synchronised.

    The cache is only read, so one cache serves any number of calls.
    """
    if BACKWARD_TAKES_DC:
        grads = xlstm.lstm_backward(p.da, caches, p.dc, **p.options)
    else:
        grads = xlstm.lstm_backward(p.da, caches, **p.options)
    p.sync()
    return grads


def forward_backward(p: Inputs):
    """``lstm_forward`` then ``lstm_backward`` once, device synchronised."""
    _, _, _, caches = xlstm.lstm_forward(p.x, p.a0, p.parameters, **p.options)
    return backward(p, caches)


# --------------------------------------------------------------------------- layers (xlstm.LSTM)

_MODEL = getattr(xlstm, "LSTM", None)
HAS_LAYERS = all(callable(getattr(_MODEL, name, None)) for name in ("forward_train", "backward"))
HAS_LAYER_ENGINES = HAS_LAYERS and "engine" in inspect.signature(_MODEL).parameters


def layer_skip_reason(backend: str) -> str | None:
    """Why the ``Layers`` benchmarks cannot run ``backend`` here (None: they can)."""
    if not HAS_LAYERS:
        return "this xlstm has no LSTM model with forward_train and backward"
    reason = skip_reason(backend)
    if reason is not None:
        return reason
    if ENGINES[backend] != "auto" and not HAS_LAYER_ENGINES:
        return "this xlstm's LSTM has no `engine=` switch"
    return None


@dataclass
class LayerInputs:
    """An ``xlstm.LSTM`` of one configuration, its inputs and upstream gradients."""

    model: Any
    sync: Any
    x: Any  # (n_x, m, T)
    lengths: Any  # NumPy int64 (m,) or None
    d_outputs: Any  # (D n_a, m, T), zero past each sequence's end
    d_a_n: Any  # (num_layers * D, n_a, m)
    d_c_n: Any  # (num_layers * D, n_a, m)
    warm: bool = False


_LAYER_CACHE: dict[tuple[str, str, str], LayerInputs] = {}


def layer_inputs(backend: str, config: str, size: str) -> LayerInputs:
    """The model and arrays of one ``Layers`` parameter set (float32), built once per process."""
    reason = layer_skip_reason(backend)
    if reason is not None:
        raise SkipNotImplemented(f"{backend}: {reason}")
    _set_graph_replay(backend)
    key = (backend, config, size)
    if key not in _LAYER_CACHE:
        _LAYER_CACHE[key] = _build_layers(backend, config, size)
        limit_threads()
    return _LAYER_CACHE[key]


def _build_layers(backend: str, config: str, size: str) -> LayerInputs:
    n_x, n_a, m, T = ALL_SIZES[size]
    num_layers, bidirectional, variable = LAYER_CONFIGS[config]
    directions = 2 if bidirectional else 1
    library, sync = _library(backend)
    options = {"engine": ENGINES[backend]} if HAS_LAYER_ENGINES else {}
    model = xlstm.LSTM(
        n_x, n_a, num_layers=num_layers, bidirectional=bidirectional,
        backend=backend.split("-")[0], dtype="float32", seed=0, **options,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    lengths = None
    d_outputs = rng.standard_normal((directions * n_a, m, T))
    if variable:
        # Spread over [T / 10, T], one sequence of the full length (as layers_vs_torch.py).
        lengths = rng.integers(max(1, T // 10), T + 1, size=m)
        lengths[0] = T
        for j, length in enumerate(lengths):
            d_outputs[:, j, length:] = 0.0
    states = (num_layers * directions, n_a, m)

    def move(array: np.ndarray):
        return library.asarray(np.ascontiguousarray(array, dtype="float32"))

    return LayerInputs(
        model=model,
        sync=sync,
        x=move(rng.standard_normal((n_x, m, T))),
        lengths=lengths,
        d_outputs=move(d_outputs),
        d_a_n=move(rng.standard_normal(states)),
        d_c_n=move(rng.standard_normal(states)),
    )


def layer_forward(p: LayerInputs):
    """The training forward (keeping what backward needs), device synchronised."""
    result = p.model.forward_train(p.x, p.lengths)
    p.sync()
    return result


def layer_backward(p: LayerInputs, cache):
    """The backward of every layer and direction from ``cache``, device synchronised."""
    grads = p.model.backward(p.d_outputs, cache, p.d_a_n, p.d_c_n)
    p.sync()
    return grads


# --------------------------------------------------------------------------- references

#: Interleaved (subject, reference) pairs per ratio; the median of their ratios is reported.
RATIO_ROUNDS = 7
#: Matrix products of the LSTM's size per pass: forward ``W [a; x]``; backward the weight
#: gradient and the input/state gradient; forward+backward all three.
PRODUCTS = {"forward": 1, "backward": 2, "forward_backward": 3}


def interleaved_ratio(subject, reference, rounds: int = RATIO_ROUNDS) -> float:
    """Median over ``rounds`` of ``time(subject) / time(reference)``, timed back to back.

    The two alternate which runs first, so that neither always follows the other (a BLAS's
    spinning threads, a warm cache); both are called once untimed before.
    """
    subject()
    reference()
    ratios = []
    for index in range(rounds):
        order = (subject, reference) if index % 2 == 0 else (reference, subject)
        seconds = []
        for function in order:
            start = time.perf_counter()
            function()
            seconds.append(time.perf_counter() - start)
        subject_seconds, reference_seconds = seconds if index % 2 == 0 else seconds[::-1]
        ratios.append(subject_seconds / reference_seconds)
    return statistics.median(ratios)


def gemm_reference(p: Inputs, passes: str):
    """A function doing the matrix-product FLOPs of ``passes`` as large products.

    The same library, dtype and device as ``p`` (for NumPy: the same BLAS and threads), on
    products of the LSTM's shapes over the whole sequence at once: ``(4 n_a, n_a + n_x)``
    by ``(n_a + n_x, m T)`` (forward), ``(4 n_a, m T)`` by ``(m T, n_a + n_x)`` (weight
    gradient) and ``(n_a + n_x, 4 n_a)`` by ``(4 n_a, m T)`` (input and state gradient).
    No LSTM on this machine can do its products faster than this.
    """
    n_x, n_a, m, T = p.shape
    rng = np.random.default_rng(2)
    dtype = str(p.x.dtype).removeprefix("torch.")

    def make(*shape):
        return p.library.asarray(np.ascontiguousarray(rng.standard_normal(shape), dtype=dtype))

    rows, inner, columns = 4 * n_a, n_a + n_x, m * T
    operands = [
        (make(rows, inner), make(inner, columns)),
        (make(rows, columns), make(columns, inner)),
        (make(inner, rows), make(rows, columns)),
    ]
    chosen = (
        operands[:1] if passes == "forward" else operands[1:] if passes == "backward" else operands
    )
    matmul = p.library.matmul

    def run():
        for left, right in chosen:
            matmul(left, right)
        p.sync()

    return run


def torch_reference_device(backend: str) -> str | None:
    """Where torch.nn.LSTM runs beside ``backend`` (None: nowhere here)."""
    if not HAS_TORCH:
        return None
    if backend.startswith("cupy"):
        import torch

        return "cuda" if torch.cuda.is_available() else None
    return "cpu"


#: ``VsTorch``'s parameters: the backends beside which torch.nn.LSTM can run here.
TORCH_RATIO_PARAMS = [
    [b for b in BACKENDS if torch_reference_device(b) is not None],
    SIZES,
]


class TorchReference:
    """``torch.nn.LSTM(n_x, n_a)`` in float32 on the shape of ``p``, the passes as functions.

    The same gradients as xlstm's: on the output sequence and the final cell state, with
    respect to the input, the weights and the biases; ``backward`` runs on a graph recorded
    once (``retain_graph``), as xlstm's backward runs from one cache.
    """

    def __init__(self, p: Inputs, device: str) -> None:
        import torch

        limit_threads()
        n_x, n_a, m, T = p.shape
        rng = np.random.default_rng(3)
        torch.manual_seed(0)
        self.torch = torch
        self.module = torch.nn.LSTM(n_x, n_a).to(device)

        def tensor(*shape):
            return torch.from_numpy(rng.standard_normal(shape).astype("float32")).to(device)

        self.x = tensor(T, m, n_x).requires_grad_(True)
        self.g_out = tensor(T, m, n_a)
        self.g_c = tensor(1, m, n_a)
        self.sync = torch.cuda.synchronize if device == "cuda" else _no_sync
        self.graph = self._record()

    def _record(self):
        out, (_, c_n) = self.module(self.x)
        return out, c_n

    def forward(self):
        self._record()
        self.sync()

    def backward(self):
        self._zero()
        self.torch.autograd.backward(self.graph, (self.g_out, self.g_c), retain_graph=True)
        self.sync()

    def forward_backward(self):
        self._zero()
        self.torch.autograd.backward(self._record(), (self.g_out, self.g_c))
        self.sync()

    def _zero(self):
        # Gradients accumulate; starting from None makes every call write them afresh.
        self.x.grad = None
        self.module.zero_grad(set_to_none=True)
