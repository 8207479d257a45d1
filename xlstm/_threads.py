"""Running independent recurrences side by side (NumPy on the CPU).

Used for the two directions of a bidirectional layer (:func:`run_pair`).  The
same split of one direction's batch into two halves is slower than one thread
with a two-thread BLAS (two half-size products cost more than one full-size
one; ``benchmarks/RESULTS.md``), so the sequence engine does not do it.

The two directions of a layer are independent recurrences.  When NumPy's BLAS may use two
threads, running them one after the other spends most of the time in small per-step
products that two BLAS threads share poorly, and in element-wise NumPy calls that use one
core.  Instead the two directions run concurrently in two Python threads, each with a
single-threaded BLAS: NumPy releases the GIL inside matrix products and element-wise loops,
so both cores stay busy, and the total number of threads stays two.

Only when it pays and stays within the caller's thread budget: the NumPy fast path,
``threadpoolctl`` importable, BLAS limited to exactly two threads (the usual budget of a
two-core machine or of ``threadpool_limits(2)``), and enough work per direction.  Otherwise
the directions run one after the other, with the BLAS threads as they are.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MIN_WORK = 1 << 24
"""Multiply-adds per direction below which threads are not worth starting."""

_state: dict[str, Any] = {}


def _controller() -> Any:
    if "controller" not in _state:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional: without it the directions run in turn
            _state["controller"] = None
        else:
            _state["controller"] = ThreadpoolController()
    return _state["controller"]


def _pool() -> ThreadPoolExecutor:
    if "pool" not in _state:
        _state["pool"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xlstm-direction")
    return _state["pool"]


def pair_is_parallel(work: int) -> bool:
    """Whether :func:`run_pair` would run two bodies of ``work`` side by side (a pure check)."""
    if work < MIN_WORK:
        return False
    controller = _controller()
    if controller is None:
        return False
    threads = [info["num_threads"] for info in controller.select(user_api="blas").info()]
    return bool(threads) and max(threads) == 2


def _single_thread_blas(work: int) -> Any:
    """A limit of BLAS to one thread, *in force from this call on* (use it in a ``with``
    block, which lifts it), or ``None`` if the pair should run in turn."""
    if not pair_is_parallel(work):
        return None
    return _controller().select(user_api="blas").limit(limits=1)


def run_pair(first: Callable[[], Any], second: Callable[[], Any], *, work: int) -> tuple[Any, Any]:
    """``(first(), second())``, concurrently when worthwhile (see the module docstring)."""
    limiter = _single_thread_blas(work)
    if limiter is None:
        return first(), second()
    with limiter:
        # The worker runs in a copy of this thread's context, so that context-local
        # settings (NumPy's errstate among them) hold for both jobs alike.
        future = _pool().submit(contextvars.copy_context().run, second)
        try:
            result = first()
        finally:
            other = future.result()
    return result, other
