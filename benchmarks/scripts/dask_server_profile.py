"""Where a step of the gradient servers goes (RESULTS §12).

    python benchmarks/scripts/dask_server_profile.py

Two local single-thread worker processes, the bench's character model (n_a = 128, 256 streams x
64 steps, float32): the median of 15 steps, split into preparing the pieces, the round trip of the
calls (and, inside it, the slower piece's own compute time, measured on its worker) and the sum
and optimiser step on the client.
"""

from __future__ import annotations

import contextlib
import copy
import time

import numpy as np

STEPS = 15


def timed_piece(model, *piece):
    """A piece's result and its compute time on the worker."""
    from xlstm.dask import _sums

    start = time.perf_counter()
    result = _sums.model_piece(model, *piece)
    return result, time.perf_counter() - start


def _median_ms(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] * 1e3


def main() -> None:
    import xlstm.dask as xd
    from xlstm.cli.cluster import connect
    from xlstm.dask import _pieces, _sums
    from xlstm.training import CharLSTM, default_corpus

    text = default_corpus()
    vocab = "".join(sorted(set(text)))
    ids = CharLSTM(vocab, 128).encode(text)
    starts = np.random.default_rng(0).integers(0, len(ids) - 65, 256)
    window = starts[:, None] + np.arange(65)
    inputs, targets = ids[window[:, :-1]], ids[window[:, 1:]]
    with contextlib.ExitStack() as stack:
        client = connect(None, 2, stack)  # as `--workers 2`
        model = CharLSTM(vocab, 128, seed=0)
        trainer = xd.DataParallelTrainer(model, client=client)
        state = None
        for _ in range(3):  # warm: servers, imports, compiled kernels
            state = trainer.step(inputs, targets, state=state)[1]
        times: dict[str, list[float]] = {"step": [], "calls": [], "piece": [], "apply": []}
        for _ in range(STEPS):
            started = time.perf_counter()
            light = copy.copy(model)
            light.opt_state = None
            edges = _pieces.bounds(len(inputs), 2)
            pieces = _pieces.cut(inputs, targets, None, None, state, None, edges)
            sent = time.perf_counter()
            found = trainer._servers.run(timed_piece, light, pieces, "gradient pass")
            back = time.perf_counter()
            parts = [part for part, _ in found]
            _, grads, _ = _sums.mean(_sums.add(*parts))
            state = _pieces.join(parts)
            model.apply_gradients(grads)
            done = time.perf_counter()
            times["step"].append(done - started)
            times["calls"].append(back - sent)
            times["piece"].append(max(seconds for _, seconds in found))
            times["apply"].append(done - back)
    step, calls, piece, apply = (_median_ms(times[k]) for k in ("step", "calls", "piece", "apply"))
    print(
        f"step {step:.1f} ms = prepare {step - calls - apply:.1f} + round trip {calls:.1f} "
        f"(the slower piece computing {piece:.1f}) + add and apply {apply:.1f}"
    )


if __name__ == "__main__":
    main()
