"""Median milliseconds of xlstm's public calls, one process: for old-against-new comparisons.

Runs, per shape, ``lstm_forward(..., cache=False)`` (infer), ``lstm_forward`` (fwd) and
``lstm_forward`` + ``lstm_backward`` (fwd+bwd), each ``--calls`` times right after an untimed
warm call, on the engine ``--engine`` picks, with ``--threads`` BLAS threads, and prints the
medians.  It uses only the public API (and the numba engine's ``compile_seconds`` when that
engine runs), so the same file times an older checkout: run the two alternately, the older
one through ``PYTHONPATH``::

    git worktree add /tmp/xlstm-old <old commit>
    for i in 1 2 3; do
        PYTHONPATH=/tmp/xlstm-old python benchmarks/scripts/engine_calls.py
        PYTHONPATH=. python benchmarks/scripts/engine_calls.py
    done

``--cpu-time`` reports process CPU time instead of wall time (steadier on a busy machine with
``--threads 1``; meaningless with more threads, whose spinning counts).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

import xlstm

SHAPES = {
    "S1": (8, 32, 16, 100),
    "S2": (64, 128, 32, 100),
    "S3": (256, 256, 64, 100),
    "S4": (512, 512, 128, 50),
    "S5": (1024, 1024, 64, 20),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="S1,S2,S3,S4,S5")
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--passes", default="infer,fwd,fwd+bwd")
    parser.add_argument("--cpu-time", action="store_true")
    args = parser.parse_args(argv)
    clock = time.process_time if args.cpu_time else time.perf_counter
    engine = xlstm.resolve_engine("numpy", args.dtype, args.engine)
    if engine == "numba":
        from xlstm._engines.numba.engine import compile_seconds

        compile_seconds(args.dtype)
    cells = []
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for name in args.sizes.split(","):
            n_x, n_a, m, t_x = SHAPES[name]
            rng = np.random.default_rng(0)
            params = xlstm.init_parameters(n_x, n_a, 2, dtype=args.dtype, seed=0)
            x = rng.standard_normal((n_x, m, t_x)).astype(args.dtype)
            a0 = np.zeros((n_a, m), args.dtype)
            da = rng.standard_normal((n_a, m, t_x)).astype(args.dtype)

            def infer(x=x, a0=a0, params=params):
                return xlstm.lstm_forward(x, a0, params, engine=engine, cache=False)

            def forward(x=x, a0=a0, params=params):
                return xlstm.lstm_forward(x, a0, params, engine=engine)

            def forward_backward(x=x, a0=a0, params=params, da=da):
                *_, caches = xlstm.lstm_forward(x, a0, params, engine=engine)
                return xlstm.lstm_backward(da, caches, engine=engine)

            calls = {"infer": infer, "fwd": forward, "fwd+bwd": forward_backward}
            for label in args.passes.split(","):
                call = calls[label]
                times = []
                for _ in range(args.calls):
                    call()  # untimed warm call
                    start = clock()
                    result = call()
                    times.append(clock() - start)
                    del result
                cells.append(f"{name} {label} {statistics.median(times) * 1e3:.3f}")
    print(
        f"engine {engine}, {args.threads} thread(s), {args.dtype}, median ms: " + "; ".join(cells)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
