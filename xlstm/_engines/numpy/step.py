"""The pieces of a NumPy LSTM step shared by the padded and the variable-length loops.

Both loops (:mod:`.padded`, :mod:`.masked`) use the same weights layout, input
projection, activation, backward factors and per-segment products; only the
per-step loop differs (whole batch, or a shrinking prefix of rows sorted by length).

Two folds save passes over the gates:

* the sigmoid is ``0.5 tanh(z / 2) + 0.5``; the ``1/2`` inside is folded into a
  scaled copy of the weights and bias of the three sigmoid gates, so the
  pre-activations come out of the products already halved;
* the input projection of a whole segment of steps is one product written
  straight into the gate buffer, which the recurrent product then adds to.

Every temporary lives in the per-thread workspace (:mod:`.workspace`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..._layout import N_SIGMOID_GATES
from ..cache import SequenceCache
from . import workspace


def time_major_rows(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``x[:, :, start:stop]`` as rows ``(k * m, n_x)`` in time-major order.

    The copy only swaps the last two axes, ``(n_x, m, k) -> (n_x, k, m)``: each
    feature's small ``(m, k)`` block is transposed in cache, many times faster
    than reversing all three axes.  The rows are then a transposed view, which
    BLAS takes as it is.  The copy lives in the workspace (:mod:`.workspace`):
    it is valid until the next call of this function in the thread.
    """
    n_x, m = x.shape[0], x.shape[1]
    swapped = workspace.scratch("x_rows", (n_x, stop - start, m), x.dtype)
    np.copyto(swapped, x[:, :, start:stop].transpose(0, 2, 1))
    return swapped.reshape(n_x, -1).T


def swap_last_axes(array_tm: np.ndarray, start: int, stop: int, name: str) -> np.ndarray:
    """Steps ``start:stop`` of a ``(T, m, n)`` view of an ``(n, m, T)`` array, as ``(n, k, m)``.

    The copy swaps only the last two axes of the caller's ``(n, m, T)`` array
    (fast, see :func:`time_major_rows`); step ``t`` is then ``[:, t].T``, an
    ``(m, n)`` view whose reads stay within one small block.  The copy is the
    workspace buffer ``name``.
    """
    k, m, n = stop - start, array_tm.shape[1], array_tm.shape[2]
    swapped = workspace.scratch(name, (n, k, m), array_tm.dtype)
    np.copyto(swapped, array_tm[start:stop].transpose(2, 0, 1))
    return swapped


#: Rows of ``W`` per block of the transposing copy in :func:`halved_weights`:
#: one block's rows and its columns of the result stay in cache (a plain
#: transposing copy strides through memory; block sizes 32-128 do alike).
TRANSPOSE_BLOCK = 64

#: Rows ``T * m`` of the whole recurrence from which ``W_h^T`` is copied
#: contiguously (see :class:`HalvedWeights`): the copy costs about as much as
#: the faster per-step products save over about 1400 rows.
TRANSPOSE_MIN_ROWS = 2048


class HalvedWeights(NamedTuple):
    """``W`` and ``b`` with the sigmoid gates' rows multiplied by 1/2, laid out for the products.

    Attributes
    ----------
    recurrent_T : (n_a, 4 n_a)
        ``W_h^T``.  For long enough recurrences a C-contiguous copy (the
        per-step product ``h_{t-1} W_h^T`` runs faster on it than on a
        transposed view); otherwise a transposed view.
    inputs : (4 n_a, n_x)
        ``W_x``, used as ``inputs.T`` by the input projection (one large
        product, as fast either way).
    bias : (4 n_a,)
    """

    recurrent_T: np.ndarray
    inputs: np.ndarray
    bias: np.ndarray


def halved_weights(W: np.ndarray, b: np.ndarray, n_a: int, *, rows: int) -> HalvedWeights:
    """Copies of ``W``, ``b`` with the sigmoid gates' rows halved (see :class:`HalvedWeights`).

    ``rows``: the rows the per-step products ``h_{t-1} W_h^T`` will see in all
    (``T * m``, or the sum of the lengths).
    """
    scale = np.ones(W.shape[0], W.dtype)
    scale[: N_SIGMOID_GATES * n_a] = 0.5
    column = scale[:, None]
    if rows < TRANSPOSE_MIN_ROWS:
        halved = np.multiply(W, column, out=workspace.scratch("halved_W", W.shape, W.dtype))
        return HalvedWeights(halved[:, :n_a].T, halved[:, n_a:], b * scale)
    recurrent_T = workspace.scratch("recurrent_T", (n_a, W.shape[0]), W.dtype)
    for start in range(0, W.shape[0], TRANSPOSE_BLOCK):
        block = slice(start, start + TRANSPOSE_BLOCK)
        np.multiply(W[block, :n_a].T, scale[block], out=recurrent_T[:, block])
    inputs = workspace.scratch("input_W", (W.shape[0], W.shape[1] - n_a), W.dtype)
    return HalvedWeights(recurrent_T, np.multiply(W[:, n_a:], column, out=inputs), b * scale)


def activate_halved(z: np.ndarray, n_a: int) -> None:
    """In place: ``z`` holds ``[z_ifo / 2, z_g]`` and becomes the activations.

    One ``tanh`` over all four blocks (the sigmoid gates' halving is already in
    the weights), then ``0.5 t + 0.5`` on the sigmoid blocks.
    """
    np.tanh(z, out=z)
    sigmoid_block = z[..., : N_SIGMOID_GATES * n_a]
    # A scalar of the array's own dtype: with a Python float NumPy takes a
    # slower loop on these strided blocks.
    half = z.dtype.type(0.5)
    sigmoid_block *= half
    sigmoid_block += half


def project_segment(
    x_rows: np.ndarray,
    h: np.ndarray,
    weights: HalvedWeights,
    start: int,
    stop: int,
    out: np.ndarray,
    *,
    with_recurrent: bool,
) -> None:
    """Write the (halved) pre-activations of steps ``start:stop`` into ``out``.

    ``x_rows`` are the segment's inputs as time-major rows ``(k * m, n_x)`` (see
    :func:`time_major_rows`).  ``with_recurrent`` adds ``h_{t-1} W_h^T`` for
    every step at once (used when recomputing, where all ``h_{t-1}`` are known).
    """
    n_a = h.shape[2]
    k, m = stop - start, h.shape[1]
    rows = out[:k].reshape(k * m, 4 * n_a)
    np.matmul(x_rows, weights.inputs.T, out=rows)
    if with_recurrent:
        rows += h[start:stop].reshape(k * m, n_a) @ weights.recurrent_T
    rows += weights.bias


def local_derivatives(gates, c_prev, tanh_c, dz, dc_from_dh, n_a: int) -> None:
    """Per-step factors of the backward pass that need no recurrent gradient.

    For a whole segment at once (few large calls instead of many small ones
    per step), write into ``dz`` the factors that turn the recurrent gradients
    into pre-activation gradients, and into ``dc_from_dh`` the factor from
    ``dh`` to ``dc``::

        dz_i = dc * [g i (1 - i)]        dz_f = dc * [c_prev f (1 - f)]
        dz_o = dh * [tanh_c o (1 - o)]   dz_g = dc * [i (1 - g^2)]
        dc  += dh * [o (1 - tanh_c^2)]
    """
    one = gates.dtype.type(1)  # a typed scalar: see activate_halved
    i, f, o, g = (gates[..., k * n_a : (k + 1) * n_a] for k in range(4))
    dz_i, dz_f, dz_o, dz_g = (dz[..., k * n_a : (k + 1) * n_a] for k in range(4))
    # s (1 - s) of the three sigmoid gates as one block: 3x longer rows, fewer
    # inner-loop calls than per gate.
    sigmoid_gates, dz_sigmoid = (
        gates[..., : N_SIGMOID_GATES * n_a],
        dz[..., : N_SIGMOID_GATES * n_a],
    )
    np.subtract(one, sigmoid_gates, out=dz_sigmoid)
    dz_sigmoid *= sigmoid_gates
    dz_i *= g
    dz_f *= c_prev
    dz_o *= tanh_c
    np.multiply(g, g, out=dz_g)
    np.subtract(one, dz_g, out=dz_g)
    dz_g *= i
    np.multiply(tanh_c, tanh_c, out=dc_from_dh)
    np.subtract(one, dc_from_dh, out=dc_from_dh)
    dc_from_dh *= o


def recurrent_weights(W: np.ndarray, n_a: int) -> np.ndarray:
    """``W_h`` as a C-contiguous workspace copy, for the per-step product ``dz W_h``."""
    w_h = workspace.scratch("w_h", (W.shape[0], n_a), W.dtype)
    np.copyto(w_h, W[:, :n_a])
    return w_h


def gate_reader(cache: SequenceCache, step: int):
    """A function ``(x_rows, start, stop) -> (gates, tanh_c)`` of steps ``start:stop``.

    With stored gates, slices of the cache; in the memory-saving mode, recomputed
    from the stored states into workspace buffers of ``step`` steps (valid until
    the next segment), one large product per segment (so no transposed copy of
    ``W_h``: there are no per-step products to speed up).
    """
    if not cache.recompute:
        return lambda x_rows, start, stop: (cache.gates[start:stop], cache.tanh_c[start:stop])
    h, c = cache.h, cache.c
    m, n_a, dtype = h.shape[1], h.shape[2], h.dtype
    weights = halved_weights(cache.W, cache.b, n_a, rows=0)
    gate_segment = workspace.scratch("gate_segment", (step, m, 4 * n_a), dtype)
    tanh_segment = workspace.scratch("tanh_segment", (step, m, n_a), dtype)

    def recomputed(x_rows, start, stop):
        k = stop - start
        project_segment(x_rows, h, weights, start, stop, gate_segment, with_recurrent=True)
        activate_halved(gate_segment[:k], n_a)
        np.tanh(c[start + 1 : stop + 1], out=tanh_segment[:k])
        return gate_segment[:k], tanh_segment[:k]

    return recomputed


def segment_products(
    dz_segment, h, x_rows, w_x, start, stop, d_weights, d_bias, dx_tm, *, first: bool
) -> None:
    """The large products of segment ``start:stop`` once its ``dz`` are known.

    Adds the segment's ``dW = dz^T [h_{t-1}, x_t]`` and ``db = sum(dz)`` and writes
    its ``dx = dz W_x`` into the time-major ``dx_tm``.  ``d_weights`` is the stacked
    ``(4 n_a, n_a + n_x)`` result: the first segment writes straight into its two
    column blocks (no zero fill, no concatenation of separate blocks afterwards,
    which costs a visible part of the backward pass); later segments add.
    """
    k, m, n_a = stop - start, h.shape[1], h.shape[2]
    dz_rows = dz_segment[:k].reshape(k * m, 4 * n_a)
    h_rows = h[start:stop].reshape(k * m, n_a)
    recurrent, inputs = d_weights[:, :n_a], d_weights[:, n_a:]
    if first:
        np.matmul(dz_rows.T, h_rows, out=recurrent)
        np.matmul(dz_rows.T, x_rows, out=inputs)
        np.sum(dz_rows, axis=0, out=d_bias)
    else:
        recurrent += dz_rows.T @ h_rows
        inputs += dz_rows.T @ x_rows
        d_bias += dz_rows.sum(axis=0)
    np.matmul(dz_rows, w_x, out=dx_tm[start:stop].reshape(k * m, w_x.shape[1]))
