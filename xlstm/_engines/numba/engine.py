"""The numba engine: fused, compiled step kernels between products on NumPy's BLAS.

Implements the engine contract (:mod:`xlstm._engines.contract`) for NumPy float32 and
float64 arrays; other dtypes are declined (:func:`unsupported_reason`), so ``"auto"``
gives them to the NumPy engine.  Same recurrence, semantics and
:class:`~xlstm._engines.cache.SequenceCache` as the generic engine
(:mod:`xlstm._engines.generic`).

Per step.  Forward: the step's product on BLAS, then one compiled kernel
(:func:`~.kernels.forward_step`) that activates the four gates and writes ``c_t``,
``tanh(c_t)`` and ``h_t``: one pass over the step's memory instead of the NumPy engine's
nine ufunc calls.  The steps of a segment run as one compiled loop
(:func:`~.loops.forward_steps`), which calls BLAS ``sgemm``/``dgemm`` directly (SciPy's,
through numba's own gemm wrapper): no Python between two steps.  The product is the whole
pre-activation ``[W_h | W_x | b] [h_{t-1}; x_t; 1]`` (the bias rides along as a column
of the weights and a row of ones, so no kernel adds it), or, for large problems
(:data:`FUSED_PRODUCT`), ``W_h h_{t-1}`` added to an input projection ``[W_x | b]
[x_t; 1]`` made for a whole segment of steps (:func:`~xlstm._engines.cache.segment_length`)
as one large product on NumPy's BLAS.  Backward: per step one kernel
(:func:`~.kernels.backward_step`) turns the gradients reaching ``h_t`` and ``c_t`` into the
gate gradients ``dz_t`` and ``dc_{t-1}`` (local derivatives included), then ``dh_{t-1} =
W_h^T dz_t`` on BLAS, again one compiled loop per segment (:func:`~.loops.backward_steps`);
per segment, large products give ``dW_h = dz [h_{t-1}]^T``, ``[dW_x | db] = dz [x_t; 1]^T``
and ``dx = dz^T W_x``.  (Products written as compiled loops inside the kernels, which
would save a call per step, were slower than the BLAS calls at every benchmark size, the
smallest included: their inner loop over the batch is too short to vectorise well.)

Both cores.  The memory-saving forward (``recompute=True``, which inference runs) can run the
two halves of a padded batch in two threads, each through the whole sequence with a
one-thread BLAS (:func:`_split_batch`): the batch columns of an LSTM never interact, so the
halves need no synchronisation between steps, and the element-wise kernels use the second
core too, which a two-thread BLAS alone leaves idle.  It is off (:data:`BATCH_SPLIT`): on
this project's machine it measured slower than the whole batch on a two-thread BLAS.

BLAS.  The compiled loops call NumPy's own BLAS (its CBLAS gemm, found in the library
NumPy's wheels bundle, :func:`.blas.numpy_gemm_addresses`), so that every product of a call
runs on one library and one thread pool; only where that library cannot be found do they
call SciPy's (a second pool, whose idle threads spin against NumPy's).

Results.  ``h`` and ``c`` are two views of one new block
(:func:`xlstm._engines.numpy.workspace.fresh_arrays`): freed together, reused by the C
allocator from the second call on, so no call pays a page fault per page of its results.

Layout, and why.  Per-step arrays are *feature-major* blocks stored time-major::

    gates  (T, 4 n_a, m)     c  (T + 1, n_a, m)     tanh_c  (T, n_a, m)

* The per-step products run as ``(4 n_a, n_a) @ (n_a, m)`` and ``(n_a, 4 n_a) @
  (4 n_a, m)``: on OpenBLAS with two threads these are faster than the batch-major
  ``h W_h^T`` and ``dz W_h`` (the long side, ``4 n_a``, is the one split between the
  threads).
* The kernels run one loop over a step's contiguous ``n_a m`` elements, which vectorises
  whatever ``m`` is (see :mod:`.kernels`); each step's block is contiguous (with time
  inside the rows, ``(4 n_a, T, m)``, a step touches ``4 n_a`` distant pieces of
  memory, many times slower).
* The hidden states alone are stored batch-major, ``h (T + 1, m, n_a)``, the boundary's
  layout: the public API's output layer and ``dW_h`` read them as rows ``(T m, n_a)``
  without a copy.  The forward kernel writes each step's ``h`` both ways (feature-major
  into the next step's right-hand side ``[h; x; 1]``, or a two-step buffer).
* The large per-segment products want time and batch together in the columns,
  ``(4 n_a, k m)``: one copy per segment converts between that and the kernels' layout
  (a compiled copy, :func:`~.kernels.steps_to_rows`); writing ``dz`` straight into it
  from the kernel, ``4 n_a`` scattered runs per step, was slower than the copy.

The returned :class:`~xlstm._engines.cache.SequenceCache` holds ``h`` as it is and
transposed views of the others, so it has the standard shapes and every engine reads
it.  This engine reads the padded caches of every engine (copied into its layout) and
the variable-length ones whose rows are sorted by decreasing length; it declines the
others (:func:`unsupported_reason`), so that ``"auto"`` gives them to an engine that
reads them as they are.

Variable-length batches: the rows are stored sorted by decreasing length
(``SequenceCache.order``, as the NumPy engine does), so the sequences still running at
step ``t`` are the first ``k_t`` columns: the per-step products work on those columns
only, and no step past the longest sequence runs.

Accuracy: float64 equals the generic engine to about 1e-15 relative (the kernels' float64
``tanh`` is accurate to 3 units in the last place); float32 stays as close to the float64
reference as the generic engine's float32 (its ``tanh`` is a rational approximation,
within 6.9 float32 units in the last place); see :mod:`.scalar` and the tests.

Compilation: the kernels are compiled on first use and cached on disk by numba
(``cache=True``); :func:`compile_seconds` makes them ready and reports the time.  Results
are bitwise reproducible: the kernels are element-wise and the products are BLAS calls
of fixed shapes.  The kernels release the GIL and keep no state, and every temporary
comes from the per-thread workspace (:mod:`xlstm._engines.numpy.workspace`), so two
threads may run the engine at once (the two directions of a bidirectional layer,
:mod:`xlstm._threads`).  This module imports numba only when a kernel is first needed,
so choosing an engine (:func:`unsupported_reason`) stays cheap.
"""

from __future__ import annotations

import functools
import time
from types import ModuleType
from typing import Any

import numpy as np

from ... import _threads
from ..cache import SequenceCache, inverse_order, segment_length
from ..numpy import workspace
from . import blas

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""The dtypes the kernels are written for."""


@functools.cache
def _kernels() -> ModuleType:
    from . import kernels  # imports numba: only when the engine runs

    return kernels


@functools.cache
def _loops() -> ModuleType:
    from . import loops  # imports numba: only when the engine runs

    return loops


def _gemm_address(dtype: np.dtype) -> int:
    """NumPy's CBLAS gemm for ``dtype`` (see :func:`.loops.numpy_gemm_addresses`), or 0."""
    single, double = blas.numpy_gemm_addresses()
    return single if dtype == np.float32 else double


def _check_gemm(status: int) -> None:
    """Raise if BLAS reported a failure (numba's gemm wrapper returns non-zero)."""
    if status != 0:
        msg = f"BLAS gemm failed inside the numba engine (status {status})"
        raise RuntimeError(msg)


@functools.cache
def _has_scipy_blas() -> bool:
    """Whether SciPy, whose BLAS numba's gemm wrapper calls, is importable (not imported).

    Needed only where NumPy's own BLAS gemm is not found (:mod:`.blas`)."""
    import importlib.util

    return importlib.util.find_spec("scipy") is not None


def unsupported_reason(xp: Any, dtype: Any, *, cache: SequenceCache | None = None) -> str | None:
    """float32 and float64 run (with NumPy's bundled BLAS, or SciPy's); a variable-length
    cache must have its rows sorted by length.

    A cache whose rows are not sorted by decreasing length (the generic engine's batch
    order, the NumPy engine's two groups) is declined, so ``"auto"`` gives it to an engine
    that reads it as it is; every padded cache is read (one made by another engine is
    copied into this engine's layout first).
    """
    if blas.numpy_gemm_addresses() == (0, 0) and not _has_scipy_blas():
        return (
            "NumPy's BLAS gemm was not found and SciPy, whose BLAS the compiled loops call "
            "instead, is not installed"
        )
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        return f"dtype {dtype!r} is not a NumPy dtype"
    if resolved not in SUPPORTED_DTYPES:
        return f"dtype {resolved.name} is not supported (float32 and float64 only)"
    if cache is not None and cache.lengths is not None and np.any(np.diff(cache.lengths) > 0):
        return "the cache's rows are not sorted by decreasing length (made by another engine)"
    return None


# --------------------------------------------------------------------------- rows and lengths


def _storage_order(lengths: np.ndarray | None) -> np.ndarray | None:
    """Rows sorted by decreasing length (stable); ``None`` when already in that order."""
    if lengths is None:
        return None
    order = np.argsort(-lengths, kind="stable")
    return None if np.array_equal(order, np.arange(order.shape[0])) else order


def _running(stored: np.ndarray | None, t_x: int, m: int) -> np.ndarray:
    """``running[t]``: columns still inside their sequence at step ``t`` (a prefix), int64."""
    if stored is None:
        return np.full(t_x, m, np.int64)
    return np.count_nonzero(stored[None, :] > np.arange(t_x)[:, None], axis=1).astype(np.int64)


def _copy_steps(array_tm: np.ndarray, start: int, stop: int, order, out: np.ndarray, axes):
    """Copy ``array_tm[start:stop].transpose(axes)`` into ``out``, rows in storage order.

    ``array_tm`` is time-major ``(T, m, n)``, any strides.  From the public API's seed
    layout ``(n, m, T)`` both layouts used here, ``(n, k, m)`` and ``(k, n, m)``, are
    transpositions within each feature's small ``(m, k)`` block: cheap copies.
    """
    segment = array_tm[start:stop]
    if order is not None:
        segment = np.take(segment, order, axis=1)
    elif (
        axes == _STEPS_FEATURES_BATCH
        and segment.strides[0] == segment.itemsize
        and segment[0].nbytes > TWO_STAGE_COPY_BYTES
    ):
        # Through (n, k, m): both copies then move runs of contiguous elements.
        k, m, n = segment.shape
        features = workspace.scratch("numba_steps_copy", (n, k, m), segment.dtype)
        np.copyto(features, segment.transpose(_FEATURES_STEPS_BATCH))
        np.copyto(out, features.transpose(1, 0, 2))
        return out
    np.copyto(out, segment.transpose(axes))
    return out


TWO_STAGE_COPY_BYTES = 128 << 10
"""Bytes of one step's ``(m, n)`` block of a seed-layout input above which
:func:`_copy_steps` makes the step-major ``(k, n, m)`` copy through a feature-major
``(n, k, m)`` one.  Why: NumPy's direct copy of that transposition, whose source advances by
``T`` elements along its innermost loop, ran at a third of the speed of the two copies at S4
and S5 (per call: 12.5 against 4.7 ms at S4 inference, 3.9 against 1.7 ms at S5, float32);
at S3 (64 KiB a step) and below the single copy was the faster one."""


_FEATURES_STEPS_BATCH = (2, 0, 1)  # (k, m, n) -> (n, k, m)
_STEPS_FEATURES_BATCH = (0, 2, 1)  # (k, m, n) -> (k, n, m)


def _with_bias(weights: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """``[weights | b]`` contiguous: products with a row of ones appended to their
    right-hand side then add the bias (forward) or give its gradient (backward)."""
    rows, cols = weights.shape
    out = workspace.scratch(name, (rows, cols + 1), weights.dtype)
    out[:, :cols] = weights
    out[:, cols] = b
    return out


FUSED_PRODUCT = {np.dtype(np.float32): 3 << 27, np.dtype(np.float64): 1 << 23}
"""Per dtype, the multiply-adds ``4 n_a (n_a + n_x + 1) m`` of a step's whole product up
to which the forward pass makes each step's pre-activations with one product
``[W | b] [h; x; 1]`` (on a per-step block ``[h_{t-1}; x_t; 1]`` that the kernel
completes with ``h_t``).  Above it, a per-segment input projection ``[W_x | b] [x; 1]``
(one large product, then a copy into the steps' blocks) plus a per-step ``W_h h`` is
faster: the large product runs at a better rate than its share of the per-step ones,
which then outweighs the copy and the extra pass over the gates.  In float64 that
happens at smaller sizes (between S2 and S3 of the benchmark; in float32 between S4 and
S5)."""

TRANSPOSE_BLOCK = 64
"""Rows of ``W`` per block of the transposing copy in :func:`_transposed`."""


def _transposed(matrix: np.ndarray, name: str) -> np.ndarray:
    """``matrix.T`` as a C-contiguous workspace array, copied in blocks of rows.

    Why a copy: the per-step product ``W_h^T dz`` runs faster on a contiguous ``W_h^T``
    than on a transposed view (by a third at ``n_a = 1024``).  Why blocks: a plain
    transposing copy misses the cache on nearly every element at such sizes; a block of
    rows and its columns of the result stay in cache.
    """
    rows, cols = matrix.shape
    out = workspace.scratch(name, (cols, rows), matrix.dtype)
    for start in range(0, rows, TRANSPOSE_BLOCK):
        block = slice(start, start + TRANSPOSE_BLOCK)
        np.copyto(out[:, block], matrix[block].T)
    return out


def _project(w_b, inputs, gates, first, gate_rows, k, products=True):
    """Write ``[W | b] @ [inputs; 1]`` of ``k`` steps into ``gates[first : first + k]``.

    ``inputs`` is ``(n + 1, >= k, m)`` with ones in its last row; ``gates`` is
    ``(., 4 n_a, m)``.  One large product into ``gate_rows`` (``(4 n_a, >= k, m)``: time
    and batch together in the columns), then a copy that makes each step's block
    contiguous: faster than one product per step.
    """
    n_in, m = inputs.shape[0], inputs.shape[2]
    rows = gate_rows[:, :k].reshape(gate_rows.shape[0], k * m)
    if products:
        np.matmul(w_b, inputs[:, :k].reshape(n_in, k * m), out=rows)
    _kernels().rows_to_steps(gate_rows, gates, first, k)


# --------------------------------------------------------------------------- forward


def forward(x, h0, c0, W, b, *, xp: Any = None, recompute: bool, lengths: Any = None):
    """Run the sequence (contract: :class:`~xlstm._engines.contract.EngineModule`)."""
    return _forward(x, h0, c0, W, b, recompute=recompute, lengths=lengths, fused=None)


def _forward(
    x, h0, c0, W, b, *, recompute: bool, lengths: Any, fused: bool | None, parts=None,
    split: bool | None = None,
):  # fmt: skip
    """:func:`forward`, with ``fused`` choosing how the pre-activations are made.

    One product per step (``True``), or a per-segment input projection plus a per-step
    recurrent product (``False``); ``None``: by size (:data:`FUSED_PRODUCT`).  ``split``:
    run the two halves of the batch in two threads (only with ``recompute`` and no
    ``lengths``); ``None``: when worthwhile (:func:`_split_batch`).
    :func:`compile_seconds` forces every variant, to compile every kernel.  ``parts`` (the
    profile's, :data:`.loops.PRODUCTS`): leave out the products or the kernels.
    """
    loops = _loops()
    parts = loops.ALL if parts is None else parts
    t_x, m, n_x = (int(s) for s in x.shape)
    n_a = int(h0.shape[1])
    dtype = np.dtype(x.dtype)
    order = _storage_order(lengths)
    stored = None if lengths is None else (lengths if order is None else lengths[order])
    t_end = t_x if stored is None else int(stored.max())
    if fused is None:
        fused = 4 * n_a * (n_a + n_x + 1) * m <= FUSED_PRODUCT[dtype]
    if split is None:
        split = _split_batch(t_x, m, n_a, n_x, recompute, lengths)
    split = split and recompute and lengths is None and m > 1

    # The results, two views of one new block (see workspace.fresh_arrays): h batch-major,
    # the cache's h as it is; c feature-major, returned transposed.
    H, C = workspace.fresh_arrays(((t_x + 1, m, n_a), (t_x + 1, n_a, m)), dtype)
    run = functools.partial(
        _forward_columns, x, h0, c0, W, b, H, C, recompute=recompute, order=order,
        stored=stored, t_end=t_end, fused=fused, parts=parts,
    )  # fmt: skip
    if split:
        half = _split_column(m)
        work = t_x * m * 4 * n_a * (n_a + n_x) // 2
        _threads.run_pair(
            functools.partial(run, 0, half), functools.partial(run, half, m), work=work
        )
        G = TC = None
    else:
        G, TC = run(0, m)
    c = C.transpose(0, 2, 1)
    if recompute:
        return SequenceCache(H, c, None, None, W, b, stored, order)
    return SequenceCache(H, c, G.transpose(0, 2, 1), TC.transpose(0, 2, 1), W, b, stored, order)


BATCH_SPLIT = False
"""Whether the memory-saving forward may split the batch between two threads at all
(:func:`_split_batch`).  Off: measured on this project's 2-core machine (2026-12-07, float32,
two-thread BLAS, `benchmarks/scripts/batch_split.py`), split over whole was 1.52x the time at
S3, 1.01x at S4 and S5, 1.95x at S2.  Kept, tested bit for bit against the whole batch, so
that a machine where it pays can be measured with that script."""

SPLIT_MIN_COLUMNS = 64
"""Batch size from which the memory-saving forward (inference included) may run the two
halves of the batch in two threads (:func:`_split_batch`)."""

SPLIT_MAX_INNER = 1024
"""Largest ``n_a + n_x`` for the split: above it the products dominate the step so much
that the kernels' second core gains less than one-thread products on half the columns
lose against two-thread products on all of them."""


def _split_batch(t_x: int, m: int, n_a: int, n_x: int, recompute: bool, lengths: Any) -> bool:
    """Whether the forward runs the two halves of the batch in two threads.

    Why: an LSTM's batch columns never interact, so each half can run the whole sequence
    on its own, its products on a one-thread BLAS, with no synchronisation between steps;
    the two-thread BLAS of one whole-batch run shares only the products between the cores
    and leaves the element-wise kernels on one.  Only for the memory-saving forward (the
    cache then holds ``h``, written in place by both halves, and ``c``, copied once from
    each half's own block), a padded batch, at least :data:`SPLIT_MIN_COLUMNS` columns (half
    batches below that run their products at a poorer rate), ``n_a + n_x`` at most
    :data:`SPLIT_MAX_INNER`, and a BLAS limited to exactly two threads
    (:func:`xlstm._threads.pair_is_parallel`, which the split keeps: one thread each).
    """
    if not BATCH_SPLIT or not recompute or lengths is not None or m < SPLIT_MIN_COLUMNS:
        return False
    if n_a + n_x > SPLIT_MAX_INNER:
        return False
    return _threads.pair_is_parallel(t_x * m * 4 * n_a * (n_a + n_x) // 2)


def _split_column(m: int) -> int:
    """Where the batch is split: near the middle, at a multiple of 16 columns when that
    leaves both halves non-empty (rows of the halves then start on their own 64-byte cache
    lines in float32, so the two threads never write to one line)."""
    aligned = (m // 2) // 16 * 16
    return aligned if 0 < aligned < m else m // 2


def _forward_columns(
    x, h0, c0, W, b, H_all, C_all, j0, j1, *, recompute, order, stored, t_end, fused, parts
):  # fmt: skip
    """Columns ``j0:j1`` of the batch through the whole sequence; returns ``(G, TC)``.

    Writes ``H_all[:, j0:j1]`` (batch-major, in place) and ``C_all[:, :, j0:j1]`` (for a
    part of the batch, computed in a contiguous workspace block and copied at the end:
    the kernels read each step's states as one contiguous run).
    """
    loops = _loops()
    products = bool(parts & loops.PRODUCTS)
    t_x, m_all, n_x = (int(s) for s in x.shape)
    n_a = int(h0.shape[1])
    dtype = np.dtype(x.dtype)
    whole = (j0, j1) == (0, m_all)
    m = j1 - j0
    na = n_a * m
    n_in = n_a + n_x + 1
    running = _running(stored, t_x, m)
    if whole:
        H, C = H_all, C_all
    else:
        x, h0, c0 = x[:, j0:j1], h0[j0:j1], c0[j0:j1]
        H = H_all[:, j0:j1]
        C = workspace.scratch("numba_c_columns", (t_x + 1, n_a, m), dtype)
    H[0] = h0 if order is None else h0[order]
    C[0] = (c0 if order is None else c0[order]).T
    step = segment_length(t_x, m, n_a, recompute)
    span = min(step, t_end)
    store = not recompute
    if store:
        G = np.empty((t_x, 4 * n_a, m), dtype)
        TC = np.empty((t_x, n_a, m), dtype)
    else:
        G = workspace.scratch("numba_gates", (1 if fused else span, 4 * n_a, m), dtype)
        TC = workspace.scratch("numba_tanh_c", (1, n_a, m), dtype)  # not written
    P = workspace.scratch("numba_product", (4 * n_a, m), dtype)
    if fused:
        # Per step [h_{t-1}; x_t; 1] (rows of `stacked`): one product with [W | b] gives the
        # whole pre-activation; the kernel writes h_t into the next step's rows.
        stacked = workspace.scratch("numba_stacked", (span + 1, n_in, m), dtype)
        stacked[:, n_in - 1] = 1
        stacked[0, :n_a] = H[0].T
        weights = _with_bias(W, b, "numba_w_b")
        HF = stacked.reshape(span + 1, n_in * m)
    else:
        # Per segment, [W_x | b] [x; 1] as one large product; per step, W_h h_{t-1}.
        inputs = workspace.scratch("numba_inputs", (n_x + 1, span, m), dtype)
        inputs[n_x] = 1
        gate_rows = workspace.scratch("numba_gate_rows", (4 * n_a, span, m), dtype)
        w_xb = _with_bias(W[:, n_a:], b, "numba_w_xb")
        weights = workspace.scratch("numba_w_h", (4 * n_a, n_a), dtype)
        np.copyto(weights, W[:, :n_a])
        hidden = workspace.scratch("numba_hidden", (2, n_a, m), dtype)
        hidden[0] = H[0].T
        HF = hidden.reshape(2, na)
    # The kernels' views: gate blocks as a separate axis, states flattened per step.
    G3, P3 = G.reshape(G.shape[0], 4, na), P.reshape(4, na)
    C2, TC2 = C.reshape(t_x + 1, na), TC.reshape(TC.shape[0], na)

    for start in range(0, t_end, step):
        stop = min(t_end, start + step)
        k = stop - start
        offset = 0 if store else start
        if fused:
            rhs = stacked
            _copy_steps(x, start, stop, order, stacked[:k, n_a : n_a + n_x], _STEPS_FEATURES_BATCH)
        else:
            rhs = hidden
            _copy_steps(x, start, stop, order, inputs[:n_x, :k], _FEATURES_STEPS_BATCH)
            _project(w_xb, inputs, G, start - offset, gate_rows, k, products)
        _check_gemm(
            loops.forward_steps(
                weights, rhs, P, G3, P3, HF, H, C2, TC2, running, start, stop, offset, n_a,
                fused, store, parts, _gemm_address(dtype),
            )
        )  # fmt: skip
        if fused:
            stacked[0, :n_a] = stacked[k, :n_a]  # h_{stop-1} for the next segment
    if t_end < t_x:
        H[t_end + 1 :] = H[t_end]
        C[t_end + 1 :] = C[t_end]
        if store:
            G[t_end:] = 0
            TC[t_end:] = 0
    if not whole:
        np.copyto(C_all[:, :, j0:j1], C)
    return G, TC


# --------------------------------------------------------------------------- backward


def _engine_layout(cache: SequenceCache):
    """The cache's arrays in this engine's layout: ``(H, C, G, TC)``, all C-contiguous.

    ``H`` batch-major ``(T + 1, m, n_a)``, the others feature-major (``C``
    ``(T + 1, n_a, m)``, ``G`` ``(T, 4 n_a, m)``, ``TC`` ``(T, n_a, m)``).  A cache made by
    this engine is used as it is (its ``c``, ``gates``, ``tanh_c`` are transposed views of
    such arrays); one made by another engine is copied.
    """
    converted = [np.ascontiguousarray(cache.h)]
    for array in (cache.c, cache.gates, cache.tanh_c):
        if array is not None:
            array = np.ascontiguousarray(np.transpose(array, (0, 2, 1)))
        converted.append(array)
    return converted


def backward(cache: SequenceCache, x, da, dc, *, xp: Any = None, dh_n=None, dc_n=None):
    """Backpropagation through time (contract: :class:`~xlstm._engines.contract.EngineModule`)."""
    return _backward(cache, x, da, dc, dh_n=dh_n, dc_n=dc_n)


def _backward(cache: SequenceCache, x, da, dc, *, dh_n=None, dc_n=None, parts=None):
    """:func:`backward`; ``parts`` as in :func:`_forward` (the profile's)."""
    kernels, loops = _kernels(), _loops()
    parts = loops.ALL if parts is None else parts
    products = bool(parts & loops.PRODUCTS)
    reason = unsupported_reason(np, cache.h.dtype, cache=cache)
    if reason is not None:
        raise ValueError(f"the numba engine cannot read this cache: {reason}")
    H, C, G, TC = _engine_layout(cache)
    stored, order = cache.lengths, cache.order
    t_x, m, n_x = (int(s) for s in x.shape)
    n_a = int(C.shape[1])
    dtype = np.dtype(C.dtype)
    W = np.asarray(cache.W)
    recompute = G is None
    has_dc = dc is not None
    running = _running(stored, t_x, m)
    t_end = t_x if stored is None else int(stored.max())
    step = segment_length(t_x, m, n_a, recompute)
    span = min(step, t_end)

    def storage(state):
        if state is None:
            return np.zeros((n_a, m), dtype)
        return np.array((state if order is None else state[order]).T, dtype=dtype, order="C")

    dh, dc_next = storage(dh_n), storage(dc_n)
    # [dW_h | dW_x | db] in one array: the products with [x_t; 1] give dW_x and db.
    d_weights = np.empty((4 * n_a, n_a + n_x + 1), dtype)
    dx = np.empty((t_x, m, n_x), dtype)
    dx[t_end:] = 0
    recurrent_T = _transposed(W[:, :n_a], "numba_recurrent_T")
    w_h, w_x = W[:, :n_a], W[:, n_a:]
    inputs = workspace.scratch("numba_inputs", (n_x + 1, span, m), dtype)
    inputs[n_x] = 1
    gate_rows = workspace.scratch("numba_gate_rows", (4 * n_a, span, m), dtype)
    dZ = workspace.scratch("numba_dz", (span, 4 * n_a, m), dtype)
    DA = workspace.scratch("numba_da", (span, n_a, m), dtype)
    DC = workspace.scratch("numba_dc", (span, n_a, m), dtype) if has_dc else DA
    if recompute:
        A = workspace.scratch("numba_gates", (span, 4 * n_a, m), dtype)
        TC = np.empty((1, n_a, m), dtype)  # not read
        w_xb = _with_bias(w_x, cache.b, "numba_w_xb")
    else:
        A = G
    d_recurrent, d_input = d_weights[:, :n_a], d_weights[:, n_a:]
    partial_sum = workspace.scratch("numba_dw_part", d_weights.shape, dtype)
    A3, dZ3 = A.reshape(A.shape[0], 4, n_a * m), dZ.reshape(span, 4, n_a * m)
    C2, TC2, DA2, DC2 = (a.reshape(a.shape[0], n_a * m) for a in (C, TC, DA, DC))
    dh1, dc1 = dh.reshape(-1), dc_next.reshape(-1)
    matmul = np.matmul

    for stop in range(t_end, 0, -step):
        start = max(0, stop - step)
        k = stop - start
        a_offset = start if recompute else 0
        # The segment's h_{t-1} as rows (t, j), and [x_t; 1] with (t, j) in the columns.
        h_rows = H[start:stop].reshape(k * m, n_a)
        _copy_steps(x, start, stop, order, inputs[:n_x, :k], _FEATURES_STEPS_BATCH)
        x_columns = inputs[:, :k].reshape(n_x + 1, k * m)
        if recompute:
            # z = [W_x | b] [x; 1] + W_h h_{t-1}, made time-major by _project's copy.
            rows = gate_rows[:, :k].reshape(4 * n_a, k * m)
            recurrent = dZ[:k].reshape(4 * n_a, k * m)  # free until the steps below
            if products:
                matmul(w_xb, x_columns, out=rows)
                matmul(w_h, h_rows.T, out=recurrent)
            rows += recurrent
            kernels.rows_to_steps(gate_rows, A, 0, k)
        _copy_steps(da, start, stop, order, DA[:k], _STEPS_FEATURES_BATCH)
        if has_dc:
            _copy_steps(dc, start, stop, order, DC[:k], _STEPS_FEATURES_BATCH)
        _check_gemm(
            loops.backward_steps(
                A3, TC2, C2, dZ, dZ3, DA2, DC2, dh, dh1, dc1, recurrent_T, running, start,
                stop, a_offset, n_a, recompute, has_dc, parts, _gemm_address(dtype),
            )
        )  # fmt: skip
        # The segment's large products, with dz as (4 n_a, (t, j)) rows:
        # dW_h += dz h_{t-1}^T, [dW_x | db] += dz [x; 1]^T, dx = dz^T W_x.
        kernels.steps_to_rows(dZ, gate_rows, k)
        dz_rows = gate_rows[:, :k].reshape(4 * n_a, k * m)
        if not products:
            continue
        if stop == t_end:
            matmul(dz_rows, h_rows, out=d_recurrent)
            matmul(dz_rows, x_columns.T, out=d_input)
        else:
            matmul(dz_rows, h_rows, out=partial_sum[:, :n_a])
            matmul(dz_rows, x_columns.T, out=partial_sum[:, n_a:])
            d_weights += partial_sum
        matmul(dz_rows.T, w_x, out=dx[start:stop].reshape(k * m, n_x))
    dh0, dc0 = dh.T, dc_next.T
    if order is not None:
        inverse = inverse_order(order)
        dx = np.take(dx, inverse, axis=1)
        dh0, dc0 = dh0[inverse], dc0[inverse]
    return dx, dh0, dc0, d_weights[:, : n_a + n_x], d_weights[:, n_a + n_x]


# --------------------------------------------------------------------------- compilation


def compile_seconds(dtype: Any = "float32") -> float:
    """Seconds spent making the kernels ready for ``dtype`` in this process.

    Runs a tiny problem through every variant of the kernels (both ways of making the
    pre-activations, stored gates and recomputation, variable lengths, with and without
    ``dc``), which compiles them or
    loads them from numba's on-disk cache.  The first call in a process reports the
    start-up cost (compilation with a cold cache, loading with a warm one); later calls
    report almost nothing.

    Raises
    ------
    ValueError
        ``dtype`` is not float32 or float64.
    """
    resolved = np.dtype(dtype)
    reason = unsupported_reason(np, resolved)
    if reason is not None:
        raise ValueError(f"`dtype` = {dtype!r}: {reason}")
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    t_x, m, n_x, n_a = 3, 2, 2, 2
    x = rng.standard_normal((t_x, m, n_x)).astype(resolved)
    h0 = np.zeros((m, n_a), resolved)
    W = rng.standard_normal((4 * n_a, n_a + n_x)).astype(resolved)
    b = np.zeros(4 * n_a, resolved)
    da = np.ones((t_x, m, n_a), resolved)
    for fused in (True, False):
        for recompute in (False, True):
            for lengths in (None, np.array([2, 3], np.int64)):
                cache = _forward(
                    x, h0, h0, W, b, recompute=recompute, lengths=lengths, fused=fused,
                    split=False,
                )  # fmt: skip
                for dc in (None, da):
                    backward(cache, x, da, dc)
        # The batch split (a column range of h: other array layouts, other compilations).
        _forward(x, h0, h0, W, b, recompute=True, lengths=None, fused=fused, split=True)
    return time.perf_counter() - started


__all__ = ["backward", "compile_seconds", "forward", "unsupported_reason"]
