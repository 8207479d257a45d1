"""Connecting to a dask cluster for the command-line tools: a scheduler address or local workers."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from ._common import UsageError

CONNECT_TIMEOUT = 30.0
"""Seconds to wait for a scheduler to answer ``--scheduler ADDRESS``."""


def connect(scheduler: str | None, workers: int | None, stack: contextlib.ExitStack) -> Any:
    """A ``distributed.Client`` for ``--scheduler ADDRESS`` or ``--workers N``, else ``None``.

    ``--workers`` starts a ``LocalCluster`` of ``N`` single-threaded worker processes bound
    to 127.0.0.1.  Everything started is closed by ``stack``.

    Raises
    ------
    UsageError
        dask.distributed is not installed, or the scheduler cannot be reached in
        :data:`CONNECT_TIMEOUT`, or what answers at the address is not a dask scheduler.
    """
    if scheduler is None and workers is None:
        return None
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--scheduler/--workers need dask.distributed (the `dask` extra)") from None
    if workers is not None:
        import dask

        # The nannies restart a worker that dies.  The cluster would also close for good a
        # nanny whose worker is absent when this timeout ends, which a worker killed again
        # (a chunk that keeps killing workers) can be at that instant.
        stack.enter_context(dask.config.set({"distributed.deploy.lost-worker-timeout": "24h"}))
        cluster = stack.enter_context(
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                # The scheduler's HTTP routes (health, metrics) would otherwise take port
                # 8787, or warn and move when another cluster on this machine holds it.
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            )
        )
        client = Client(cluster)
    else:
        client = _join(scheduler)
    stack.callback(client.close, timeout=10)
    return client


def _join(scheduler: str) -> Any:
    """A ``Client`` of the scheduler at ``scheduler``, or a :class:`UsageError`.

    ``Client(address, timeout=...)`` does not bound every way a handshake can stall (a
    service that sends a few bytes and then nothing waits forever), so the client is made
    in a thread that is given up after :data:`CONNECT_TIMEOUT` (it ends when the peer
    closes the connection).
    """
    from distributed import Client

    outcome: dict[str, Any] = {}

    def make() -> None:
        try:
            outcome["client"] = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=make, name="xlstm-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT + 5.0)
    if thread.is_alive():
        msg = (
            f"--scheduler {scheduler!r}: no dask scheduler answered in {CONNECT_TIMEOUT:g} s "
            "(is something else listening there?)"
        )
        raise UsageError(msg)
    error = outcome.get("error")
    if error is None:
        return outcome["client"]
    if isinstance(error, (OSError, TimeoutError, ValueError)):
        raise UsageError(f"--scheduler {scheduler!r}: cannot connect ({error})") from None
    if isinstance(error, (MemoryError, TypeError, KeyError, AttributeError, IndexError)):
        # Something else answers there: distributed reads its reply as a message header
        # (8 bytes of text read as a length of exabytes, ...).
        msg = (
            f"--scheduler {scheduler!r}: what answers there is not a dask scheduler "
            f"({type(error).__name__})"
        )
        raise UsageError(msg) from None
    raise error
