"""NumPy fast path for variable-length batches: rows sorted by length, a shrinking batch.

Same recurrence and :class:`~xlstm._engines.cache.SequenceCache` as :mod:`.padded`,
for ``lengths`` given (``1 <= lengths[j] <= T``).  Why a separate loop: the rows of
the batch are stored sorted by decreasing length (``SequenceCache.order``), so at step
``t`` the sequences still running are a *prefix* of ``k_t`` rows.  Every operation of
the step then works on contiguous ``[:k_t]`` slices (as PyTorch's packed sequences do):
finished sequences cost nothing but a copy of their carried state, and a batch of
varied lengths costs about ``sum(lengths) / (m T)`` of the padded recurrence.  Steps
past the longest sequence are not computed at all.

Two groups.  When the two halves of the batch can run in two threads
(:mod:`xlstm._threads`), the rows are dealt into two groups by alternate rank of
length (balanced work), each stored sorted by decreasing length: each group's
running sequences are a prefix of the group, and each group runs its own loop.
A cache's groups are its runs of decreasing lengths (one or two).

Semantics (those of the generic engine, :mod:`xlstm._engines.generic`): past a sequence's end
the step is the identity (``h_t = h_{t-1}``, ``c_t = c_{t-1}``); the gates and
``tanh(c)`` stored for padded steps are zeros; backward ignores external gradients at
padded steps and passes the recurrent gradients straight through them, so ``dx`` is
zero there.
"""

from __future__ import annotations

import itertools
from functools import partial

import numpy as np

from ... import _threads
from ..cache import SequenceCache, inverse_order, segment_length
from . import workspace
from .step import (
    activate_halved,
    gate_reader,
    halved_weights,
    local_derivatives,
    project_segment,
    recurrent_weights,
    segment_products,
    time_major_rows,
)

MIN_GROUP_ROWS = 8
"""Rows per group below which the batch is not split into two groups."""


def _storage_order(lengths: np.ndarray, split: bool) -> np.ndarray | None:
    """Rows sorted by decreasing length; with ``split``, dealt into two such groups."""
    ranked = np.argsort(-lengths, kind="stable")
    order = np.concatenate([ranked[1::2], ranked[0::2]]) if split else ranked
    return None if np.array_equal(order, np.arange(order.shape[0])) else order


def _groups(stored_lengths: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges within which the stored lengths decrease (their maximal runs)."""
    cuts = (np.flatnonzero(stored_lengths[1:] > stored_lengths[:-1]) + 1).tolist()
    bounds = [0, *cuts, int(stored_lengths.shape[0])]
    return list(itertools.pairwise(bounds))


def _running(stored_lengths: np.ndarray, group: tuple[int, int], t_x: int) -> np.ndarray:
    """``running[t]``: sequences of ``group`` with ``length > t`` (a prefix of the group)."""
    lengths = stored_lengths[group[0] : group[1]]
    return np.count_nonzero(lengths[None, :] > np.arange(t_x)[:, None], axis=1)


def _rows(array: np.ndarray, order: np.ndarray | None, start: int, stop: int) -> np.ndarray:
    """``array[:, :, start:stop]`` (seed layout) as time-major rows in storage order."""
    if order is None:
        return time_major_rows(array, start, stop)
    segment = np.take(array[:, :, start:stop].transpose(2, 1, 0), order, axis=1)
    return segment.reshape(-1, array.shape[0])  # np.take made it C-contiguous


def _time_rows(array_tm: np.ndarray, order: np.ndarray | None, start: int, stop: int):
    """``array_tm[start:stop]`` (time-major) contiguous, in storage order."""
    if order is None:
        return np.ascontiguousarray(array_tm[start:stop])
    return np.take(array_tm[start:stop], order, axis=1)


def _run_groups(bodies, work: int) -> None:
    """Run one body per group: two groups side by side when worthwhile."""
    if len(bodies) == 2:
        _threads.run_pair(bodies[0], bodies[1], work=work)
    else:
        for body in bodies:
            body()


# --------------------------------------------------------------------------- forward


def _forward_group(
    group, running, start, stop, offset, gates, h, c, tanh_c, recurrent_T, recompute
):  # fmt: skip
    """Steps ``start:stop`` of the rows of ``group``; writes only those rows."""
    first, last = group
    n_a = h.shape[2]
    recurrent = np.empty((last - first, 4 * n_a), h.dtype)
    product = np.empty((last - first, n_a), h.dtype)
    for t in range(start, stop):
        k = int(running[t])
        rows = slice(first, first + k)
        z = gates[t - offset, rows]
        np.matmul(h[t, rows], recurrent_T, out=recurrent[:k])
        z += recurrent[:k]
        activate_halved(z, n_a)
        i, f, o, g = (z[:, j * n_a : (j + 1) * n_a] for j in range(4))
        c_t = c[t + 1, rows]
        np.multiply(f, c[t, rows], out=c_t)
        np.multiply(i, g, out=product[:k])
        c_t += product[:k]
        tanh_t = (tanh_c[0] if recompute else tanh_c[t])[rows]
        np.tanh(c_t, out=tanh_t)
        np.multiply(o, tanh_t, out=h[t + 1, rows])
        if first + k < last:
            # Finished sequences: carry the state; store zeros as their gates.
            done = slice(first + k, last)
            h[t + 1, done] = h[t, done]
            c[t + 1, done] = c[t, done]
            if not recompute:
                gates[t, done] = 0
                tanh_c[t, done] = 0


def forward(x, h0, c0, W, b, *, recompute: bool, lengths: np.ndarray) -> SequenceCache:
    """Run the sequence; ``x`` is the seed-layout ``(n_x, m, T)`` view (see :mod:`.engine`)."""
    _, m, t_x = x.shape
    n_a = h0.shape[1]
    dtype = x.dtype
    work = int(np.sum(lengths)) * 4 * n_a * n_a
    # Two groups only when they will run in two threads (a split alone costs a little).
    split = m >= 2 * MIN_GROUP_ROWS and _threads.pair_is_parallel(work)
    order = _storage_order(lengths, split)
    stored = lengths if order is None else lengths[order]
    groups = _groups(stored)
    running = [_running(stored, group, t_x) for group in groups]
    t_end = int(stored.max())
    weights = halved_weights(W, b, n_a, rows=int(np.sum(lengths)))
    recurrent_T = weights.recurrent_T

    h, c = workspace.fresh_arrays(((t_x + 1, m, n_a),) * 2, dtype)  # the results
    h[0] = h0 if order is None else h0[order]
    c[0] = c0 if order is None else c0[order]
    step = segment_length(t_x, m, n_a, recompute)
    if recompute:
        gates = workspace.scratch("gate_segment", (step, m, 4 * n_a), dtype)
        tanh_c = workspace.scratch("tanh_step", (1, m, n_a), dtype)
    else:
        gates = np.empty((t_x, m, 4 * n_a), dtype)
        tanh_c = np.empty((t_x, m, n_a), dtype)

    for start in range(0, t_end, step):
        stop = min(t_end, start + step)
        offset = start if recompute else 0
        project_segment(
            _rows(x, order, start, stop),
            h,
            weights,
            start,
            stop,
            gates[start - offset :],
            with_recurrent=False,
        )
        bodies = [
            partial(
                _forward_group, group, counts, start, stop, offset,
                gates, h, c, tanh_c, recurrent_T, recompute,
            )
            for group, counts in zip(groups, running, strict=True)
        ]  # fmt: skip
        _run_groups(bodies, work)
    if t_end < t_x:
        h[t_end + 1 :] = h[t_end]
        c[t_end + 1 :] = c[t_end]
        if not recompute:
            gates[t_end:] = 0
            tanh_c[t_end:] = 0
    if recompute:
        return SequenceCache(h, c, None, None, W, b, stored, order)
    return SequenceCache(h, c, gates, tanh_c, W, b, stored, order)


# --------------------------------------------------------------------------- backward


def _backward_group(
    group, running, start, stop, gates, tanh_c, c, dz_segment, dc_from_dh, da_segment,
    dc_segment, dh_next, dc_next, w_h,
):  # fmt: skip
    """Steps ``stop - 1 .. start`` backwards for the rows of ``group``; writes only those."""
    first, last = group
    n_a = c.shape[2]
    span = stop - start
    rows = slice(first, last)
    local_derivatives(
        gates[:span, rows], c[start:stop, rows], tanh_c[:span, rows],
        dz_segment[:span, rows], dc_from_dh[:span, rows], n_a,
    )  # fmt: skip
    dh = np.empty((last - first, n_a), c.dtype)
    dc = np.empty((last - first, n_a), c.dtype)
    for t in range(stop - 1, start - 1, -1):
        local = t - start
        k = int(running[t])
        live = slice(first, first + k)
        dz = dz_segment[local]
        dh_k, dc_k = dh[:k], dc[:k]
        np.add(da_segment[local, live], dh_next[live], out=dh_k)
        np.multiply(dh_k, dc_from_dh[local, live], out=dc_k)
        dc_k += dc_next[live]
        if dc_segment is not None:
            dc_k += dc_segment[local, live]
        input_forget = dz[live, : 2 * n_a].reshape(k, 2, n_a)
        np.multiply(input_forget, dc_k[:, None, :], out=input_forget)
        dz[live, 3 * n_a :] *= dc_k
        dz[live, 2 * n_a : 3 * n_a] *= dh_k
        np.multiply(dc_k, gates[local, live, n_a : 2 * n_a], out=dc_next[live])
        np.matmul(dz[live], w_h, out=dh_next[live])
        if first + k < last:
            # Padded rows: no gradient from this step; dh_next, dc_next pass through.
            dz[first + k : last] = 0


def cache_reason(cache: SequenceCache) -> str | None:
    """Why :func:`backward` cannot read ``cache`` (``None``: it can).

    It needs the rows in at most two runs of decreasing length, as :func:`forward`
    stores them; a cache from another engine (batch order) usually is not.
    """
    if len(_groups(cache.lengths)) > 2:
        return "the cache's rows are not grouped by decreasing length (made by another engine)"
    return None


def backward(cache: SequenceCache, x, da_tm, dc_tm, *, dh_n=None, dc_n=None):
    """Backpropagation through time; returns ``dx`` time-major ``(T, m, n_x)``."""
    groups = _groups(cache.lengths)
    n_x, m, t_x = x.shape
    h, c, W, order = cache.h, cache.c, cache.W, cache.order
    n_a = h.shape[2]
    dtype = x.dtype
    running = [_running(cache.lengths, group, t_x) for group in groups]
    t_end = int(cache.lengths.max())
    work = 2 * int(np.sum(cache.lengths)) * 4 * n_a * n_a
    w_h, w_x = recurrent_weights(W, n_a), W[:, n_a:]
    step = segment_length(t_x, m, n_a, cache.recompute)
    read_gates = gate_reader(cache, step)

    def storage(state):
        if state is None:
            return np.zeros((m, n_a), dtype)
        return np.array(state if order is None else state[order], dtype=dtype, copy=True)

    dx_tm = np.zeros((t_x, m, n_x), dtype)  # storage order; zero past t_end
    d_weights = np.empty((4 * n_a, n_a + n_x), dtype)
    d_bias = np.empty(4 * n_a, dtype)
    dz_segment = workspace.scratch("dz_segment", (step, m, 4 * n_a), dtype)
    dc_from_dh = workspace.scratch("dc_from_dh", (step, m, n_a), dtype)
    dh_next, dc_next = storage(dh_n), storage(dc_n)

    for stop in range(t_end, 0, -step):
        start = max(0, stop - step)
        x_rows = _rows(x, order, start, stop)
        gates, tanh_c = read_gates(x_rows, start, stop)
        da_segment = _time_rows(da_tm, order, start, stop)
        dc_segment = None if dc_tm is None else _time_rows(dc_tm, order, start, stop)
        bodies = [
            partial(
                _backward_group, group, counts, start, stop, gates, tanh_c, c, dz_segment,
                dc_from_dh, da_segment, dc_segment, dh_next, dc_next, w_h,
            )
            for group, counts in zip(groups, running, strict=True)
        ]  # fmt: skip
        _run_groups(bodies, work)
        segment_products(
            dz_segment, h, x_rows, w_x, start, stop, d_weights, d_bias, dx_tm, first=stop == t_end
        )
    if order is not None:
        inverse = inverse_order(order)
        dx_tm = np.take(dx_tm, inverse, axis=1)
        dh_next, dc_next = dh_next[inverse], dc_next[inverse]
    return dx_tm, dh_next, dc_next, d_weights, d_bias
