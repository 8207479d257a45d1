"""How fast can a NumPy LSTM be?  Only the matrix products, against torch.nn.LSTM.

Times, on NumPy's BLAS, exactly the products xlstm's NumPy engine makes for one
forward+backward pass, and nothing else (no element-wise work, no copies):

* forward (the ``fwd`` rows): the input projection of all steps (one ``(T m, n_x) x (n_x, 4 n_a)``
  product) and ``T`` recurrent products ``(m, n_a) x (n_a, 4 n_a)``;
* backward: ``T`` products ``dz W_h``, ``(m, 4 n_a) x (4 n_a, n_a)``, and the
  large ``dW = dz^T [h, x]`` and ``dx = dz W_x``.

It also times torch's own BLAS (MKL in the PyPI CPU wheels) on the same
products, and ``torch.nn.LSTM``'s whole forward+backward.  If NumPy's products
alone take longer than torch's whole LSTM, no arrangement of NumPy calls can
match torch at that shape: the element-wise work only adds to it.  Interleaved
round-robin, 0.2 s pause between libraries, medians, 2 threads each::

    python benchmarks/scripts/gemm_schedule.py                 # S2-S5, float32
    python benchmarks/scripts/gemm_schedule.py --sizes S3 --rounds 9
    python benchmarks/scripts/gemm_schedule.py --sizes "48,128,32,64"   # n_x,n_a,m,T
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import numpy as np

# torch and threadpoolctl are optional for xlstm: main() says when they are missing.
try:
    import torch
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - reported by main()
    torch = None

from xlstm.cli.bench import parse_sizes


def _products(lib, n_x: int, n_a: int, m: int, t_x: int, dtype: str, *, backward: bool = True):
    """The engine's products (forward, and backward's with ``backward``) as one callable over
    ``lib`` (``numpy`` or ``torch``)."""
    rng = np.random.default_rng(0)

    def array(*shape):
        values = rng.standard_normal(shape).astype(dtype)
        return values if lib is np else torch.from_numpy(values)

    x_rows, h_rows = array(t_x * m, n_x), array(t_x * m, n_a)
    w_x_t, w_h_t = array(n_x, 4 * n_a), array(n_a, 4 * n_a)  # contiguous, as the engine's
    w_h, w_x = array(4 * n_a, n_a), array(4 * n_a, n_x)
    dz_rows = array(t_x * m, 4 * n_a)
    gates, step_out, dh = array(t_x * m, 4 * n_a), array(m, 4 * n_a), array(m, n_a)
    d_recurrent, d_input, dx = array(4 * n_a, n_a), array(4 * n_a, n_x), array(t_x * m, n_x)
    matmul = np.matmul if lib is np else (lambda a, b, out: torch.mm(a, b, out=out))

    def run():
        matmul(x_rows, w_x_t, out=gates)
        for t in range(t_x):
            matmul(h_rows[t * m : (t + 1) * m], w_h_t, out=step_out)
        if not backward:
            return
        for t in range(t_x):
            matmul(dz_rows[t * m : (t + 1) * m], w_h, out=dh)
        matmul(dz_rows.T, h_rows, out=d_recurrent)
        matmul(dz_rows.T, x_rows, out=d_input)
        matmul(dz_rows, w_x, out=dx)

    return run


def _torch_lstm(n_x: int, n_a: int, m: int, t_x: int, dtype: str, *, backward: bool = True):
    tdtype = getattr(torch, dtype)
    lstm = torch.nn.LSTM(n_x, n_a).to(tdtype)
    x = torch.randn(t_x, m, n_x, dtype=tdtype, requires_grad=True)
    upstream = torch.randn(t_x, m, n_a, dtype=tdtype)

    def run():
        out, _ = lstm(x)  # training mode, autograd on: keeps what backward needs
        if backward:
            out.backward(upstream)

    return run


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="S2,S3,S4,S5", help="as for python -m xlstm bench")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if torch is None:
        print("gemm_schedule.py needs torch and threadpoolctl installed", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(f"{args.dtype}, {args.threads} threads each, median of {args.rounds} interleaved rounds")
    print(f"{'size pass':12} {'numpy products':>15} {'torch products':>15} {'torch LSTM':>11}  "
          "torch LSTM / numpy products")  # fmt: skip
    for (name, shape), backward in itertools.product(parse_sizes(args.sizes), (False, True)):
        contestants = {
            "numpy": _products(np, *shape, args.dtype, backward=backward),
            "torch-products": _products(torch, *shape, args.dtype, backward=backward),
            "torch-lstm": _torch_lstm(*shape, args.dtype, backward=backward),
        }
        times: dict[str, list[float]] = {key: [] for key in contestants}
        with threadpool_limits(args.threads, user_api="blas"):
            for run in contestants.values():
                run()  # warm-up
            for _ in range(args.rounds):
                for key, run in contestants.items():
                    time.sleep(0.2)  # let the other library's spinning threads settle
                    start = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - start)
        numpy_ms, products_ms, lstm_ms = (_median_ms(times[key]) for key in contestants)
        label = f"{name} {'fwd+bwd' if backward else 'fwd'}"
        print(f"{label:12} {numpy_ms:13.1f}ms {products_ms:13.1f}ms {lstm_ms:9.1f}ms  "
              f"{lstm_ms / numpy_ms:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
