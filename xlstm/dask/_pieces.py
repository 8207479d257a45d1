"""A batch in memory cut into pieces along its sequences, for the gradient servers.

Shape legend: ``x (n_x, m, T)`` or integer ids ``(m, T)``; ``targets, mask (m, T)`` or
``(m,)``; ``lengths (m,)``; states ``(..., n_a, m)``.  Piece ``j`` holds the sequences
``bounds[j]:bounds[j + 1]`` of every one of them, as :func:`numpy.array_split` cuts.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import array_api_compat
import numpy as np


def _batch_size(x: Any) -> int:
    return int(x.shape[1] if x.ndim == 3 else x.shape[0])


def check(x: Any, targets: Any, mask: Any, lengths: Any, state: Any, n_x: int) -> int:
    """Shapes and kinds of a batch in memory, before anything is sent; returns ``m``.

    Values (ids, classes, lengths) are checked where each piece runs, by the model.
    """
    if not array_api_compat.is_array_api_obj(x):
        msg = f"`x` must be an array (NumPy, CuPy or dask), got {type(x).__name__}"
        raise TypeError(msg)
    ids = x.ndim == 2 and np.issubdtype(np.dtype(str(x.dtype)), np.integer)
    if not ids and (x.ndim != 3 or int(x.shape[0]) != n_x):
        msg = f"`x` has shape {tuple(x.shape)}; expected (n_x, m, T) with n_x = {n_x} or ids (m, T)"
        raise ValueError(msg)
    m = _batch_size(x)
    named = {"targets": targets, "mask": mask, "lengths": lengths}
    for name, value in named.items():
        if value is None:
            continue
        if not array_api_compat.is_array_api_obj(value):
            raise TypeError(f"`{name}` must be an array, got {type(value).__name__}")
        if value.ndim < 1 or int(value.shape[0]) != m:
            msg = f"`{name}` has shape {tuple(value.shape)}; expected {m} rows, one per sequence"
            raise ValueError(msg)
    if not np.issubdtype(np.dtype(str(targets.dtype)), np.integer):
        raise TypeError(f"`targets` has dtype {targets.dtype}; expected an integer dtype")
    if state is not None:
        for name, value in zip(("a", "c"), split_state(state), strict=True):
            if not array_api_compat.is_array_api_obj(value) or int(value.shape[-1]) != m:
                shape = tuple(getattr(value, "shape", ()))
                msg = f"`state` {name} has shape {shape}; expected (..., n_a, m) with m = {m}"
                raise ValueError(msg)
    return m


def split_state(state: Any) -> tuple[Any, Any]:
    """``(a, c)`` of a step's ``state`` (``None``: ``(None, None)``)."""
    if state is None:
        return None, None
    if not (isinstance(state, tuple) and len(state) == 2):
        raise TypeError("`state` must be None or the (a, c) tuple a previous step returned")
    return state


def bounds(m: int, count: int) -> list[int]:
    """Row bounds of ``min(count, m)`` pieces of ``m`` sequences, as even as can be."""
    count = min(count, m)
    sizes = [m // count + (1 if j < m % count else 0) for j in range(count)]
    return [0, *np.cumsum(sizes).tolist()]


def cut(x, targets, mask, lengths, state, seed, edges: list[int]) -> list[tuple]:
    """The pieces ``(x, targets, mask, a0, c0, seed, index, lengths)`` between ``edges``."""
    a0, c0 = split_state(state)
    rows = lambda value, lo, hi: None if value is None else value[lo:hi, ...]  # noqa: E731
    last = lambda value, lo, hi: None if value is None else value[..., lo:hi]  # noqa: E731
    pieces = []
    for index, (lo, hi) in enumerate(pairwise(edges)):
        inputs = x[:, lo:hi, :] if x.ndim == 3 else x[lo:hi, :]
        pieces.append(
            (
                inputs, rows(targets, lo, hi), rows(mask, lo, hi),
                last(a0, lo, hi), last(c0, lo, hi), seed, index, rows(lengths, lo, hi),
            )
        )  # fmt: skip
    return pieces


def join(parts: list[tuple]) -> tuple[Any, Any]:
    """The final state ``(a_T, c_T)`` of the whole batch from its pieces' results."""
    xp = array_api_compat.array_namespace(parts[0][3])
    a = xp.concat([part[3] for part in parts], axis=-1)
    c = xp.concat([part[4] for part in parts], axis=-1)
    return a, c
