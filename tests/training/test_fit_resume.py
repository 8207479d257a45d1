"""What exact continuation needs from the library: ``fit(max_steps=, initial_state=)`` and a
callback's ``stop_now``, ``tbptt_batches(start=)``, and checkpoints that keep the carried
state (``LSTMModel.carried_state``, members ``state/a``, ``state/c``) and check it."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from xlstm.checkpoint import CheckpointError
from xlstm.training import SGD, Callback, CharLSTM, fit, load_model, tbptt_batches

TEXT = "abcab cabca bcabc abcab cabca bcabc " * 6


def _ids():
    return np.asarray([" abc".index(ch) for ch in TEXT], dtype=np.int64)


def _model(layers=1, dropout=0.0):
    return CharLSTM(" abc", 5, num_layers=layers, dropout=dropout, dtype="float64", seed=2,
                    optimizer=SGD(lr=0.1))  # fmt: skip


def test_tbptt_start_is_the_rest_of_the_pass():
    whole = list(tbptt_batches(_ids(), 3, 5, offset=2))
    for start in (0, 4, len(whole)):
        rest = list(tbptt_batches(_ids(), 3, 5, offset=2, start=start))
        assert len(rest) == len(whole) - start
        for (x, y), (x_all, y_all) in zip(rest, whole[start:], strict=True):
            np.testing.assert_array_equal(x, x_all)
            np.testing.assert_array_equal(y, y_all)
    with pytest.raises(ValueError, match=f"`start` = {len(whole) + 1}; this pass has only"):
        tbptt_batches(_ids(), 3, 5, offset=2, start=len(whole) + 1)
    with pytest.raises(ValueError, match="`start` = -1; expected an int >= 0"):
        tbptt_batches(_ids(), 3, 5, start=-1)


class _KeepState(Callback):
    """Keeps the state ``fit`` carried out of each step (what a checkpoint saves)."""

    def __init__(self):
        self.steps, self.state = [], None

    def on_batch_end(self, run, batch, loss):
        self.steps.append(run.steps)
        self.state = run.state


@pytest.mark.parametrize("layers", [1, 2])
def test_fit_stopped_and_continued_is_the_whole_run(tmp_path, layers):
    """7 steps straight == 3 steps (``max_steps``), a checkpoint with the carried state and
    the dropout generator's state, then the rest from there: bit for bit."""
    batches = list(tbptt_batches(_ids(), 3, 5))
    straight = _model(layers, 0.25 * (layers - 1))
    fit(straight, batches[:7], carry_state=True)

    first, keep = _model(layers, 0.25 * (layers - 1)), _KeepState()
    fit(first, batches, carry_state=True, max_steps=3, callbacks=[keep])
    assert first.step == 3
    assert keep.steps == [1, 2, 3]
    first.carried_state = keep.state
    second = load_model(first.save(tmp_path / "model.npz"))
    second.lstm._dropout_rng.bit_generator.state = first.lstm._dropout_rng.bit_generator.state
    fit(second, batches[3:7], carry_state=True, initial_state=second.carried_state)
    for key, value in straight.parameters.items():
        np.testing.assert_array_equal(second.parameters[key], value, err_msg=key)


def test_run_state_and_stop_now():
    batches = list(tbptt_batches(_ids(), 3, 5))

    class StopAfterTwo(Callback):
        def on_batch_end(self, run, batch, loss):
            run.stop_now = run.steps == 2

    model, keep = _model(), _KeepState()
    history = fit(model, batches, epochs=None, carry_state=True,
                  callbacks=[keep, StopAfterTwo()])  # fmt: skip
    assert model.step == 2
    assert [e["steps"] for e in history.epochs] == [2]
    by_hand, state = _model(), None
    for x, y in batches[:2]:
        _, state = by_hand.train_step(x, y, state=state)
    for mine, theirs in zip(state, keep.state, strict=True):
        np.testing.assert_array_equal(theirs, mine)


def test_new_fit_options_are_checked():
    model = _model()
    batches = list(tbptt_batches(_ids(), 3, 5))
    with pytest.raises(ValueError, match="`max_steps` = 0; expected a positive int or None"):
        fit(model, batches, max_steps=0)
    with pytest.raises(ValueError, match=r"`initial_state` .* needs carry_state=True"):
        fit(model, batches, initial_state=(np.zeros((5, 3)), np.zeros((5, 3))))
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit(model, iter(batches), epochs=None, max_steps=3)
    assert model.step == 0


def _saved_with_state(tmp_path, layers=2):
    model = _model(layers)
    x, y = next(iter(tbptt_batches(_ids(), 3, 5)))
    _, model.carried_state = model.train_step(x, y)
    return model, model.save(tmp_path / "m.npz")


def _rewrite(path, target, change):
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    change(entries)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


def _npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("layers", [1, 2])
def test_carried_state_round_trips(tmp_path, layers):
    model, path = _saved_with_state(tmp_path, layers)
    back = load_model(path)
    for mine, theirs in zip(model.carried_state, back.carried_state, strict=True):
        assert theirs.shape == mine.shape  # one layer: the seed's (n_a, m)
        np.testing.assert_array_equal(theirs, mine)
    assert load_model(_model().save(tmp_path / "none.npz")).carried_state is None


def test_bad_carried_states_are_refused(tmp_path):
    _, path = _saved_with_state(tmp_path)

    def drop_c(entries):
        del entries["state/c.npy"]

    def wrong_rows(entries):
        entries["state/a.npy"] = entries["state/c.npy"] = _npy(np.zeros((3, 5, 3)))

    def differ(entries):
        entries["state/c.npy"] = _npy(np.zeros((2, 5, 4)))

    def nan(entries):
        entries["state/a.npy"] = _npy(np.full((2, 5, 3), np.nan))

    cases = {
        "needs both `state/a` and `state/c`": drop_c,
        r"`state/a` has shape \(3, 5, 3\); expected \(2, 5, m\)": wrong_rows,
        "`state/a` and `state/c` differ in shape": differ,
        "`state/a` holds NaN or infinity": nan,
    }
    for index, (match, change) in enumerate(cases.items()):
        bad = _rewrite(path, tmp_path / f"bad{index}.npz", change)
        with pytest.raises(CheckpointError, match=match):
            load_model(bad)


def test_save_refuses_a_state_of_another_model(tmp_path):
    model = _model(2)
    model.carried_state = (np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"expected \(2, 5, 3\)"):
        model.save(tmp_path / "m.npz")
    model.carried_state = np.zeros(3)
    with pytest.raises(TypeError, match="`carried_state` must be None or the"):
        model.save(tmp_path / "m.npz")
