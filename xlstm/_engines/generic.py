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
  :func:`~xlstm._engines.cache.segment_length`), not ``T_x`` small ones;
* the cache holds each quantity once, stacked over time
  (:class:`~xlstm._engines.cache.SequenceCache`);
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
arrays (JAX) work.  The fast paths (:mod:`xlstm._engines.numpy`,
:mod:`xlstm._engines.cupy`, ...) implement the same contract
(:mod:`xlstm._engines.contract`) and produce the same :class:`SequenceCache`.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device as _device

from .._layout import N_SIGMOID_GATES
from ..activations import _sigmoid
from .cache import SequenceCache, batch_take, inverse_order, segment_length, step_masks


def unsupported_reason(xp: Any, dtype: Any, **needs: Any) -> str | None:
    """The generic engine runs every backend, dtype, ``lengths`` and cache."""
    return None


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
    """Run the sequence.  ``x`` is ``(T, m, n_x)``; ``h0, c0`` are ``(m, n_a)``.

    ``lengths``: ``None`` or a host int array ``(m,)`` with ``1 <= lengths <= T``;
    past a sequence's end its states are carried unchanged (mask and ``xp.where``).
    """
    t_x, m, n_x = x.shape
    n_a = h0.shape[1]
    w_h, w_x = W[:, :n_a], W[:, n_a:]
    x_rows = xp.reshape(x, (t_x * m, n_x))
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
    x_tm: Any,
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
    x : (T, m, n_x)
    da_tm, dc_tm : (T, m, n_a) or None
        External gradients reaching ``h_{t+1}`` and ``c_{t+1}`` (time-major).
        With ``cache.lengths``, entries at padded steps are ignored.
    dh_n, dc_n : (m, n_a) or None
        Gradients reaching the final states ``h[T]``, ``c[T]`` (each
        sequence's last state, see :func:`final_state`), batch order.

    All arrays are in batch order, whatever ``cache.order`` is.

    Returns
    -------
    dx : (T, m, n_x);  dh0, dc0 : (m, n_a);  dW : (4 n_a, n_a + n_x);  db : (4 n_a,)
    dx is zero at padded steps.
    """
    order = cache.order
    if order is not None:
        # The cache holds the batch rows permuted: work in its order, undo at the end.
        x_tm = batch_take(x_tm, order, 1, xp)
        da_tm = batch_take(da_tm, order, 1, xp)
        dc_tm = None if dc_tm is None else batch_take(dc_tm, order, 1, xp)
        dh_n = None if dh_n is None else batch_take(dh_n, order, 0, xp)
        dc_n = None if dc_n is None else batch_take(dc_n, order, 0, xp)
    t_x, m, n_x = x_tm.shape
    n_a = cache.h.shape[2]
    w_h, w_x = cache.W[:, :n_a], cache.W[:, n_a:]
    dtype, device = x_tm.dtype, _device(x_tm)
    zeros = xp.zeros((m, n_a), dtype=dtype, device=device)
    dh_next = zeros if dh_n is None else dh_n
    dc_next = zeros if dc_n is None else dc_n
    inside = None if cache.lengths is None else step_masks(cache.lengths, t_x, xp, device)
    d_weights = xp.zeros(cache.W.shape, dtype=dtype, device=device)
    d_bias = xp.zeros(cache.b.shape, dtype=dtype, device=device)
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
    dx = xp.concat(dx_segments[::-1], axis=0)
    if order is not None:
        inverse = inverse_order(order)
        dx = batch_take(dx, inverse, 1, xp)
        dh_next = batch_take(dh_next, inverse, 0, xp)
        dc_next = batch_take(dc_next, inverse, 0, xp)
    return dx, dh_next, dc_next, d_weights, d_bias
