"""The compiled kernels: one LSTM step forward and one backward, each a single pass.

Layout (see :mod:`.engine`): feature-major blocks stored time-major, each step's block
flattened, ``NA = n_a m`` (unit ``r``, batch column ``j`` at ``r m + j``)::

    G    (T, 4, NA)       a step's gate blocks in GATE_ORDER = (i, f, o, g): activations
                          out (and in, when made beforehand, the input projection)
    P    (4, NA)          the step's product: all of the pre-activation, or W_h h_{t-1}
    C    (T + 1, NA)      cell states, C[0] = c_0
    TC   (T, NA)          tanh(c_t)
    HF   (., >= NA)       h_{t-1} and h_t feature-major, for the per-step products
    HB   (T + 1, m, n_a)  hidden states batch-major (the cache's h), HB[0] = h_0

Each kernel reads a step's inputs once and writes its outputs once: the forward step
replaces the NumPy engine's nine ufunc calls (recurrent product added, one ``tanh``
over the gates, ``0.5 t + 0.5`` for the sigmoids, ``c``, ``tanh(c)``, ``h``), the
backward step its eight plus the per-segment local derivatives, which it computes on
the fly from the stored (or recomputed) activations.

Why the loops look as they do.  A step is one loop over all ``NA`` elements of its
blocks, contiguous in every array, so LLVM vectorises it (see :mod:`.scalar` for the
``tanh`` that allows it), whatever the batch size.  Four details keep it vectorised,
each found by reading LLVM's remarks: a helper called in the loop is inlined by numba
itself (``inline="always"``; LLVM vectorises a loop only once every call in it is
inlined, and does not inline a helper holding five ``tanh``); a flag that decides which
arrays the loop reads is tested outside it (two copies of the loop); the gate blocks are
an axis of their own (at offsets ``q NA`` of one flat row, LLVM cannot prove that
writing one block leaves the others alone); and there is no loop over the units around
it (a loop over the first ``k`` columns of each unit stays scalar).  So with a
variable-length batch the loop runs over every column and a short second loop then
fixes the ``m - k`` columns of the sequences that have ended.

``k`` is the number of running sequences, a prefix of the ``m`` columns (rows sorted by
decreasing length).  Columns ``j >= k`` are sequences that have ended: the forward step
carries their states (``h_t = h_{t-1}``, ``c_t = c_{t-1}``) and stores zeros as their
gates; the backward step gives them ``dz = 0`` and leaves their running gradients
untouched (the identity's gradient).

The kernels release the GIL and keep no state: two threads may run them on different
arrays at once.  No kernel sums (each output element depends on its own inputs only),
so results are bitwise reproducible.
"""

from __future__ import annotations

import numba

from .scalar import tanh, typed

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@numba.njit(inline="always", **_JIT)
def _cell(zi, zf, zo, zg, c_prev, half):
    """One element's activations, ``c_t`` and ``tanh(c_t)`` from its pre-activations.

    Inlined by numba itself (``inline="always"``) so that the loops calling it stay
    vectorisable; it has no branch of its own (numba's inliner warns about those).
    """
    i = half * tanh(half * zi) + half
    f = half * tanh(half * zf) + half
    o = half * tanh(half * zo) + half
    g = tanh(zg)
    c = f * c_prev + i * g
    return i, f, o, g, c, tanh(c)


@numba.njit(**_JIT)
def forward_step(G, P, HF, HB, C, TC, t, tg, now, new, n_a, k, projected, store):
    """Step ``t``: the gates' pre-activations to ``c_t`` and ``h_t``.

    The pre-activations are ``P`` (the step's product), plus ``G[tg]`` when
    ``projected`` (the input projection made beforehand for a whole segment).  ``HF[now]``
    holds ``h_{t-1}`` feature-major in its first ``NA`` elements (what the caller's
    product read); ``h_t`` goes there in ``HF[new]`` and, batch-major, to ``HB[t + 1]``
    ``(m, n_a)``; ``c_t`` to ``C[t + 1]``.  With ``store``, the activations go to ``G[tg]``
    and ``tanh(c_t)`` to ``TC[t]``; otherwise ``G`` and ``TC`` are not written.  The
    sigmoid is ``0.5 tanh(z / 2) + 0.5``, as in the generic engine.  Only the first ``k``
    columns of ``P`` need to hold the product: the others are computed from whatever
    ``P`` holds there and then overwritten.
    """
    na = C.shape[1]
    m = na // n_a
    half = typed(C[0, 0], 0.5)
    zero = typed(C[0, 0], 0.0)
    # One loop over every column, finished ones included: a loop over the first k
    # columns of each unit (an outer loop around it) is not vectorised by LLVM.  Two
    # copies of the loop, so that neither branches on `projected` inside.
    if projected:
        for e in range(na):
            i, f, o, g, c, tanh_c = _cell(
                P[0, e] + G[tg, 0, e], P[1, e] + G[tg, 1, e], P[2, e] + G[tg, 2, e],
                P[3, e] + G[tg, 3, e], C[t, e], half,
            )  # fmt: skip
            if store:
                G[tg, 0, e] = i
                G[tg, 1, e] = f
                G[tg, 2, e] = o
                G[tg, 3, e] = g
                TC[t, e] = tanh_c
            C[t + 1, e] = c
            HF[new, e] = o * tanh_c
    else:
        for e in range(na):
            i, f, o, g, c, tanh_c = _cell(P[0, e], P[1, e], P[2, e], P[3, e], C[t, e], half)
            if store:
                G[tg, 0, e] = i
                G[tg, 1, e] = f
                G[tg, 2, e] = o
                G[tg, 3, e] = g
                TC[t, e] = tanh_c
            C[t + 1, e] = c
            HF[new, e] = o * tanh_c
    for r in range(n_a if k < m else 0):
        for e in range(r * m + k, (r + 1) * m):
            C[t + 1, e] = C[t, e]
            HF[new, e] = HF[now, e]
            if store:
                G[tg, 0, e] = zero
                G[tg, 1, e] = zero
                G[tg, 2, e] = zero
                G[tg, 3, e] = zero
                TC[t, e] = zero
    # h_t batch-major for the cache: the step's (n_a, m) block transposed, while hot.
    for j in range(m):
        for r in range(n_a):
            HB[t + 1, j, r] = HF[new, r * m + j]


@numba.njit(**_JIT)
def backward_step(A, TC, C, dZ, DA, DC, dh, dc, t, ta, td, n_a, k, recompute, has_dc):
    """Step ``t`` backwards: the gradients reaching ``h_t``, ``c_t`` to ``dz_t`` and ``dc_{t-1}``.

    Parameters
    ----------
    A : (., 4, NA)
        ``A[ta]``: the step's activated gates; with ``recompute``, its pre-activations
        (bias included), from which the activations and ``tanh(c_t)`` (from ``C``) are
        computed here, exactly as the forward step computed them (``TC`` is not read).
    TC, C
        As in :func:`forward_step`; ``C[t]`` is ``c_{t-1}``.
    dZ : (., 4, NA)
        Output: ``dZ[td]``, the step's pre-activation gradients.
    DA, DC : (., NA)
        ``[td]``: external gradients reaching ``h_t`` and ``c_t`` (``DC`` read only with
        ``has_dc``).  ``DA[td]`` is scratch: overwritten at the finished columns.
    dh, dc : (NA,)
        In: the gradients reaching ``h_t`` and ``c_t`` from step ``t + 1``.  Out: ``dc``
        is the gradient reaching ``c_{t-1}``; ``dh`` is left for the caller's product
        ``W_h^T dz_t`` (over the first ``k`` columns; the others pass through).

    Derivatives are written from the activations, as in the generic engine::

        dc += dh o (1 - tanh_c^2)
        dz_i = dc g i (1 - i)      dz_f = dc c_{t-1} f (1 - f)
        dz_o = dh tanh_c o (1 - o) dz_g = dc i (1 - g^2)        dc_{t-1} = dc f
    """
    na = C.shape[1]
    m = na // n_a
    one = typed(C[0, 0], 1.0)
    half = typed(C[0, 0], 0.5)
    zero = typed(C[0, 0], 0.0)
    finished = n_a if k < m else 0
    # The finished columns' dc passes through unchanged: keep it in DA (unused there)
    # while the loop below, which runs over every column, overwrites it.
    for r in range(finished):
        for e in range(r * m + k, (r + 1) * m):
            DA[td, e] = dc[e]
    for e in range(na):
        if recompute:
            i = half * tanh(half * A[ta, 0, e]) + half
            f = half * tanh(half * A[ta, 1, e]) + half
            o = half * tanh(half * A[ta, 2, e]) + half
            g = tanh(A[ta, 3, e])
            tanh_c = tanh(C[t + 1, e])
        else:
            i = A[ta, 0, e]
            f = A[ta, 1, e]
            o = A[ta, 2, e]
            g = A[ta, 3, e]
            tanh_c = TC[t, e]
        d_h = DA[td, e] + dh[e]
        d_c = dc[e] + DC[td, e] if has_dc else dc[e]
        d_c = d_c + d_h * o * (one - tanh_c * tanh_c)
        dZ[td, 0, e] = d_c * g * i * (one - i)
        dZ[td, 1, e] = d_c * C[t, e] * f * (one - f)
        dZ[td, 2, e] = d_h * tanh_c * o * (one - o)
        dZ[td, 3, e] = d_c * i * (one - g * g)
        dc[e] = d_c * f
    for r in range(finished):
        for e in range(r * m + k, (r + 1) * m):
            dc[e] = DA[td, e]
            dZ[td, 0, e] = zero
            dZ[td, 1, e] = zero
            dZ[td, 2, e] = zero
            dZ[td, 3, e] = zero


@numba.njit(**_JIT)
def rows_to_steps(rows, steps, first, k):
    """``steps[first + l, q, j] = rows[q, l, j]`` for ``l < k``: ``(R, ., m)`` to ``(., R, m)``.

    The products' layout (time and batch together in the columns) to the kernels' (each
    step's block contiguous).  NumPy's strided copy does the same at a fraction of the
    speed when the batch (the contiguous run) is short.
    """
    count, m = rows.shape[0], rows.shape[2]
    for step in range(k):
        for q in range(count):
            for j in range(m):
                steps[first + step, q, j] = rows[q, step, j]


@numba.njit(**_JIT)
def steps_to_rows(steps, rows, k):
    """``rows[q, l, j] = steps[l, q, j]`` for ``l < k``: the inverse of :func:`rows_to_steps`."""
    count, m = rows.shape[0], rows.shape[2]
    for q in range(count):
        for step in range(k):
            for j in range(m):
                rows[q, step, j] = steps[step, q, j]


KERNELS = (forward_step, backward_step, rows_to_steps, steps_to_rows)
"""Every compiled kernel (see :func:`xlstm._engines.numba.engine.compile_seconds`)."""

__all__ = [
    "KERNELS",
    "backward_step",
    "forward_step",
    "rows_to_steps",
    "steps_to_rows",
]
