"""``python -m xlstm train`` when things go wrong: one line on stderr and exit 2 for bad input
(found before training), quiet ends for closed pipes and Ctrl-C, never a traceback."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from _files import TEXT, members, small_model, with_meta, write_zip

import xlstm
from xlstm.cli import train as cli
from xlstm.cli.train import main
from xlstm.training import CharLSTM, LSTMModel, load_model

RUN = ["--batch", "4", "--seq-len", "16", "--no-progress", "--sample-length", "0"]
TINY = ["--hidden", "8", *RUN]
PREFIX = "python -m xlstm train: error: "


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def one_line_error(argv, match):
    code, out, err = run(argv)
    assert code == 2, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX)
    assert match in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-step run's folder (checkpoint with the CLI's progress record)."""
    out = tmp_path_factory.mktemp("run")
    code, _, err = run([*TINY, "--steps", "2", "--out", out])
    assert code == 0, err
    return out


# --------------------------------------------------------------------------- --resume


def _resume_from(tmp_path, path):
    """Resume ``path`` (a ``small_model``, whose vocabulary is ``_files.VOCAB``)."""
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return [*RUN, "--steps", "1", "--text", text, "--out", tmp_path / "out", "--resume", path]


def test_resume_refuses_a_plain_lstm_and_an_lstm_model(tmp_path):
    plain = xlstm.LSTM(3, 4, seed=0).save(tmp_path / "plain.npz")
    one_line_error(_resume_from(tmp_path, plain), "holds an LSTM, not a training model")
    model = LSTMModel(3, 4, 3, seed=0).save(tmp_path / "model.npz")
    one_line_error(_resume_from(tmp_path, model), "holds a LSTMModel, not a CharLSTM")


@pytest.mark.parametrize(
    ("updates", "match"),
    [
        ({"n_a": "8"}, "sizes"),
        ({"vocab": 5}, "vocabulary"),
        ({"extra": []}, "`extra` is not a dict"),
        ({"optimizer": 3}, "bad optimiser record"),
        ({"clip_norm": "x"}, "`clip_norm`"),
    ],
)
def test_resume_refuses_bad_metadata(trained, tmp_path, updates, match):
    bad = tmp_path / "bad.npz"
    write_zip(bad, with_meta(members(trained / "checkpoint.npz"), **updates))
    one_line_error(_resume_from(tmp_path, bad), match)


def test_resume_refuses_files_that_are_not_checkpoints(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros(3))
    one_line_error(_resume_from(tmp_path, tmp_path / "plain.npy"), "a plain .npy array")
    (tmp_path / "folder").mkdir()
    one_line_error(_resume_from(tmp_path, tmp_path / "folder"), "it is a directory")
    one_line_error(_resume_from(tmp_path, os.devnull), "not a regular file")


FOREIGN = {
    "not a dict": ([1, 2], "a list, not a dict"),
    "uneven": (
        {"history": {"step": [1, 2], "seconds": [0.1], "train_loss": [3.0, 2.0],
                     "val_step": [], "val_loss": []}},
        "differ in length",
    ),
    "uneven validation": (
        {"history": {"step": [], "seconds": [], "train_loss": [], "val_step": [1],
                     "val_loss": []}},
        "differ in length",
    ),
    "strings": (
        {"history": {"step": ["1"], "seconds": [0.1], "train_loss": [3.0], "val_step": [],
                     "val_loss": []}},
        "history['step'] is not a list of ints",
    ),
    "other keys": ({"history": {"epoch": [1]}}, "history must have the keys"),
    "rng": ({"rng": {"bit_generator": "MT19937"}}, "rng:"),
    "rng overflow": (
        {"rng": {"bit_generator": "PCG64", "state": {"state": -1, "inc": 1},
                 "has_uint32": 0, "uinteger": 0}},
        "rng:",
    ),
    "seconds": ({"seconds": "long"}, "seconds = 'long'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FOREIGN), ids=list(FOREIGN))
def test_resume_with_a_foreign_progress_record_is_a_clear_error(tmp_path, case):
    progress, match = FOREIGN[case]
    model = small_model()
    model.extra = {"progress": progress, "mine": "user data"}
    path = model.save(tmp_path / "foreign.npz")
    line = one_line_error(_resume_from(tmp_path, path), match)
    assert "extra['progress'] is not a record of python -m xlstm train" in line


def test_resume_keeps_the_users_own_extra_data(tmp_path):
    model = small_model()
    model.extra = {"mine": {"note": [1, 2, 3]}}
    path = model.save(tmp_path / "user.npz")
    code, _, err = run(_resume_from(tmp_path, path))
    assert code == 0, err
    resumed = load_model(tmp_path / "out" / "checkpoint.npz")
    assert resumed.extra["mine"] == {"note": [1, 2, 3]}
    assert resumed.step == 2


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--hidden", 16, "n_a = 8"),
        ("--layers", 2, "num_layers = 1"),
        ("--dtype", "float64", "dtype = float32"),
        ("--dropout", 0.2, "dropout = 0.0"),
        ("--optimizer", "sgd", "optimizer = Adam"),
        ("--lr", 0.5, "lr = 0.006"),
        ("--clip", 1.0, "clip_norm = 5.0"),
    ],
)
def test_resume_options_that_disagree_with_the_checkpoint_are_an_error(
    trained, option, value, field
):
    argv = [*TINY, "--steps", "1", "--out", trained, "--resume"]
    line = one_line_error([*argv, option, value], f"{option} {value} disagrees with the checkpoint")
    assert field in line
    assert f"leave {option} out" in line


def test_resume_options_that_agree_are_accepted(tmp_path):
    out = tmp_path / "run"
    code, _, err = run([*TINY, "--steps", "1", "--out", out, "--dtype", "float64"])
    assert code == 0, err
    again = [*TINY, "--steps", "1", "--out", out, "--resume", "--dtype", "float64"]
    code, _, err = run([*again, "--layers", "1", "--lr", "0.006"])
    assert code == 0, err
    assert load_model(out / "checkpoint.npz").step == 2


def test_help_documents_the_defaults_of_options_without_a_parser_default(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 128; with --resume: the checkpoint's" in text
    assert "(default: None)" not in text


# --------------------------------------------------------------------------- --out


def test_out_problems_are_found_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error([*TINY, "--out", tmp_path / "file"], "is a file, expected a directory")
    one_line_error([*TINY, "--out", tmp_path / "file" / "run"], "lies under")
    for name in ("checkpoint.npz", "loss.csv"):
        out = tmp_path / name.replace(".", "_")
        (out / name).mkdir(parents=True)
        one_line_error([*TINY, "--out", out], f"{name} is a directory")
        assert sorted(p.name for p in out.iterdir()) == [name]


def test_out_as_a_broken_symbolic_link(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    one_line_error([*TINY, "--out", tmp_path / "link"], "is a broken symbolic link")


def test_a_failing_save_is_one_line_and_status_1(tmp_path, monkeypatch):
    def full_disk(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(CharLSTM, "save", full_disk)
    code, _, err = run([*TINY, "--steps", "1", "--out", tmp_path])
    assert code == 1
    assert err.splitlines()[-1].startswith(PREFIX + "cannot save")
    assert "No space left" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- --text


def test_an_endless_device_is_refused_after_the_cap(monkeypatch):
    monkeypatch.setattr(cli, "MAX_TEXT_BYTES", 2**20)
    one_line_error([*TINY, "--text", "/dev/zero"], "--text /dev/zero: larger than 1 MiB")


def test_a_huge_regular_file_is_refused_without_reading_it(tmp_path):
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as file:  # sparse: no disk used, nothing read
        file.truncate(cli.MAX_TEXT_BYTES + 1)
    started = time.perf_counter()
    one_line_error([*TINY, "--text", huge], "larger than 256 MiB")
    assert time.perf_counter() - started < 5


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_text_from_a_pipe_is_read(tmp_path):
    fifo = tmp_path / "text.fifo"
    os.mkfifo(fifo)
    text = ("the cat sat on the mat. " * 40).encode()

    def writer():
        with open(fifo, "wb") as file:
            file.write(text)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        code, _, err = run([*TINY, "--steps", "1", "--text", fifo, "--out", tmp_path / "out"])
    finally:
        thread.join(timeout=30)
    assert code == 0, err


# --------------------------------------------------------------------------- sizes


def test_absurd_hidden_size_is_refused_before_allocating():
    line = one_line_error([*TINY, "--hidden", "100000"], "--hidden 100000")
    assert "GiB of memory; this machine has" in line


def test_batch_and_sequence_that_would_not_fit_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "available_memory", lambda: 50 * 2**20)
    line = one_line_error([*TINY, "--batch", "32", "--seq-len", "1000", "--hidden", "512"], "")
    assert "lower --hidden, --layers, --batch or --seq-len" in line
    code, _, err = run([*TINY, "--steps", "1", "--out", tmp_path])
    assert code == 0, err


def test_memory_estimate_grows_with_every_size():
    base = cli.estimate_bytes(50, 128, 1, 32, 64)
    for bigger in (
        cli.estimate_bytes(50, 256, 1, 32, 64),
        cli.estimate_bytes(50, 128, 2, 32, 64),
        cli.estimate_bytes(50, 128, 1, 64, 64),
        cli.estimate_bytes(50, 128, 1, 32, 128),
        cli.estimate_bytes(50, 128, 1, 32, 64, itemsize=8),
    ):
        assert bigger > base
    assert cli.estimate_bytes(10**9, 10**9, 10**9, 10**9, 10**9) > 2**100  # no overflow


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--seed", "-1"], "argument --seed: expected a non-negative integer, got '-1'"),
        (["--sample-length", "10000000"], "argument --sample-length: expected an integer in"),
        (["--hidden", "9" * 5000], "argument --hidden: expected a positive integer"),
        (["--lr", "inf"], "argument --lr: expected a positive number, got 'inf'"),
        (["--text", "a\0b"], "argument --text: expected a file name, got 'a\\x00b'"),
        (["--out", ""], "argument --out: expected a file name, got ''"),
        (["--resume", "x\0"], "argument --resume: expected a file name"),
    ],
)
def test_bad_numbers(argv, match):
    one_line_error([*TINY, *argv], match)


# --------------------------------------------------------------------------- history


def test_history_is_kept_even_and_small(monkeypatch):
    monkeypatch.setattr(cli, "HISTORY_POINTS", 100)
    n = 301
    history = {
        "step": list(range(1, n + 1)),
        "seconds": [0.1] * n,
        "train_loss": [1.0] * n,
        "val_step": list(range(7, n, 7)),
        "val_loss": [2.0] * len(range(7, n, 7)),
    }
    history["seconds"].pop()  # interrupted between two appends
    cli._tidy(history)
    assert len(history["step"]) == len(history["seconds"]) == len(history["train_loss"]) < 250
    assert set(history["val_step"]) <= set(history["step"])
    assert history["step"][-150:] == list(range(151, 301))


# --------------------------------------------------------------------------- pipes, signals


class ClosedPipe(io.StringIO):
    """A stdout whose reader went away after the first write."""

    def write(self, text):
        if self.tell():
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return super().write(text)


def test_a_closed_stdout_stops_quietly_and_saves(tmp_path):
    err = io.StringIO()
    argv = [*TINY[:-2], "--sample-every", "1", "--sample-length", "5", "--steps", "50"]
    code = main([*argv, "--out", str(tmp_path)], stdout=ClosedPipe(), stderr=err)
    assert code == 0, err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert load_model(tmp_path / "checkpoint.npz").step < 50
    assert (tmp_path / "loss.csv").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="pipes and signals are POSIX here")
def test_train_piped_into_head_exits_quietly(tmp_path):
    command = [sys.executable, "-m", "xlstm", "train", *TINY[:-2], "--sample-every", "1"]
    command += ["--sample-length", "5", "--steps", "100000", "--out", str(tmp_path)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout.readline().startswith(b"--- sample")
        child.stdout.close()  # `head -1` exits
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    err = err.decode()
    assert child.returncode == 0, err
    assert "Traceback" not in err
    assert "Exception ignored" not in err
    assert load_model(tmp_path / "checkpoint.npz").step < 100000


def test_ctrl_c_during_start_up_in_process(tmp_path, monkeypatch, trained):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(CharLSTM, "load", interrupted)
    code, _, err = run([*TINY, "--out", trained, "--resume"])
    assert code == 130
    assert err.splitlines() == ["python -m xlstm train: interrupted"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and SIGINT are POSIX")
def test_real_ctrl_c_while_waiting_for_the_text(tmp_path):
    """SIGINT while start-up blocks reading ``--text`` (a FIFO with a silent writer)."""
    fifo = tmp_path / "text.fifo"
    os.mkfifo(fifo)
    restore = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = ['xlstm', *sys.argv[1:]]; runpy.run_module('xlstm', run_name='__main__')"
    )
    command = [sys.executable, "-c", restore, "train", *TINY, "--text", str(fifo)]
    child = subprocess.Popen(
        [*command, "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    writer = None
    try:
        deadline = time.monotonic() + 60
        while writer is None and time.monotonic() < deadline and child.poll() is None:
            try:  # succeeds once the child has opened the FIFO for reading
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.05)
        assert writer is not None, "the child never opened --text"
        time.sleep(0.2)  # into the blocking read
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if writer is not None:
            os.close(writer)
        if child.poll() is None:
            child.kill()
            child.communicate()
    err = err.decode()
    assert child.returncode == 130, err
    assert err.splitlines() == ["python -m xlstm train: interrupted"]
    assert not (tmp_path / "out").exists()


def test_summary_is_json(trained):
    """The last stderr line of a run stays machine-readable."""
    code, _, err = run([*TINY, "--steps", "1", "--out", trained, "--resume"])
    assert code == 0, err
    assert json.loads(err.splitlines()[-1].removeprefix("summary "))["steps"] == 1


def test_a_text_just_long_enough_trains_for_several_epochs(tmp_path):
    """Every epoch starts at a random offset; with batch * seq_len + 1 characters of training
    text there is no room for one, and the epochs must still each have their chunk (this
    crashed inside tbptt_batches)."""
    text = tmp_path / "text.txt"
    text.write_text(("abc defg\n" * 8)[:65], encoding="utf-8")
    argv = [*TINY, "--val-fraction", "0", "--steps", "6", "--text", text, "--out", tmp_path / "o"]
    code, _, err = run(argv)
    assert code == 0, err
    assert load_model(tmp_path / "o" / "checkpoint.npz").step == 6
