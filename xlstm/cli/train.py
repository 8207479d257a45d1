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
import hashlib
import json
import math
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .._backend import BACKENDS, get_namespace
from ..training.data import (
    default_corpus,
    n_tbptt_chunks,
    split_text,
    tbptt_batches,
    unigram_entropy,
)
from ..training.fit import Callback, Run, fit
from ..training.model import CharLSTM
from ..training.optim import SGD, Adam, AdamW
from ._common import (
    EXIT_INTERRUPTED,
    HelpFormatter,
    Parser,
    Progress,
    UsageError,
    fraction,
    non_negative_int,
    number,
    positive_float,
    positive_int,
    run_command,
)

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
        formatter_class=HelpFormatter,
    )
    _data_options(parser.add_argument_group("data"))
    _model_options(parser.add_argument_group("model"))
    _training_options(parser.add_argument_group("training"))
    _report_options(parser.add_argument_group("reporting and checkpoints"))
    _dask_options(parser.add_argument_group("data-parallel training on dask (the `dask` extra)"))
    return parser


def _default(name: str) -> str:
    resumed = "with --resume: the checkpoint's, and a different value is an error"
    return f"(default: {DEFAULTS[name]}; {resumed})"


def _data_options(data) -> None:
    data.add_argument(
        "--text",
        type=_path,
        help=f"UTF-8 text, at most {MAX_TEXT_BYTES // 2**20} MiB (default: the bundled corpus)",
    )
    data.add_argument(
        "--val-fraction", type=_FRACTION, default=0.1, help="held-out tail of the text"
    )


def _model_options(model) -> None:
    model.add_argument(
        "--backend", default="numpy", help="numpy, cupy, torch, jax or array_api_strict"
    )
    model.add_argument("--device", default=None, help="device in the backend's terms, e.g. cuda:0")
    model.add_argument("--dtype", choices=("float32", "float64"), help=_default("dtype"))
    model.add_argument("--hidden", type=positive_int, help=f"hidden units n_a {_default('hidden')}")
    model.add_argument(
        "--layers", type=positive_int, help=f"stacked LSTM layers {_default('layers')}"
    )
    model.add_argument(
        "--dropout", type=_FRACTION, help=f"dropout between layers {_default('dropout')}"
    )
    model.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of initialisation and batching"
    )


def _training_options(train) -> None:
    train.add_argument("--batch", type=positive_int, default=32, help="streams per batch m")
    train.add_argument("--seq-len", type=positive_int, default=64, help="truncated BPTT length T")
    train.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), help=_default("optimizer"))
    train.add_argument("--lr", type=positive_float, help=f"learning rate {_default('lr')}")
    train.add_argument("--clip", type=positive_float, help=f"global-norm clip {_default('clip')}")
    train.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="stop after N steps of this run (with --resume: N more than the checkpoint's; "
        "the progress shows the model's step out of the step the run stops at)",
    )
    train.add_argument(
        "--time-limit", type=positive_float, default=170.0, help="stop after this many seconds"
    )


def _report_options(report) -> None:
    report.add_argument("--eval-every", type=positive_int, default=100, help="steps")
    report.add_argument("--sample-every", type=positive_int, default=500, help="steps")
    report.add_argument(
        "--sample-length", type=_sample_length, default=240, help="characters per sample"
    )
    report.add_argument(
        "--temperature", type=positive_float, default=0.5, help="of the samples' softmax"
    )
    report.add_argument("--checkpoint-every", type=positive_int, default=500, help="steps")
    report.add_argument("--out", type=_path, default=Path("xlstm-run"), help="output directory")
    report.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        type=_path,
        metavar="CHECKPOINT",
        help="continue from a checkpoint, exactly where it stopped (default: OUT/checkpoint.npz)",
    )
    report.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")


def _dask_options(scale) -> None:
    where = scale.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="address of a running dask scheduler")
    where.add_argument(
        "--workers", type=positive_int, default=None, help="start N local worker processes"
    )
    scale.add_argument(
        "--batch-chunk", type=positive_int, default=None,
        help="streams per piece of a batch (default: the batch cut evenly over the workers)",
    )  # fmt: skip


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


class _Restored:
    """What a checkpoint's ``extra["progress"]`` gives back (a fresh start: empty)."""

    def __init__(self) -> None:
        self.history = _fresh_history()
        self.rng: Any = None
        self.dropout_rng: Any = None
        self.seconds = 0.0
        self.position: dict[str, Any] | None = None


_POSITION_KEYS = ("step", "streams", "offset", "chunk")


def _restore_progress(model: CharLSTM, where: str) -> _Restored:
    """The checkpoint's ``extra["progress"]``: history, random states, time, position.

    Absent: a fresh start.  Present but not this command's record: a usage error (resuming
    would otherwise overwrite someone's data, or fail mid-run).
    """
    restored = _Restored()
    progress = model.extra.get("progress")
    if progress is None:
        return restored

    def foreign(reason: str) -> UsageError:
        return UsageError(
            f"--resume {where}: its extra['progress'] is not a record of {PROG} ({reason})"
        )

    if not isinstance(progress, dict):
        raise foreign(f"a {type(progress).__name__}, not a dict")
    restored.history = _checked_history(progress.get("history", _fresh_history()), foreign)
    seconds = progress.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise foreign(f"seconds = {seconds!r}")
    restored.seconds = float(seconds)
    for name in ("rng", "dropout_rng"):
        state = progress.get(name)
        if state is not None:
            try:
                np.random.default_rng().bit_generator.state = state
            except (TypeError, ValueError, KeyError, OverflowError) as error:
                raise foreign(f"{name}: {error}") from None
        setattr(restored, name, state)
    position = progress.get("position")
    if position is not None:
        if not (
            isinstance(position, dict)
            and sorted(position) == sorted(_POSITION_KEYS)
            and all(
                isinstance(position[k], int)
                and not isinstance(position[k], bool)
                and position[k] >= 0
                for k in ("step", "offset", "chunk")
            )
            and isinstance(position["streams"], str)
        ):
            raise foreign(f"position must have the keys {list(_POSITION_KEYS)}, counts >= 0")
        if position["step"] != model.step:
            raise foreign(f"position of step {position['step']}, the model is at step {model.step}")
        restored.position = position
    return restored


def _checked_history(history: Any, foreign) -> dict[str, list]:
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
    return history


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
    _check_lengths(args, text, train_text)
    if resume_path is None:
        model, restored = _new_model(args, text), _Restored()
    else:
        model, restored = _resumed_model(args, text, resume_path)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"--out {args.out}: cannot create it ({error.strerror or error})"
        ) from None
    train_ids = model.encode(train_text)
    streams = _streams_identity(train_ids, args)
    resume_at, initial_state, note = _resume_point(
        args, train_ids, streams, model, restored, str(resume_path)
    )
    return _Run(
        model=model,
        text=text,
        train_text=train_text,
        train_ids=train_ids,
        val_ids=model.encode(val_text),
        restored=restored,
        resumed_from=resume_path,
        streams=streams,
        resume_at=resume_at,
        initial_state=initial_state,
        note=note,
    )


def _streams_identity(ids: np.ndarray, args: argparse.Namespace) -> str:
    """What a saved stream position is valid for: these streams of this text."""
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(ids))).hexdigest()[:16]
    return f"{args.batch}x{args.seq_len} over {len(ids)} ids, sha256 {digest}"


def _resume_point(args, ids, streams: str, model: CharLSTM, restored: _Restored, where: str):
    """``(resume_at, initial_state, note)``: where the first pass starts and the state it
    carries in.  A recorded position of these streams: exactly where the checkpoint
    stopped; none, or one of other streams: a new pass (with a note)."""
    position = restored.position
    if position is None:
        return None, None, ""
    if position["streams"] != streams:
        note = (
            "note: the text, --batch or --seq-len differ from the checkpoint's run: "
            "training continues with a new pass over the text (not an exact continuation)"
        )
        return None, None, note
    offset, chunk = position["offset"], position["chunk"]
    spare = len(ids) - 1 - args.batch * args.seq_len
    chunks = n_tbptt_chunks(len(ids) - offset, args.batch, args.seq_len)
    state = model.carried_state
    m = None if state is None else int(state[0].shape[-1])
    if (
        offset > min(args.seq_len - 1, spare)
        or chunk > chunks
        or (chunk < chunks and m != args.batch)
    ):
        msg = (
            f"--resume {where}: its position (offset {offset}, chunk {chunk}, carried state of "
            f"{m} streams) does not fit the streams it names"
        )
        raise UsageError(msg)
    if chunk == chunks:
        return None, None, ""  # the checkpoint's pass was complete: a new one begins
    return (offset, chunk), state, ""


def _check_lengths(args: argparse.Namespace, text: str, train_text: str) -> None:
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


def _new_model(args: argparse.Namespace, text: str) -> CharLSTM:
    options = {k: DEFAULTS[k] if getattr(args, k) is None else getattr(args, k) for k in DEFAULTS}
    vocab = "".join(sorted(set(text)))
    optimizer = _optimizer(options["optimizer"], options["lr"])
    _check_memory(
        len(vocab), options["hidden"], options["layers"], args, options["dtype"],
        len(optimizer.slots), len(text),
    )  # fmt: skip
    try:
        return CharLSTM(
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


def _resumed_model(args: argparse.Namespace, text: str, path: Path) -> tuple[CharLSTM, _Restored]:
    try:
        model = CharLSTM.load(path, backend=args.backend, device=args.device)
    except (ValueError, TypeError, RuntimeError) as error:  # CheckpointError included
        raise UsageError(f"--resume {path}: {error}") from None
    except OSError as error:
        raise UsageError(f"--resume {path}: cannot read it ({error.strerror or error})") from None
    _check_resume_options(args, model, str(path))
    unknown = sorted(set(text) - set(model.vocab))
    if unknown:
        msg = f"--resume {path}: the text has characters the model does not know: {unknown[:5]!r}"
        raise UsageError(msg)
    _check_memory(
        model.n_x, model.n_a, model.num_layers, args, model.dtype,
        len(model.optimizer.slots), len(text),
    )  # fmt: skip
    return model, _restore_progress(model, str(path))


def main(
    argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Entry point of ``python -m xlstm train``; returns the exit status."""
    out = _Guarded(_stream(sys.stdout if stdout is None else stdout))
    err = _Guarded(_stream(sys.stderr if stderr is None else stderr))

    def body() -> int:
        args = build_parser().parse_args(argv)
        run = _setup(args)
        with contextlib.ExitStack() as stack:
            trainer = _trainer(args, run.model, stack)
            return _train(args, run, out, err, trainer)

    return run_command(PROG, body, stderr=err)


def _stream(stream: TextIO | None) -> TextIO:
    # With a closed file descriptor (``2>&-``) Python's sys.stderr is None.
    return open(os.devnull, "w", encoding="utf-8") if stream is None else stream


def _trainer(args: argparse.Namespace, model: CharLSTM, stack: contextlib.ExitStack):
    """``None`` (steps in this process) or the data-parallel steps of ``--scheduler`` /
    ``--workers``; progress, samples and checkpoints are the same either way."""
    if args.scheduler is None and args.workers is None:
        return None
    try:
        from ..dask import DataParallelTrainer
        from .cluster import connect
    except ImportError as error:  # the `dask` extra is missing: one line, not a traceback
        raise UsageError(f"--scheduler/--workers: {error}") from None

    client = connect(args.scheduler, args.workers, stack)

    # Batches stay in memory: each step cuts them into pieces for the gradient servers.
    pieces = None if args.batch_chunk is None else -(-args.batch // args.batch_chunk)
    return DataParallelTrainer(model, client=client, pieces=pieces)


# ---------------------------------------------------------------------- the training run


class _Diverged(Exception):
    """The loss became NaN or infinite (exit status 1)."""


class _Streams:
    """The training text as truncated-BPTT passes (:func:`fit`'s ``batches``), knowing
    where it is: a pass starts at a random offset (so chunk boundaries move), and a resumed
    run finishes the pass its checkpoint stopped in, chunk for chunk."""

    def __init__(self, ids: np.ndarray, args: argparse.Namespace, rng, identity: str) -> None:
        self.ids, self.batch, self.seq_len, self.rng = ids, args.batch, args.seq_len, rng
        self.identity = identity
        self.offset, self.chunk, self.begun = 0, 0, False
        self.resume_at: tuple[int, int] | None = None  # (offset, chunk) of the first pass

    def position(self) -> tuple[int, int] | None:
        """``(offset, chunks read)`` of the current pass; ``None`` before the first."""
        if self.resume_at is not None:
            return self.resume_at
        return (self.offset, self.chunk) if self.begun else None

    def __call__(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.resume_at is not None:
            offset, start = self.resume_at
            self.resume_at = None
        else:
            # Never so far that a text just long enough (checked in _setup) loses its one
            # chunk per stream.
            spare = len(self.ids) - 1 - self.batch * self.seq_len
            offset, start = int(self.rng.integers(min(self.seq_len, spare + 1))), 0
        self.offset, self.chunk, self.begun = offset, start, True
        return self._chunks(
            tbptt_batches(self.ids, self.batch, self.seq_len, offset=offset, start=start)
        )

    def _chunks(self, chunks):
        for chunk in chunks:
            self.chunk += 1  # counted as read once handed out
            yield chunk


class _Snapshot:
    """Everything an exact continuation needs, as of the end of one step."""

    def __init__(self, model: CharLSTM, streams: _Streams, rng, state) -> None:
        self.step = model.step
        where = streams.position()
        self.position = None
        if where is not None:
            self.position = {
                "step": model.step, "streams": streams.identity,
                "offset": where[0], "chunk": where[1],
            }  # fmt: skip
        self.rng = rng.bit_generator.state
        self.dropout_rng = model.lstm._dropout_rng.bit_generator.state
        self.state = state


class _Session:
    """What the callbacks of one run share: the options, the model, the output, the clock
    and the record."""

    def __init__(self, args, run: _Run, stdout: _Guarded, stderr: _Guarded) -> None:
        self.args, self.model, self.stdout, self.stderr = args, run.model, stdout, stderr
        self.checkpoint = args.out / CHECKPOINT_NAME
        self.history, self.seconds_before = run.restored.history, run.restored.seconds
        self.start_step = run.model.step
        self.end_step = None if args.steps is None else self.start_step + args.steps
        self.bar = Progress(stderr, bar=not args.no_progress and stderr.isatty())
        self.rng = np.random.default_rng(args.seed)
        if run.restored.rng is not None:
            self.rng.bit_generator.state = run.restored.rng
        self.started = self.tick = time.perf_counter()
        self.chars, self.train_seconds = 0, 0.0
        self.loss: float | None = None
        self.val_loss: float | None = None
        self.finished = False
        self.snapshot: _Snapshot | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def fraction(self) -> float:
        """How far the run is (time or steps, whichever is further)."""
        fraction = self.elapsed() / self.args.time_limit
        if self.args.steps:
            fraction = max(fraction, (self.model.step - self.start_step) / self.args.steps)
        return fraction

    def status(self) -> str:
        rate = self.chars / max(self.train_seconds, 1e-9)
        val = "" if self.val_loss is None else f"  val {self.val_loss:.3f}"
        of = "" if self.end_step is None else f"/{self.end_step}"
        return (
            f"step {self.model.step}{of}  loss {self.loss:.3f}{val}  "
            f"{rate / 1000:.1f}k chars/s  {self.elapsed():.0f}s"
        )

    def save(self) -> None:
        """Write the checkpoint as of the last complete step (:class:`_Snapshot`)."""
        _tidy(self.history)
        snapshot = self.snapshot
        exact = snapshot is not None and snapshot.step == self.model.step
        self.model.extra["progress"] = {
            "history": self.history,
            "rng": snapshot.rng if exact else self.rng.bit_generator.state,
            "dropout_rng": snapshot.dropout_rng if exact else None,
            "position": snapshot.position if exact else None,
            "seconds": self.seconds_before + self.elapsed(),
            "args": {k: str(v) for k, v in vars(self.args).items()},
        }
        try:
            self.model.carried_state = snapshot.state if exact else None
            self.model.save(self.checkpoint)
        except (OSError, ValueError, TypeError) as error:  # disk full, read-only, NaN weights
            raise _SaveError(f"cannot save {self.checkpoint}: {error}") from None


class _Record(Callback):
    """Per step: time, the loss (a NaN ends the run), the history, whether the run is done,
    and the snapshot a checkpoint saves."""

    def __init__(self, session: _Session, streams: _Streams, initial_state: Any) -> None:
        self.session, self.streams, self.initial_state = session, streams, initial_state

    def on_train_begin(self, run: Run) -> None:
        s = self.session
        s.snapshot = _Snapshot(s.model, self.streams, s.rng, self.initial_state)
        s.tick = time.perf_counter()

    def on_batch_end(self, run: Run, batch: int, loss: float) -> None:
        s, step = self.session, self.session.model.step
        s.train_seconds += time.perf_counter() - s.tick
        s.chars += s.args.batch * s.args.seq_len
        s.loss = loss
        if not math.isfinite(loss):
            raise _Diverged(f"the loss became {loss} at step {step}; try a lower --lr")
        s.snapshot = _Snapshot(s.model, self.streams, s.rng, run.state)
        s.history["step"].append(step)
        s.history["seconds"].append(round(s.seconds_before + s.elapsed(), 3))
        s.history["train_loss"].append(round(loss, 6))
        s.finished = (s.end_step is not None and step >= s.end_step) or (
            s.elapsed() >= s.args.time_limit
        )


class _Validate(Callback):
    """Every ``--eval-every`` steps and at the end: the loss on the held-out text."""

    def __init__(self, session: _Session, val_ids: np.ndarray) -> None:
        self.session, self.val_ids = session, val_ids

    def on_batch_end(self, run: Run, batch: int, loss: float) -> None:
        s, step = self.session, self.session.model.step
        if step % s.args.eval_every and not s.finished:
            s.bar.update(s.fraction(), s.status())
            return
        s.val_loss = evaluate(s.model, self.val_ids, s.args.seq_len)
        if s.val_loss is not None:
            s.history["val_step"].append(step)
            s.history["val_loss"].append(round(s.val_loss, 6))
        s.bar.update(s.fraction(), s.status(), force=True)


class _Sample(Callback):
    """Every ``--sample-every`` steps and at the end: generated text on standard output.

    Each sample's random numbers come from ``(--seed, step)``, not from the training's
    generator: a sample changes nothing in the run, so a resumed run stays exact."""

    def __init__(self, session: _Session, prime: str) -> None:
        self.session, self.prime = session, prime

    def on_batch_end(self, run: Run, batch: int, loss: float) -> None:
        s, step = self.session, self.session.model.step
        if not s.args.sample_length or (step % s.args.sample_every and not s.finished):
            return
        s.bar.clear()
        sample = s.model.sample(
            s.args.sample_length, prime=self.prime, temperature=s.args.temperature,
            seed=[s.args.seed, step],
        )[len(self.prime) :]  # fmt: skip
        print(f"--- sample at step {step} ---\n{sample}\n---", file=s.stdout, flush=True)


class _Checkpoint(Callback):
    """Every ``--checkpoint-every`` steps and at the end: save; then stop if the run is
    done or its output was closed (``| head``)."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def on_batch_end(self, run: Run, batch: int, loss: float) -> None:
        s = self.session
        s.finished = s.finished or s.stdout.closed or s.stderr.closed
        if s.model.step % s.args.checkpoint_every == 0 or s.finished:
            s.save()
        run.stop_now = s.finished
        s.tick = time.perf_counter()


def _train(args, run: _Run, stdout: _Guarded, stderr: _Guarded, trainer) -> int:
    """Train with :func:`xlstm.training.fit` until ``--steps``, ``--time-limit``, a closed
    output or Ctrl-C; save, write the loss curve and the summary line."""
    session = _Session(args, run, stdout, stderr)
    model, entropy = run.model, unigram_entropy(run.text)
    if run.resumed_from is not None:
        more = (
            "" if args.steps is None else f"; {args.steps} more steps, to step {session.end_step}"
        )
        print(f"resumed {model} from {run.resumed_from}{more}", file=stderr)
    print(
        f"training {model} on {len(run.text)} characters ({len(model.vocab)} distinct); "
        f"unigram entropy {entropy:.3f} nats/char; target {0.75 * entropy:.3f}",
        file=stderr,
    )
    streams = _Streams(run.train_ids, args, session.rng, run.streams)
    streams.resume_at, state = run.resume_at, run.initial_state
    if run.note:
        print(run.note, file=stderr)
    if run.restored.dropout_rng is not None:
        model.lstm._dropout_rng.bit_generator.state = run.restored.dropout_rng
    callbacks = [
        _Record(session, streams, state),
        _Validate(session, run.val_ids),
        _Sample(session, sample_prime(run.train_text)),
        _Checkpoint(session),
    ]
    interrupted = False
    try:
        fit(model, streams, epochs=None, callbacks=callbacks, carry_state=True,
            trainer=trainer, initial_state=state)  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True
    except (_Diverged, _SaveError) as error:
        session.bar.clear()
        print(f"{PROG}: error: {error}", file=stderr)
        return 1
    session.bar.clear()
    if interrupted and not _save_interrupted(session):
        return EXIT_INTERRUPTED
    return _finish(session, run, entropy, interrupted)


def _save_interrupted(session: _Session) -> bool:
    """Save after Ctrl-C; ``False`` when that failed (reported)."""
    try:
        session.save()
    except KeyboardInterrupt:
        print(
            f"interrupted again; the last complete checkpoint is {session.checkpoint}",
            file=session.stderr,
        )
    except _SaveError as error:
        print(f"{PROG}: error: interrupted; {error}", file=session.stderr)
        return False
    else:
        print(
            f"interrupted at step {session.model.step}; checkpoint saved to {session.checkpoint}",
            file=session.stderr,
        )
    return True


def _rounded(value: float | None, digits: int) -> float | None:
    """``value`` rounded, or ``None`` (JSON ``null``) for no value or a non-finite one."""
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _finish(session: _Session, run: _Run, entropy: float, interrupted: bool) -> int:
    """The loss curve and the summary line; the exit status."""
    _tidy(session.history)
    out, stderr = session.args.out, session.stderr
    try:
        written = write_loss_curve(out, session.history, entropy)
    except OSError as error:
        print(
            f"{PROG}: error: cannot write the loss curve to {out}: {error.strerror or error}",
            file=stderr,
        )
        return 1
    val = session.val_loss
    summary = {
        "steps": session.model.step - session.start_step,
        "step": session.model.step,
        "seconds": round(session.elapsed(), 1),
        "chars_per_second": round(session.chars / max(session.train_seconds, 1e-9)),
        "train_loss": _rounded(session.loss, 4),
        "val_loss": _rounded(val, 4),
        "unigram_entropy": round(entropy, 4),
        "val_below_unigram": None if val is None else _rounded(1 - val / entropy, 4),
        "checkpoint": str(session.checkpoint),
        "curves": [str(p) for p in written],
    }
    print("summary " + json.dumps(summary, allow_nan=False), file=stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    closed = [s.error for s in (session.stdout, stderr) if s.closed]
    return 1 if any(not isinstance(e, BrokenPipeError) for e in closed) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main"]
