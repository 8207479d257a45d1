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
* the weight gradients are a few large products after the backward loop
  (``dW = dZ^T [H_prev | X]`` over all steps), not ``T_x`` small ones;
* the cache holds each quantity once, stacked over time (:class:`SequenceCache`);
* the backward pass reuses the cached gates and ``tanh(c)``.

No in-place writes: results are collected in lists and stacked, so immutable
arrays (JAX) work.  Backend fast paths (``xlstm._numpy``, ``xlstm._cupy``)
implement the same ``forward``/``backward`` functions and produce the same
:class:`SequenceCache`, so a cache made by one engine is usable by any other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import device as _device

from ._layout import N_SIGMOID_GATES
from .activations import _sigmoid

#: Backward (and recompute) works through the sequence in segments of about this
#: many elements of the gate array, so its temporaries stay bounded.
SEGMENT_ELEMENTS = 1 << 22


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

    @property
    def recompute(self) -> bool:
        """Whether the gates were left out (memory-saving mode)."""
        return self.gates is None


def segment_length(t_x: int, m: int, n_a: int) -> int:
    """Steps per backward segment: bounded memory, still large products."""
    return max(1, min(t_x, SEGMENT_ELEMENTS // (m * 4 * n_a)))


def time_major(x: Any, xp: Any) -> Any:
    """``(n_x, m, T)`` seed layout to ``(T, m, n_x)`` engine layout."""
    return xp.permute_dims(x, (2, 1, 0))


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


def forward(x: Any, h0: Any, c0: Any, W: Any, b: Any, *, xp: Any, recompute: bool) -> SequenceCache:
    """Run the sequence.  ``x`` is ``(n_x, m, T)``; ``h0, c0`` are ``(m, n_a)``."""
    n_x, m, t_x = x.shape
    n_a = h0.shape[1]
    w_h, w_x = W[:, :n_a], W[:, n_a:]
    x_rows = xp.reshape(time_major(x, xp), (t_x * m, n_x))
    z_input = xp.reshape(x_rows @ w_x.T + b, (t_x, m, 4 * n_a))

    h, c = h0, c0
    hs, cs, all_gates, tanh_cs = [h0], [c0], [], []
    for t in range(t_x):
        gates, c, tanh_c, h = cell_step(z_input[t, ...] + h @ w_h.T, c, n_a, xp)
        hs.append(h)
        cs.append(c)
        all_gates.append(gates)
        tanh_cs.append(tanh_c)
    if recompute:
        return SequenceCache(xp.stack(hs), xp.stack(cs), None, None, W, b)
    return SequenceCache(xp.stack(hs), xp.stack(cs), xp.stack(all_gates), xp.stack(tanh_cs), W, b)


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


def backward(cache: SequenceCache, x: Any, da_tm: Any, dc_tm: Any, *, xp: Any):
    """Backpropagation through time.

    Parameters
    ----------
    cache : SequenceCache
    x : (n_x, m, T)
    da_tm, dc_tm : (T, m, n_a) or None
        External gradients reaching ``h_{t+1}`` and ``c_{t+1}`` (time-major).

    Returns
    -------
    dx : (n_x, m, T);  dh0, dc0 : (m, n_a);  dW : (4 n_a, n_a + n_x);  db : (4 n_a,)
    """
    n_x, m, t_x = x.shape
    n_a = cache.h.shape[2]
    w_h, w_x = cache.W[:, :n_a], cache.W[:, n_a:]
    x_tm = time_major(x, xp)
    zeros = xp.zeros((m, n_a), dtype=x.dtype, device=_device(x))
    dh_next, dc_next = zeros, zeros
    d_weights = xp.zeros(cache.W.shape, dtype=x.dtype, device=_device(x))
    d_bias = xp.zeros(cache.b.shape, dtype=x.dtype, device=_device(x))
    dx_segments = []
    step = segment_length(t_x, m, n_a)
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
            dz, dc_next = cell_step_backward(
                dh, dc, gates[local, ...], cache.c[t, ...], tanh_c[local, ...], n_a, xp
            )
            dh_next = dz @ w_h
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
    return dx, dh_next, dc_next, d_weights, d_bias
