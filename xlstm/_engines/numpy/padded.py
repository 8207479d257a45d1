"""NumPy engine, padded batches: every step works on the whole batch.

Same algorithm, layout and :class:`~xlstm._engines.cache.SequenceCache` as the
generic engine (:mod:`xlstm._engines.generic`), but every array is preallocated
once per call and every element-wise operation writes with ``out=`` into it.
Why: the generic path allocates a dozen temporaries per step, and at the sizes
people run on a CPU the allocator and the extra passes over memory cost as much
as the recurrent matrix product itself.  The shared step pieces are in
:mod:`.step`.
"""

from __future__ import annotations

import numpy as np

from ..._layout import N_SIGMOID_GATES
from ..cache import SequenceCache, segment_length
from . import workspace
from .step import (
    gate_reader,
    halved_weights,
    local_derivatives,
    project_segment,
    recurrent_weights,
    segment_products,
    swap_last_axes,
    time_major_rows,
)


def forward(x, h0, c0, W, b, *, recompute: bool) -> SequenceCache:
    """Run the sequence; ``x`` is the seed-layout ``(n_x, m, T)`` view (see :mod:`.engine`)."""
    _, m, t_x = x.shape
    n_a = h0.shape[1]
    dtype = x.dtype
    weights = halved_weights(W, b, n_a, rows=t_x * m)
    recurrent_T = weights.recurrent_T

    h, c = workspace.fresh_arrays(((t_x + 1, m, n_a),) * 2, dtype)  # the results
    h[0] = h0
    c[0] = c0
    step = segment_length(t_x, m, n_a, recompute)
    if recompute:
        # Per-segment temporaries: the cache keeps only h and c.
        gates = workspace.scratch("gate_segment", (step, m, 4 * n_a), dtype)
        tanh_c = workspace.scratch("tanh_step", (1, m, n_a), dtype)
    else:
        gates = np.empty((t_x, m, 4 * n_a), dtype)
        tanh_c = np.empty((t_x, m, n_a), dtype)
    recurrent = workspace.scratch("recurrent", (m, 4 * n_a), dtype)
    product = workspace.scratch("product", (m, n_a), dtype)
    # Views over all steps, made once: the loop then only indexes them by step.
    # At small sizes a step is a dozen NumPy calls on tiny arrays, where slicing
    # each step's gates anew is a visible part of the time.
    sigmoid_gates = gates[..., : N_SIGMOID_GATES * n_a]
    gate_i, gate_f, gate_o, gate_g = (gates[..., k * n_a : (k + 1) * n_a] for k in range(4))
    half = dtype.type(0.5)  # a typed scalar: see step.activate_halved
    tanh, multiply, add = np.tanh, np.multiply, np.add
    for start in range(0, t_x, step):
        stop = min(t_x, start + step)
        offset = start if recompute else 0
        project_segment(
            time_major_rows(x, start, stop),
            h,
            weights,
            start,
            stop,
            gates[start - offset :],
            with_recurrent=False,
        )

        for t in range(start, stop):
            j = t - offset
            z = gates[j]
            np.matmul(h[t], recurrent_T, out=recurrent)
            add(z, recurrent, out=z)
            # step.activate_halved, inlined.
            tanh(z, out=z)
            sigmoid = sigmoid_gates[j]
            multiply(sigmoid, half, out=sigmoid)
            add(sigmoid, half, out=sigmoid)
            c_t = c[t + 1]
            multiply(gate_f[j], c[t], out=c_t)
            multiply(gate_i[j], gate_g[j], out=product)
            add(c_t, product, out=c_t)
            tanh_t = tanh_c[0 if recompute else t]
            tanh(c_t, out=tanh_t)
            multiply(gate_o[j], tanh_t, out=h[t + 1])
    if recompute:
        return SequenceCache(h, c, None, None, W, b)
    return SequenceCache(h, c, gates, tanh_c, W, b)


def backward(cache: SequenceCache, x, da_tm, dc_tm, *, dh_n=None, dc_n=None):
    """Backpropagation through time; returns ``dx`` time-major ``(T, m, n_x)``.

    Each segment of steps is done in two phases: the local derivative factors
    of all its steps at once (:func:`local_derivatives`), then the recurrence
    proper, which per step is only a handful of multiplications by ``dh`` and
    ``dc`` and the product ``dz W_h``; the segment's weight gradients and
    ``dx`` follow as large products.
    """
    n_x, m, t_x = x.shape
    h, c, W = cache.h, cache.c, cache.W
    n_a = h.shape[2]
    dtype = x.dtype
    w_h, w_x = recurrent_weights(W, n_a), W[:, n_a:]
    step = segment_length(t_x, m, n_a, cache.recompute)
    read_gates = gate_reader(cache, step)

    # dx is filled time-major: contiguous products, and the engine layout.
    dx_tm = np.empty((t_x, m, n_x), dtype)
    d_weights = np.empty((4 * n_a, n_a + n_x), dtype)
    d_bias = np.empty(4 * n_a, dtype)
    dz_segment = workspace.scratch("dz_segment", (step, m, 4 * n_a), dtype)
    dc_from_dh = workspace.scratch("dc_from_dh", (step, m, n_a), dtype)
    # Gradients reaching the final state (if any) start the recurrence.
    dh_next = np.zeros((m, n_a), dtype) if dh_n is None else np.array(dh_n, dtype, copy=True)
    dc_next = np.zeros((m, n_a), dtype) if dc_n is None else np.array(dc_n, dtype, copy=True)
    dh = workspace.scratch("dh", (m, n_a), dtype)
    dc = workspace.scratch("dc", (m, n_a), dtype)
    dc_across_gates = dc[:, None, :]
    multiply, add = np.multiply, np.add

    for stop in range(t_x, 0, -step):
        start = max(0, stop - step)
        k = stop - start
        # The segment's inputs, used by the recomputation and by dW_x.
        x_rows = time_major_rows(x, start, stop)
        gates, tanh_c = read_gates(x_rows, start, stop)
        # One cheap copy per segment (see swap_last_axes) keeps the loop's reads local.
        da_segment = swap_last_axes(da_tm, start, stop, "da_segment")
        dc_segment = None if dc_tm is None else swap_last_axes(dc_tm, start, stop, "dc_segment")

        local_derivatives(gates, c[start:stop], tanh_c, dz_segment[:k], dc_from_dh[:k], n_a)
        # Views over the segment, made once (see forward); step t is [t - start].
        da_steps = da_segment.transpose(1, 2, 0)
        dc_steps = None if dc_segment is None else dc_segment.transpose(1, 2, 0)
        # dz_i and dz_f are adjacent: one broadcast multiply by dc.
        dz_input_forget = dz_segment[:k, :, : 2 * n_a].reshape(k, m, 2, n_a)
        dz_o, dz_g = dz_segment[:k, :, 2 * n_a : 3 * n_a], dz_segment[:k, :, 3 * n_a :]
        gate_f = gates[..., n_a : 2 * n_a]
        for local in range(k - 1, -1, -1):
            add(da_steps[local], dh_next, out=dh)
            multiply(dh, dc_from_dh[local], out=dc)
            add(dc, dc_next, out=dc)
            if dc_steps is not None:
                add(dc, dc_steps[local], out=dc)
            multiply(dz_input_forget[local], dc_across_gates, out=dz_input_forget[local])
            multiply(dz_g[local], dc, out=dz_g[local])
            multiply(dz_o[local], dh, out=dz_o[local])
            multiply(dc, gate_f[local], out=dc_next)
            np.matmul(dz_segment[local], w_h, out=dh_next)
        segment_products(
            dz_segment, h, x_rows, w_x, start, stop, d_weights, d_bias, dx_tm, first=stop == t_x
        )
    return dx_tm, dh_next, dc_next, d_weights, d_bias
