"""Stacked / bidirectional LSTM forward+backward: xlstm on NumPy vs torch.nn.LSTM on the CPU.

Same weights, same inputs, same configuration, same run.  One timed call is a training-mode
forward (keeping what backward needs) plus the backward pass with given upstream gradients on
the outputs and the final states, computing every gradient (inputs, initial states, weights).
Variable-length batches run as right-padded batches with ``lengths`` in xlstm and as packed
sequences (``pack_padded_sequence(..., enforce_sorted=False)``) in torch.

Measurements are interleaved round-robin (every configuration and implementation once per
round, with a 0.2 s pause whenever the library changes) and the median of the rounds is
reported.  Both libraries get the same number of threads (threadpoolctl for NumPy's BLAS,
``torch.set_num_threads``).  Ratios: ``torch / xlstm`` (>= 1: xlstm is at least as fast) and
``lengths / padded`` for xlstm (<= 1: variable lengths cost no more than the padded batch)::

    python benchmarks/scripts/layers_vs_torch.py      # S3: n_x = n_a = 256, m = 64, T = 100
    python benchmarks/scripts/layers_vs_torch.py --rounds 9 --threads 1 \
        --configs 2x-bi 2x-bi-lengths
"""

from __future__ import annotations

import argparse
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

from xlstm.convert import from_torch
from xlstm.layers import multilayer_backward, multilayer_forward

CONFIGS = {
    # name: (num_layers, bidirectional, variable lengths)
    "1x": (1, False, False),
    "2x": (2, False, False),
    "1x-bi": (1, True, False),
    "2x-bi": (2, True, False),
    "2x-bi-lengths": (2, True, True),
    "2x-lengths": (2, False, True),
}


def random_lengths(rng: np.random.Generator, m: int, t_x: int) -> np.ndarray:
    """Lengths spread uniformly over [T/10, T], one sequence of the full length."""
    lengths = rng.integers(max(1, t_x // 10), t_x + 1, size=m)
    lengths[0] = t_x
    return lengths


class Case:
    """One configuration: the torch module, its weights in xlstm, inputs and gradients."""

    def __init__(self, name, n_x, n_a, m, t_x, dtype, seed):
        num_layers, bidirectional, variable = CONFIGS[name]
        directions = 2 if bidirectional else 1
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.module = torch.nn.LSTM(
            n_x, n_a, num_layers=num_layers, bidirectional=bidirectional
        ).to(getattr(torch, dtype))
        self.module.train()
        self.weights = from_torch(self.module)
        self.bidirectional = bidirectional
        self.lengths = random_lengths(rng, m, t_x) if variable else None
        self.x = rng.standard_normal((n_x, m, t_x)).astype(dtype)
        self.g_out = rng.standard_normal((directions * n_a, m, t_x)).astype(dtype)
        if self.lengths is not None:
            for j, length in enumerate(self.lengths):
                self.g_out[:, j, length:] = 0.0
        count = num_layers * directions
        self.g_h = rng.standard_normal((count, n_a, m)).astype(dtype)
        self.g_c = rng.standard_normal((count, n_a, m)).astype(dtype)
        # torch layouts, made once (not timed)
        self.x_t = torch.from_numpy(self.x.transpose(2, 1, 0).copy())
        self.g_out_t = torch.from_numpy(self.g_out.transpose(2, 1, 0).copy())
        self.g_h_t = torch.from_numpy(self.g_h.transpose(0, 2, 1).copy())
        self.g_c_t = torch.from_numpy(self.g_c.transpose(0, 2, 1).copy())
        self.lengths_t = None if self.lengths is None else torch.from_numpy(self.lengths)
        self.t_x = t_x

    def run_xlstm(self):
        _, _, cache = multilayer_forward(
            self.x, self.weights.layers, bidirectional=self.bidirectional, lengths=self.lengths
        )
        return multilayer_backward(self.g_out, cache, self.g_h, self.g_c)

    def run_torch(self):
        x = self.x_t.detach().requires_grad_(True)
        self.module.zero_grad(set_to_none=True)
        if self.lengths_t is None:
            out, (h_n, c_n) = self.module(x)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x, self.lengths_t, enforce_sorted=False
            )
            packed_out, (h_n, c_n) = self.module(packed)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, total_length=self.t_x)
        torch.autograd.backward((out, h_n, c_n), (self.g_out_t, self.g_h_t, self.g_c_t))
        return x.grad


def main(argv: list[str] | None = None) -> int:
    if torch is None:
        print("layers_vs_torch: needs torch and threadpoolctl", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-x", type=int, default=256)
    parser.add_argument("--n-a", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument(
        "--configs", nargs="+", choices=sorted(CONFIGS), default=["2x-bi", "2x-bi-lengths", "1x"]
    )
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error("--rounds must be at least 5 (the median of >= 5 runs is reported)")
    torch.set_num_threads(args.threads)
    cases = {
        name: Case(name, args.n_x, args.n_a, args.batch, args.seq_len, args.dtype, seed=k)
        for k, name in enumerate(args.configs)
    }
    times: dict[tuple[str, str], list[float]] = {
        (name, lib): [] for name in cases for lib in ("xlstm", "torch")
    }
    with threadpool_limits(limits=args.threads):
        for case in cases.values():  # warm-up, not timed
            case.run_xlstm()
            case.run_torch()
        last = None
        for _ in range(args.rounds):
            for name, case in cases.items():
                for lib, run in (("xlstm", case.run_xlstm), ("torch", case.run_torch)):
                    if last is not None and last != lib:
                        time.sleep(args.pause)
                    start = time.perf_counter()
                    run()
                    times[name, lib].append(time.perf_counter() - start)
                    last = lib

    print(
        f"forward+backward, n_x={args.n_x} n_a={args.n_a} m={args.batch} T={args.seq_len} "
        f"{args.dtype}, {args.threads} threads, median of {args.rounds} interleaved rounds"
    )
    print(f"{'config':<16}{'xlstm (s)':>11}{'torch (s)':>11}{'torch/xlstm':>13}")
    medians = {key: statistics.median(values) for key, values in times.items()}
    for name in cases:
        ours, theirs = medians[name, "xlstm"], medians[name, "torch"]
        print(f"{name:<16}{ours:>11.3f}{theirs:>11.3f}{theirs / ours:>13.2f}")
    for name, case in cases.items():
        padded = name.removesuffix("-lengths")
        if case.lengths is not None and padded in cases:
            mean_length = float(np.mean(case.lengths))
            print(
                f"{name}: mean length {mean_length:.1f} of {args.seq_len}; xlstm lengths/padded "
                f"= {medians[name, 'xlstm'] / medians[padded, 'xlstm']:.2f}, torch packed/padded "
                f"= {medians[name, 'torch'] / medians[padded, 'torch']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
