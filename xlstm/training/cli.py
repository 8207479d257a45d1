"""``python -m xlstm train``: train a character-level language model on a text file.

Without ``--text`` it trains on the small corpus shipped in the package.  It shows a progress
bar with the loss and characters per second, prints a generated sample every so often,
writes checkpoints (``--out DIR/checkpoint.npz``) that ``--resume`` continues from, and a
loss curve (``loss.csv`` always, ``loss.png`` when matplotlib is installed).

Exit status and what happens on the way out:

* 0: the run finished (``--steps`` or ``--time-limit``), or its output was closed: when
  ``python -m xlstm train | head`` stops reading, the run stops at that step, saves its
  checkpoint and loss curve, and exits quietly with status 0 (no ``BrokenPipeError``).
* 1: the loss became NaN or infinite, or a file could not be written (one line on stderr).
* 2: a bad command line or input, found before training starts, with one line on stderr and
  no traceback: a missing, empty, non-UTF-8 or too large (over :data:`MAX_TEXT_BYTES`) text,
  an ``--out`` that is a file or lies under one, an unreadable or foreign ``--resume``
  checkpoint, ``--hidden``/``--layers``/``--dropout``/``--dtype``/``--optimizer``/``--lr``/
  ``--clip`` given with ``--resume`` but different from the checkpoint's, sizes whose buffers
  would not fit in this machine's memory (:func:`estimate_bytes`), ...
* 130: Ctrl-C (SIGINT).  During training the current state is saved (atomically, so the
  previous checkpoint survives an interrupted save); during start-up (reading the text,
  loading the checkpoint) it stops with one line.  (An interrupt while Python is still
  importing ``xlstm`` itself happens before this module runs.)

The model options (``--hidden``, ``--layers``, ``--dropout``, ``--dtype``) and the optimiser
options (``--optimizer``, ``--lr``, ``--clip``) have no fixed default on the parser: a new
run uses :data:`DEFAULTS`; a resumed run uses the checkpoint's, and giving one that differs
is an error rather than being silently ignored.

The training history (loss per step, validation loss) is kept in the checkpoint's
``extra["progress"]``; beyond :data:`HISTORY_POINTS` points the older half is thinned (every
other step kept, validation steps always), so that the record stays small.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .._backend import BACKENDS, get_namespace
from .._cli import (
    Parser,
    Progress,
    UsageError,
    fraction,
    non_negative_int,
    number,
    positive_float,
    positive_int,
)
from .data import default_corpus, n_tbptt_chunks, split_text, tbptt_batches, unigram_entropy
from .model import CharLSTM
from .optim import SGD, Adam, AdamW

_FRACTION = fraction(0.5)  # --val-fraction and --dropout

PROG = "python -m xlstm train"
CHECKPOINT_NAME = "checkpoint.npz"
OUTPUT_NAMES = (CHECKPOINT_NAME, "loss.csv", "loss.png")
"""Files a run writes in ``--out``."""

DEFAULTS = {
    "hidden": 128,
    "layers": 1,
    "dropout": 0.0,
    "dtype": "float32",
    "optimizer": "adam",
    "lr": 6e-3,
    "clip": 5.0,
}
"""Model and optimiser options of a new run (a resumed run takes the checkpoint's)."""

MAX_TEXT_BYTES = 256 * 2**20
"""Largest ``--text`` read (256 MiB); larger files and endless streams are an error."""

MAX_SAMPLE_LENGTH = 1_000_000
"""Largest ``--sample-length``."""

HISTORY_POINTS = 10_000
"""Training-loss points kept in the checkpoint before the older ones are thinned."""

FALLBACK_MEMORY = 64 * 2**30
"""Memory assumed where the machine's cannot be read (bytes)."""

_HISTORY_KEYS = ("step", "seconds", "train_loss", "val_step", "val_loss")


class _SaveError(Exception):
    """A checkpoint that could not be written (exit status 1)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (options whose default the help text explains)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def _sample_length(text: str) -> int:
    return number(
        text,
        int,
        lambda value: 0 <= value <= MAX_SAMPLE_LENGTH,
        f"an integer in [0, {MAX_SAMPLE_LENGTH}]",
    )


def _path(text: str) -> Path:
    if "\0" in text or not text:
        raise argparse.ArgumentTypeError(f"expected a file name, got {text!r}")
    return Path(text)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Train a character-level LSTM language model.",
        epilog=(
            "Exit status: 0 finished, or its output was closed (e.g. `| head`: it saves and "
            "stops); 1 the loss diverged or a file could not be written; 2 bad arguments or "
            "input (one line on stderr, before training); 130 Ctrl-C (state saved)."
        ),
        formatter_class=_HelpFormatter,
    )
    resumed = "with --resume: the checkpoint's, and a different value is an error"

    def default(name: str) -> str:
        return f"(default: {DEFAULTS[name]}; {resumed})"

    data = parser.add_argument_group("data")
    data.add_argument(
        "--text",
        type=_path,
        help=f"UTF-8 text, at most {MAX_TEXT_BYTES // 2**20} MiB (default: the bundled corpus)",
    )
    data.add_argument(
        "--val-fraction", type=_FRACTION, default=0.1, help="held-out tail of the text"
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--backend", default="numpy", help="numpy, cupy, torch, jax or array_api_strict"
    )
    model.add_argument("--device", default=None, help="device in the backend's terms, e.g. cuda:0")
    model.add_argument("--dtype", choices=("float32", "float64"), help=default("dtype"))
    model.add_argument("--hidden", type=positive_int, help=f"hidden units n_a {default('hidden')}")
    model.add_argument(
        "--layers", type=positive_int, help=f"stacked LSTM layers {default('layers')}"
    )
    model.add_argument(
        "--dropout", type=_FRACTION, help=f"dropout between layers {default('dropout')}"
    )
    model.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of initialisation and batching"
    )
    train = parser.add_argument_group("training")
    train.add_argument("--batch", type=positive_int, default=32, help="streams per batch m")
    train.add_argument("--seq-len", type=positive_int, default=64, help="truncated BPTT length T")
    train.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), help=default("optimizer"))
    train.add_argument("--lr", type=positive_float, help=f"learning rate {default('lr')}")
    train.add_argument("--clip", type=positive_float, help=f"global-norm clip {default('clip')}")
    train.add_argument("--steps", type=positive_int, default=None, help="stop after N steps")
    train.add_argument(
        "--time-limit", type=positive_float, default=170.0, help="stop after this many seconds"
    )
    report = parser.add_argument_group("reporting and checkpoints")
    report.add_argument("--eval-every", type=positive_int, default=100, help="steps")
    report.add_argument("--sample-every", type=positive_int, default=500, help="steps")
    report.add_argument(
        "--sample-length", type=_sample_length, default=240, help="characters per sample"
    )
    report.add_argument("--temperature", type=positive_float, default=0.5)
    report.add_argument("--checkpoint-every", type=positive_int, default=500, help="steps")
    report.add_argument("--out", type=_path, default=Path("xlstm-run"), help="output directory")
    report.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        type=_path,
        metavar="CHECKPOINT",
        help="continue from a checkpoint (default: OUT/checkpoint.npz)",
    )
    report.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    scale = parser.add_argument_group("data-parallel training on dask (the `dask` extra)")
    where = scale.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="address of a running dask scheduler")
    where.add_argument(
        "--workers", type=positive_int, default=None, help="start N local worker processes"
    )
    scale.add_argument(
        "--batch-chunk", type=positive_int, default=None,
        help="streams per task (default: the batch split evenly over the workers)",
    )  # fmt: skip
    return parser


# ---------------------------------------------------------------------- inputs


def read_text(path: Path | None) -> str:
    """The training text, or :class:`UsageError` with one clear line.

    Reads at most :data:`MAX_TEXT_BYTES` (a regular file's size is checked before reading;
    pipes and devices, e.g. ``--text <(zcat book.gz)``, are read in chunks up to the cap).
    """
    if path is None:
        return default_corpus()
    limit = f"{MAX_TEXT_BYTES // 2**20} MiB" if MAX_TEXT_BYTES >= 2**20 else f"{MAX_TEXT_BYTES} B"
    too_large = f"--text {path}: larger than {limit}; training reads the whole text into memory"
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below; a FIFO blocks here for a writer
    except FileNotFoundError:
        raise UsageError(f"--text {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--text {path}: is a directory, expected a text file") from None
    except OSError as error:
        raise UsageError(f"--text {path}: cannot read it ({error.strerror or error})") from None
    with file:
        try:
            info = os.fstat(file.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise UsageError(f"--text {path}: is a directory, expected a text file")
            if stat.S_ISREG(info.st_mode) and info.st_size > MAX_TEXT_BYTES:
                raise UsageError(too_large)
            chunks, size = [], 0
            while size <= MAX_TEXT_BYTES:
                chunk = file.read(min(2**20, MAX_TEXT_BYTES + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as error:
            raise UsageError(f"--text {path}: cannot read it ({error.strerror or error})") from None
    if size > MAX_TEXT_BYTES:
        raise UsageError(too_large)
    raw = b"".join(chunks)
    del chunks
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


def _check_out(out: Path) -> None:
    """``--out`` is (or can become) a folder where the run's files can be written."""
    existing = next((p for p in (out, *out.parents) if p.exists() or p.is_symlink()), None)
    if existing is not None and not existing.is_dir():
        what = "a file" if existing.exists() else "a broken symbolic link"
        if existing == out:
            raise UsageError(f"--out {out}: is {what}, expected a directory")
        raise UsageError(f"--out {out}: lies under {existing}, which is {what}")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {existing} is not writable")
    for name in OUTPUT_NAMES:
        target = out / name
        if target.is_dir():
            raise UsageError(f"--out {out}: {target} is a directory; the run writes a file there")


def _optimizer(name: str, lr: float):
    if name == "sgd":
        return SGD(lr=lr, momentum=0.9)
    return (AdamW if name == "adamw" else Adam)(lr=lr)


_OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


def _check_resume_options(args: argparse.Namespace, model: CharLSTM, where: str) -> None:
    """Options given with ``--resume`` must agree with the checkpoint (never silently lost)."""
    optimizer = model.optimizer
    saved = {
        "hidden": ("n_a", model.n_a, args.hidden),
        "layers": ("num_layers", model.num_layers, args.layers),
        "dropout": ("dropout", model.dropout, args.dropout),
        "dtype": ("dtype", model.dtype, args.dtype),
        "optimizer": (
            "optimizer",
            type(optimizer).__name__,
            None if args.optimizer is None else _OPTIMIZER_NAMES[args.optimizer],
        ),
        "lr": ("lr", getattr(optimizer, "lr", None), args.lr),
        "clip": ("clip_norm", model.clip_norm, args.clip),
    }
    for option, (field, value, given) in saved.items():
        if given is not None and given != value:
            msg = (
                f"--{option} {getattr(args, option)} disagrees with the checkpoint {where} "
                f"({field} = {value}); leave --{option} out to continue with the checkpoint's"
            )
            raise UsageError(msg)


def estimate_bytes(
    n_x: int,
    n_a: int,
    num_layers: int,
    batch: int,
    seq_len: int,
    *,
    itemsize: int = 4,
    slots: int = 2,
    n_text: int = 0,
) -> int:
    """Rough peak memory of a training run (bytes), from the sizes alone.

    Parameters ``P = 4 n_a (n_a + n_x + 1) + (L - 1) 4 n_a (2 n_a + 1) + n_x (n_a + 1)``
    (``n_y = n_x``) held ``3 + slots`` times (parameters, gradients, the new parameters of
    a step, the optimiser's buffers) plus a float64 host copy for sampling; per step of
    ``max(batch, 8) * seq_len`` characters, the caches of ``L`` layers (``~ 7 n_a``) and the
    one-hot inputs, logits, probabilities and their gradient (``~ 5 n_x``); the text as
    int64 ids (twice).  Python ints: no overflow for absurd sizes.
    """
    first = 4 * n_a * (n_a + n_x + 1)
    deeper = (num_layers - 1) * 4 * n_a * (2 * n_a + 1)
    parameters = first + deeper + n_x * (n_a + 1)
    model = parameters * (itemsize * (3 + slots) + 8)
    positions = max(batch, 8) * seq_len
    activations = itemsize * positions * (7 * n_a * num_layers + 5 * n_x)
    return model + activations + 16 * n_text


def available_memory() -> int:
    """This machine's memory (bytes): physical memory, or the cgroup limit if lower;
    :data:`FALLBACK_MEMORY` where neither can be read."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = FALLBACK_MEMORY
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total if total > 0 else FALLBACK_MEMORY


def _check_memory(n_x, n_a, num_layers, args, dtype, slots, n_text) -> None:
    itemsize = 8 if dtype == "float64" else 4
    needed = estimate_bytes(
        n_x, n_a, num_layers, args.batch, args.seq_len, itemsize=itemsize, slots=slots,
        n_text=n_text,
    )  # fmt: skip
    have = available_memory()
    if needed > have:
        msg = (
            f"--hidden {n_a} --layers {num_layers} --batch {args.batch} --seq-len {args.seq_len} "
            f"({dtype}) needs about {_gib(needed)} of memory; this machine has {_gib(have)} "
            "(lower --hidden, --layers, --batch or --seq-len)"
        )
        raise UsageError(msg)


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n < 2**70 else f"{n:.3g} bytes"


def _fresh_history() -> dict[str, list]:
    return {key: [] for key in _HISTORY_KEYS}


def _restore_progress(model: CharLSTM, where: str) -> tuple[dict[str, list], Any, float]:
    """``(history, rng state or None, seconds)`` from the checkpoint's ``extra["progress"]``.

    Absent: a fresh start.  Present but not this command's record: a usage error (resuming
    would otherwise overwrite someone's data, or fail mid-run).
    """
    progress = model.extra.get("progress")
    if progress is None:
        return _fresh_history(), None, 0.0

    def foreign(reason: str) -> UsageError:
        return UsageError(
            f"--resume {where}: its extra['progress'] is not a record of {PROG} ({reason})"
        )

    if not isinstance(progress, dict):
        raise foreign(f"a {type(progress).__name__}, not a dict")
    history = progress.get("history", _fresh_history())
    if not isinstance(history, dict) or sorted(history) != sorted(_HISTORY_KEYS):
        raise foreign(f"history must have the keys {list(_HISTORY_KEYS)}")
    for key in _HISTORY_KEYS:
        values = history[key]
        is_step = key.endswith("step")
        if not isinstance(values, list) or not all(
            isinstance(v, int if is_step else (int, float)) and not isinstance(v, bool)
            for v in values
        ):
            raise foreign(f"history[{key!r}] is not a list of {'ints' if is_step else 'numbers'}")
    if not len(history["step"]) == len(history["seconds"]) == len(history["train_loss"]):
        raise foreign("history['step'], ['seconds'] and ['train_loss'] differ in length")
    if len(history["val_step"]) != len(history["val_loss"]):
        raise foreign("history['val_step'] and ['val_loss'] differ in length")
    seconds = progress.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise foreign(f"seconds = {seconds!r}")
    state = progress.get("rng")
    if state is not None:
        try:
            np.random.default_rng().bit_generator.state = state
        except (TypeError, ValueError, KeyError, OverflowError) as error:
            raise foreign(f"rng: {error}") from None
    return history, state, float(seconds)


def _tidy(history: dict[str, list]) -> None:
    """Make the record even and small, in place.

    Even: a Ctrl-C between two appends of one step leaves the lists one apart; the partial
    step is dropped.  Small: past :data:`HISTORY_POINTS`, every other one of the older half
    of the points is dropped (validation steps and the latest half stay).
    """
    for group in (("step", "seconds", "train_loss"), ("val_step", "val_loss")):
        n = min(len(history[key]) for key in group)
        for key in group:
            del history[key][n:]
    for steps, others in (("step", ("seconds", "train_loss")), ("val_step", ("val_loss",))):
        n = len(history[steps])
        if n <= HISTORY_POINTS:
            continue
        keep_always = set(history["val_step"]) if steps == "step" else set()
        half = n // 2
        keep = [i for i in range(n) if i >= half or i % 2 == 0 or history[steps][i] in keep_always]
        for key in (steps, *others):
            history[key] = [history[key][i] for i in keep]


# ---------------------------------------------------------------------- reporting


class _Guarded:
    """A stream whose write errors end the run quietly instead of raising.

    ``train | head``: when the reader goes away, writes raise ``BrokenPipeError``; the run
    notes it (:attr:`closed`), stops at the end of the step and saves.  A real file
    descriptor is pointed at ``os.devnull`` so that Python's final flush is silent too.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.closed = False
        self.error: OSError | ValueError | None = None

    def _failed(self, error: OSError | ValueError) -> None:
        self.closed, self.error = True, error
        if isinstance(error, BrokenPipeError):
            try:
                descriptor = os.open(os.devnull, os.O_WRONLY)
                os.dup2(descriptor, self.stream.fileno())
                os.close(descriptor)
            except (OSError, ValueError, AttributeError):
                pass  # no descriptor (a StringIO): nothing will flush it at exit

    def write(self, text: str) -> int:
        if not self.closed:
            try:
                self.stream.write(text)
            except (OSError, ValueError) as error:  # ValueError: the stream was closed
                self._failed(error)
        return len(text)

    def flush(self) -> None:
        if not self.closed:
            try:
                self.stream.flush()
            except (OSError, ValueError) as error:
                self._failed(error)

    def isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (OSError, ValueError, AttributeError):
            return False


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
    seq_len = int(seq_len)
    if len(ids) < 2:
        return None
    streams = max(1, min(8, (len(ids) - 1) // seq_len))
    seq = max(1, min(seq_len, (len(ids) - 1) // streams))
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


class _Run:
    """What :func:`_setup` checked and built: everything training needs."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def _setup(args: argparse.Namespace) -> _Run:
    """Everything that can fail on bad input, before any training starts."""
    _check_backend(args.backend)
    _check_out(args.out)
    resume_path = None
    if args.resume is not None:
        resume_path = args.out / CHECKPOINT_NAME if args.resume is True else Path(args.resume)
        if not (resume_path.exists() or resume_path.is_symlink()):
            raise UsageError(f"--resume {resume_path}: no such checkpoint")
    text = read_text(args.text)
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

    history, rng_state, seconds = _fresh_history(), None, 0.0
    if resume_path is not None:
        try:
            model = CharLSTM.load(resume_path, backend=args.backend, device=args.device)
        except (ValueError, TypeError, RuntimeError) as error:  # CheckpointError included
            raise UsageError(f"--resume {resume_path}: {error}") from None
        except OSError as error:
            msg = f"--resume {resume_path}: cannot read it ({error.strerror or error})"
            raise UsageError(msg) from None
        _check_resume_options(args, model, str(resume_path))
        unknown = sorted(set(text) - set(model.vocab))
        if unknown:
            msg = (
                f"--resume {resume_path}: the text has characters the model does not know: "
                f"{unknown[:5]!r}"
            )
            raise UsageError(msg)
        _check_memory(
            model.n_x, model.n_a, model.num_layers, args, model.dtype,
            len(model.optimizer.slots), len(text),
        )  # fmt: skip
        history, rng_state, seconds = _restore_progress(model, str(resume_path))
    else:
        options = {
            k: DEFAULTS[k] if getattr(args, k) is None else getattr(args, k) for k in DEFAULTS
        }
        vocab = "".join(sorted(set(text)))
        optimizer = _optimizer(options["optimizer"], options["lr"])
        _check_memory(
            len(vocab), options["hidden"], options["layers"], args, options["dtype"],
            len(optimizer.slots), len(text),
        )  # fmt: skip
        try:
            model = CharLSTM(
                vocab,
                options["hidden"],
                num_layers=options["layers"],
                dropout=options["dropout"],
                backend=args.backend,
                device=args.device,
                dtype=options["dtype"],
                seed=args.seed,
                optimizer=optimizer,
                clip_norm=options["clip"],
            )
        except (TypeError, ValueError, RuntimeError) as error:
            raise UsageError(f"cannot build the model: {error}") from None
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"--out {args.out}: cannot create it ({error.strerror or error})"
        ) from None
    return _Run(
        model=model,
        text=text,
        train_text=train_text,
        train_ids=model.encode(train_text),
        val_ids=model.encode(val_text),
        history=history,
        rng_state=rng_state,
        seconds_before=seconds,
        resumed_from=resume_path,
    )


def main(
    argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Entry point of ``python -m xlstm train``; returns the exit status."""
    stdout = _Guarded(_stream(sys.stdout if stdout is None else stdout))
    stderr = _Guarded(_stream(sys.stderr if stderr is None else stderr))
    try:
        try:
            args = build_parser().parse_args(argv)
            run = _setup(args)
        except SystemExit as exit_:  # --help
            return int(exit_.code or 0)
        except UsageError as error:
            print(f"{PROG}: error: {error}", file=stderr)
            return 2
        with contextlib.ExitStack() as stack:
            try:
                step = _step_function(args, run.model, stack)
            except UsageError as error:
                print(f"{PROG}: error: {error}", file=stderr)
                return 2
            return _train(args, run, stdout, stderr, step)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=stderr)
        return 130


def _stream(stream: TextIO | None) -> TextIO:
    # With a closed file descriptor (``2>&-``) Python's sys.stderr is None.
    return open(os.devnull, "w", encoding="utf-8") if stream is None else stream


def _step_function(args: argparse.Namespace, model: CharLSTM, stack: contextlib.ExitStack):
    """``step(inputs, targets, state) -> (loss, state)``: in this process, or data-parallel.

    With ``--scheduler``/``--workers`` each batch is chunked along its streams and the
    gradients are computed on the dask workers (:class:`xlstm.dask.DataParallelTrainer`);
    progress, samples and checkpoints are the same as in one process.
    """
    if args.scheduler is None and args.workers is None:
        return lambda inputs, targets, state: model.train_step(inputs, targets, state=state)
    from ..dask.cluster import connect

    client = connect(args.scheduler, args.workers, stack)
    import dask.array as da

    from ..dask import DataParallelTrainer

    trainer = DataParallelTrainer(model, client=client)
    workers = max(1, len(client.scheduler_info()["workers"]))
    chunk = args.batch_chunk or max(1, -(-args.batch // workers))

    def step(inputs, targets, state):
        x = da.from_array(inputs, chunks=(chunk, -1))
        y = da.from_array(targets, chunks=(chunk, -1))
        return trainer.step(x, y, state=state)

    return step


def _train(args, run: _Run, stdout: _Guarded, stderr: _Guarded, train_step) -> int:
    model: CharLSTM = run.model
    out: Path = args.out
    checkpoint = out / CHECKPOINT_NAME
    entropy = unigram_entropy(run.text)
    history = run.history
    rng = np.random.default_rng(args.seed)
    if run.rng_state is not None:
        rng.bit_generator.state = run.rng_state
    seconds_before = run.seconds_before
    start_step = model.step
    bar = Progress(stderr, bar=not args.no_progress and stderr.isatty())
    if run.resumed_from is not None:
        print(f"resumed {model} from {run.resumed_from}", file=stderr)
    print(
        f"training {model} on {len(run.text)} characters ({len(model.vocab)} distinct); "
        f"unigram entropy {entropy:.3f} nats/char; target {0.75 * entropy:.3f}",
        file=stderr,
    )

    def save() -> None:
        _tidy(history)
        model.extra["progress"] = {
            "history": history,
            "rng": rng.bit_generator.state,
            "seconds": seconds_before + (time.perf_counter() - started),
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        try:
            model.save(checkpoint)
        except (OSError, ValueError, TypeError) as error:  # disk full, read-only, NaN weights
            raise _SaveError(f"cannot save {checkpoint}: {error}") from None

    def status(loss: float, val: float | None) -> str:
        elapsed = time.perf_counter() - started
        rate = chars / max(train_seconds, 1e-9)
        val_text = "" if val is None else f"  val {val:.3f}"
        total = f"/{args.steps}" if args.steps else ""
        return (
            f"step {model.step}{total}  loss {loss:.3f}{val_text}  "
            f"{rate / 1000:.1f}k chars/s  {elapsed:.0f}s"
        )

    def fail(message: str) -> int:
        bar.clear()
        print(f"{PROG}: error: {message}", file=stderr)
        return 1

    prime = sample_prime(run.train_text)
    started = time.perf_counter()
    chars, train_seconds, loss_value, val_loss = 0, 0.0, float("nan"), None
    done = False
    interrupted = False
    try:
        while not done:
            state = None
            # A random start moves the chunk boundaries between epochs; never so far that
            # a text just long enough (checked in _setup) loses its one chunk per stream.
            spare = len(run.train_ids) - 1 - args.batch * args.seq_len
            offset = int(rng.integers(min(args.seq_len, spare + 1)))
            for inputs, targets in tbptt_batches(
                run.train_ids, args.batch, args.seq_len, offset=offset
            ):
                tick = time.perf_counter()
                loss, state = train_step(inputs, targets, state)
                loss_value = float(loss)
                train_seconds += time.perf_counter() - tick
                chars += inputs.size
                if not math.isfinite(loss_value):
                    return fail(
                        f"the loss became {loss_value} at step {model.step}; try a lower --lr"
                    )
                step = model.step
                elapsed = time.perf_counter() - started
                history["step"].append(step)
                history["seconds"].append(round(seconds_before + elapsed, 3))
                history["train_loss"].append(round(loss_value, 6))
                finished = (args.steps is not None and step - start_step >= args.steps) or (
                    elapsed >= args.time_limit
                )
                if step % args.eval_every == 0 or finished:
                    val_loss = evaluate(model, run.val_ids, args.seq_len)
                    if val_loss is not None:
                        history["val_step"].append(step)
                        history["val_loss"].append(round(val_loss, 6))
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
                # The output was closed (`| head`): stop here, saving below.
                finished = finished or stdout.closed or stderr.closed
                if step % args.checkpoint_every == 0 or finished:
                    save()
                if finished:
                    done = True
                    break
    except KeyboardInterrupt:
        interrupted = True
    except _SaveError as error:
        return fail(str(error))
    bar.clear()
    if interrupted:
        try:
            save()
            print(
                f"interrupted at step {model.step}; checkpoint saved to {checkpoint}", file=stderr
            )
        except KeyboardInterrupt:
            print(f"interrupted again; the last complete checkpoint is {checkpoint}", file=stderr)
        except _SaveError as error:
            print(f"{PROG}: error: interrupted; {error}", file=stderr)
            return 130
    _tidy(history)
    try:
        written = write_loss_curve(out, history, entropy)
    except OSError as error:
        return fail(f"cannot write the loss curve to {out}: {error.strerror or error}")
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
    if interrupted:
        return 130
    closed = [s.error for s in (stdout, stderr) if s.closed]
    return 1 if any(not isinstance(e, BrokenPipeError) for e in closed) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main"]
