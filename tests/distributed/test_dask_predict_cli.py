"""``python -m xlstm predict``: end to end in a subprocess, and its error paths in-process."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask.distributed")

from xlstm.cli import predict as predict_cli
from xlstm.training import CharLSTM

SUBPROCESS_TIMEOUT = 150
VOCAB = "abcdefgh"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two float64 character models (one and two layers), inputs and expected outputs."""
    folder = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(VOCAB), (23, 9))
    paths = {"ids": folder / "ids.npy", "x": folder / "x.npy"}
    np.save(paths["ids"], ids)
    np.save(paths["x"], rng.standard_normal((len(VOCAB), 23, 9)))
    expected = {}
    for layers in (1, 2):
        model = CharLSTM(VOCAB, 12, num_layers=layers, dtype="float64", seed=layers)
        paths[f"model{layers}"] = model.save(folder / f"model{layers}.npz")
        expected[f"ids{layers}"] = model.forward(ids)[0]
        expected[f"x{layers}"] = model.forward(np.load(paths["x"]))[0]
    return folder, paths, expected


def _run(*arguments, timeout=SUBPROCESS_TIMEOUT):
    command = [sys.executable, "-m", "xlstm", "predict", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def _leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_ids_on_two_local_worker_processes(files):
    folder, paths, expected = files
    output = folder / "y_workers.npy"
    result = _run(
        "--model", paths["model1"], "--input", paths["ids"], "--output", output,
        "--workers", 2, "--batch-chunk", 5,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal: no progress bar, no warnings
    np.testing.assert_allclose(np.load(output), expected["ids1"], rtol=1e-12, atol=1e-15)
    assert _leftovers(folder) == []


@pytest.mark.parametrize("layers", [1, 2])
def test_floats_on_this_process_threads(files, layers):
    folder, paths, expected = files
    output = folder / f"y_threads{layers}.npy"
    result = _run(
        "--model", paths[f"model{layers}"], "--input", paths["x"], "--output", output,
        "--batch-chunk", 4,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {output} (8, 23, 9) float64" in result.stdout
    np.testing.assert_allclose(np.load(output), expected[f"x{layers}"], rtol=1e-12, atol=1e-15)


def test_bad_input_exits_2_with_one_line(files):
    folder, paths, _ = files
    bad = folder / "bad_ids.npy"
    ids = np.load(paths["ids"])
    ids[17, 3] = len(VOCAB)
    np.save(bad, ids)
    output = folder / "y_bad.npy"
    result = _run("--model", paths["model1"], "--input", bad, "--output", output)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "sequence 17 holds ids outside [0, 8)" in result.stderr
    assert not output.exists()


def _main(*arguments):
    stdout, stderr = io.StringIO(), io.StringIO()
    status = predict_cli.main([str(a) for a in arguments], stdout=stdout, stderr=stderr)
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "missing.npz"}, r"--model '.*missing.npz': no such file"),
        ({"--model": "garbage.npz"}, r"is not a readable xlstm checkpoint"),
        ({"--input": "missing.npy"}, r"--input '.*missing.npy': no such file"),
        ({"--input": "garbage.npz"}, r"is not a readable \.npy file"),
        ({"--input": "archive.npz"}, r"is an \.npz archive"),
        ({"--input": "narrow.npy"}, r"has shape \(3, 23, 9\); the model expects \(n_x, m, T\)"),
        ({"--input": "flat.npy"}, r"is 1-D float64; expected floats"),
        ({"--input": "empty.npy"}, r"has shape \(8, 0, 9\); m and T must be >= 1"),
        ({"--output": "nowhere/y.npy"}, r"no such directory"),
        ({"--output": "."}, r"is a directory"),
        ({"--engine": "cupy"}, r"`engine='cupy'` cannot run this call"),
        ({"--engine": "bogus"}, r"`engine` = 'bogus'"),
        ({"--batch-chunk": "0"}, r"expected a positive integer, got '0'"),
        ({"--workers": "2", "--scheduler": "tcp://127.0.0.1:1"}, r"not allowed with"),
    ],
)
def test_usage_errors_exit_2_with_one_line(files, monkeypatch, change, message):
    folder, paths, _ = files
    monkeypatch.chdir(folder)
    (folder / "garbage.npz").write_bytes(b"not a zip file")
    np.savez(folder / "archive.npz", x=np.zeros(3))
    np.save(folder / "narrow.npy", np.zeros((3, 23, 9)))
    np.save(folder / "flat.npy", np.zeros(5))
    np.save(folder / "empty.npy", np.zeros((8, 0, 9)))
    options = {"--model": paths["model1"], "--input": paths["x"], "--output": "y_usage.npy"}
    options.update(change)
    status, stdout, stderr = _main(*[item for pair in options.items() for item in pair])
    assert status == 2
    assert stdout == ""
    assert stderr.count("\n") == 1
    assert stderr.startswith("python -m xlstm predict: error: ")
    assert re.search(message, stderr), stderr
    assert not (folder / "y_usage.npy").exists()


def test_an_interrupted_run_leaves_the_old_output(files, monkeypatch):
    folder, paths, _ = files
    output = folder / "y_interrupted.npy"
    np.save(output, np.arange(3.0))

    def interrupt(y, target, client, stderr):
        target[:, :2, :] = 1.0  # half written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_cli, "_write", interrupt)
    status, _, stderr = _main("--model", paths["model1"], "--input", paths["x"], "--output", output)
    assert status == 130
    assert "interrupted; no output written" in stderr
    np.testing.assert_array_equal(np.load(output), np.arange(3.0))
    assert _leftovers(folder) == []


def test_help_exits_0(capsys):
    assert predict_cli.main(["--help"]) == 0
    assert "--batch-chunk" in capsys.readouterr().out


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("how", ["same path", "symbolic link", "hard link"])
def test_an_output_that_is_the_input_is_refused_before_writing(tmp_path, files, how):
    _, paths, _ = files
    data = tmp_path / "x.npy"
    data.write_bytes(paths["x"].read_bytes())
    before = data.read_bytes()
    output = {"same path": data, "symbolic link": tmp_path / "link.npy"}.get(how)
    if how == "symbolic link":
        output.symlink_to(data)
    elif how == "hard link":
        output = tmp_path / "hard.npy"
        output.hardlink_to(data)
    status, stdout, stderr = _main("--model", paths["model1"], "--input", data, "--output", output)
    assert status == 2
    assert stderr.count("\n") == 1
    assert "is the --input file" in stderr
    assert data.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_an_output_that_is_the_model_is_refused(tmp_path, files):
    _, paths, _ = files
    model = tmp_path / "model.npz"
    model.write_bytes(paths["model1"].read_bytes())
    status, _, stderr = _main("--model", model, "--input", paths["x"], "--output", model)
    assert status == 2
    assert "is the --model file" in stderr
    assert model.read_bytes() == paths["model1"].read_bytes()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("option", ["--input", "--output"])
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path, files, option):
    _, paths, _ = files
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    options = {"--model": paths["model1"], "--input": paths["ids"], "--output": tmp_path / "y.npy"}
    options[option] = fifo
    result = _run(*[item for pair in options.items() for item in pair], timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert re.search(
        rf"{option} '.*fifo.npy' (is not a regular file|exists and is not)", result.stderr
    )


def _can_mount_a_small_filesystem():
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt || exit 1"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _can_mount_a_small_filesystem(),
    reason="needs user namespaces to mount a 1 MiB tmpfs",
)
def test_a_full_filesystem_is_one_line_and_leaves_nothing(tmp_path, files):
    """An output larger than its filesystem: an error, not SIGBUS, and no temporary left.

    A 1 MiB tmpfs mounted (in a private mount namespace) over a folder; the output needs
    2.6 MB.  The run and the listing of the folder happen inside that namespace.
    """
    _, paths, _ = files
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((len(VOCAB), 200, 200)))
    full = tmp_path / "full"
    full.mkdir()
    command = (
        f'mount -t tmpfs -o size=1m none "{full}" || exit 99; '
        f'"{sys.executable}" -m xlstm predict --model "{paths["model1"]}" --input "{x}" '
        f'--output "{full}/y.npy"; echo "status $?"; ls -A "{full}"'
    )
    result = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert result.stdout.splitlines() == ["status 1"], (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert "No space left on device; nothing was written" in result.stderr


def test_a_chunk_that_raises_is_one_line_and_status_1(files, monkeypatch):
    folder, paths, _ = files
    output = folder / "y_failing.npy"

    def unreadable(path, dtype, block_info=None):
        raise OSError("Input/output error\nreading the disk")

    monkeypatch.setattr(predict_cli, "_read_chunk", unreadable)
    status, stdout, stderr = _main(
        "--model", paths["model1"], "--input", paths["x"], "--output", output
    )
    assert status == 1
    assert stdout == ""
    assert stderr == (
        "python -m xlstm predict: error: OSError: Input/output error reading the disk; "
        "no output written\n"
    )
    assert not output.exists()
    assert _leftovers(folder) == []


DOCS_SNIPPET = """
import numpy as np
import xlstm

xlstm.LSTM(8, 16, num_layers=2, bidirectional=True, seed=0).save("lstm.npz")
np.save("x.npy", np.random.default_rng(0).standard_normal((8, 100, 20)).astype("float32"))
"""


def test_the_docs_snippet_predicts_with_a_saved_lstm(tmp_path):
    """docs/distributed.md: `model.save(...)` of an xlstm.LSTM works; it writes the hidden
    states ``a (D n_a, m, T)``, equal to ``model(x)[0]``."""
    import xlstm

    docs = (Path(__file__).parents[2] / "docs" / "distributed.md").read_text()
    assert DOCS_SNIPPET.strip() in docs
    subprocess.run(
        [sys.executable, "-c", DOCS_SNIPPET], cwd=tmp_path, check=True, timeout=SUBPROCESS_TIMEOUT
    )
    command = "python -m xlstm predict --model lstm.npz --input x.npy --output a.npy"
    assert command in docs
    result = subprocess.run(
        [sys.executable, *command.split()[1:]],
        cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote a.npy (32, 100, 20) float32" in result.stdout
    model = xlstm.LSTM.load(tmp_path / "lstm.npz")
    expected = model(np.load(tmp_path / "x.npy"))[0]
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), expected, rtol=1e-5, atol=1e-6)


def test_ids_for_a_saved_lstm_are_refused(tmp_path, files):
    import xlstm

    _, paths, _ = files
    xlstm.LSTM(8, 4, seed=0).save(tmp_path / "lstm.npz")
    status, _, stderr = _main(
        "--model", tmp_path / "lstm.npz", "--input", paths["ids"], "--output", tmp_path / "a.npy"
    )
    assert status == 2
    assert "an xlstm.LSTM checkpoint takes floats (n_x, m, T) with n_x = 8" in stderr
