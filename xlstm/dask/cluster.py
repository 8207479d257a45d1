"""Connecting to a dask cluster for the command-line tools: a scheduler address or local workers."""

from __future__ import annotations

import contextlib
from typing import Any

from .._cli import UsageError

CONNECT_TIMEOUT = "30s"


def connect(scheduler: str | None, workers: int | None, stack: contextlib.ExitStack) -> Any:
    """A ``distributed.Client`` for ``--scheduler ADDRESS`` or ``--workers N``, else ``None``.

    ``--workers`` starts a ``LocalCluster`` of ``N`` single-threaded worker processes bound
    to 127.0.0.1.  Everything started is closed by ``stack``.

    Raises
    ------
    UsageError
        dask.distributed is not installed, or the scheduler cannot be reached.
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
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as error:
            raise UsageError(f"--scheduler {scheduler!r}: cannot connect ({error})") from None
    stack.callback(client.close, timeout=10)
    return client
