"""Rough timings of :mod:`xlstm.dask` against one process (not imported by anything).

::

    python -m xlstm.dask._bench predict [--m 4096] [--steps 100] [--size 256] [--repeat 3]
    python -m xlstm.dask._bench train [--batch 256] [--seq-len 64] [--hidden 128] [--repeat 5]

``predict``: S3 features (``n_x = n_a = 256``) and ``n_y = 256``, float32.  One process
runs :func:`xlstm.lstm_forward` (inference mode) on the whole batch with two BLAS threads;
the cluster is two single-threaded worker processes running
:func:`xlstm.dask.lstm_forward` on the batch in ``2 * workers`` chunks, with ``x`` already
on the workers (made there) and ``y`` left there (persisted): the computation and the
scheduling, not the transfer of inputs and outputs.

``train``: a :class:`xlstm.training.CharLSTM` of ``--hidden`` units over the bundled
corpus's characters, ``--batch`` streams of ``--seq-len`` steps: one
``model.train_step`` with two BLAS threads against one
:meth:`xlstm.dask.DataParallelTrainer.step` on two single-threaded workers (the batch in
two chunks, ids sent with each step, the state carried on the workers).

Each figure is the best of ``--repeat`` runs after one warm-up.  Both sides get two cores;
run on a quiet machine: two BLAS threads that share their cores with other processes
slow down far more than two single-threaded processes do, which is why one process with
one thread is shown too.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

WORKERS = 2


def _blas_threads(count: int):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(count)


def _cluster(stack: contextlib.ExitStack):
    """The client of ``WORKERS`` local single-thread worker processes, as ``--workers``
    starts them (closed by ``stack``)."""
    from ..cli.cluster import connect

    return connect(None, WORKERS, stack)


def _best(run, repeat: int) -> float:
    run()  # warm-up: imports, workspaces, worker-side caches
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def predict(args: argparse.Namespace) -> None:
    import dask.array as da
    from distributed import wait

    import xlstm
    import xlstm.dask as xd

    n, m, t_x = args.size, args.m, args.steps
    parameters = xlstm.init_parameters(n, n, n, dtype="float32", seed=0)

    def whole_batch(threads: int) -> float:
        x = np.random.default_rng(0).standard_normal((n, m, t_x), dtype=np.float32)
        a0 = np.zeros((n, m), dtype=np.float32)
        with _blas_threads(threads):
            return _best(lambda: xlstm.lstm_forward(x, a0, parameters, cache=False), args.repeat)

    local = {threads: whole_batch(threads) for threads in (2, 1)}

    with contextlib.ExitStack() as stack:
        _cluster(stack)  # the active client of what follows
        chunks = (n, -(-m // (2 * WORKERS)), t_x)
        rng = da.random.default_rng(0)
        x_far = rng.standard_normal((n, m, t_x), chunks=chunks, dtype=np.float32).persist()
        wait(x_far)

        def spread():
            y = xd.lstm_forward(x_far, None, parameters)[1].persist()
            wait(y)

        far = _best(spread, args.repeat)
    print(f"predict S3 features (n_x = n_a = n_y = {n}), m = {m}, T = {t_x}, float32")
    _report(local, far, "s", 1.0)


def train(args: argparse.Namespace) -> None:
    import dask.array as da

    import xlstm.dask as xd
    from xlstm.training import CharLSTM, default_corpus

    text = default_corpus()
    vocab = "".join(sorted(set(text)))
    ids = CharLSTM(vocab, args.hidden).encode(text)
    rng = np.random.default_rng(0)

    def batch():
        starts = rng.integers(0, len(ids) - args.seq_len - 1, args.batch)
        window = starts[:, None] + np.arange(args.seq_len + 1)
        return ids[window[:, :-1]], ids[window[:, 1:]]

    inputs, targets = batch()
    local = {}
    for threads in (2, 1):
        model = CharLSTM(vocab, args.hidden, seed=0)
        with _blas_threads(threads):
            local[threads] = _best(
                lambda model=model: model.train_step(inputs, targets), args.repeat
            )

    with contextlib.ExitStack() as stack:
        client = _cluster(stack)
        spread_model = CharLSTM(vocab, args.hidden, seed=0)
        trainer = xd.DataParallelTrainer(spread_model, client=client)
        state = [None]
        rows = -(-args.batch // WORKERS)

        def step():
            if args.graph:  # the batch as a dask array: a graph through the scheduler
                chunked = da.from_array(inputs, chunks=(rows, args.seq_len))
                state[0] = trainer.step(chunked, targets, state=state[0])[1]
            else:  # in memory: straight to the gradient servers
                state[0] = trainer.step(inputs, targets, state=state[0])[1]

        far = _best(step, args.repeat)
    print(
        f"train CharLSTM n_a = {args.hidden}, vocabulary {len(vocab)}, "
        f"{args.batch} streams x {args.seq_len} steps, float32"
    )
    _report(local, far, "ms/step", 1e3)


def _report(local: dict[int, float], far: float, unit: str, scale: float) -> None:
    for threads, seconds in local.items():
        print(f"  one process, {threads} BLAS thread(s): {seconds * scale:.1f} {unit}")
    ratio = far / local[2]
    print(f"  {WORKERS} workers x 1 thread     : {far * scale:.1f} {unit}  ({ratio:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xlstm.dask._bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("predict")
    one.add_argument("--m", type=int, default=4096)
    one.add_argument("--steps", type=int, default=100)
    one.add_argument("--size", type=int, default=256)
    one.add_argument("--repeat", type=int, default=3)
    two = commands.add_parser("train")
    two.add_argument("--batch", type=int, default=256)
    two.add_argument("--seq-len", type=int, default=64)
    two.add_argument("--hidden", type=int, default=128)
    two.add_argument("--repeat", type=int, default=5)
    two.add_argument("--graph", action="store_true", help="send the batch as a dask array")
    args = parser.parse_args(argv)
    (predict if args.command == "predict" else train)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
