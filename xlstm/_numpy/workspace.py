"""Scratch buffers of the NumPy fast path, kept from one call to the next.

Why: an LSTM call needs temporaries as large as its cache (the backward pass's
pre-activation gradients of a segment, the time-major copies of ``x`` and
``da``, the rearranged weights).  Fresh memory of that size is not free: the
C allocator hands large blocks back to the operating system when they are
freed, so every call pays a page fault per 4 KiB page it touches again.
Measured on the project machine (float32, 2 threads, forward+backward with
all allocations made fresh vs reused via glibc's tunables): 21% of the time at
S2, 11% at S3.  Keeping the temporaries here removes most of that.

The buffers are per thread (the two directions of a bidirectional layer run in
two threads) and grow to the largest request seen; :func:`release` frees them.
A thread keeps at most :data:`MAX_KEPT_BYTES` in all; a request beyond that
gets a fresh array that is not kept.  What is kept is bounded by the
problem, not by ``T``: about one backward segment's gates (at most
:data:`xlstm._engine.SEGMENT_ELEMENTS` elements) plus three copies of the
stacked weights (float32: 35 MiB at S3, 82 MiB at S5).  Nothing taken from
here is ever returned to the caller of the public functions: results are
always freshly allocated arrays.
"""

from __future__ import annotations

import math
import threading

import numpy as np

MAX_KEPT_BYTES = 256 << 20
"""Bytes one thread keeps at most, all buffers together."""

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A C-contiguous array of ``shape`` and ``dtype`` whose contents are undefined.

    ``name`` identifies the buffer: a call must not ask for the same name twice
    while it still uses the first array.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    buffers = _local.__dict__.setdefault("buffers", {})
    flat = buffers.get((name, dtype))
    if flat is None or flat.size < size:
        others = sum(kept.nbytes for key, kept in buffers.items() if key != (name, dtype))
        if others + size * dtype.itemsize > MAX_KEPT_BYTES:
            return np.empty(shape, dtype)
        flat = np.empty(size, dtype)
        buffers[(name, dtype)] = flat
    return flat[:size].reshape(shape)


def kept_bytes() -> int:
    """Bytes held by this thread's buffers."""
    return sum(flat.nbytes for flat in _local.__dict__.get("buffers", {}).values())


def release() -> None:
    """Free the NumPy fast path's scratch buffers kept by the calling thread.

    Public as ``xlstm.release_workspace()``.  The NumPy fast path keeps its
    temporaries (about the size of one segment's gates plus the stacked
    weights) between calls, because fresh memory costs page faults on every
    call; call this after the last call of a large problem to give the memory
    back.  The next call allocates the buffers again.
    """
    _local.__dict__.pop("buffers", None)
