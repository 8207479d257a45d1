"""The training loop: fit, its callbacks, and the docs' classifier example."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from xlstm.training import (
    SGD,
    Batch,
    Callback,
    CharLSTM,
    EarlyStopping,
    LSTMModel,
    ModelCheckpoint,
    ProgressBar,
    fit,
    load_model,
    majority_symbol_task,
    tbptt_batches,
)


def _task(m=120, seed=0):
    ids, lengths, labels = majority_symbol_task(m, n_classes=3, max_length=8, seed=seed)
    return [Batch(ids[i : i + 20], labels[i : i + 20], lengths=lengths[i : i + 20])
            for i in range(0, m, 20)]  # fmt: skip


def _model(**options):
    return LSTMModel(3, 6, 3, bidirectional=True, head="last", dtype="float64", seed=0,
                     optimizer=SGD(lr=0.1), **options)  # fmt: skip


def test_fit_equals_the_hand_written_loop():
    batches = _task()
    by_hand, fitted = _model(), _model()
    for _ in range(2):
        for batch in batches:
            by_hand.train_step(batch.x, batch.targets, lengths=batch.lengths)
    history = fit(fitted, batches, epochs=2)
    for key, value in by_hand.parameters.items():
        np.testing.assert_array_equal(fitted.parameters[key], value)
    assert [e["steps"] for e in history.epochs] == [6, 6]
    assert fitted.step == 12


def test_carry_state_is_truncated_bptt():
    text = "abcabcabcabcabcabcabcabcabcabcab" * 4
    ids = np.frombuffer(text.encode(), np.uint8).astype(np.int64) - ord("a")
    by_hand = CharLSTM("abc", 5, dtype="float64", seed=1, optimizer=SGD(lr=0.1))
    fitted = CharLSTM("abc", 5, dtype="float64", seed=1, optimizer=SGD(lr=0.1))
    batches = list(tbptt_batches(ids, 4, 6))
    state = None
    for x, y in batches:
        _, state = by_hand.train_step(x, y, state=state)
    fit(fitted, batches, carry_state=True)
    for key, value in by_hand.parameters.items():
        np.testing.assert_array_equal(fitted.parameters[key], value)


def test_early_stopping_stops_and_restores_the_best():
    class Scripted(Callback):
        """Pretend validation losses: best at epoch 2, then worse."""

        def on_epoch_end(self, run, logs):
            logs["val_loss"] = [3.0, 1.0, 2.0, 2.5, 2.7, 2.9][logs["epoch"] - 1]
            self.seen.append(run.model.parameters)

    scripted = Scripted()
    scripted.seen = []
    stopper = EarlyStopping(patience=1)
    model = _model()
    history = fit(model, _task(), epochs=6, callbacks=[scripted, stopper])
    assert len(history.epochs) == 4  # epochs 3 and 4 did not improve: stop after 4
    assert (stopper.best_epoch, stopper.stopped_epoch) == (2, 4)
    for key, value in scripted.seen[1].items():
        np.testing.assert_array_equal(model.parameters[key], value)


def test_checkpoint_and_progress(tmp_path):
    path = tmp_path / "best.npz"
    checkpoint = ModelCheckpoint(path, monitor="loss", best_only=False)
    stream = io.StringIO()
    model = _model()
    fit(model, _task(), epochs=2, validation=_task(40, seed=1),
        callbacks=[checkpoint, ProgressBar(stream)])  # fmt: skip
    assert checkpoint.saved == [1, 2]
    back = load_model(path)
    assert back.extra["fit_epoch"] == 2
    assert back.step == model.step
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.match(r"epoch 2/2  loss \S+  val_loss \S+  val_accuracy", lines[1])


def test_bad_arguments_are_refused_before_any_step():
    model = _model()
    with pytest.raises(TypeError, match="one-shot iterator but `epochs` > 1"):
        fit(model, iter(_task()), epochs=2)
    with pytest.raises(ValueError, match="`epochs` = 0; expected a positive int"):
        fit(model, _task(), epochs=0)
    with pytest.raises(TypeError, match="`callbacks` must hold Callback objects, got builtin"):
        fit(model, _task(), callbacks=[print])
    with pytest.raises(TypeError, match=r"each batch must be an xlstm\.training\.Batch"):
        fit(model, [np.zeros(3)])
    with pytest.raises(ValueError, match="`monitor` = 'acc'"):
        EarlyStopping("acc")
    assert model.step == 0


def test_docs_classifier_example_reaches_its_accuracy():
    page = Path(__file__).resolve().parents[2] / "docs" / "training.md"
    if not page.is_file():
        pytest.skip("docs/training.md is not next to the tests (installed package)")
    blocks = re.findall(r"```python\n(.+?)\n```", page.read_text(encoding="utf-8"), re.DOTALL)
    example = [block for block in blocks if "majority_symbol_task" in block]
    assert len(example) == 1
    namespace: dict = {}
    exec(compile(example[0], str(page), "exec"), namespace)  # asserts accuracy >= 0.95
    assert namespace["history"]["val_accuracy"][-1] >= 0.95
