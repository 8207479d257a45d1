"""One atomic-write helper (``xlstm._atomic``) for checkpoints, ``predict`` and ``export``:
concurrent writers of one target, leftovers of killed writers, the mode of new files."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from xlstm import _atomic
from xlstm.training import LSTMModel, load_model

TIMEOUT = 120
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="flock and signals are POSIX")


def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# A writer that saves one checkpoint again and again.  Every flock is delayed by a few
# milliseconds (a busy machine's scheduling), which widens the window between creating a
# temporary file and locking it, where another writer's sweep of stale files could find it
# unlocked and delete it.
SAVER = textwrap.dedent(
    """
    import fcntl, sys, time

    real_flock = fcntl.flock

    def slow_flock(descriptor, operation):
        time.sleep(0.004)
        return real_flock(descriptor, operation)

    fcntl.flock = slow_flock
    from xlstm.training import LSTMModel

    model = LSTMModel(3, 4, 2, seed=int(sys.argv[2]))
    for _ in range(int(sys.argv[3])):
        model.save(sys.argv[1])
    """
)


@posix_only
def test_three_processes_saving_one_checkpoint_all_succeed(tmp_path):
    target = tmp_path / "model.npz"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SAVER, str(target), str(seed), "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(3)
    ]
    errors = []
    try:
        for child in children:
            _, err = child.communicate(timeout=TIMEOUT)
            if child.returncode:
                errors.append(err.strip().splitlines()[-1])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert errors == []
    assert load_model(target).n_a == 4  # a complete checkpoint of one of them
    assert _temporaries(tmp_path) == []


def test_names_modes_and_leftovers_of_the_helper(tmp_path):
    target = tmp_path / "data.bin"
    old = os.umask(0o027)
    try:
        with _atomic.replacing(target) as file:
            names = _temporaries(tmp_path)
            assert len(names) == 1
            assert _atomic.temporary_pattern(target).fullmatch(names[0])
            file.write(b"one")
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    finally:
        os.umask(old)
    target.chmod(0o604)

    def interrupted():
        with _atomic.replacing(target) as file:
            file.write(b"half")
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        interrupted()
    assert target.read_bytes() == b"one"  # the old content, and no temporary left
    assert _temporaries(tmp_path) == []
    with _atomic.replacing(target) as file:
        file.write(b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o604  # a replaced file keeps its mode


# ``predict`` and ``export`` killed while they write: a temporary file stays, and the next
# run of the same command removes it (as the next save of a checkpoint does).
KILLED = textwrap.dedent(
    """
    import sys, time
    from xlstm import _atomic

    real = _atomic.replacing

    class Stalled:
        def __init__(self, path):
            self.inner = real(path)

        def __enter__(self):
            file = self.inner.__enter__()
            file.write(b"partial")
            file.flush()
            print("writing", flush=True)
            time.sleep(60)

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    _atomic.replacing = Stalled
    import runpy
    sys.argv = ["xlstm", *sys.argv[1:]]
    runpy.run_module("xlstm", run_name="__main__")
    """
)


def _kill_while_writing(argv):
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line == "writing\n", child.communicate(timeout=TIMEOUT)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()


def _run(argv):
    return subprocess.run(
        [sys.executable, "-m", "xlstm", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@posix_only
def test_a_killed_predict_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    pytest.importorskip("dask")
    model = LSTMModel(3, 4, 2, seed=0, dtype="float64")
    model.save(tmp_path / "model.npz")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, 5, 4)))
    argv = ["predict", "--model", tmp_path / "model.npz", "--input", tmp_path / "x.npy"]
    argv += ["--output", tmp_path / "y.npy"]
    _kill_while_writing(argv)
    assert len(_temporaries(tmp_path)) == 1
    result = _run(argv)
    assert result.returncode == 0, result.stderr
    assert _temporaries(tmp_path) == []
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), model.forward(np.load(tmp_path / "x.npy"))[0]
    )


@posix_only
def test_a_killed_export_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    pytest.importorskip("onnx")
    LSTMModel(3, 4, 2, seed=0).save(tmp_path / "model.npz")
    argv = ["export", tmp_path / "model.npz", "--onnx", tmp_path / "model.onnx"]
    _kill_while_writing(argv)
    assert len(_temporaries(tmp_path)) == 1
    old = os.umask(0o022)
    try:
        result = _run(argv)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert _temporaries(tmp_path) == []
    # The ONNX file gets the mode of any new file (0o666 less the umask), not 0o600.
    assert stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode) == 0o644


@posix_only
def test_a_write_in_progress_is_never_swept(tmp_path):
    """A sweep running while another process writes leaves that file alone."""
    target = tmp_path / "data.bin"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom xlstm import _atomic\n"
            "with _atomic.replacing(sys.argv[1]) as f:\n"
            "    f.write(b'x'); f.flush(); print('writing', flush=True); time.sleep(60)\n",
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "writing\n"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert _atomic.remove_stale(target) == []
        assert len(_temporaries(tmp_path)) == 1
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    leftover = _temporaries(tmp_path)
    assert [p.name for p in _atomic.remove_stale(target)] == leftover  # its writer is gone
    assert _temporaries(tmp_path) == []
