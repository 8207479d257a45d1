"""Gradient servers: one dask actor per worker, called straight from the client.

Why: a training step of a few tens of milliseconds cannot afford the scheduler.  Sending a
step's graph through it (the weights, the pieces of the batch, the per-piece tasks, the
sums) costs about 40 ms on two local workers before and after any arithmetic (RESULTS
§12); a call on an actor goes from the client to the worker and back, about 2 ms.

A server holds nothing between calls: each call brings the weights and the pieces of the
batch it works on, and returns each piece's sums.  So a server lost with its worker costs
a new server and the rerun of its pieces, nothing else; a piece whose calls keep killing
workers ends in a ``RuntimeError`` naming it, as a task that does (``KilledWorker``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

CREATE_TIMEOUT = 60
"""Seconds to wait for a new server (a worker to start it on, when all were lost)."""
PING_TIMEOUT = 10
"""Seconds a live server takes at most to answer :meth:`GradientServer.ping`."""


class GradientServer:
    """Runs a function on the pieces of a batch sent to it, on its worker's actor thread."""

    def run(self, function: Callable, payload: Any, pieces: Sequence[tuple]) -> list:
        """``[function(payload, *piece) for piece in pieces]``."""
        return [function(payload, *piece) for piece in pieces]

    def ping(self) -> bool:
        return True


class ServerPool:
    """The servers of one trainer: made on first use, remade for workers that were lost."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.servers: list[Any] = []  # actor handles
        self._futures: list[Any] = []  # the actors live while their futures do

    def start(self) -> int:
        """One server per worker now known to the scheduler; returns how many."""
        client = self.client
        client.wait_for_workers(1, timeout=CREATE_TIMEOUT)
        workers = sorted(client.nthreads())
        futures = [self._submit(address) for address in workers]
        self.servers = [future.result(timeout=CREATE_TIMEOUT) for future in futures]
        self._futures = futures
        return len(self.servers)

    def _submit(self, address: str) -> Any:
        # Pinned to its worker where it can be, elsewhere if that worker has just gone.
        key = f"xlstm-gradient-server-{uuid.uuid4().hex}"
        return self.client.submit(
            GradientServer, actor=True, pure=False, key=key, workers=[address],
            allow_other_workers=True,
        )  # fmt: skip

    def run(self, function: Callable, payload: Any, pieces: Sequence[tuple], label: str) -> list:
        """``function(payload, *piece)`` of every piece, in order, spread over the servers.

        Piece ``j`` goes to server ``j mod n``, all of one server's pieces in one call, the
        calls at once.  A call whose server was lost (its worker died) is made again on
        new servers; an error raised by ``function`` is raised here.  ``label`` names the
        pass in the error of a piece that keeps killing workers.
        """
        if not self.servers:
            self.start()
        results: dict[int, Any] = {}
        losses = dict.fromkeys(range(len(pieces)), 0)
        allowed = None
        while len(results) < len(pieces):
            missing = [j for j in range(len(pieces)) if j not in results]
            servers = self.servers
            shares = {k: [j for j in missing if j % len(servers) == k] for k in range(len(servers))}
            calls, lost = {}, []
            for k, share in shares.items():
                if not share:
                    continue
                try:  # a server known to be lost refuses at once
                    calls[k] = servers[k].run(function, payload, [pieces[j] for j in share])
                except Exception as error:
                    if self._alive(servers[k]):
                        raise
                    lost.append((k, error))
            for k, call in calls.items():
                try:
                    found = call.result()
                except Exception as error:
                    if self._alive(servers[k]):
                        raise  # the function's own error
                    lost.append((k, error))
                    continue
                results.update(zip(shares[k], found, strict=True))
            if not lost:
                continue
            if allowed is None:
                allowed = self._allowed_failures()
            for k, error in lost:
                for j in shares[k]:
                    losses[j] += 1
                    if losses[j] > allowed:
                        msg = (
                            f"the {label} of batch chunk {j} killed {losses[j]} workers in a "
                            "row and was given up (out of memory? a crash in a native library?)"
                        )
                        raise RuntimeError(msg) from error
            self.start()
        return [results[j] for j in range(len(pieces))]

    @staticmethod
    def _alive(server: Any) -> bool:
        try:
            return bool(server.ping().result(timeout=PING_TIMEOUT))
        except (OSError, RuntimeError, TimeoutError):  # the server went with its worker
            return False

    def _allowed_failures(self) -> int:
        """The scheduler's ``allowed_failures``: how many workers a task may kill."""
        return int(self.client.run_on_scheduler(_scheduler_allowed_failures))


def _scheduler_allowed_failures(dask_scheduler: Any) -> int:
    return dask_scheduler.allowed_failures
