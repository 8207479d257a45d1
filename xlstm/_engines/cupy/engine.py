"""CuPy fast path of the sequence engine: fused step kernels, optional graph replay.

Same algorithm, layout and :class:`~xlstm._engines.cache.SequenceCache` as the generic
engine (:mod:`xlstm._engines.generic`), so caches move freely between engines; tests
check that both give the same numbers.  Why it exists: on CuPy the generic path
launches a dozen small kernels per step and is bound by launch overhead.  Here
each step is two launches:

* forward: ``h_{t-1} W_h^T`` (``cublasGemmEx``, see :mod:`._blas`), then one fused kernel
  that adds the precomputed input projection and the bias, activates the four
  gates and writes ``c_t``, ``tanh(c_t)`` and ``h_t``;
* backward: one fused kernel that writes the four gate gradients ``dz_t``
  (stacked, ``GATE_ORDER`` = i, f, o, g) and ``dc_{t-1}``, then
  ``dh_{t-1} = dz_t W_h`` (cuBLAS).

The input projection of a segment of steps is one product before its loop;
the weight, bias and input gradients are a few large products after it
(``dW = dZ^T [H_prev | X]``, ``db = 1^T dZ``, ``dX = dZ W_x``), per segment of
:func:`~xlstm._engines.cache.segment_length` steps, as in the NumPy fast path.  Why
the kernel, not the product, adds the input projection: the products overwrite
their output (cuBLAS beta = 0, as ``cupy.matmul`` did: the same numbers), so the
recurrent product goes to its own buffer and the kernel sums the two parts while
it reads them anyway.

Variable-length batches (``lengths``), as the NumPy engine does them
(:mod:`xlstm._engines.numpy.masked`): the rows are stored sorted by decreasing
length (``SequenceCache.order``, ``SequenceCache.lengths`` in that order), so at
step ``t`` the ``running[t]`` sequences still running are a prefix of the rows.
The recurrent products of a step take only that prefix; the step kernel runs
over every row and carries the finished rows' states (zeros as their gates), and
backward writes ``dz = 0`` for them and lets ``dh``, ``dc`` pass through
unchanged -- so external gradients at padded steps are ignored and ``dx`` is zero
there.  Steps past the longest sequence are not run.  ``backward`` reads caches
whose rows are sorted that way (its own, or any with non-increasing lengths);
:func:`unsupported_reason` refuses the others, so ``engine="auto"`` gives them to
the generic engine.  Gradients of the final states (``dh_n``, ``dc_n``) start the
backward recursion, with or without lengths.

Float16: arrays in float16, element math in float32 (the kernels are templates on
a storage and an arithmetic type, see :mod:`._kernels`), products through
``cublasGemmEx`` with float16 operands and ``CUBLAS_COMPUTE_32F`` (float32
accumulation, as ``cupy.matmul`` does).  bfloat16: see :func:`unsupported_reason`.

Determinism: every kernel writes each element from one thread, and every sum
(``dW``, ``db``, ``dx``, the per-segment totals) is a cuBLAS product or an
element-wise add, never an atomic update; cuBLAS gives the same bits run to run
on one device (its documented reproducibility), and every product goes through
one call with the same arguments and workspace size, eager or captured.  So two
runs of the same call give bitwise identical results, with or without graphs.

Graph replay (off by default; :func:`set_graph_replay`, or the environment
variable ``XLSTM_CUPY_GRAPHS=1``).  The forward time loop and the backward time
loop are each captured once as a CUDA graph (``cupy.cuda.Stream.begin_capture``)
per (shapes, dtype, device, recompute) and replayed with one launch.  A graph
reads and writes fixed addresses, so each shape gets a *plan* owning static
buffers: inputs are copied in before a launch and results copied out after it
(one device-to-device copy of the states, one of the gradients), so nothing
returned to the caller is ever overwritten by a later replay.  A backward call
on the cache that the latest forward replay of the same plan returned reads the
plan's own copy of the states and skips copying them in.  Plans are kept in a
small LRU cache (:data:`MAX_GRAPH_PLANS`; :func:`clear_graph_cache` frees them).
The captured region allocates nothing and changes no cuBLAS state: every array
it touches is preallocated, the products are ``cublasGemmEx`` calls on the
engine's own handle, whose stream and workspace (the plan's, so that plans and
eager calls never share scratch memory) are bound before the capture begins
(:mod:`._blas` says why ``cupy.matmul`` cannot be used: CuPy 14 refuses cuBLAS
during a capture).  Backward graphs are captured per set of gradients given
(``dc``, ``dh_n``, ``dc_n``).

Variable-length calls run eagerly even with graph replay on.  A graph fixes every
product's shape and every launch's grid, and with a shrinking batch those follow
the whole lengths pattern (``running[t]`` for every step): a plan keyed by it
would be captured anew for nearly every training batch (a capture costs more than
an eager run) and would evict the plans of fixed shapes, each holding a cache's
worth of device memory.  Running every row and masking inside a graph would keep
one graph per shape, but pay the padded products the shrinking batch saves.

The engine reaches CuPy only through :func:`_runtime`, one small object, so that
its bookkeeping (segments, buffers, capture, copy-in and copy-out, row order) can
also be exercised on a CPU with a NumPy stand-in (``tests/engines/test_cupy_cpu.py``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cache import SequenceCache, inverse_order, segment_length
from . import _blas, _kernels

GRAPH_ENV = "XLSTM_CUPY_GRAPHS"
"""Environment variable: ``1`` turns graph replay on, ``0`` off (read per call)."""

GRAPH_DEFAULT = False
"""Graph replay when neither :func:`set_graph_replay` nor :data:`GRAPH_ENV` says otherwise."""

MAX_GRAPH_PLANS = 4
"""At most this many shapes keep captured graphs and their static buffers."""

_ALIGN_BYTES = 256  # every buffer carved from a slab starts this aligned (cuBLAS likes it)

_graph_override: bool | None = None


# --------------------------------------------------------------------------- switches


def unsupported_reason(xp: Any, dtype: Any, *, cache: SequenceCache | None = None) -> str | None:
    """Why the fused kernels cannot run this call (``None``: they can).

    Parameters
    ----------
    xp : namespace
        The call's namespace (the dispatcher has checked it is CuPy).
    dtype : dtype
        float16, float32 and float64 run.  bfloat16 does not: CuPy has no bfloat16
        dtype of its own (only an experimental one through ml_dtypes), so the
        kernels are not instantiated for it.
    cache : SequenceCache, optional
        Backward: a variable-length cache must have its rows sorted by decreasing
        length (as :func:`forward` stores them); see :func:`cache_reason`.

    Returns
    -------
    str or None
        The reason, phrased to follow "it cannot run this call: ".
    """
    reason = _kernels.dtype_reason(np.dtype(dtype).name)
    if reason is None and cache is not None:
        reason = cache_reason(cache)
    return reason


def cache_reason(cache: SequenceCache) -> str | None:
    """Why :func:`backward` cannot read ``cache`` (``None``: it can).

    With lengths, the running sequences must be a prefix of the rows at every
    step: the stored lengths must not increase.  Caches from this engine are
    stored so; the generic engine's keep the batch order, which usually is not.
    """
    if cache.lengths is not None and np.any(np.diff(cache.lengths) > 0):
        return (
            "the cache's rows are not sorted by decreasing length (made by another "
            "engine); the generic engine reads it"
        )
    return None


def set_graph_replay(enabled: bool | None) -> None:
    """Turn CUDA-graph replay on (``True``) or off (``False``) for this process.

    ``None`` returns to the default: :data:`GRAPH_ENV` if set, else
    :data:`GRAPH_DEFAULT`.
    """
    global _graph_override
    if enabled is not None and not isinstance(enabled, bool):
        msg = f"`enabled` must be True, False or None, got {enabled!r}"
        raise TypeError(msg)
    _graph_override = enabled


def graph_replay_enabled() -> bool:
    """Whether the next call replays CUDA graphs (see :func:`set_graph_replay`)."""
    if _graph_override is not None:
        return _graph_override
    value = os.environ.get(GRAPH_ENV, "").strip()
    if value == "":
        return GRAPH_DEFAULT
    if value not in ("0", "1"):
        msg = f"{GRAPH_ENV}={value!r}; expected 0 or 1"
        raise ValueError(msg)
    return value == "1"


@contextlib.contextmanager
def graph_replay(enabled: bool | None) -> Iterator[None]:
    """Context manager form of :func:`set_graph_replay` (restores the old setting)."""
    previous = _graph_override
    set_graph_replay(enabled)
    try:
        yield
    finally:
        set_graph_replay(previous)


# --------------------------------------------------------------------------- CuPy services


class _CupyRuntime:
    """The few CuPy services the engine uses: arrays, kernels, products, devices, graphs.

    ``xp`` and ``library`` default to CuPy and :class:`._blas.CupyCublas`; the CPU
    tests hand in NumPy stand-ins for both and run the rest of this class as is.
    """

    def __init__(self, xp: Any = None, library: Callable[[], Any] | None = None) -> None:
        self.xp = _kernels.import_cupy() if xp is None else xp
        self._library_factory = _blas.CupyCublas if library is None else library
        self._library: Any = None
        self._capture_streams: dict[int, Any] = {}
        self._local = threading.local()  # per thread: device id -> _blas.Gemm

    def kernels(self, dtype: Any, device_id: int) -> _kernels.StepKernels:
        return _kernels.step_kernels(np.dtype(dtype).name, device_id)

    def compute_capability(self, device_id: int) -> int:
        return int(self.xp.cuda.Device(device_id).compute_capability)

    def compute_types(self) -> dict[str, int]:
        return _blas.cupy_compute_types()

    @staticmethod
    def address(array: Any) -> int:
        return int(array.data.ptr)

    def stream_ptr(self) -> int:
        """The current stream (cuBLAS is bound to it for eager products)."""
        return int(self.xp.cuda.get_current_stream().ptr)

    def blas(self, device_id: int) -> _blas.Gemm:
        """This thread's cuBLAS handle for ``device_id`` (created with that device current)."""
        gemms = self._local.__dict__.setdefault("gemms", {})
        gemm = gemms.get(device_id)
        if gemm is None:
            if self._library is None:
                self._library = self._library_factory()
            capability = self.compute_capability(device_id)
            gemm = gemms[device_id] = _blas.Gemm(
                self._library,
                address=self.address,
                allocate=lambda nbytes: self.xp.empty(nbytes, dtype=np.uint8),
                workspace_size=_blas.workspace_bytes(capability),
                compute_types=self.compute_types(),
                algorithms={name: _blas.algorithm(name, capability) for name in _blas.DATA_TYPES},
            )
        return gemm

    def device(self, array: Any) -> Any:
        """Context manager making ``array``'s device current."""
        return array.device

    def device_id(self, array: Any) -> int:
        return int(array.device.id)

    def record(self) -> Any:
        """An event recorded on the current stream."""
        return self.xp.cuda.get_current_stream().record()

    def wait(self, event: Any) -> None:
        """Make the current stream wait for ``event``."""
        self.xp.cuda.get_current_stream().wait_event(event)

    def capture(self, program: Callable[[_blas.Gemm], None], device_id: int, workspace: Any) -> Any:
        """Run ``program(gemm)`` once for real, then capture it as a CUDA graph.

        Both happen on a private non-blocking stream (capture cannot use the
        legacy default stream), ordered after the current stream's work and
        before its later work.  Before either, this thread's cuBLAS handle is
        bound to that stream and to ``workspace`` (the plan's own), so that
        nothing inside the capture changes cuBLAS state (CuPy refuses
        ``setStream`` there).  The real run loads the kernels outside the
        capture; its results are the results of this call.
        """
        cuda = self.xp.cuda
        stream = self._capture_streams.get(device_id)
        if stream is None:
            stream = self._capture_streams[device_id] = cuda.Stream(non_blocking=True)
        current = cuda.get_current_stream()
        stream.wait_event(current.record())
        gemm = self.blas(device_id)
        with stream:
            gemm.bind(int(stream.ptr), workspace)
            program(gemm)
            stream.begin_capture()
            try:
                program(gemm)
            except BaseException:
                # Leave capture mode; the capture is invalid anyway, and the
                # error that made it so is the one to report.
                with contextlib.suppress(cuda.runtime.CUDARuntimeError):
                    stream.end_capture()
                raise
            graph = stream.end_capture()
        current.wait_event(stream.record())
        return graph

    def launch(self, graph: Any) -> None:
        graph.launch(stream=self.xp.cuda.get_current_stream())


@functools.cache
def _runtime() -> _CupyRuntime:
    return _CupyRuntime()


# --------------------------------------------------------------------------- shapes, buffers


@dataclass(frozen=True)
class _Dims:
    """Sizes of one call: inputs n_x, batch m, steps t_x, units n_a, segment length.

    ``t_end``: steps that run (the longest sequence; ``t_x`` without lengths).
    """

    n_x: int
    m: int
    t_x: int
    n_a: int
    step: int
    t_end: int

    @classmethod
    def of(cls, x: Any, n_a: int, recompute: bool, t_end: int | None = None) -> _Dims:
        n_x, m, t_x = (int(s) for s in x.shape)
        step = segment_length(t_x, m, int(n_a), recompute)
        return cls(n_x, m, t_x, int(n_a), step, t_x if t_end is None else int(t_end))

    def segments(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each segment of the steps that run, in time order."""
        return [(s, min(self.t_end, s + self.step)) for s in range(0, self.t_end, self.step)]


@dataclass(frozen=True)
class _Rows:
    """Row bookkeeping of a call, on the host: storage order and running sequences.

    ``order[r]``: the batch entry stored in row ``r`` (``None``: batch order).
    ``lengths``: in storage order, non-increasing (``None``: no lengths).
    ``running[t]``: sequences with ``length > t``, the first rows (``None``: all).
    """

    order: np.ndarray | None = None
    lengths: np.ndarray | None = None
    running: np.ndarray | None = None

    @classmethod
    def sorted_by_length(cls, lengths: np.ndarray, t_x: int) -> _Rows:
        """Rows sorted by decreasing length (stable: ties keep the batch order)."""
        order = np.argsort(-lengths, kind="stable")
        if np.array_equal(order, np.arange(order.shape[0])):
            order = None
        stored = lengths if order is None else lengths[order]
        return cls(order, stored, _running(stored, t_x))

    @classmethod
    def of_cache(cls, cache: SequenceCache) -> _Rows:
        t_x = int(cache.h.shape[0]) - 1
        running = None if cache.lengths is None else _running(cache.lengths, t_x)
        return cls(cache.order, cache.lengths, running)

    @property
    def t_end(self) -> int | None:
        return None if self.lengths is None else int(self.lengths.max())


def _running(stored_lengths: np.ndarray, t_x: int) -> np.ndarray:
    """``running[t]``: lengths above ``t`` (a prefix: the lengths do not increase)."""
    return np.count_nonzero(stored_lengths[None, :] > np.arange(t_x)[:, None], axis=1)


@dataclass
class _Slab:
    """Named C-contiguous buffers carved from one allocation (one copy moves them all)."""

    shapes: dict[str, tuple[int, ...]]
    dtype: Any
    offsets: dict[str, int] = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        align = max(1, _ALIGN_BYTES // np.dtype(self.dtype).itemsize)
        self.offsets, total = {}, 0
        for name, shape in self.shapes.items():
            self.offsets[name] = total
            total += -(-int(np.prod(shape)) // align) * align
        self.size = max(total, 1)

    def allocate(self, xp: Any) -> tuple[Any, dict[str, Any]]:
        flat = xp.empty(self.size, dtype=self.dtype)
        return flat, self.views(flat)

    def views(self, flat: Any) -> dict[str, Any]:
        views = {}
        for name, shape in self.shapes.items():
            start = self.offsets[name]
            views[name] = flat[start : start + int(np.prod(shape))].reshape(shape)
        return views


def _input_shapes(d: _Dims) -> dict[str, tuple[int, ...]]:
    """Time-major input rows and the weights, split into contiguous blocks."""
    return {
        "x_rows": (d.t_x * d.m, d.n_x),
        "w_x": (4 * d.n_a, d.n_x),
        "w_h": (4 * d.n_a, d.n_a),
        "b": (4 * d.n_a,),
    }


def _state_shapes(d: _Dims, recompute: bool) -> dict[str, tuple[int, ...]]:
    """What the forward returns (the SequenceCache arrays): no gates when recomputing."""
    shapes = {"h": (d.t_x + 1, d.m, d.n_a), "c": (d.t_x + 1, d.m, d.n_a)}
    if not recompute:
        shapes["gates"] = (d.t_x, d.m, 4 * d.n_a)
        shapes["tanh_c"] = (d.t_x, d.m, d.n_a)
    return shapes


def _forward_work_shapes(d: _Dims, recompute: bool) -> dict[str, tuple[int, ...]]:
    shapes = {"recurrent": (d.m, 4 * d.n_a)}
    if recompute:  # one segment of gates, one step of tanh(c); not kept
        shapes["gates"] = (d.step, d.m, 4 * d.n_a)
        shapes["tanh_c"] = (1, d.m, d.n_a)
    return shapes


def _backward_work_shapes(d: _Dims, recompute: bool) -> dict[str, tuple[int, ...]]:
    shapes = {
        "dz": (d.step, d.m, 4 * d.n_a),
        "ones": (d.step * d.m,),
        "d_recurrent": (4 * d.n_a, d.n_a),
        "d_input": (4 * d.n_a, d.n_x),
    }
    if len(d.segments()) > 1:  # several segments: their products are summed
        shapes["sum_recurrent"] = (4 * d.n_a, d.n_a)
        shapes["sum_input"] = (4 * d.n_a, d.n_x)
        shapes["sum_bias"] = (4 * d.n_a,)
    if recompute:
        shapes["gates"] = (d.step, d.m, 4 * d.n_a)
        shapes["recurrent"] = (d.step * d.m, 4 * d.n_a)
        shapes["tanh_c"] = (d.step, d.m, d.n_a)
    return shapes


def _gradient_shapes(d: _Dims) -> dict[str, tuple[int, ...]]:
    """What the backward returns; ``dh``/``dc`` run through the loop and end as dh0/dc0."""
    return {
        "dx_tm": (d.t_x, d.m, d.n_x),
        "dh": (d.m, d.n_a),
        "dc": (d.m, d.n_a),
        "d_weights": (4 * d.n_a, d.n_a + d.n_x),
        "d_bias": (4 * d.n_a,),
    }


def _external_shapes(d: _Dims, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Gradients from outside: ``da``, ``dc`` per step, ``dh_n``, ``dc_n`` at the end."""
    per_step = (d.t_x, d.m, d.n_a)
    final = (d.m, d.n_a)
    shapes = {"da": per_step, "dc": per_step, "dh_n": final, "dc_n": final}
    return {name: shapes[name] for name in names}


# --------------------------------------------------------------------------- the two programs
#
# Each issues every device operation of one pass on the current stream, reading
# and writing only the arrays it is given (no allocation, no host sync), so it
# can run eagerly or be captured as a graph.  `running` (host counts, variable-
# length batches only) sets how many leading rows each step computes.


def _forward_program(
    xp, kernels, gemm, d: _Dims, inputs: dict, states: dict, work: dict, running=None
) -> None:
    """The forward time loop.  ``states['h'][0]``, ``states['c'][0]`` hold h0, c0."""
    m, n_a = d.m, d.n_a
    h, c = states["h"], states["c"]
    recompute = "gates" in work
    gates = work["gates"] if recompute else states["gates"]
    tanh_c = work["tanh_c"] if recompute else states["tanh_c"]
    w_x_t, w_h_t = inputs["w_x"].T, inputs["w_h"].T  # F-contiguous: cuBLAS transposes
    recurrent = work["recurrent"]
    for start, stop in d.segments():
        k = stop - start
        segment = gates[:k] if recompute else gates[start:stop]
        gemm.matmul(inputs["x_rows"][start * m : stop * m], w_x_t, segment.reshape(k * m, 4 * n_a))
        for t in range(start, stop):
            active = m if running is None else int(running[t])
            gemm.matmul(h[t][:active], w_h_t, recurrent[:active])
            kernels.forward_step(
                segment[t - start],
                recurrent,
                inputs["b"],
                c[t],
                c[t + 1],
                tanh_c[0] if recompute else tanh_c[t],
                h[t],
                h[t + 1],
                active,
            )
    if d.t_end < d.t_x:
        # Past the longest sequence nothing runs: every state is carried, no gates.
        xp.copyto(h[d.t_end + 1 :], h[d.t_end])
        xp.copyto(c[d.t_end + 1 :], c[d.t_end])
        if not recompute:
            xp.copyto(gates[d.t_end :], 0.0)
            xp.copyto(tanh_c[d.t_end :], 0.0)


def _backward_program(
    xp, kernels, gemm, d: _Dims, inputs: dict, states: dict, external: dict, work: dict,
    grads: dict, running=None,
) -> None:  # fmt: skip
    """Backpropagation through time, last segment first.

    ``external`` holds ``da`` and optionally ``dc`` (time-major, contiguous) and
    ``dh_n``, ``dc_n`` (gradients of the final states; absent: zero).  Writes
    every array in ``grads``.
    """
    m, n_a = d.m, d.n_a
    h, c = states["h"], states["c"]
    recompute = "gates" not in states
    w_x, w_h = inputs["w_x"], inputs["w_h"]
    w_x_t, w_h_t = w_x.T, w_h.T
    da, dc_external = external["da"], external.get("dc")
    dh, dc = grads["dh"], grads["dc"]
    xp.copyto(dh, external.get("dh_n", 0.0))  # absent: no gradient reaches h_T
    xp.copyto(dc, external.get("dc_n", 0.0))
    xp.copyto(work["ones"], 1.0)
    several = "sum_recurrent" in work
    for index, (start, stop) in enumerate(reversed(d.segments())):
        k = stop - start
        rows = k * m
        if recompute:
            gates, tanh_c = work["gates"][:k], work["tanh_c"][:k]
            gemm.matmul(inputs["x_rows"][start * m : stop * m], w_x_t, gates.reshape(rows, 4 * n_a))
            gemm.matmul(h[start:stop].reshape(rows, n_a), w_h_t, work["recurrent"][:rows])
            kernels.gates(
                gates.reshape(rows, 4 * n_a),
                work["recurrent"][:rows],
                inputs["b"],
                c[start + 1 : stop + 1].reshape(rows, n_a),
                tanh_c.reshape(rows, n_a),
            )
        else:
            gates, tanh_c = states["gates"][start:stop], states["tanh_c"][start:stop]
        dz = work["dz"]
        for t in range(stop - 1, start - 1, -1):
            local = t - start
            active = m if running is None else int(running[t])
            kernels.backward_step(
                da[t],
                dh,
                None if dc_external is None else dc_external[t],
                dc,
                gates[local],
                c[t],
                tanh_c[local],
                dz[local],
                active,
            )
            # Finished rows keep dh: the gradient passes through their padded step.
            gemm.matmul(dz[local][:active], w_h, dh[:active])
        dz_rows = dz[:k].reshape(rows, 4 * n_a)
        dz_rows_t = dz_rows.T
        first = index == 0
        targets = (
            (work["d_recurrent"], work["d_input"], grads["d_bias"])
            if first
            else (work["sum_recurrent"], work["sum_input"], work["sum_bias"])
        )
        gemm.matmul(dz_rows_t, h[start:stop].reshape(rows, n_a), targets[0])
        gemm.matmul(dz_rows_t, inputs["x_rows"][start * m : stop * m], targets[1])
        gemm.matmul(work["ones"][:rows], dz_rows, targets[2])
        if several and not first:
            xp.add(work["d_recurrent"], targets[0], out=work["d_recurrent"])
            xp.add(work["d_input"], targets[1], out=work["d_input"])
            xp.add(grads["d_bias"], targets[2], out=grads["d_bias"])
        gemm.matmul(dz_rows, w_x, grads["dx_tm"][start:stop].reshape(rows, d.n_x))
    if d.t_end < d.t_x:
        xp.copyto(grads["dx_tm"][d.t_end :], 0.0)  # steps past every sequence's end
    xp.copyto(grads["d_weights"][:, :n_a], work["d_recurrent"])
    xp.copyto(grads["d_weights"][:, n_a:], work["d_input"])


def _in_rows(xp, array: Any, index: Any, axis: int) -> Any:
    """``array`` with its batch axis in storage order (``index``: device order or None)."""
    return array if index is None else xp.take(array, index, axis=axis)


def _fill_inputs(xp, inputs: dict, x: Any, W: Any, b: Any, n_a: int, index: Any = None) -> None:
    n_x, m, t_x = x.shape
    x_tm = _in_rows(xp, x.transpose(2, 1, 0), index, 1)
    xp.copyto(inputs["x_rows"].reshape(t_x, m, n_x), x_tm)
    xp.copyto(inputs["w_h"], W[:, :n_a])
    xp.copyto(inputs["w_x"], W[:, n_a:])
    xp.copyto(inputs["b"], b)


def _external(
    xp, da_tm: Any, dc_tm: Any, dh_n: Any, dc_n: Any, index: Any = None
) -> dict[str, Any]:
    """The given external gradients, contiguous, in storage order (eager calls)."""
    given = {"da": (da_tm, 1), "dc": (dc_tm, 1), "dh_n": (dh_n, 0), "dc_n": (dc_n, 0)}
    return {
        name: xp.ascontiguousarray(_in_rows(xp, array, index, axis))
        for name, (array, axis) in given.items()
        if array is not None
    }


def _results(xp, grads: dict, inverse: Any = None) -> tuple:
    """``(dx, dh0, dc0, dW, db)`` in batch order (``inverse`` undoes the storage order)."""
    return (
        _in_rows(xp, grads["dx_tm"], inverse, 1),
        _in_rows(xp, grads["dh"], inverse, 0),
        _in_rows(xp, grads["dc"], inverse, 0),
        grads["d_weights"],
        grads["d_bias"],
    )


# --------------------------------------------------------------------------- eager path


def _eager_blas(rt, x) -> _blas.Gemm:
    """This thread's cuBLAS handle, bound to the current stream and its workspace there."""
    gemm = rt.blas(rt.device_id(x))
    gemm.bind_eager(rt.stream_ptr())
    return gemm


def _device_index(xp, order: np.ndarray | None) -> Any:
    return None if order is None else xp.asarray(order)


def _forward_eager(rt, x, h0, c0, W, b, recompute: bool, lengths=None) -> SequenceCache:
    xp = rt.xp
    rows = _Rows() if lengths is None else _Rows.sorted_by_length(lengths, int(x.shape[2]))
    d = _Dims.of(x, h0.shape[1], recompute, rows.t_end)
    kernels = rt.kernels(x.dtype, rt.device_id(x))
    gemm = _eager_blas(rt, x)
    index = _device_index(xp, rows.order)
    _, inputs = _Slab(_input_shapes(d), x.dtype).allocate(xp)
    _, states = _Slab(_state_shapes(d, recompute), x.dtype).allocate(xp)
    _, work = _Slab(_forward_work_shapes(d, recompute), x.dtype).allocate(xp)
    _fill_inputs(xp, inputs, x, W, b, d.n_a, index)
    xp.copyto(states["h"][0], _in_rows(xp, h0, index, 0))
    xp.copyto(states["c"][0], _in_rows(xp, c0, index, 0))
    _forward_program(xp, kernels, gemm, d, inputs, states, work, rows.running)
    return SequenceCache(
        states["h"], states["c"], states.get("gates"), states.get("tanh_c"), W, b,
        rows.lengths, rows.order,
    )  # fmt: skip


def _cache_states(xp, cache: SequenceCache) -> dict:
    states = {"h": xp.ascontiguousarray(cache.h), "c": xp.ascontiguousarray(cache.c)}
    if not cache.recompute:
        states["gates"] = xp.ascontiguousarray(cache.gates)
        states["tanh_c"] = xp.ascontiguousarray(cache.tanh_c)
    return states


def _backward_eager(rt, cache: SequenceCache, x, da_tm, dc_tm, dh_n, dc_n) -> tuple:
    xp = rt.xp
    recompute = cache.recompute
    rows = _Rows.of_cache(cache)
    d = _Dims.of(x, cache.h.shape[2], recompute, rows.t_end)
    kernels = rt.kernels(x.dtype, rt.device_id(x))
    gemm = _eager_blas(rt, x)
    index = _device_index(xp, rows.order)
    _, inputs = _Slab(_input_shapes(d), x.dtype).allocate(xp)
    _, work = _Slab(_backward_work_shapes(d, recompute), x.dtype).allocate(xp)
    _, grads = _Slab(_gradient_shapes(d), x.dtype).allocate(xp)
    _fill_inputs(xp, inputs, x, cache.W, cache.b, d.n_a, index)
    external = _external(xp, da_tm, dc_tm, dh_n, dc_n, index)
    states = _cache_states(xp, cache)
    _backward_program(xp, kernels, gemm, d, inputs, states, external, work, grads, rows.running)
    inverse = None if rows.order is None else _device_index(xp, inverse_order(rows.order))
    return _results(xp, grads, inverse)


# --------------------------------------------------------------------------- graph replay


class _Plan:
    """Static buffers and captured graphs for one (shapes, dtype, device, recompute).

    ``inputs``, ``states`` and the work areas are what the graphs read and
    write.  ``fresh`` remembers the cache arrays the latest forward replay
    returned: while they are alive and nothing has overwritten ``states``
    since, ``states`` holds exactly their values.
    """

    def __init__(self, xp, d: _Dims, dtype: Any, recompute: bool):
        self.d, self.dtype, self.recompute = d, dtype, recompute
        _, self.inputs = _Slab(_input_shapes(d), dtype).allocate(xp)
        self.state_slab = _Slab(_state_shapes(d, recompute), dtype)
        self.state_flat, self.states = self.state_slab.allocate(xp)
        _, self.forward_work = _Slab(_forward_work_shapes(d, recompute), dtype).allocate(xp)
        self.forward_graph: Any = None
        self.backward_parts: dict | None = None
        self.backward_graphs: dict[tuple[str, ...], Any] = {}
        self.fresh: tuple | None = None
        self.last_use: Any = None  # event after the latest work on the static buffers
        # cuBLAS scratch of the captured products (a plan's replays are ordered, so
        # they may share it; other plans' and eager runs' may overlap, so not theirs).
        self.workspace: Any = None
        self.handles: list = []  # the cuBLAS handles its graphs were captured with

    def remember(self, cache: SequenceCache | None) -> None:
        if cache is None:
            self.fresh = None
            return
        self.fresh = tuple(
            None if array is None else weakref.ref(array)
            for array in (cache.h, cache.c, cache.gates, cache.tanh_c)
        )

    def holds(self, cache: SequenceCache) -> bool:
        """Whether ``states`` holds ``cache``'s values (so copying them in can be skipped)."""
        if self.fresh is None:
            return False
        arrays = (cache.h, cache.c, cache.gates, cache.tanh_c)
        return all(
            (ref is None and array is None) or (ref is not None and ref() is array)
            for ref, array in zip(self.fresh, arrays, strict=True)
        )

    def backward_buffers(self, xp, names: tuple[str, ...]) -> dict:
        """Backward buffers, allocated on first use (each external gradient on first use)."""
        d = self.d
        if self.backward_parts is None:
            _, work = _Slab(_backward_work_shapes(d, self.recompute), self.dtype).allocate(xp)
            grad_slab = _Slab(_gradient_shapes(d), self.dtype)
            grad_flat, grads = grad_slab.allocate(xp)
            self.backward_parts = {
                "external": {},
                "work": work,
                "grad_slab": grad_slab,
                "grad_flat": grad_flat,
                "grads": grads,
            }
        parts = self.backward_parts
        missing = tuple(name for name in names if name not in parts["external"])
        if missing:
            _, extra = _Slab(_external_shapes(d, missing), self.dtype).allocate(xp)
            parts["external"] = {**parts["external"], **extra}
        return parts


class _PlanCache:
    """Least-recently-used plans, keyed by (shapes, dtype, device, recompute)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, build: Callable[[], _Plan]) -> _Plan:
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
            while len(self._plans) >= self.capacity:
                _, evicted = self._plans.popitem(last=False)
                if evicted.last_use is not None:
                    evicted.last_use.synchronize()  # no replay still using its buffers
            plan = self._plans[key] = build()
            return plan

    def clear(self) -> None:
        with self._lock:
            for plan in self._plans.values():
                if plan.last_use is not None:
                    plan.last_use.synchronize()
            self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


_PLANS = _PlanCache(MAX_GRAPH_PLANS)


def clear_graph_cache() -> None:
    """Drop every captured graph and its static buffers."""
    _PLANS.clear()


def _plan_for(rt, d: _Dims, dtype: Any, device_id: int, recompute: bool) -> _Plan:
    key = (d, np.dtype(dtype).str, device_id, recompute)
    plan = _PLANS.get(key, lambda: _Plan(rt.xp, d, dtype, recompute))
    if plan.last_use is not None:
        rt.wait(plan.last_use)  # earlier replays (possibly on another stream) first
    return plan


def _captured(rt, program: Callable[[Any], None], plan: _Plan, device_id: int, what: str) -> Any:
    """Capture ``program(gemm)`` with the plan's cuBLAS workspace (allocated on first use)."""
    gemm = rt.blas(device_id)
    if plan.workspace is None:
        plan.workspace = gemm.new_workspace()
    if not any(kept is gemm for kept in plan.handles):
        plan.handles.append(gemm)  # the graph's products ran on its handle: keep it alive
    try:
        return rt.capture(program, device_id, plan.workspace)
    except Exception as error:
        msg = (
            f"capturing the {what} time loop as a CUDA graph failed ({error}); turn graph "
            f"replay off with {GRAPH_ENV}=0 or xlstm.set_graph_replay(False)"
        )
        raise RuntimeError(msg) from error


def _forward_replayed(rt, x, h0, c0, W, b, recompute: bool) -> SequenceCache:
    xp = rt.xp
    d = _Dims.of(x, h0.shape[1], recompute)
    device_id = rt.device_id(x)
    plan = _plan_for(rt, d, x.dtype, device_id, recompute)
    _fill_inputs(xp, plan.inputs, x, W, b, d.n_a)
    xp.copyto(plan.states["h"][0], h0)
    xp.copyto(plan.states["c"][0], c0)
    if plan.forward_graph is None:
        kernels = rt.kernels(x.dtype, device_id)

        def program(gemm) -> None:
            _forward_program(xp, kernels, gemm, d, plan.inputs, plan.states, plan.forward_work)

        plan.forward_graph = _captured(rt, program, plan, device_id, "forward")
    else:
        rt.launch(plan.forward_graph)
    # Copy out: the caller's arrays must survive the next replay.
    states = plan.state_slab.views(plan.state_flat.copy())
    plan.last_use = rt.record()
    cache = SequenceCache(states["h"], states["c"], states.get("gates"), states.get("tanh_c"), W, b)
    plan.remember(cache)
    return cache


def _backward_replayed(rt, cache: SequenceCache, x, da_tm, dc_tm, dh_n, dc_n) -> tuple:
    xp = rt.xp
    recompute = cache.recompute
    d = _Dims.of(x, cache.h.shape[2], recompute)
    device_id = rt.device_id(x)
    plan = _plan_for(rt, d, x.dtype, device_id, recompute)
    given = {"da": da_tm, "dc": dc_tm, "dh_n": dh_n, "dc_n": dc_n}
    names = tuple(name for name, array in given.items() if array is not None)
    parts = plan.backward_buffers(xp, names)
    _fill_inputs(xp, plan.inputs, x, cache.W, cache.b, d.n_a)
    if not plan.holds(cache):
        for name, array in plan.states.items():
            xp.copyto(array, getattr(cache, name))
        plan.remember(cache)
    used = {name: parts["external"][name] for name in names}
    for name in names:
        xp.copyto(used[name], given[name])
    graph = plan.backward_graphs.get(names)
    if graph is None:
        kernels = rt.kernels(x.dtype, device_id)

        def program(gemm) -> None:
            _backward_program(
                xp, kernels, gemm, d, plan.inputs, plan.states, used, parts["work"],
                parts["grads"],
            )  # fmt: skip

        plan.backward_graphs[names] = _captured(rt, program, plan, device_id, "backward")
    else:
        rt.launch(graph)
    grads = parts["grad_slab"].views(parts["grad_flat"].copy())
    plan.last_use = rt.record()
    return _results(xp, grads)


# --------------------------------------------------------------------------- the protocol


def forward(
    x, h0, c0, W, b, *, xp: Any = None, recompute: bool, lengths: Any = None
) -> SequenceCache:
    """Run the sequence (contract: :class:`~xlstm._engines.contract.EngineModule`).

    ``x`` is time-major ``(T, m, n_x)``; the kernels read the seed-layout view of it.
    ``recompute=True`` keeps only the states (``gates`` and ``tanh_c`` are ``None``;
    the per-segment gate scratch is freed on return, or owned by the graph plan).
    With ``lengths`` (host int64, ``1 <= lengths <= T``) the cache's rows are sorted
    by decreasing length (``cache.order``) and the call runs eagerly.
    """
    x = x.transpose(2, 1, 0)
    rt = _runtime()
    with rt.device(x):
        if lengths is None and graph_replay_enabled():
            return _forward_replayed(rt, x, h0, c0, W, b, recompute)
        return _forward_eager(rt, x, h0, c0, W, b, recompute, lengths)


def backward(
    cache: SequenceCache, x, da_tm, dc_tm, *, xp: Any = None, dh_n: Any = None, dc_n: Any = None
):
    """Backpropagation through time (contract: :class:`~xlstm._engines.contract.EngineModule`).

    ``dh_n``, ``dc_n``: gradients reaching the final states (each sequence's last
    state), batch order.  Variable-length caches (and any cache with a row order)
    run eagerly; the cache must pass :func:`cache_reason`.
    """
    reason = cache_reason(cache)
    if reason is not None:
        raise ValueError(f"the CuPy engine cannot read this cache: {reason}")
    x = x.transpose(2, 1, 0)
    rt = _runtime()
    with rt.device(x):
        if cache.lengths is None and cache.order is None and graph_replay_enabled():
            return _backward_replayed(rt, cache, x, da_tm, dc_tm, dh_n, dc_n)
        return _backward_eager(rt, cache, x, da_tm, dc_tm, dh_n, dc_n)
