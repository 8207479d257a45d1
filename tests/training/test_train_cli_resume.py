"""``python -m xlstm train --resume`` continues a run exactly, and the CLI's rough edges:
the progress bar, step counts after a resume, the summary line, the ``python -m xlstm``
runner (``--version``, unknown commands, shared exit statuses)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from xlstm import __main__ as entry
from xlstm import __version__
from xlstm.cli.train import main
from xlstm.training import CharLSTM, load_model

# 14 * 47 = 658 characters: 592 of training text, 9 chunks of 4 x 16 a pass, so a run of
# 40 steps crosses four pass boundaries (each with a new random offset and a zero state).
TEXT = "the quick brown fox jumps over the lazy dog.\n\n" * 14
CHUNKS_PER_PASS = 9


def _run(argv, stdout=None, stderr=None):
    out = io.StringIO() if stdout is None else stdout
    err = io.StringIO() if stderr is None else stderr
    code = main([str(a) for a in argv], stdout=out, stderr=err)
    return code, out.getvalue() if stdout is None else "", err.getvalue()


def _options(tmp_path, dtype, layers):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return [
        "--text", text, "--hidden", 8, "--layers", layers, "--dtype", dtype,
        "--dropout", 0.3 if layers > 1 else 0.0, "--batch", 4, "--seq-len", 16, "--seed", 3,
        "--no-progress", "--eval-every", 7, "--sample-every", 5, "--sample-length", 12,
        "--checkpoint-every", 6,
    ]  # fmt: skip


def _train(argv):
    code, out, err = _run(argv)
    assert code == 0, err
    return out, err


@pytest.mark.parametrize("split", [20, 2 * CHUNKS_PER_PASS], ids=["mid-pass", "end-of-pass"])
@pytest.mark.parametrize(("dtype", "layers"), [("float64", 1), ("float32", 1), ("float64", 2),
                                                ("float32", 2)])  # fmt: skip
def test_resume_is_bitwise_the_straight_run(tmp_path, dtype, layers, split):
    """N steps straight == N/2 steps, then ``--resume`` N/2 more: every parameter, every
    optimiser buffer and the carried state, bit for bit (the random pass offsets, the
    dropout masks and the streams' positions all continue where they stopped)."""
    options = _options(tmp_path, dtype, layers)
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    out_straight, _ = _train([*options, "--steps", 2 * split, "--out", straight])
    _train([*options, "--steps", split, "--out", halves])
    out_second, err = _train([*options, "--steps", split, "--out", halves, "--resume"])
    assert "resumed CharLSTM" in err
    a, b = load_model(straight / "checkpoint.npz"), load_model(halves / "checkpoint.npz")
    assert a.step == b.step == 2 * split
    for key, value in a.parameters.items():
        np.testing.assert_array_equal(b.parameters[key], value, err_msg=key)
    for slot in a.optimizer.slots:
        for key, value in a.opt_state[slot].items():
            np.testing.assert_array_equal(b.opt_state[slot][key], value)
    for mine, theirs in zip(a.carried_state, b.carried_state, strict=True):
        np.testing.assert_array_equal(theirs, mine)
    # The samples of the second half are the straight run's (they do not disturb it).
    later = re.findall(r"--- sample at step (\d+) ---\n(.*?)\n---", out_straight, re.S)
    later = [(step, text) for step, text in later if int(step) > split]
    assert later == re.findall(r"--- sample at step (\d+) ---\n(.*?)\n---", out_second, re.S)


def test_resume_with_other_streams_is_announced_and_still_runs(tmp_path):
    options = _options(tmp_path, "float64", 1)
    _train([*options, "--steps", 3, "--out", tmp_path / "run"])
    # --batch 2: the saved position and state belong to other streams.
    argv = [*options, "--steps", 2, "--out", tmp_path / "run", "--resume", "--batch", 2]
    _, err = _train(argv)
    assert "not an exact continuation" in err
    assert load_model(tmp_path / "run" / "checkpoint.npz").step == 5


def test_checkpoint_keeps_the_position_and_the_carried_state(tmp_path):
    _train([*_options(tmp_path, "float32", 2), "--steps", 4, "--out", tmp_path])
    model = load_model(tmp_path / "checkpoint.npz")
    progress = model.extra["progress"]
    assert progress["position"]["step"] == 4
    assert progress["position"]["chunk"] == 4
    assert progress["dropout_rng"]["bit_generator"] == "PCG64"
    assert [v.shape for v in model.carried_state] == [(2, 8, 4), (2, 8, 4)]
    assert model.carried_state[0].dtype == np.float32


# --------------------------------------------------------------------------- friction


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that the bar is drawn."""

    def isatty(self):
        return True


def test_progress_bar_never_empties_at_a_validation_step(tmp_path):
    err = Terminal()
    options = [a for a in _options(tmp_path, "float64", 1) if a != "--no-progress"]
    code, _, _ = _run([*options, "--steps", 6, "--eval-every", 2, "--out", tmp_path], stderr=err)
    assert code == 0, err.getvalue()
    bars = re.findall(r"\[([#.]{24})\] step (\d+)/6", err.getvalue())
    assert {int(step) for _, step in bars} >= {2, 4, 6}  # the forced draws at validation
    filled = [bar.count("#") for bar, _ in bars]
    assert filled == sorted(filled), bars
    assert filled[-1] == 24


def test_step_counts_after_resume_are_the_models(tmp_path):
    options = [*_options(tmp_path, "float64", 1), "--out", tmp_path, "--eval-every", 1]
    _train([*options, "--steps", 5])
    _, err = _train([*options, "--steps", 3, "--resume"])
    assert "; 3 more steps, to step 8\n" in err
    counts = [(int(a), int(b)) for a, b in re.findall(r"step (\d+)/(\d+)", err)]
    assert counts == [(6, 8), (7, 8), (8, 8)]
    summary = json.loads(err.splitlines()[-1].removeprefix("summary "))
    assert (summary["steps"], summary["step"]) == (3, 8)


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_summary_is_strict_json_when_interrupted_before_the_first_step(tmp_path, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(CharLSTM, "train_step", interrupted)
    code, _, err = _run([*_options(tmp_path, "float64", 1), "--steps", 5, "--out", tmp_path])
    assert code == 130
    assert "interrupted at step 0" in err
    summary = _strict_json(err.splitlines()[-1].removeprefix("summary "))
    assert summary["steps"] == 0
    assert summary["train_loss"] is None


# --------------------------------------------------------------------------- python -m xlstm


def test_version(capsys):
    assert entry.main(["--version"]) == 0
    assert capsys.readouterr().out == f"xlstm {__version__}\n"


@pytest.mark.parametrize("name", ["x", "--bogus"])
def test_unknown_command_is_one_line_and_status_2(capsys, name):
    assert entry.main([name, "--help"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    kind = "option" if name.startswith("-") else "command"
    expected = f"xlstm: error: unknown {kind} {name!r} (choose from train, bench, predict, export)"
    assert captured.err.splitlines() == [expected]


def test_help_lists_every_command(capsys):
    assert entry.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in entry.COMMANDS:
        assert f"  {name} " in out


class _Ends:
    """A stand-in command module whose ``main`` ends in a given way."""

    def __init__(self, error):
        self.error = error

    def main(self, argv):
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (KeyboardInterrupt(), 130, "python -m xlstm train: interrupted"),
        (entry.UsageError("--x: bad"), 2, "python -m xlstm train: error: --x: bad"),
        (BrokenPipeError(32, "Broken pipe"), 0, None),
    ],
    ids=["ctrl-c", "usage", "closed pipe"],
)
def test_the_runner_gives_every_command_the_same_ends(monkeypatch, capsys, error, status, line):
    monkeypatch.setattr(entry.importlib, "import_module", lambda name: _Ends(error))
    assert entry.main(["train"]) == status
    err = capsys.readouterr().err
    assert err.splitlines() == ([] if line is None else [line])


TAMPERED = {
    "offset": ({"offset": 10**9}, None, "does not fit the streams it names"),
    "chunk": ({"chunk": 10**9}, None, "does not fit the streams it names"),
    "no carried state": ({}, "drop", "carried state of None streams) does not fit"),
    "other batch in the state": ({}, "narrow", "carried state of 2 streams) does not fit"),
    "step": ({"step": 3}, None, "position of step 3, the model is at step 4"),
    "bool": ({"chunk": True}, None, "position must have the keys"),
    "keys": ({"where": 1}, None, "position must have the keys"),
}


@pytest.mark.parametrize("case", list(TAMPERED), ids=list(TAMPERED))
def test_a_tampered_position_is_one_line_before_training(tmp_path, case):
    changes, state, match = TAMPERED[case]
    options = _options(tmp_path, "float64", 1)
    _train([*options, "--steps", 4, "--out", tmp_path])
    path = tmp_path / "checkpoint.npz"
    model = load_model(path)
    model.extra["progress"]["position"].update(changes)
    if state == "drop":
        model.carried_state = None
    elif state == "narrow":
        model.carried_state = tuple(v[:, :2] for v in model.carried_state)
    model.save(path)
    code, out, err = _run([*options, "--steps", 1, "--out", tmp_path, "--resume"])
    assert code == 2
    assert out == ""
    assert err.splitlines() == [err.strip()]
    assert err.startswith(f"python -m xlstm train: error: --resume {path}: ")
    assert match in err
    assert load_model(path).step == 4
