"""Where a step of the gradient servers goes (RESULTS §12).

    python benchmarks/scripts/dask_server_profile.py

Two local single-thread worker processes, the bench's character model (n_a = 128, 256 streams x
64 steps, float32): the median of 15 steps, split into preparing the pieces, the round trip of the
calls (and, inside it, the slower piece's own compute time, measured on its worker) and the sum
and optimiser step on the client.
"""

import copy
import time

import numpy as np
from distributed import Client, LocalCluster

import xlstm.dask as xd
from xlstm.dask import _pieces, _sums
from xlstm.training import CharLSTM, default_corpus


def timed_piece(model, *piece):
    import time as _t

    from xlstm.dask import _sums as s

    start = _t.perf_counter()
    out = s.model_piece(model, *piece)
    return out, _t.perf_counter() - start


if __name__ == "__main__":
    text = default_corpus()
    vocab = "".join(sorted(set(text)))
    ids = CharLSTM(vocab, 128).encode(text)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(ids) - 65, 256)
    w = starts[:, None] + np.arange(65)
    inputs, targets = ids[w[:, :-1]], ids[w[:, 1:]]
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = Client(cluster)
    model = CharLSTM(vocab, 128, seed=0)
    trainer = xd.DataParallelTrainer(model, client=client)
    state = None
    for _ in range(3):
        state = trainer.step(inputs, targets, state=state)[1]
    steps, calls, computes, applies = [], [], [], []
    for _ in range(15):
        t0 = time.perf_counter()
        light = copy.copy(model)
        light.opt_state = None
        pieces = _pieces.cut(inputs, targets, None, None, state, None, _pieces.bounds(256, 2))
        t1 = time.perf_counter()
        parts = trainer._servers.run(timed_piece, light, pieces, "gradient pass")
        t2 = time.perf_counter()
        loss, grads, _ = _sums.mean(_sums.add(*[p for p, _ in parts]))
        state = _pieces.join([p for p, _ in parts])
        model.apply_gradients(grads)
        t3 = time.perf_counter()
        steps.append(t3 - t0)
        calls.append(t2 - t1)
        computes.append(max(c for _, c in parts))
        applies.append(t3 - t2)
    med = lambda v: sorted(v)[len(v) // 2] * 1e3
    print(
        f"step {med(steps):.1f} ms = prepare {med(steps) - med(calls) - med(applies):.1f} + round trip {med(calls):.1f} (slower piece computing {med(computes):.1f}) + add/apply {med(applies):.1f}"
    )
    client.close()
    cluster.close()
