"""Training throughput: xlstm vs torch.nn.LSTM + Adam on the CPU, same model, same run.

Both train the same character model (one-hot inputs, ``n_a`` hidden units, softmax output
over the vocabulary) on the same truncated-BPTT batches of the bundled corpus, with the same
optimiser (Adam, lr 3e-3, betas (0.9, 0.999), eps 1e-8) and global-norm clipping at 5,
carrying the state between chunks.  xlstm runs the engine ``--engine`` picks (``auto``: the
numba engine when the ``cpu`` extra is installed); the report names it.  Rounds alternate
between the two so that both see the same machine conditions; both are limited to the same
number of threads (threadpoolctl for NumPy's BLAS, ``torch.set_num_threads`` for torch), and
each timed round starts after a short pause so that the other library's idle worker threads
have stopped spinning.  Prints the median
training steps per second (and characters per second) of each and the ratio xlstm / torch
(>= 1 means xlstm is not slower), and the ratio of the best rounds, which is steadier on a
machine shared with other work::

    python benchmarks/scripts/train_vs_torch.py      # defaults of `python -m xlstm train`
    python benchmarks/scripts/train_vs_torch.py --hidden 256 --threads 1
    python benchmarks/scripts/train_vs_torch.py --engine numpy   # without the cpu extra
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

import xlstm
from xlstm.training import Adam, CharLSTM, default_corpus, tbptt_batches

LEARNING_RATE, CLIP_NORM = 3e-3, 5.0


def torch_trainer(vocab_size: int, hidden: int, lr: float, clip: float, dtype):
    lstm = torch.nn.LSTM(vocab_size, hidden).to(dtype)
    head = torch.nn.Linear(hidden, vocab_size).to(dtype)
    params = [*lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    state = {"hc": None}

    def step(inputs: np.ndarray, targets: np.ndarray) -> float:
        ids = torch.from_numpy(inputs.T.copy())  # (T, m)
        x = torch.nn.functional.one_hot(ids, vocab_size).to(dtype)
        hidden_states, (h, c) = lstm(x, state["hc"])
        logits = head(hidden_states)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, vocab_size), torch.from_numpy(targets.T.copy()).reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        state["hc"] = (h.detach(), c.detach())
        return loss.item()

    return step


def main(argv: list[str] | None = None) -> int:
    if torch is None:
        print("train_vs_torch: needs torch and threadpoolctl", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument(
        "--engine", choices=("auto", "generic", "numpy", "numba"), default="auto",
        help="xlstm's engine (default: auto, the fastest installed)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    engine = xlstm.resolve_engine("numpy", args.dtype, args.engine)
    label = f"xlstm-{engine}"

    torch.set_num_threads(args.threads)
    text = default_corpus()
    vocab = "".join(sorted(set(text)))
    ours = CharLSTM(
        vocab, args.hidden, dtype=args.dtype, seed=0, engine=args.engine,
        optimizer=Adam(lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8), clip_norm=CLIP_NORM,
    )  # fmt: skip
    theirs = torch_trainer(
        len(vocab), args.hidden, LEARNING_RATE, CLIP_NORM, getattr(torch, args.dtype)
    )
    batches = list(tbptt_batches(ours.encode(text), args.batch, args.seq_len))
    chars_per_step = args.batch * args.seq_len

    def run_ours(chunks):
        state = None
        for inputs, targets in chunks:
            loss, state = ours.train_step(inputs, targets, state=state)
        return float(loss)

    def run_theirs(chunks):
        for inputs, targets in chunks:
            loss = theirs(inputs, targets)
        return loss

    steps: dict[str, list[float]] = {label: [], "torch": []}
    with threadpool_limits(limits=args.threads):
        run_ours(batches[:3])  # warm-up
        run_theirs(batches[:3])
        for r in range(args.rounds):
            start = (r * args.steps_per_round) % max(1, len(batches) - args.steps_per_round)
            chunks = batches[start : start + args.steps_per_round]
            order = ((label, run_ours), ("torch", run_theirs))
            for name, fn in order if r % 2 == 0 else order[::-1]:
                # Let the other library's worker threads stop spinning before timing.
                time.sleep(0.3)
                tick = time.perf_counter()
                fn(chunks)
                steps[name].append(len(chunks) / (time.perf_counter() - tick))

    print(
        f"model: vocab {len(vocab)}, hidden {args.hidden}, batch {args.batch}, "
        f"seq_len {args.seq_len}, {args.dtype}, Adam + clip, {args.threads} thread(s); "
        f"xlstm engine {engine}; torch {torch.__version__}, numpy {np.__version__}"
    )
    medians = {name: statistics.median(values) for name, values in steps.items()}
    for name, value in medians.items():
        spread = f"{min(steps[name]):,.1f}..{max(steps[name]):,.1f}"
        print(
            f"{name:13s} {value:>8,.1f} steps/s {value * chars_per_step:>10,.0f} chars/s  "
            f"(rounds: {spread} steps/s)"
        )
    best = {name: max(values) for name, values in steps.items()}
    print(f"ratio {label} / torch = {medians[label] / medians['torch']:.2f} (medians)")
    print(f"ratio of best rounds = {best[label] / best['torch']:.2f} (least disturbed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
