"""The generic sequence engine: array-API standard only, the readable reference.

Layout (see :mod:`xlstm._layout`): time-major, batch in rows, gates stacked in
``GATE_ORDER`` = (i, f, o, g).  With ``z_t = x_t W_x^T + h_{t-1} W_h^T + b``
(a ``(m, 4 n_a)`` row block per step) the recurrence is

.. math::

    i, f, o = \\sigma(z_{i,f,o}), \\quad g = \\tanh(z_g), \\quad
    c_t = f \\odot c_{t-1} + i \\odot g, \\quad h_t = o \\odot \\tanh(c_t).

What makes it fast without leaving the standard:

* the four gate weights are stacked once, so each step is one product;
* the input projection ``x_t W_x^T + b`` for *all* steps is one large product
  before the loop; only ``h_{t-1} W_h^T`` stays in the loop;
* the weight gradients are a few large products per segment of steps
  (``dW += dZ^T [H_prev | X]`` over the segment's steps, see
  :func:`segment_length`), not ``T_x`` small ones;
* the cache holds each quantity once, stacked over time (:class:`SequenceCache`);
* the backward pass reuses the cached gates and ``tanh(c)``.

Variable-length batches (``lengths``, one length per sequence, batches padded
on the right): step ``t`` of sequence ``j`` is *inside* when ``t < lengths[j]``.
Outside, the step is the identity (``h_t = h_{t-1}``, ``c_t = c_{t-1}``), so the
last stored state ``h[T]`` is each sequence's state at its own last step, and
backward passes the gradient of a padded step straight through to the step
before, ignores external gradients at padded steps and gives ``dz = 0`` (hence
``dx = 0``) there.  The generic engine applies a per-step mask with ``xp.where``;
a fast path may store the batch rows in another order (``SequenceCache.order``,
for example sorted by length so that each step works on a shrinking prefix of
rows); every engine reads caches in either order.

No in-place writes: results are collected in lists and stacked, so immutable
arrays (JAX) work.  Backend fast paths (``xlstm._numpy``, ``xlstm._cupy``)
implement the same ``forward``/``backward`` functions and produce the same
:class:`SequenceCache`, so a cache made by one engine is usable by any other.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import device as _device

from ._layout import N_SIGMOID_GATES
from .activations import _sigmoid

#: Backward (and recompute) works through the sequence in segments of about this
#: many elements of the gate array, so its temporaries stay bounded.
SEGMENT_ELEMENTS = 1 << 22

#: This engine's ``forward`` takes ``lengths`` and its ``backward`` takes
#: ``dh_n``/``dc_n`` and reads ``SequenceCache.lengths``/``order``.  A fast path
#: without this flag is passed over (for the generic engine) when they are needed.
SUPPORTS_LENGTHS = True


class SequenceCache(NamedTuple):
    """What :func:`lstm_backward` needs from :func:`lstm_forward`, stored once.

    Attributes (shapes; ``T = T_x``)
    ----------
    h : (T + 1, m, n_a)
        Hidden states, ``h[0] = a0`` and ``h[t + 1] = a_t``.  The ``a``
        returned by :func:`lstm_forward` is a view of ``h[1:]`` (on backends
        with views): changing it in place corrupts the cache.
    c : (T + 1, m, n_a)
        Cell states, ``c[0] = c0``; ``lstm_forward``'s ``c`` views ``c[1:]``.
    gates : (T, m, 4 n_a) or None
        Activated gates in ``GATE_ORDER``; ``None`` in the memory-saving
        mode (``recompute=True``), where backward recomputes them.
    tanh_c : (T, m, n_a) or None
        ``tanh(c_t)``, computed once in forward; ``None`` when recomputing.
    W : (4 n_a, n_a + n_x)
        Stacked weights, columns ``[recurrent | input]``.
    b : (4 n_a,)
        Stacked bias.

    lengths : numpy int array (m,) or None
        Variable-length batches: the length of the sequence stored in each row
        (host metadata, in the cache's row order).  ``None``: every sequence
        has all ``T`` steps.  Past a sequence's end its states are carried
        unchanged, so ``h[T]``, ``c[T]`` are the states at each sequence's own
        last step (see :func:`final_state`); ``gates`` and ``tanh_c`` there
        are unused by backward.
    order : numpy int array (m,) or None
        Row ``r`` of ``h``, ``c``, ``gates``, ``tanh_c`` and ``lengths`` holds
        batch entry ``order[r]``.  ``None``: the batch's own order.  (The NumPy
        fast path sorts rows by decreasing length so that each step works on
        a prefix of the rows.)  Use :func:`sequence_states` and
        :func:`final_state` to read the states in batch order.

    The input ``x`` is not copied: it is the second item of ``caches``.
    Size beyond ``x``, in elements: ``(7 T + 2) m n_a`` with gates stored,
    ``(2 T + 2) m n_a`` when recomputing, plus ``4 n_a (n_a + n_x + 1)`` for
    ``W`` and ``b``.
    """

    h: Any
    c: Any
    gates: Any
    tanh_c: Any
    W: Any
    b: Any
    lengths: Any = None
    order: Any = None

    @property
    def recompute(self) -> bool:
        """Whether the gates were left out (memory-saving mode)."""
        return self.gates is None


def segment_length(t_x: int, m: int, n_a: int, recompute: bool = False) -> int:
    """Steps per segment of the backward pass (and of recomputation).

    With the gates stored, segments hold at most :data:`SEGMENT_ELEMENTS`
    gate elements: bounded temporaries, still large products.  In the
    memory-saving mode the recomputed gates of one segment are the largest
    temporary, so segments are also at most ``ceil(sqrt(T))`` steps: the
    temporaries stay a small fraction of the states kept for every step.
    """
    steps = SEGMENT_ELEMENTS // (m * 4 * n_a)
    if recompute:
        steps = min(steps, math.isqrt(t_x - 1) + 1)
    return max(1, min(t_x, steps))


def time_major(x: Any, xp: Any) -> Any:
    """``(n_x, m, T)`` seed layout to ``(T, m, n_x)`` engine layout."""
    return xp.permute_dims(x, (2, 1, 0))


def step_masks(lengths: np.ndarray, t_x: int, xp: Any, device: Any) -> Any:
    """``(T, m, 1)`` booleans: ``True`` where step ``t`` of row ``r`` is inside its sequence."""
    inside = np.arange(t_x)[:, None, None] < np.asarray(lengths)[None, :, None]
    return xp.asarray(inside, device=device)


def batch_take(array: Any, index: np.ndarray, axis: int, xp: Any) -> Any:
    """Rows of the batch axis in the order of the host index array ``index``."""
    return xp.take(array, xp.asarray(index, device=_device(array)), axis=axis)


def inverse_order(order: np.ndarray) -> np.ndarray:
    """The permutation that undoes ``order``."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.shape[0])
    return inverse


def sequence_states(cache: SequenceCache, xp: Any) -> tuple[Any, Any]:
    """States ``a_1..a_T`` and ``c_1..c_T`` as ``(T, m, n_a)``, in batch order.

    Without lengths these are views of the cache.  With lengths they are new
    arrays, zero at every step past a sequence's end.
    """
    h, c = cache.h[1:, ...], cache.c[1:, ...]
    if cache.lengths is None:
        return h, c
    t_x = int(h.shape[0])
    lengths = cache.lengths
    if cache.order is not None:
        inverse = inverse_order(cache.order)
        h, c = batch_take(h, inverse, 1, xp), batch_take(c, inverse, 1, xp)
        lengths = lengths[inverse]
    inside = step_masks(lengths, t_x, xp, _device(h))
    zero = xp.zeros((), dtype=h.dtype, device=_device(h))
    return xp.where(inside, h, zero), xp.where(inside, c, zero)


def final_state(cache: SequenceCache, xp: Any) -> tuple[Any, Any]:
    """``(h_n, c_n)`` of shape ``(m, n_a)`` in batch order: each sequence's last state."""
    h_n, c_n = cache.h[-1, ...], cache.c[-1, ...]
    if cache.order is not None:
        inverse = inverse_order(cache.order)
        h_n, c_n = batch_take(h_n, inverse, 0, xp), batch_take(c_n, inverse, 0, xp)
    return h_n, c_n


def activate(z: Any, n_a: int, xp: Any) -> Any:
    """Gate pre-activations ``(..., 4 n_a)`` to activations, in ``GATE_ORDER``."""
    split = N_SIGMOID_GATES * n_a
    return xp.concat([_sigmoid(z[..., :split], xp), xp.tanh(z[..., split:])], axis=-1)


def split_gates(gates: Any, n_a: int) -> tuple[Any, Any, Any, Any]:
    """``(i, f, o, g)`` blocks of a stacked gate array (last axis)."""
    return tuple(gates[..., k * n_a : (k + 1) * n_a] for k in range(4))


def cell_step(z: Any, c_prev: Any, n_a: int, xp: Any) -> tuple[Any, Any, Any, Any]:
    """One step from pre-activations: returns ``(gates, c, tanh_c, h)``."""
    gates = activate(z, n_a, xp)
    i, f, o, g = split_gates(gates, n_a)
    c = f * c_prev + i * g
    tanh_c = xp.tanh(c)
    return gates, c, tanh_c, o * tanh_c


def cell_step_backward(
    dh: Any, dc: Any, gates: Any, c_prev: Any, tanh_c: Any, n_a: int, xp: Any
) -> tuple[Any, Any]:
    """Gradients of one step: returns ``(dz, dc_prev)``.

    ``dh`` and ``dc`` are the total gradients reaching ``h_t`` and ``c_t``
    (from outside and from step ``t + 1``); ``dz`` is the gradient of the
    pre-activations ``(m, 4 n_a)`` in ``GATE_ORDER``.  Derivatives are written
    from the activations: ``sigma' = s (1 - s)``, ``tanh' = 1 - t^2``.
    """
    i, f, o, g = split_gates(gates, n_a)
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    dz = xp.concat(
        [
            dc * g * i * (1.0 - i),
            dc * c_prev * f * (1.0 - f),
            dh * tanh_c * o * (1.0 - o),
            dc * i * (1.0 - g * g),
        ],
        axis=-1,
    )
    return dz, dc * f


def forward(
    x: Any, h0: Any, c0: Any, W: Any, b: Any, *, xp: Any, recompute: bool, lengths: Any = None
) -> SequenceCache:
    """Run the sequence.  ``x`` is ``(n_x, m, T)``; ``h0, c0`` are ``(m, n_a)``.

    ``lengths``: ``None`` or a host int array ``(m,)`` with ``1 <= lengths <= T``;
    past a sequence's end its states are carried unchanged (mask and ``xp.where``).
    """
    n_x, m, t_x = x.shape
    n_a = h0.shape[1]
    w_h, w_x = W[:, :n_a], W[:, n_a:]
    x_rows = xp.reshape(time_major(x, xp), (t_x * m, n_x))
    z_input = xp.reshape(x_rows @ w_x.T + b, (t_x, m, 4 * n_a))

    inside = None if lengths is None else step_masks(lengths, t_x, xp, _device(x))
    h, c = h0, c0
    hs, cs, all_gates, tanh_cs = [h0], [c0], [], []
    for t in range(t_x):
        gates, c_new, tanh_c, h_new = cell_step(z_input[t, ...] + h @ w_h.T, c, n_a, xp)
        if inside is None:
            h, c = h_new, c_new
        else:
            h, c = xp.where(inside[t, ...], h_new, h), xp.where(inside[t, ...], c_new, c)
        hs.append(h)
        cs.append(c)
        all_gates.append(gates)
        tanh_cs.append(tanh_c)
    if recompute:
        return SequenceCache(xp.stack(hs), xp.stack(cs), None, None, W, b, lengths)
    return SequenceCache(
        xp.stack(hs), xp.stack(cs), xp.stack(all_gates), xp.stack(tanh_cs), W, b, lengths
    )


def recompute_segment(x_tm: Any, cache: SequenceCache, start: int, stop: int, xp: Any):
    """Gates and ``tanh(c)`` of steps ``start:stop`` from the stored states.

    Every ``h_{t-1}`` is stored, so this is one large product, not a recurrence.
    """
    n_a = cache.h.shape[2]
    k, m, n_x = stop - start, x_tm.shape[1], x_tm.shape[2]
    w_h, w_x = cache.W[:, :n_a], cache.W[:, n_a:]
    z = (
        xp.reshape(x_tm[start:stop, ...], (k * m, n_x)) @ w_x.T
        + xp.reshape(cache.h[start:stop, ...], (k * m, n_a)) @ w_h.T
        + cache.b
    )
    gates = xp.reshape(activate(z, n_a, xp), (k, m, 4 * n_a))
    return gates, xp.tanh(cache.c[start + 1 : stop + 1, ...])


def backward(
    cache: SequenceCache,
    x: Any,
    da_tm: Any,
    dc_tm: Any,
    *,
    xp: Any,
    dh_n: Any = None,
    dc_n: Any = None,
):
    """Backpropagation through time.

    Parameters
    ----------
    cache : SequenceCache
    x : (n_x, m, T)
    da_tm, dc_tm : (T, m, n_a) or None
        External gradients reaching ``h_{t+1}`` and ``c_{t+1}`` (time-major).
        With ``cache.lengths``, entries at padded steps are ignored.
    dh_n, dc_n : (m, n_a) or None
        Gradients reaching the final states ``h[T]``, ``c[T]`` (each
        sequence's last state, see :func:`final_state`), batch order.

    All arrays are in batch order, whatever ``cache.order`` is.

    Returns
    -------
    dx : (n_x, m, T);  dh0, dc0 : (m, n_a);  dW : (4 n_a, n_a + n_x);  db : (4 n_a,)
    dx is zero at padded steps.
    """
    order = cache.order
    if order is not None:
        # The cache holds the batch rows permuted: work in its order, undo at the end.
        x = batch_take(x, order, 1, xp)
        da_tm = batch_take(da_tm, order, 1, xp)
        dc_tm = None if dc_tm is None else batch_take(dc_tm, order, 1, xp)
        dh_n = None if dh_n is None else batch_take(dh_n, order, 0, xp)
        dc_n = None if dc_n is None else batch_take(dc_n, order, 0, xp)
    n_x, m, t_x = x.shape
    n_a = cache.h.shape[2]
    w_h, w_x = cache.W[:, :n_a], cache.W[:, n_a:]
    x_tm = time_major(x, xp)
    zeros = xp.zeros((m, n_a), dtype=x.dtype, device=_device(x))
    dh_next = zeros if dh_n is None else dh_n
    dc_next = zeros if dc_n is None else dc_n
    inside = None if cache.lengths is None else step_masks(cache.lengths, t_x, xp, _device(x))
    d_weights = xp.zeros(cache.W.shape, dtype=x.dtype, device=_device(x))
    d_bias = xp.zeros(cache.b.shape, dtype=x.dtype, device=_device(x))
    dx_segments = []
    step = segment_length(t_x, m, n_a, cache.recompute)
    for stop in range(t_x, 0, -step):
        start = max(0, stop - step)
        if cache.recompute:
            gates, tanh_c = recompute_segment(x_tm, cache, start, stop, xp)
        else:
            gates, tanh_c = cache.gates[start:stop, ...], cache.tanh_c[start:stop, ...]
        dzs = []
        for t in range(stop - 1, start - 1, -1):
            dh = da_tm[t, ...] + dh_next
            dc = dc_next if dc_tm is None else dc_tm[t, ...] + dc_next
            local = t - start
            dz, dc_prev = cell_step_backward(
                dh, dc, gates[local, ...], cache.c[t, ...], tanh_c[local, ...], n_a, xp
            )
            if inside is None:
                dh_next, dc_next = dz @ w_h, dc_prev
            else:
                # A padded step is the identity: its gradients pass straight through.
                # (External gradients there are dropped with the step's dz.)
                dz = xp.where(inside[t, ...], dz, xp.zeros_like(dz))
                dh_next = xp.where(inside[t, ...], dz @ w_h, dh_next)
                dc_next = xp.where(inside[t, ...], dc_prev, dc_next)
            dzs.append(dz)
        k = stop - start
        dz_rows = xp.reshape(xp.stack(dzs[::-1]), (k * m, 4 * n_a))
        inputs = xp.concat(
            [
                xp.reshape(cache.h[start:stop, ...], (k * m, n_a)),
                xp.reshape(x_tm[start:stop, ...], (k * m, n_x)),
            ],
            axis=1,
        )
        d_weights = d_weights + dz_rows.T @ inputs
        d_bias = d_bias + xp.sum(dz_rows, axis=0)
        dx_segments.append(xp.reshape(dz_rows @ w_x, (k, m, n_x)))
    dx = time_major(xp.concat(dx_segments[::-1], axis=0), xp)
    if order is not None:
        inverse = inverse_order(order)
        dx = batch_take(dx, inverse, 1, xp)
        dh_next = batch_take(dh_next, inverse, 0, xp)
        dc_next = batch_take(dc_next, inverse, 0, xp)
    return dx, dh_next, dc_next, d_weights, d_bias
