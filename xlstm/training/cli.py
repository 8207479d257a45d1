"""``python -m xlstm train``: train a character-level language model on a text file.

Without ``--text`` it trains on the small corpus shipped in the package.  It shows a progress
bar with the loss and characters per second, prints a generated sample every so often,
writes checkpoints (``--out DIR/checkpoint.npz``) that ``--resume`` continues from, and a
loss curve (``loss.csv`` always, ``loss.png`` when matplotlib is installed).  Ctrl-C stops
cleanly: the current state is saved (atomically, so the previous checkpoint survives an
interrupted save) and the exit status is 130.  Bad arguments give one line on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .._backend import BACKENDS, get_namespace
from .data import default_corpus, n_tbptt_chunks, split_text, tbptt_batches, unigram_entropy
from .model import CharLSTM
from .optim import SGD, Adam, AdamW

PROG = "python -m xlstm train"
CHECKPOINT_NAME = "checkpoint.npz"


class UsageError(Exception):
    """A bad command line or input file: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _number(text: str, convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str):
    """``convert(text)`` if it parses and ``accept`` s it; otherwise the one-line usage error."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, lambda value: value >= 1, "a positive integer")


def _positive_float(text: str) -> float:
    return _number(
        text, float, lambda value: value > 0 and math.isfinite(value), "a positive number"
    )


def _fraction(text: str) -> float:
    return _number(text, float, lambda value: 0.0 <= value <= 0.5, "a number in [0, 0.5]")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Train a character-level LSTM language model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--text", type=Path, help="UTF-8 text file (default: the bundled corpus)")
    data.add_argument(
        "--val-fraction", type=_fraction, default=0.1, help="held-out tail of the text"
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--backend", default="numpy", help="numpy, cupy, torch, jax or array_api_strict"
    )
    model.add_argument("--device", default=None, help="device in the backend's terms, e.g. cuda:0")
    model.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    model.add_argument("--hidden", type=_positive_int, default=128, help="hidden units n_a")
    model.add_argument("--layers", type=_positive_int, default=1, help="stacked LSTM layers")
    model.add_argument(
        "--dropout", type=_fraction, default=0.0, help="dropout between layers (training only)"
    )
    model.add_argument("--seed", type=int, default=0, help="seed of initialisation and batching")
    train = parser.add_argument_group("training")
    train.add_argument("--batch", type=_positive_int, default=32, help="streams per batch m")
    train.add_argument("--seq-len", type=_positive_int, default=64, help="truncated BPTT length T")
    train.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    train.add_argument("--lr", type=_positive_float, default=6e-3, help="learning rate")
    train.add_argument("--clip", type=_positive_float, default=5.0, help="global-norm clip")
    train.add_argument("--steps", type=_positive_int, default=None, help="stop after N steps")
    train.add_argument(
        "--time-limit", type=_positive_float, default=170.0, help="stop after this many seconds"
    )
    report = parser.add_argument_group("reporting and checkpoints")
    report.add_argument("--eval-every", type=_positive_int, default=100, help="steps")
    report.add_argument("--sample-every", type=_positive_int, default=500, help="steps")
    report.add_argument("--sample-length", type=int, default=240, help="characters per sample")
    report.add_argument("--temperature", type=_positive_float, default=0.5)
    report.add_argument("--checkpoint-every", type=_positive_int, default=500, help="steps")
    report.add_argument("--out", type=Path, default=Path("xlstm-run"), help="output directory")
    report.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint (default: OUT/checkpoint.npz)",
    )
    report.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    return parser


# ---------------------------------------------------------------------- inputs


def read_text(path: Path | None) -> str:
    """The training text, or :class:`UsageError` with one clear line."""
    if path is None:
        return default_corpus()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--text {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--text {path}: is a directory, expected a text file") from None
    except OSError as error:
        raise UsageError(f"--text {path}: cannot read it ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        msg = (
            f"--text {path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start})"
        )
        raise UsageError(msg) from None
    if not text.strip():
        raise UsageError(f"--text {path}: the file is empty")
    return text


def _check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise UsageError(
            f"--backend {name!r}: unknown backend; expected one of {', '.join(BACKENDS)}"
        )
    try:
        get_namespace(name)
    except ImportError as error:
        raise UsageError(f"--backend {name}: {error}") from None


def _optimizer(args: argparse.Namespace):
    if args.optimizer == "sgd":
        return SGD(lr=args.lr, momentum=0.9)
    return (AdamW if args.optimizer == "adamw" else Adam)(lr=args.lr)


# ---------------------------------------------------------------------- reporting


class Progress:
    """A one-line progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, stream: TextIO, *, bar: bool) -> None:
        self.stream = stream
        self.bar = bar
        self.last_draw = 0.0
        self.width = 0

    def update(self, fraction: float, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.bar:
            if not force and now - self.last_draw < 0.2:
                return
            filled = int(24 * min(1.0, fraction))
            line = f"[{'#' * filled}{'.' * (24 - filled)}] {text}"
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
            self.last_draw = now
        elif force:
            self.stream.write(text + "\n")
            self.stream.flush()

    def clear(self) -> None:
        if self.bar and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def sample_prime(train_text: str, limit: int = 600) -> str:
    """Text that warms the state up before a sample: the last complete paragraphs of the
    training text (up to ``limit`` characters), so that samples start a new paragraph from a
    typical state rather than from zeros, which the model sees only at the start of streams."""
    paragraphs = train_text.split("\n\n")[:-1]  # the last piece may be cut off mid-way
    prime = ""
    while paragraphs and len(paragraphs[-1]) + len(prime) + 2 <= limit:
        prime = paragraphs.pop() + "\n\n" + prime
    return prime or train_text[-min(limit, 200) :]


def evaluate(model: CharLSTM, ids: np.ndarray, seq_len: int) -> float | None:
    """Mean loss over the whole held-out text (streams read in order, state carried)."""
    if len(ids) < 2:
        return None
    streams = max(1, min(8, (len(ids) - 1) // seq_len))
    seq = min(seq_len, (len(ids) - 1) // streams)
    total, count, state = 0.0, 0, None
    for inputs, targets in tbptt_batches(ids, streams, seq):
        loss, state = model.loss(inputs, targets, state=state)
        total += float(loss) * inputs.size
        count += inputs.size
    return total / count


def write_loss_curve(out: Path, history: dict[str, list], entropy: float) -> list[Path]:
    """``loss.csv`` always, ``loss.png`` when matplotlib is installed."""
    written = []
    csv = out / "loss.csv"
    val = dict(zip(history["val_step"], history["val_loss"], strict=True))
    lines = ["step,seconds,train_loss,val_loss"]
    for step, seconds, loss in zip(
        history["step"], history["seconds"], history["train_loss"], strict=True
    ):
        v = val.get(step)
        lines.append(f"{step},{seconds:.2f},{loss:.5f},{'' if v is None else f'{v:.5f}'}")
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.append(csv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(history["step"], history["train_loss"], label="train (batch)", alpha=0.6)
    if history["val_step"]:
        axes.plot(history["val_step"], history["val_loss"], "o-", label="validation")
    axes.axhline(entropy, color="grey", linestyle="--", label="unigram entropy")
    axes.axhline(0.75 * entropy, color="grey", linestyle=":", label="75% of unigram entropy")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats / char)")
    axes.legend()
    figure.tight_layout()
    png = out / "loss.png"
    figure.savefig(png, dpi=100)
    plt.close(figure)
    written.append(png)
    return written


# ---------------------------------------------------------------------- main


def _setup(args: argparse.Namespace, stderr: TextIO):
    """Everything that can fail on bad input, before any training starts."""
    _check_backend(args.backend)
    text = read_text(args.text)
    if args.sample_length < 0:
        raise UsageError(f"--sample-length {args.sample_length}: expected a non-negative integer")
    resume_path = None
    if args.resume is not None:
        resume_path = args.out / CHECKPOINT_NAME if args.resume is True else Path(args.resume)
        if not resume_path.is_file():
            raise UsageError(f"--resume {resume_path}: no such checkpoint")
    train_text, val_text = split_text(text, args.val_fraction)
    if len(text) <= args.seq_len:
        msg = f"--seq-len {args.seq_len} is longer than the text ({len(text)} characters)"
        raise UsageError(msg)
    if n_tbptt_chunks(len(train_text), args.batch, args.seq_len) < 1:
        msg = (
            f"--seq-len {args.seq_len} with --batch {args.batch} needs at least "
            f"{args.batch * args.seq_len + 1} characters of training text; there are "
            f"{len(train_text)} (lower --seq-len or --batch)"
        )
        raise UsageError(msg)

    if resume_path is not None:
        try:
            model = CharLSTM.load(resume_path, backend=args.backend, device=args.device)
        except (ValueError, TypeError) as error:
            raise UsageError(f"--resume {resume_path}: {error}") from None
        unknown = sorted(set(text) - set(model.vocab))
        if unknown:
            msg = (
                f"--resume {resume_path}: the text has characters the model does not know: "
                f"{unknown[:5]!r}"
            )
            raise UsageError(msg)
        print(f"resumed {model} from {resume_path}", file=stderr)
    else:
        vocab = "".join(sorted(set(text)))
        try:
            model = CharLSTM(
                vocab,
                args.hidden,
                num_layers=args.layers,
                dropout=args.dropout,
                backend=args.backend,
                device=args.device,
                dtype=args.dtype,
                seed=args.seed,
                optimizer=_optimizer(args),
                clip_norm=args.clip,
            )
        except (TypeError, ValueError, RuntimeError) as error:
            raise UsageError(f"cannot build the model: {error}") from None
    return model, text, model.encode(train_text), model.encode(val_text)


def main(
    argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Entry point of ``python -m xlstm train``; returns the exit status."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        args = build_parser().parse_args(argv)
        model, text, train_ids, val_ids = _setup(args, stderr)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=stderr)
        return 2
    return _train(args, model, text, train_ids, val_ids, stdout, stderr)


def _train(args, model: CharLSTM, text, train_ids, val_ids, stdout: TextIO, stderr: TextIO) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    entropy = unigram_entropy(text)
    progress = model.extra.get("progress", {})
    history: dict[str, list] = progress.get(
        "history", {"step": [], "seconds": [], "train_loss": [], "val_step": [], "val_loss": []}
    )
    rng = np.random.default_rng(args.seed)
    if "rng" in progress:
        rng.bit_generator.state = progress["rng"]
    seconds_before = float(progress.get("seconds", 0.0))
    start_step = model.step
    bar = Progress(stderr, bar=not args.no_progress and stderr.isatty())
    print(
        f"training {model} on {len(text)} characters ({len(model.vocab)} distinct); "
        f"unigram entropy {entropy:.3f} nats/char; target {0.75 * entropy:.3f}",
        file=stderr,
    )

    def save() -> None:
        model.extra["progress"] = {
            "history": history,
            "rng": rng.bit_generator.state,
            "seconds": seconds_before + (time.perf_counter() - started),
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        model.save(checkpoint)

    def status(loss: float, val: float | None) -> str:
        elapsed = time.perf_counter() - started
        rate = chars / max(train_seconds, 1e-9)
        val_text = "" if val is None else f"  val {val:.3f}"
        total = f"/{args.steps}" if args.steps else ""
        return (
            f"step {model.step}{total}  loss {loss:.3f}{val_text}  "
            f"{rate / 1000:.1f}k chars/s  {elapsed:.0f}s"
        )

    prime = sample_prime(split_text(text, args.val_fraction)[0])
    started = time.perf_counter()
    chars, train_seconds, loss_value, val_loss = 0, 0.0, float("nan"), None
    done = False
    interrupted = False
    try:
        while not done:
            state = None
            offset = int(rng.integers(args.seq_len))
            for inputs, targets in tbptt_batches(
                train_ids, args.batch, args.seq_len, offset=offset
            ):
                tick = time.perf_counter()
                loss, state = model.train_step(inputs, targets, state=state)
                loss_value = float(loss)
                train_seconds += time.perf_counter() - tick
                chars += inputs.size
                if not math.isfinite(loss_value):
                    bar.clear()
                    print(f"{PROG}: error: the loss became {loss_value} at step {model.step}; "
                          "try a lower --lr", file=stderr)  # fmt: skip
                    return 1
                step = model.step
                elapsed = time.perf_counter() - started
                history["step"].append(step)
                history["seconds"].append(seconds_before + elapsed)
                history["train_loss"].append(loss_value)
                finished = (args.steps is not None and step - start_step >= args.steps) or (
                    elapsed >= args.time_limit
                )
                if step % args.eval_every == 0 or finished:
                    val_loss = evaluate(model, val_ids, args.seq_len)
                    if val_loss is not None:
                        history["val_step"].append(step)
                        history["val_loss"].append(val_loss)
                    bar.update(0, status(loss_value, val_loss), force=True)
                fraction = elapsed / args.time_limit
                if args.steps:
                    fraction = max(fraction, (step - start_step) / args.steps)
                bar.update(fraction, status(loss_value, val_loss))
                if args.sample_length and (step % args.sample_every == 0 or finished):
                    bar.clear()
                    sample = model.sample(
                        args.sample_length,
                        prime=prime,
                        temperature=args.temperature,
                        seed=int(rng.integers(2**31)),
                    )[len(prime) :]
                    print(f"--- sample at step {step} ---\n{sample}\n---", file=stdout, flush=True)
                if step % args.checkpoint_every == 0 or finished:
                    save()
                if finished:
                    done = True
                    break
    except KeyboardInterrupt:
        interrupted = True
    bar.clear()
    if interrupted:
        try:
            save()
            print(
                f"interrupted at step {model.step}; checkpoint saved to {checkpoint}", file=stderr
            )
        except KeyboardInterrupt:
            print(f"interrupted again; the last complete checkpoint is {checkpoint}", file=stderr)
    written = write_loss_curve(out, history, entropy)
    elapsed = time.perf_counter() - started
    summary = {
        "steps": model.step - start_step,
        "seconds": round(elapsed, 1),
        "chars_per_second": round(chars / max(train_seconds, 1e-9)),
        "train_loss": round(loss_value, 4),
        "val_loss": None if val_loss is None else round(val_loss, 4),
        "unigram_entropy": round(entropy, 4),
        "val_below_unigram": None if val_loss is None else round(1 - val_loss / entropy, 4),
        "checkpoint": str(checkpoint),
        "curves": [str(p) for p in written],
    }
    print("summary " + json.dumps(summary), file=stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main"]
