"""Training throughput: xlstm on NumPy vs torch.nn.LSTM + Adam on the CPU, same model, same run.

Both train the same character model (one-hot inputs, ``n_a`` hidden units, softmax output
over the vocabulary) on the same truncated-BPTT batches of the bundled corpus, with Adam and
global-norm clipping, carrying the state between chunks.  Rounds alternate between the two so
that both see the same machine conditions; both are limited to the same number of threads
(threadpoolctl for NumPy's BLAS, ``torch.set_num_threads`` for torch), and each timed round
starts after a short pause so that the other library's idle worker threads have stopped
spinning.  Prints the median
characters per second of each and the ratio xlstm / torch (>= 1 means xlstm is not slower),
and the ratio of the best rounds, which is steadier on a machine shared with other work::

    python benchmarks/scripts/train_vs_torch.py      # defaults of `python -m xlstm train`
    python benchmarks/scripts/train_vs_torch.py --hidden 256 --threads 1
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

from xlstm.training import Adam, CharLSTM, default_corpus, tbptt_batches


def torch_trainer(vocab_size: int, hidden: int, lr: float, clip: float, dtype):
    lstm = torch.nn.LSTM(vocab_size, hidden).to(dtype)
    head = torch.nn.Linear(hidden, vocab_size).to(dtype)
    params = [*lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
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
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    text = default_corpus()
    vocab = "".join(sorted(set(text)))
    ours = CharLSTM(
        vocab, args.hidden, dtype=args.dtype, seed=0, optimizer=Adam(lr=3e-3), clip_norm=5.0
    )
    theirs = torch_trainer(len(vocab), args.hidden, 3e-3, 5.0, getattr(torch, args.dtype))
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

    rates: dict[str, list[float]] = {"xlstm-numpy": [], "torch": []}
    with threadpool_limits(limits=args.threads):
        run_ours(batches[:3])  # warm-up
        run_theirs(batches[:3])
        for r in range(args.rounds):
            start = (r * args.steps_per_round) % max(1, len(batches) - args.steps_per_round)
            chunks = batches[start : start + args.steps_per_round]
            order = (("xlstm-numpy", run_ours), ("torch", run_theirs))
            for name, fn in order if r % 2 == 0 else order[::-1]:
                # Let the other library's worker threads stop spinning before timing.
                time.sleep(0.3)
                tick = time.perf_counter()
                fn(chunks)
                rates[name].append(len(chunks) * chars_per_step / (time.perf_counter() - tick))

    print(
        f"model: vocab {len(vocab)}, hidden {args.hidden}, batch {args.batch}, "
        f"seq_len {args.seq_len}, {args.dtype}, Adam + clip, {args.threads} thread(s); "
        f"torch {torch.__version__}, numpy {np.__version__}"
    )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        spread = f"{min(rates[name]):,.0f}..{max(rates[name]):,.0f}"
        print(f"{name:12s} {value:>10,.0f} chars/s  (rounds: {spread})")
    best = {name: max(values) for name, values in rates.items()}
    print(f"ratio xlstm-numpy / torch = {medians['xlstm-numpy'] / medians['torch']:.2f} (medians)")
    print(
        f"ratio of best rounds      = {best['xlstm-numpy'] / best['torch']:.2f} (least disturbed)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
