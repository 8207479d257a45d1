"""Scratch buffers of the NumPy fast path, kept from one call to the next.

Why: an LSTM call needs temporaries as large as its cache (the backward pass's
pre-activation gradients of a segment, the time-major copies of ``x`` and
``da``, the rearranged weights).  Fresh memory of that size is not free: the
C allocator hands large blocks back to the operating system when they are
freed, so every call pays a page fault per 4 KiB page it touches again; kept
buffers take none (figures in ``benchmarks/RESULTS.md``).

The buffers are per thread (the two directions of a bidirectional layer run in
two threads) and grow to the largest request seen; :func:`release` frees them.
A thread keeps at most :data:`MAX_KEPT_BYTES` in all; a request beyond that
gets a fresh array that is not kept.  What is kept is bounded by the
problem, not by ``T``: about one backward segment's gates (at most
:data:`xlstm._engines.cache.SEGMENT_ELEMENTS` elements) and its copies of ``x`` and
``da``, plus one and a half copies of the stacked weights.  Nothing taken from
here is ever returned to the caller of the public functions: results are
always freshly allocated arrays.
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np

MAX_KEPT_BYTES = 256 << 20
"""Bytes one thread keeps at most, all buffers together."""


class _Buffers(dict):
    """One thread's buffers, ``(name, dtype) -> flat array``.

    A dict subclass because those take weak references; compared and hashed by
    identity, so that the set of all threads' buffers tells them apart.
    """

    __eq__ = object.__eq__
    __hash__ = object.__hash__


_local = threading.local()
_lock = threading.Lock()
# Every live thread's buffers, so that release() reaches the worker threads too;
# a thread's entry goes when the thread ends.
_all_threads: weakref.WeakSet[_Buffers] = weakref.WeakSet()


def _buffers() -> _Buffers:
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = _Buffers()
        with _lock:
            _all_threads.add(buffers)
    return buffers


def scratch(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A C-contiguous array of ``shape`` and ``dtype`` whose contents are undefined.

    ``name`` identifies the buffer: a call must not ask for the same name twice
    while it still uses the first array.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    buffers = _buffers()
    flat = buffers.get((name, dtype))
    if flat is None or flat.size < size:
        with _lock:  # release() may clear these buffers from another thread
            others = sum(kept.nbytes for key, kept in buffers.items() if key != (name, dtype))
            if others + size * dtype.itemsize > MAX_KEPT_BYTES:
                return np.empty(shape, dtype)
            flat = np.empty(size, dtype)
            buffers[(name, dtype)] = flat
    return flat[:size].reshape(shape)


STAGGER_BYTES = 1088
"""Bytes between consecutive arrays of :func:`fresh_arrays`: not a multiple of 4 KiB, so
that elements of one step in two of them do not share their address bits below 4 KiB
(loads and stores whose addresses agree there are taken for one another by the CPU and
wait, "4K aliasing"), as they would in two page-aligned blocks of their own."""

_primed_bytes = [0]


def _prime_allocator(nbytes: int) -> None:
    """Once per process and larger size: allocate ``nbytes`` and free them untouched.

    Why: glibc's ``malloc`` serves a block of more than 128 KiB by ``mmap`` (fresh pages:
    a page fault for each 4 KiB touched, handed back by ``munmap`` when freed) until it has
    seen such a block freed; from then on it serves blocks up to that size from its heap
    and keeps up to twice that size there when they are freed.  Freeing an untouched
    block costs no page fault and makes even the first call's results heap memory.
    Elsewhere (other C libraries, blocks above glibc's 32 MiB cap) it is a harmless
    ``malloc``/``free`` pair, made once per size.
    """
    if nbytes > _primed_bytes[0]:
        untouched = np.empty(nbytes, np.uint8)
        del untouched
        _primed_bytes[0] = nbytes


def fresh_arrays(shapes: tuple[tuple[int, ...], ...], dtype: np.dtype) -> list[np.ndarray]:
    """New C-contiguous arrays of ``shapes``, views of one new block (contents undefined).

    For a call's *results* (they are the caller's, never kept here).  Why one block: a
    call's results are fresh memory every call.  Allocated apart, each of the next
    call's blocks is exactly as large as a block just freed, and glibc hands its heap
    back to the operating system after every call, so that every call pays a page fault
    per 4 KiB of its results; a process whose first call is inference never recovers (one
    that ran a training forward first, which frees the larger gate array, does).  One
    block, freed when the caller drops all its views, stays on the heap; with
    :func:`_prime_allocator` from the first call on.
    """
    dtype = np.dtype(dtype)
    gap = STAGGER_BYTES // dtype.itemsize
    sizes = [math.prod(shape) for shape in shapes]
    total = sum(sizes) + gap * (len(sizes) - 1)
    _prime_allocator(total * dtype.itemsize)
    block = np.empty(total, dtype)
    arrays, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        arrays.append(block[start : start + size].reshape(shape))
        start += size + gap
    return arrays


def kept_bytes() -> int:
    """Bytes held by the calling thread's buffers."""
    return sum(flat.nbytes for flat in _buffers().values())


def release() -> None:
    """Free the NumPy fast path's scratch buffers, those of every thread.

    Public as ``xlstm.release_workspace()``.  The NumPy fast path keeps its
    temporaries (about the size of one segment's gates plus the stacked
    weights) between calls, because fresh memory costs page faults on every
    call; call this after the last call of a large problem to give the memory
    back.  A call running meanwhile in another thread keeps the arrays it
    holds until it returns.  The next call allocates the buffers again.
    """
    with _lock:
        for buffers in list(_all_threads):
            buffers.clear()
