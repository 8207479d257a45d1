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

Several user threads may call at once, and each call gives the bits it gives alone.  The
BLAS limit is process-wide, and what a call computes depends on the decisions read off it
(the masked engine splits its batch into two groups only when its groups would run side by
side, which changes the products' shapes and so their rounding).  So the limit belongs to
:class:`_Regime`: set by the first side-by-side pair, lifted by the last, never overlapping
pairs run in turn; decisions read the caller's budget, not our limit; and a pair inside a
pair (a direction's length groups) always runs in turn, in its outer pair's thread.  (Before,
two callers toggled each other's limit: results moved by an ulp, and a pair inside a pair
could queue behind itself on the one worker thread and never finish.)
"""

from __future__ import annotations

import contextvars
import threading
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
    """Whether :func:`run_pair` would run two bodies of ``work`` side by side (a pure check).

    False inside a pair (a pair within a pair runs in turn).  The thread budget is the
    caller's, read before any limit of ours: while side-by-side pairs hold BLAS at one
    thread, the budget they read when the first of them began.
    """
    if work < MIN_WORK or _inside_pair.get() or _controller() is None:
        return False
    return _regime.budget_is_two()


def _blas_budget_is_two() -> bool:
    """BLAS is limited to exactly two threads now (read from the libraries)."""
    threads = [info["num_threads"] for info in _controller().select(user_api="blas").info()]
    return bool(threads) and max(threads) == 2


class _Regime:
    """Which BLAS thread count the pairs running now compute with, shared by all threads.

    Pairs side by side need BLAS at one thread, a process-wide setting; pairs in turn need
    it as the caller left it.  A pair's numbers depend on that count (the products split
    their sums differently), so that a call gives the same bits whatever runs beside it,
    the two regimes never overlap: pairs of the regime in force join it, pairs of the other
    wait until its last pair ends.  The limit is set by the first side-by-side pair and
    lifted by the last, and the decision reads the thread count as it was before the
    limit, never the limit itself.
    """

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.parallel: bool | None = None  # the regime in force; None: no pair running
        self.count = 0
        self.limiter: Any = None
        self.budget_parallel = False  # pair_is_parallel's budget test, before the limit

    def budget_is_two(self) -> bool:
        """The caller's BLAS budget is two threads (not our own limit's one)."""
        with self.condition:
            if self.limiter is not None:
                return self.budget_parallel
            return _blas_budget_is_two()

    def enter(self, work: int) -> bool:
        """Join the regime this pair needs (waiting if the other is in force)."""
        with self.condition:
            while True:
                if self.count == 0:
                    self.budget_parallel = _blas_budget_is_two()
                parallel = self.budget_parallel and work >= MIN_WORK
                if self.count == 0:
                    if parallel:
                        self.limiter = _controller().select(user_api="blas").limit(limits=1)
                    self.parallel, self.count = parallel, 1
                    return parallel
                if self.parallel == parallel:
                    self.count += 1
                    return parallel
                self.condition.wait()

    def leave(self) -> None:
        with self.condition:
            self.count -= 1
            if self.count == 0:
                if self.limiter is not None:
                    self.limiter.restore_original_limits()
                    self.limiter = None
                self.parallel = None
                self.condition.notify_all()


_regime = _Regime()
_inside_pair: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "xlstm_inside_pair", default=False
)


def run_pair(first: Callable[[], Any], second: Callable[[], Any], *, work: int) -> tuple[Any, Any]:
    """``(first(), second())``, concurrently when worthwhile (see the module docstring).

    Safe from several user threads at once, and bit for bit as in one thread alone (see
    :class:`_Regime`).  A pair inside a pair (the masked engine's length groups within a
    direction) runs in turn, in the BLAS regime of the outer pair.
    """
    if _inside_pair.get() or _controller() is None:
        return first(), second()
    parallel = _regime.enter(work)
    token = _inside_pair.set(True)
    try:
        if not parallel:
            return first(), second()
        # The worker runs in a copy of this thread's context, so that context-local
        # settings (NumPy's errstate among them, and being inside a pair) hold for both.
        future = _pool().submit(contextvars.copy_context().run, second)
        try:
            result = first()
        finally:
            other = future.result()
        return result, other
    finally:
        _inside_pair.reset(token)
        _regime.leave()
