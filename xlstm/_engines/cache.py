"""What every engine produces and how to read it: :class:`SequenceCache`.

The engine boundary is time-major with the batch in rows (see :mod:`xlstm._layout`):
inputs ``x (T, m, n_x)`` (any strides; the notebook's ``(n_x, m, T)`` array passes as the
free view :func:`time_major`), states ``(m, n_a)``, per-step gradients
``(T, m, n_a)``.  A cache made by one engine is readable by every engine that
accepts it (see :mod:`xlstm._engines.dispatch`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import device as _device

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
    """``(n_x, m, T)`` notebook layout to ``(T, m, n_x)`` engine layout, and back (a view)."""
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
