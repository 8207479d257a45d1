"""Shared set-up for the xlstm asv suite: backends, sizes, inputs, skips.

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
import sys
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
BACKENDS = list(ENGINES)
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

PARAMS = [BACKENDS, DTYPES, SIZES]
PARAM_NAMES = ["backend", "dtype", "size"]


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
    if backend == "numpy-numba":
        if "numba" not in REGISTERED_ENGINES:
            return "this xlstm has no numba engine"
        if not HAS_NUMBA:
            return "numba is not installed (pip install 'xlstm-arrayapi[cpu]')"
    if backend.startswith("cupy"):
        if not HAS_CUDA:
            return "no CUDA device (or no CuPy)"
        if backend in ("cupy", "cupy-graph") and not HAS_CUPY_KERNELS:
            return "this xlstm has no fused CuPy kernels"
        if backend == "cupy-graph" and _graph_switch() is None:
            return "this xlstm has no CUDA-graph replay"
    if backend == "torch" and not HAS_TORCH:
        return "torch is not installed"
    return None


def skipped_params(*, cell: bool = False) -> list[tuple[str, str, str]]:
    """Every parameter tuple asv should skip (for ``skip_params``)."""
    return [
        (backend, dtype, size)
        for backend, dtype, size in itertools.product(*PARAMS)
        if skip_reason(backend, cell=cell) is not None
    ]


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
    if backend.startswith("cupy") and _graph_switch() is not None:
        # Replay is process-wide: set it every time, so that neither an earlier
        # case nor XLSTM_CUPY_GRAPHS in the environment leaks in.
        _graph_switch()(backend == "cupy-graph")
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


def forward_backward(p: Inputs):
    """``lstm_forward`` then ``lstm_backward`` once, device synchronised."""
    _, _, _, caches = xlstm.lstm_forward(p.x, p.a0, p.parameters, **p.options)
    if BACKWARD_TAKES_DC:
        grads = xlstm.lstm_backward(p.da, caches, p.dc, **p.options)
    else:
        grads = xlstm.lstm_backward(p.da, caches, **p.options)
    p.sync()
    return grads
