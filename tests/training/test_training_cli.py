"""``python -m xlstm train``: bad arguments, a tiny run, resume, Ctrl-C."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time

import pytest

from xlstm.cli.train import main
from xlstm.training import CharLSTM, load_model

TINY = ["--hidden", "8", "--batch", "4", "--seq-len", "16", "--no-progress"]
PREFIX = "python -m xlstm train: error: "


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "short.txt").write_text("hello world", encoding="utf-8")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return tmp_path


BAD = {
    "missing file": (["--text", "{d}/nope.txt"], "--text {d}/nope.txt: no such file"),
    "directory": (["--text", "{d}"], "is a directory"),
    "empty": (["--text", "{d}/empty.txt"], "the file is empty"),
    "not utf-8": (["--text", "{d}/latin1.txt"], "not UTF-8 text (byte 0xe9 at offset 3)"),
    "unknown backend": (["--backend", "tensorflow"], "--backend 'tensorflow': unknown backend"),
    "sequence longer than text": (
        ["--text", "{d}/short.txt", "--seq-len", "20"],
        "--seq-len 20 is longer than the text (11 characters)",
    ),
    "too long for the batch": (["--seq-len", "5000"], "needs at least 160001 characters"),
    "zero steps": (["--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
    "bad lr": (["--lr", "fast"], "argument --lr: expected a positive number, got 'fast'"),
    "unknown option": (["--epochs", "3"], "unrecognized arguments: --epochs 3"),
    "bad dtype": (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    "missing checkpoint": (
        ["--resume", "{d}/none.npz"],
        "--resume {d}/none.npz: no such checkpoint",
    ),
    "corrupt checkpoint": (["--resume", "{d}/corrupt.npz"], "not a readable xlstm checkpoint"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_arguments_give_one_line_and_exit_2(files, case):
    argv, message = BAD[case]
    code, out, err = run([a.format(d=files) for a in argv] + ["--out", str(files / "run")])
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX)
    assert message.format(d=files) in lines[0]
    assert not (files / "run").exists()


def test_tiny_run_checkpoints_and_resumes(tmp_path):
    out_dir = tmp_path / "run"
    argv = [*TINY, "--out", str(out_dir), "--eval-every", "2", "--sample-every", "3"]
    code, out, err = run([*argv, "--steps", "4", "--sample-length", "30"])
    assert code == 0, err
    assert "--- sample at step 3 ---" in out
    assert "step 2/4" in err
    assert "summary" in err.splitlines()[-1]
    model = load_model(out_dir / "checkpoint.npz")
    assert isinstance(model, CharLSTM)
    assert model.step == 4
    rows = (out_dir / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,seconds,train_loss,val_loss"
    assert len(rows) == 5

    code, _, err = run([*argv, "--steps", "2", "--resume", "--sample-length", "0"])
    assert code == 0, err
    assert "resumed CharLSTM" in err
    assert load_model(out_dir / "checkpoint.npz").step == 6
    assert len((out_dir / "loss.csv").read_text().splitlines()) == 7


def test_ctrl_c_stops_cleanly_and_keeps_a_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = CharLSTM.train_step

    def interrupted_on_fourth_call(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CharLSTM, "train_step", interrupted_on_fourth_call)
    out_dir = tmp_path / "run"
    code, _, err = run([*TINY, "--out", str(out_dir), "--steps", "50", "--checkpoint-every", "2"])
    assert code == 130
    assert "interrupted at step 3; checkpoint saved" in err
    assert load_model(out_dir / "checkpoint.npz").step == 3
    assert sorted(p.name for p in out_dir.iterdir()) == ["checkpoint.npz", "loss.csv"]


def test_other_backend_runs(tmp_path):
    pytest.importorskip("torch")
    code, _, err = run([*TINY, "--backend", "torch", "--steps", "2", "--out", str(tmp_path)])
    assert code == 0, err
    assert load_model(tmp_path / "checkpoint.npz", backend="torch").backend == "torch"


def test_help_exits_0():
    code, _, _ = run(["--help"])
    assert code == 0


def test_module_entry_point(tmp_path):
    """``python -m xlstm train`` reaches cli.main, in a fresh interpreter."""
    command = [sys.executable, "-m", "xlstm", "train"]
    good = subprocess.run(
        [*command, *TINY, "--steps", "2", "--out", str(tmp_path), "--sample-length", "10"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    bad = subprocess.run(
        [*command, "--text", str(tmp_path / "missing.txt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith(PREFIX)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_real_ctrl_c_in_a_child_process(tmp_path):
    command = [sys.executable, "-m", "xlstm", "train", *TINY, "--steps", "1000000"]
    command += ["--time-limit", "60", "--checkpoint-every", "5", "--sample-length", "0"]
    # A runner that starts the tests in the background (CI) may have SIGINT
    # ignored, and Python keeps an inherited ignored SIGINT ignored: the child
    # restores Python's own handler first, then runs `python -m xlstm ...`.
    restore = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = ['xlstm', *sys.argv[1:]]; runpy.run_module('xlstm', run_name='__main__')"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", restore, *command[3:], "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        checkpoint = tmp_path / "checkpoint.npz"
        deadline = time.monotonic() + 45
        while not checkpoint.exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 130, err
    assert "checkpoint saved to" in err
    assert load_model(checkpoint).step >= 5


def test_loss_curve_files(tmp_path):
    from xlstm.cli.train import write_loss_curve

    history = {"step": [1, 2], "seconds": [0.1, 0.2], "train_loss": [3.0, 2.5]}
    history.update({"val_step": [2], "val_loss": [2.7]})
    written = write_loss_curve(tmp_path, history, 3.0)
    assert (tmp_path / "loss.csv").read_text().splitlines()[1:] == [
        "1,0.10,3.00000,",
        "2,0.20,2.50000,2.70000",
    ]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert written == [tmp_path / "loss.csv"]
    else:
        assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
