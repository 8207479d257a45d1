"""The NumPy engine: the generic engine's algorithm with preallocated, in-place buffers.

Implements the engine contract (:mod:`xlstm._engines.contract`).  Padded batches run
:mod:`.padded`; variable-length batches run :mod:`.masked` (rows sorted by length, a
shrinking batch).  Both share the step pieces of :mod:`.step`.  The loops work on the
seed-layout ``(n_x, m, T)`` view of the time-major input: their per-segment copies
swap only its last two axes, the cheapest transposition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache import SequenceCache
from . import masked, padded


def unsupported_reason(xp: Any, dtype: Any, *, cache: SequenceCache | None = None) -> str | None:
    """Every real floating dtype runs; a variable-length cache must be in this engine's order."""
    if not np.issubdtype(np.dtype(dtype), np.floating):
        return f"dtype {np.dtype(dtype).name} is not a real floating dtype"
    if cache is not None and cache.lengths is not None:
        return masked.cache_reason(cache)
    return None


def forward(x, h0, c0, W, b, *, xp: Any = None, recompute: bool, lengths: Any = None):
    """Run the sequence (contract: :class:`~xlstm._engines.contract.EngineModule`)."""
    x = x.transpose(2, 1, 0)
    if lengths is None:
        return padded.forward(x, h0, c0, W, b, recompute=recompute)
    return masked.forward(x, h0, c0, W, b, recompute=recompute, lengths=lengths)


def backward(cache: SequenceCache, x, da, dc, *, xp: Any = None, dh_n=None, dc_n=None):
    """Backpropagation through time (contract: :class:`~xlstm._engines.contract.EngineModule`)."""
    x = x.transpose(2, 1, 0)
    if cache.lengths is None:
        return padded.backward(cache, x, da, dc, dh_n=dh_n, dc_n=dc_n)
    return masked.backward(cache, x, da, dc, dh_n=dh_n, dc_n=dc_n)
