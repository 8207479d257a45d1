"""One path from the public functions to the engines: one direction of one layer.

Every public function that runs the recurrence — the notebook's :func:`xlstm.lstm_forward` /
:func:`~xlstm.lstm_backward`, the layers (:func:`xlstm.layers.multilayer_forward` /
:func:`~xlstm.layers.multilayer_backward`, hence :class:`xlstm.LSTM` and the training
models) and the training loss — validates its own arguments and then calls :func:`forward`
and :func:`backward` here.  This module is the only caller of
:func:`xlstm._engines.dispatch.select_engine` and of the engines' ``forward``/``backward``;
it packs the gate parameters into the engine layout, reverses time for the reverse
direction of a bidirectional layer, and gives states back in batch and time order.

Layouts (see :mod:`xlstm._engines.contract`): inputs and per-step gradients are
time-major ``(T, m, n)``, states ``(m, n_a)``.  Gate parameters are one direction's notebook
dict (``Wf, bf, Wi, bi, Wc, bc, Wo, bo``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ._engines.cache import SequenceCache, final_state, inverse_order, sequence_states
from ._engines.contract import Engine
from ._engines.dispatch import select_engine
from ._engines.lengths import reverse_time
from .parameters import pack, unpack_gradients


class Direction(NamedTuple):
    """What :func:`backward` needs from :func:`forward`: one direction of one layer."""

    cache: SequenceCache
    """The engine's cache (states, maybe gates, stacked ``W`` and ``b``)."""
    x: Any
    """Input ``(T, m, n_in)`` as the engine read it: time-reversed within each sequence's
    length for the reverse direction."""
    reverse: bool
    """Whether this is the reverse direction of a bidirectional layer."""
    lengths: Any
    """Host ``int64`` lengths ``(m,)`` in batch order, or ``None``."""
    choice: str
    """The engine choice the forward pass was made with (``"auto"``, ``"numpy"``, ...)."""


select = select_engine
"""The engine that runs a direction (:func:`xlstm._engines.dispatch.select_engine`)."""


def forward(
    x: Any,
    h0: Any,
    c0: Any,
    gates: Mapping[str, Any],
    *,
    xp: Any,
    choice: str,
    recompute: bool,
    lengths: Any = None,
    reverse: bool = False,
    engine: Engine | None = None,
) -> Direction:
    """Run one direction over a time-major batch.

    Parameters
    ----------
    x : array, shape (T, m, n_in)
        Inputs in time order (any strides).
    h0, c0 : array, shape (m, n_a)
    gates : dict
        The direction's gate parameters (notebook keys).
    xp : namespace
    choice : str
        What :func:`xlstm._engines.dispatch.engine_option` returned.
    recompute : bool
        Keep no gates (memory-saving mode and inference).
    lengths : host int64 array (m,), optional
        Checked lengths (:func:`xlstm._engines.lengths.check_lengths`).
    reverse : bool, default False
        Run each sequence backwards within its length.
    engine : Engine, optional
        An engine already selected for this call (:func:`select`), so that a caller that
        must know it first (to run two directions in threads) does not select twice.
    """
    if engine is None:
        engine = select(xp, x.dtype, choice, lengths=lengths is not None)
    seen = reverse_time(x, lengths, xp) if reverse else x
    W, b = pack(gates, xp)
    cache = engine.forward(seen, h0, c0, W, b, xp=xp, recompute=recompute, lengths=lengths)
    return Direction(cache, seen, reverse, lengths, choice)


def states(direction: Direction, xp: Any) -> tuple[Any, Any]:
    """Hidden and cell states ``a_1..a_T``, ``c_1..c_T`` as ``(T, m, n_a)``.

    In batch order and time order (also for the reverse direction), zero past each
    sequence's end; views of the cache when nothing needs reordering.
    """
    hidden, cells = sequence_states(direction.cache, xp)
    if direction.reverse:
        lengths = direction.lengths
        hidden, cells = reverse_time(hidden, lengths, xp), reverse_time(cells, lengths, xp)
    return hidden, cells


def from_cache(cache: SequenceCache, x: Any, choice: str) -> Direction:
    """The forward direction that made ``cache`` from the time-major input ``x``.

    For the notebook's ``caches = (SequenceCache, x)``, which keep no :class:`Direction`.
    """
    lengths = cache.lengths
    if lengths is not None and cache.order is not None:
        lengths = lengths[inverse_order(cache.order)]
    return Direction(cache, x, False, lengths, choice)


def final_states(direction: Direction, xp: Any) -> tuple[Any, Any]:
    """``(h_n, c_n)``, each ``(m, n_a)`` in batch order: each sequence's last state."""
    return final_state(direction.cache, xp)


def backward(
    direction: Direction,
    dh: Any,
    dc: Any = None,
    *,
    xp: Any,
    choice: str | None = None,
    dh_n: Any = None,
    dc_n: Any = None,
    engine: Engine | None = None,
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Backpropagation through time for one direction.

    Parameters
    ----------
    direction : Direction
        What :func:`forward` returned.
    dh, dc : array, shape (T, m, n_a)
        Gradients reaching each step's states from outside the recurrence, in time order
        (``dc`` may be ``None``).
    xp : namespace
    choice : str, optional
        Engine choice of the backward pass; default: the forward pass's.
    dh_n, dc_n : array, shape (m, n_a), optional
        Gradients reaching the final states.
    engine : Engine, optional
        An engine already selected for this backward (:func:`select` with the cache).

    Returns
    -------
    dx : array, shape (T, m, n_in)
        In time order; zero past each sequence's end.
    dh0, dc0 : array, shape (m, n_a)
    grads : dict
        ``dWf, dbf, ..., dbo`` shaped like the gate parameters.
    """
    cache = direction.cache
    if engine is None:
        final = dh_n is not None or dc_n is not None
        engine = select(
            xp, direction.x.dtype, direction.choice if choice is None else choice,
            final_state_grads=final, cache=cache,
        )  # fmt: skip
    if direction.reverse:
        dh = reverse_time(dh, direction.lengths, xp)
        dc = None if dc is None else reverse_time(dc, direction.lengths, xp)
    dx, dh0, dc0, d_weights, d_bias = engine.backward(
        cache, direction.x, dh, dc, xp=xp, dh_n=dh_n, dc_n=dc_n
    )
    if direction.reverse:
        dx = reverse_time(dx, direction.lengths, xp)
    n_a = int(cache.h.shape[2])
    return dx, dh0, dc0, unpack_gradients(d_weights, d_bias, n_a, xp)


__all__ = [
    "Direction", "backward", "final_states", "forward", "from_cache", "select", "states",
]  # fmt: skip
