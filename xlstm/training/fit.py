"""The training loop: :func:`fit` a training model over epochs of batches.

One loop for every model of :mod:`xlstm.training` (any head, stacked, bidirectional,
variable lengths) and for the data-parallel trainer of :mod:`xlstm.dask`: each batch is one
optimiser step (:meth:`LSTMModel.train_step`), each epoch ends with a validation pass and
the callbacks, which can stop the run (early stopping), save the model (checkpoints) or
report progress.

A batch is a :class:`Batch` (or a tuple ``(x, targets)`` / ``(x, targets, mask)`` /
``(x, targets, mask, lengths)``, or a dict with those keys) in the model's layouts: ``x``
``(n_x, m, T)`` floating or ``(m, T)`` integer ids, ``targets`` ``(m, T)`` for the per-step
head and ``(m,)`` for the sequence heads.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TextIO

import numpy as np

from .._backend import to_host


class Batch(NamedTuple):
    """One batch: inputs, targets, optional mask and lengths."""

    x: Any
    targets: Any
    mask: Any = None
    lengths: Any = None


def as_batch(item: Any) -> Batch:
    """A batch in any of the accepted forms as a :class:`Batch`."""
    if isinstance(item, Batch):
        return item
    if isinstance(item, Mapping):
        unknown = set(item) - set(Batch._fields)
        if unknown or not {"x", "targets"} <= set(item):
            msg = (
                "a batch dict needs keys x, targets (and optionally mask, lengths); "
                f"got {sorted(item)}"
            )
            raise ValueError(msg)
        return Batch(**item)
    if isinstance(item, tuple) and 2 <= len(item) <= 4:
        return Batch(*item)
    msg = (
        "each batch must be an xlstm.training.Batch, a tuple (x, targets[, mask[, lengths]]) "
        f"or a dict with those keys; got {type(item).__name__}"
    )
    raise TypeError(msg)


class Run:
    """What callbacks see: the model, where the run is, and ways to stop it.

    Attributes
    ----------
    model
        The model being trained.
    epochs : int or None
        Epochs asked for (``None``: no limit).
    epoch : int
        The current epoch, from 0.
    steps : int
        Optimiser steps taken by this :func:`fit` call so far.
    state : tuple or None
        The final ``(a, c)`` of the latest step: with ``carry_state``, the next batch's
        initial state (what a checkpoint keeps to continue the run exactly).
    stop : bool
        Set by a callback to end the run after the current epoch.
    stop_now : bool
        Set by a callback (in :meth:`Callback.on_batch_end`) to end the run after this
        step: the epoch is cut short there, then logged and validated as usual.
    """

    def __init__(self, model: Any, epochs: int | None) -> None:
        self.model = model
        self.epochs = epochs
        self.epoch = 0
        self.steps = 0
        self.state: Any = None
        self.stop = False
        self.stop_now = False


class Callback:
    """Hooks of :func:`fit`; subclass and override what you need."""

    def on_train_begin(self, run: Run) -> None:
        """Before the first epoch."""

    def on_batch_end(self, run: Run, batch: int, loss: float) -> None:
        """After each optimiser step (``loss`` before the step)."""

    def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None:
        """After each epoch and its validation; ``logs`` has ``loss`` (training, mean over
        the epoch's steps), ``val_loss`` (with validation) and ``epoch``."""

    def on_train_end(self, run: Run) -> None:
        """After the last epoch (also when stopped early)."""


def _check_monitor(monitor: Any) -> str:
    if monitor not in ("loss", "val_loss", "val_accuracy"):
        raise ValueError(f"`monitor` = {monitor!r}; expected 'loss', 'val_loss' or 'val_accuracy'")
    return monitor


def _better(monitor: str, value: float, best: float, min_delta: float) -> bool:
    if monitor == "val_accuracy":
        return value > best + min_delta
    return value < best - min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Parameters
    ----------
    monitor : {"val_loss", "loss", "val_accuracy"}, default "val_loss"
    patience : int, default 2
    min_delta : float, default 0.0
    restore_best : bool, default True
        Put back the parameters of the best epoch when stopping (or at the end).
    """

    def __init__(
        self, monitor: str = "val_loss", *, patience: int = 2, min_delta: float = 0.0,
        restore_best: bool = True,
    ) -> None:  # fmt: skip
        self.monitor = _check_monitor(monitor)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"`patience` = {patience!r}; expected an int >= 0")
        if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
            raise ValueError(f"`min_delta` = {min_delta!r}; expected a number >= 0")
        self.patience, self.min_delta, self.restore_best = patience, float(min_delta), restore_best
        self.best = -math.inf if monitor == "val_accuracy" else math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self._best_parameters = None
        self._waited = 0

    def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which fit did not log")
        value = logs[self.monitor]
        if _better(self.monitor, value, self.best, self.min_delta):
            self.best, self.best_epoch, self._waited = value, logs["epoch"], 0
            if self.restore_best:
                self._best_parameters = run.model.parameters
            return
        self._waited += 1
        if self._waited > self.patience:
            run.stop, self.stopped_epoch = True, logs["epoch"]

    def on_train_end(self, run: Run) -> None:
        if self.restore_best and self._best_parameters is not None:
            run.model._replace_parameters(self._best_parameters)


class ModelCheckpoint(Callback):
    """Save the model (atomically, :meth:`LSTMModel.save`) after epochs.

    Parameters
    ----------
    path : str or path
    monitor : {"val_loss", "loss", "val_accuracy"}, default "val_loss"
    best_only : bool, default True
        Save only when ``monitor`` improved; ``False``: after every epoch.
    """

    def __init__(self, path: Any, *, monitor: str = "val_loss", best_only: bool = True) -> None:
        self.path, self.monitor, self.best_only = path, _check_monitor(monitor), best_only
        self.best = -math.inf if monitor == "val_accuracy" else math.inf
        self.saved: list[int] = []

    def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None:
        if self.best_only:
            if self.monitor not in logs:
                raise ValueError(
                    f"ModelCheckpoint monitors {self.monitor!r}, which fit did not log"
                )
            if not _better(self.monitor, logs[self.monitor], self.best, 0.0):
                return
            self.best = logs[self.monitor]
        run.model.extra["fit_epoch"] = int(logs["epoch"])
        run.model.save(self.path)
        self.saved.append(int(logs["epoch"]))


class ProgressBar(Callback):
    """A progress line per epoch on ``stream`` (default: standard error).

    On a terminal the line is redrawn after every step; elsewhere (a log file, a pipe) only
    the finished epoch is written, so logs stay readable.
    """

    def __init__(self, stream: TextIO | None = None, *, width: int = 24) -> None:
        self.stream, self.width = stream, width
        self._steps_last_epoch: int | None = None
        self._started = 0.0

    def _out(self) -> TextIO:
        return sys.stderr if self.stream is None else self.stream

    def on_train_begin(self, run: Run) -> None:
        self._started = time.perf_counter()

    def on_batch_end(self, run: Run, batch: int, loss: float) -> None:
        out = self._out()
        if not (hasattr(out, "isatty") and out.isatty()):
            return
        total = self._steps_last_epoch
        done = batch + 1
        filled = self.width if not total else min(self.width, self.width * done // total)
        bar = "#" * filled + "." * (self.width - filled)
        of = f"/{total}" if total else ""
        epochs = f"/{run.epochs}" if run.epochs else ""
        out.write(f"\repoch {run.epoch + 1}{epochs} [{bar}] {done}{of} loss {loss:.4f}")
        out.flush()

    def on_epoch_end(self, run: Run, logs: dict[str, float]) -> None:
        self._steps_last_epoch = int(logs["steps"])
        epochs = f"/{run.epochs}" if run.epochs else ""
        parts = [f"epoch {logs['epoch']}{epochs}", f"loss {logs['loss']:.4f}"]
        parts += [f"{k} {logs[k]:.4f}" for k in ("val_loss", "val_accuracy") if k in logs]
        parts.append(f"{time.perf_counter() - self._started:.1f}s")
        out = self._out()
        prefix = "\r" if hasattr(out, "isatty") and out.isatty() else ""
        out.write(prefix + "  ".join(parts) + "\n")
        out.flush()


@dataclass
class History:
    """Per-epoch logs of a :func:`fit` run."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        """All epochs' values of one log entry, e.g. ``history["val_loss"]``."""
        return [logs[key] for logs in self.epochs if key in logs]


def _epoch_batches(batches: Any, epoch: int) -> Iterable[Any]:
    return batches(epoch) if callable(batches) else batches


def _host_float(value: Any) -> float:
    return float(to_host(value)) if not isinstance(value, (int, float)) else float(value)


def evaluate(model: Any, batches: Iterable[Any]) -> dict[str, float]:
    """Mean loss (weighted by each batch's number of targets) and accuracy of ``model``.

    Returns ``{"val_loss": ..., "val_accuracy": ...}``; positions a mask or the lengths
    switch off are left out of both.
    """
    total_loss = total_weight = correct = 0.0
    for item in batches:
        batch = as_batch(item)
        options = {"mask": batch.mask}
        if batch.lengths is not None:
            options["lengths"] = batch.lengths
        loss, _ = model.loss(batch.x, batch.targets, **options)
        y, _ = model.forward(
            batch.x, **({"lengths": batch.lengths} if batch.lengths is not None else {})
        )
        predicted = np.argmax(to_host(y), axis=0)  # (m, T) or (m,)
        targets = np.asarray(to_host(batch.targets))
        weights = np.ones(targets.shape)
        if batch.lengths is not None and targets.ndim == 2:
            weights *= np.arange(targets.shape[1])[None, :] < np.asarray(batch.lengths)[:, None]
        if batch.mask is not None:
            weights *= np.asarray(to_host(batch.mask), dtype=np.float64)
        weight = float(weights.sum())
        total_loss += _host_float(loss) * weight
        correct += float(((predicted == targets) * weights).sum())
        total_weight += weight
    if total_weight == 0:
        raise ValueError("`validation` has no batch (or every position is masked out)")
    return {"val_loss": total_loss / total_weight, "val_accuracy": correct / total_weight}


def _check_fit_options(epochs, batches, carry_state, callbacks, max_steps) -> list[Callback]:
    if epochs is not None and (
        isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1
    ):
        raise ValueError(f"`epochs` = {epochs!r}; expected a positive int or None")
    if max_steps is not None and (
        isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1
    ):
        raise ValueError(f"`max_steps` = {max_steps!r}; expected a positive int or None")
    if not isinstance(carry_state, bool):
        raise TypeError(f"`carry_state` must be a bool, got {type(carry_state).__name__}")
    if (epochs is None or epochs > 1) and not callable(batches) and iter(batches) is batches:
        msg = (
            "`batches` is a one-shot iterator but `epochs` > 1: pass a list, or a function "
            "that returns each epoch's batches"
        )
        raise TypeError(msg)
    callbacks = list(callbacks)
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(
                f"`callbacks` must hold Callback objects, got {type(callback).__name__}"
            )
    return callbacks


def _run_epoch(step, run: Run, items: Iterable[Any], callbacks, carry_state, max_steps) -> list:
    """The steps of one epoch; returns their losses (host floats)."""
    losses: list[float] = []
    for index, item in enumerate(items):
        batch = as_batch(item)
        options = {"mask": batch.mask, "state": run.state if carry_state else None}
        if batch.lengths is not None:
            options["lengths"] = batch.lengths
        loss, run.state = step(batch.x, batch.targets, **options)
        run.steps += 1
        losses.append(_host_float(loss))
        for callback in callbacks:
            callback.on_batch_end(run, index, losses[-1])
        if run.stop_now or (max_steps is not None and run.steps >= max_steps):
            break
    return losses


def fit(
    model: Any,
    batches: Iterable[Any] | Callable[[int], Iterable[Any]],
    *,
    epochs: int | None = 1,
    validation: Iterable[Any] | Callable[[int], Iterable[Any]] | None = None,
    callbacks: Iterable[Callback] = (),
    carry_state: bool = False,
    trainer: Any = None,
    max_steps: int | None = None,
    initial_state: Any = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs of ``batches``.

    Parameters
    ----------
    model : LSTMModel
        Any training model of :mod:`xlstm.training` (its optimiser takes the steps).
    batches : iterable of batches, or a function ``epoch -> iterable``
        A list (or anything iterable again) is reused every epoch; a function is called at
        each epoch (to reshuffle).  A one-shot iterator cannot serve more than one epoch.
    epochs : int or None, default 1
        ``None``: no limit; the run ends at ``max_steps`` or when a callback stops it.
    validation : iterable of batches, or a function ``epoch -> iterable``, optional
        Evaluated after each epoch (:func:`evaluate`): ``val_loss`` and ``val_accuracy``.
    callbacks : iterable of Callback
        For example :class:`EarlyStopping`, :class:`ModelCheckpoint`, :class:`ProgressBar`.
    carry_state : bool, default False
        Truncated BPTT: each batch starts from the previous batch's final state (the rows
        must continue the same streams, see :func:`tbptt_batches`); reset at each epoch.
    trainer : object, optional
        Takes the steps instead of ``model.train_step``: a
        :class:`xlstm.dask.DataParallelTrainer` of ``model`` (its ``step``).
    max_steps : int, optional
        Stop after this many optimiser steps (the last epoch is cut short there, then
        logged and validated as usual).
    initial_state : tuple, optional
        With ``carry_state``: the state of the first batch of the first epoch (the
        :attr:`Run.state` a stopped run saved, to continue it exactly); later epochs start
        from zeros.

    Returns
    -------
    History
        ``history.epochs`` holds one dict per epoch: ``epoch``, ``loss``, ``steps``,
        ``seconds`` and, with validation, ``val_loss`` and ``val_accuracy``.
    """
    callbacks = _check_fit_options(epochs, batches, carry_state, callbacks, max_steps)
    if initial_state is not None and not carry_state:
        raise ValueError("`initial_state` is the carried state of truncated BPTT: it needs "
                         "carry_state=True")  # fmt: skip
    step = model.train_step if trainer is None else trainer.step
    run, history = Run(model, None if epochs is None else int(epochs)), History()
    for callback in callbacks:
        callback.on_train_begin(run)
    epoch = 0
    while run.epochs is None or epoch < run.epochs:
        run.epoch, started = epoch, time.perf_counter()
        run.state = initial_state if epoch == 0 else None
        items = _epoch_batches(batches, epoch)
        losses = _run_epoch(step, run, items, callbacks, carry_state, max_steps)
        if not losses:
            raise ValueError(f"`batches` gave no batch in epoch {epoch + 1}")
        logs = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "steps": len(losses)}
        if validation is not None:
            logs.update(evaluate(model, _epoch_batches(validation, epoch)))
        logs["seconds"] = time.perf_counter() - started
        history.epochs.append(logs)
        for callback in callbacks:
            callback.on_epoch_end(run, logs)
        if run.stop or run.stop_now or (max_steps is not None and run.steps >= max_steps):
            break
        epoch += 1
    for callback in callbacks:
        callback.on_train_end(run)
    return history


__all__ = [
    "Batch",
    "Callback",
    "EarlyStopping",
    "History",
    "ModelCheckpoint",
    "ProgressBar",
    "Run",
    "as_batch",
    "evaluate",
    "fit",
]
