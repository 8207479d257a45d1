"""The numba engine's batch split, measured: memory-saving forward (inference) with the two
halves of the batch in two threads (one BLAS thread each) against the whole batch on a
two-thread BLAS, interleaved in one process, float32.

Prints per shape the median ratio split / whole of back-to-back pairs (below 1: the split
is faster) and both medians.  The engine splits where ``_split_batch`` says so
(``SPLIT_MIN_COLUMNS``, ``SPLIT_MAX_INNER`` in ``xlstm/_engines/numba/engine.py``): this is
the measurement those thresholds should follow on a quiet machine::

    python benchmarks/scripts/batch_split.py                  # S2-S5, 15 pairs each
    python benchmarks/scripts/batch_split.py --sizes S3 --pairs 31
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from xlstm._engines.numba import engine
from xlstm.bench._harness import SHAPES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="S2,S3,S4,S5")
    parser.add_argument("--pairs", type=int, default=15)
    args = parser.parse_args(argv)
    engine.compile_seconds("float32")
    with threadpool_limits(limits=2, user_api="blas"):
        for name in args.sizes.split(","):
            n_x, n_a, m, t_x = SHAPES[name]
            rng = np.random.default_rng(0)
            x = rng.standard_normal((t_x, m, n_x)).astype(np.float32)
            h0 = np.zeros((m, n_a), np.float32)
            W = (0.05 * rng.standard_normal((4 * n_a, n_a + n_x))).astype(np.float32)
            b = np.zeros(4 * n_a, np.float32)

            def forward(split, x=x, h0=h0, W=W, b=b):
                return engine._forward(
                    x, h0, h0, W, b, recompute=True, lengths=None, fused=None, split=split
                )

            times: dict[bool, list[float]] = {True: [], False: []}
            ratios = []
            for pair in range(args.pairs):
                seconds = {}
                for split in (True, False) if pair % 2 else (False, True):
                    forward(split)  # untimed warm call
                    start = time.perf_counter()
                    forward(split)
                    seconds[split] = time.perf_counter() - start
                    times[split].append(seconds[split])
                ratios.append(seconds[True] / seconds[False])
            print(
                f"{name}: split / whole = {statistics.median(ratios):.3f} (median of {args.pairs}"
                f" pairs); whole {statistics.median(times[False]) * 1e3:.2f} ms, split "
                f"{statistics.median(times[True]) * 1e3:.2f} ms; the engine splits here: "
                f"{engine._split_batch(t_x, m, n_a, n_x, recompute=True, lengths=None)}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
