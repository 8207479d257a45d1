"""``python -m xlstm predict``: end to end in a subprocess, and its error paths in-process."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("distributed")

from xlstm.dask import predict_cli
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


def _run(*arguments):
    command = [sys.executable, "-m", "xlstm", "predict", *map(str, arguments)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False
    )


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
