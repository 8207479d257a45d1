"""Variable-length batches: checking ``lengths`` and reversing each sequence within its length.

A batch of sequences of different lengths is padded on the right to ``T`` steps;
``lengths[j]`` is the number of real steps of sequence ``j`` (``1 <= lengths[j] <= T``).
Lengths are host metadata: whatever the backend, they are checked and kept as a NumPy
``int64`` array, and the masks and gather indices made from them are moved to the
backend with ``xp.asarray``.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .._backend import to_host


def check_lengths(lengths: Any, m: int, t_x: int) -> np.ndarray | None:
    """Validate ``lengths`` for a batch of ``m`` sequences padded to ``t_x`` steps.

    Returns a new host ``int64`` array, or ``None`` when ``lengths`` is ``None``
    or every sequence has all ``t_x`` steps (nothing is padded).

    Raises
    ------
    TypeError
        Not an integer array or a sequence of ints (bools and floats included).
    ValueError
        Not of shape ``(m,)``, or a length outside ``[1, t_x]``.
    """
    if lengths is None:
        return None
    if array_api_compat.is_array_api_obj(lengths):
        host = np.asarray(to_host(lengths))
    elif isinstance(lengths, (list, tuple, range)):
        if len(lengths) != m:  # first: a huge range is not walked through
            msg = (
                f"`lengths` has shape ({len(lengths)},); expected (m,) = ({m},), "
                "one length per sequence"
            )
            raise ValueError(msg)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in lengths):
            msg = "`lengths` must be a sequence of ints (one per sequence in the batch)"
            raise TypeError(msg)
        values = [int(v) for v in lengths]
        _check_range(values, t_x)  # before int64: 2**70 is a clear error, not an OverflowError
        host = np.asarray(values, dtype=np.int64)
    else:
        kind = type(lengths).__name__
        msg = f"`lengths` must be an integer array or a sequence of ints, got {kind}"
        raise TypeError(msg)
    if host.dtype == np.bool_ or not np.issubdtype(host.dtype, np.integer):
        raise TypeError(f"`lengths` has dtype {host.dtype}; expected an integer dtype")
    if host.shape != (m,):
        msg = f"`lengths` has shape {host.shape}; expected (m,) = ({m},), one length per sequence"
        raise ValueError(msg)
    bad = np.flatnonzero((host < 1) | (host > t_x))
    if bad.size:
        _check_range([int(host[bad[0]])], t_x, int(bad[0]))
    if np.all(host == t_x):
        return None
    return host.astype(np.int64, copy=True)


def _check_range(values: list[int], t_x: int, first: int = 0) -> None:
    for j, value in enumerate(values, start=first):
        if not 1 <= value <= t_x:
            msg = f"`lengths[{j}]` = {value}; every length must be in [1, T_x] = [1, {t_x}]"
            raise ValueError(msg)


def reverse_index(lengths: np.ndarray | None, t_x: int, m: int) -> np.ndarray:
    """Row index reversing each sequence within its own length, time-major rows.

    For an array of rows ``(T * m, n)`` (row ``t * m + j`` = step ``t`` of sequence
    ``j``), taking these rows maps step ``t`` of sequence ``j`` to step
    ``lengths[j] - 1 - t``; padded steps stay where they are.  The map is its own
    inverse.  (``torch.nn.LSTM``'s reverse direction on packed sequences starts at
    each sequence's own end the same way.)
    """
    steps = np.arange(t_x)[:, None]
    if lengths is None:
        source = np.broadcast_to(t_x - 1 - steps, (t_x, m))
    else:
        source = np.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)
    return (source * m + np.arange(m)[None, :]).reshape(-1)


def reverse_time(values_tm: Any, lengths: np.ndarray | None, xp: Any) -> Any:
    """Reverse a time-major ``(T, m, n)`` array within each sequence's length."""
    t_x, m, n = (int(s) for s in values_tm.shape)
    if lengths is None:
        return xp.flip(values_tm, axis=0)
    rows = xp.reshape(values_tm, (t_x * m, n))
    index = xp.asarray(reverse_index(lengths, t_x, m), device=array_api_compat.device(values_tm))
    return xp.reshape(xp.take(rows, index, axis=0), (t_x, m, n))
