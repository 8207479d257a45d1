"""The command-line tools at the edges of their world: a process memory limit (RLIMIT_AS), a
reader of stdout that goes away, a ``--scheduler`` address where something else listens."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from xlstm.bench import _harness
from xlstm.training import CharLSTM, LSTMModel

TIMEOUT = 150
resource = pytest.importorskip("resource", reason="RLIMIT_AS is POSIX")
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="rlimits and pipes are POSIX")

# Runs argv[3:] as `python -m xlstm ...` with the address space limited to what the process
# maps after its imports plus argv[1] MiB (a limit relative to this interpreter's own size),
# after running the file argv[2] ("-": none).
LIMITED = textwrap.dedent(
    """
    import resource, runpy, sys
    import numpy, xlstm, xlstm.cli.bench, xlstm.training

    if sys.argv[2] != "-":
        runpy.run_path(sys.argv[2])
    with open("/proc/self/statm") as statm:
        now = int(statm.read().split()[0]) * resource.getpagesize()
    limit = now + int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.argv = ["xlstm", *sys.argv[3:]]
    runpy.run_module("xlstm", run_name="__main__")
    """
)


def _limited(headroom_mib, *argv, prelude="-"):
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(headroom_mib), str(prelude), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_available_memory_reads_the_address_space_limit(monkeypatch):
    free = _harness.available_memory()
    assert free is not None
    assert free > 0
    monkeypatch.setattr(resource, "getrlimit", lambda which: (2**20, 2**20))
    assert _harness.available_memory() == 0  # this process maps more than 1 MiB already


@posix_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm")
@pytest.mark.parametrize("sizes", ["4096,4096,512,50", "1024,1024,256,50"])
def test_bench_under_an_address_space_limit_refuses_by_the_estimate(sizes):
    shape = tuple(int(size) for size in sizes.split(","))
    need = _harness.run_bytes(shape, "float32", 4, 50)
    if sizes.startswith("1024") and _harness._system_memory() < 1.5 * need:
        pytest.skip("the machine's free memory alone refuses these sizes")
    result = _limited(1024, "bench", "--sizes", sizes, "--repeat", "1", "--pause", "0")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "the run would hold about" in result.stderr
    assert "RLIMIT_AS" in result.stderr


@posix_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm")
def test_predicts_default_chunk_fits_an_address_space_limit(tmp_path):
    """80 MB of ids, a 64-unit model: the default chunk's task really runs under the limit.

    The run is cut short after computing its largest chunk (the whole file would take
    minutes); that one task is what asked for gigabytes before.
    """
    pytest.importorskip("dask")
    model = CharLSTM("abcdefgh", 64, seed=0)
    model.save(tmp_path / "model.npz")
    ids = np.random.default_rng(0).integers(0, 8, (40_000, 250))  # 80 MB of int64
    np.save(tmp_path / "ids.npy", ids)
    one_chunk = textwrap.dedent(
        """
        import sys
        import numpy as np
        from xlstm.cli import predict as predict_cli

        def largest_chunk_only(y, target, client, stderr):
            j = int(np.argmax(y.chunks[1]))
            block = y.blocks[:, j].compute()
            print("chunk", y.chunks[1][j], "of", len(y.chunks[1]), block.shape, flush=True)
            raise KeyboardInterrupt  # enough: leave nothing written

        predict_cli._write = largest_chunk_only
        """
    )
    prelude = tmp_path / "prelude.py"
    prelude.write_text(one_chunk)
    result = _limited(
        1024, "predict", "--model", tmp_path / "model.npz", "--input", tmp_path / "ids.npy",
        "--output", tmp_path / "y.npy", prelude=prelude,
    )  # fmt: skip
    assert "MemoryError" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 130, result.stderr[-2000:]
    chunk = int(result.stdout.split()[1])
    assert chunk < 40_000 // 8  # smaller than "four tasks per core" would make it
    assert not (tmp_path / "y.npy").exists()


def test_default_chunk_is_bounded_by_memory():
    pytest.importorskip("dask")
    from xlstm.cli._common import UsageError
    from xlstm.cli.predict import Predictor, default_chunk

    predictor = Predictor(CharLSTM("abcdefgh", 64, seed=0))
    per_sequence = predictor.sequence_bytes(250, True)
    assert per_sequence >= 250 * 4 * (8 + 4 * 64)  # at least one-hot input, a, c and gates
    unlimited = default_chunk(40_000, 250, predictor, ids=True, parallel=2, memory=None)
    assert unlimited == 5000
    small = default_chunk(40_000, 250, predictor, ids=True, parallel=2, memory=2**30)
    assert 1 <= small < 5000
    assert small * per_sequence <= 2**30 // 8
    with pytest.raises(UsageError, match="one sequence of T = 250 steps needs about"):
        default_chunk(40_000, 250, predictor, ids=True, parallel=2, memory=per_sequence)


# --------------------------------------------------------------------------- stdout


@posix_only
@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_reader_of_stdout_that_went_away_is_not_an_error(tmp_path, command):
    if command == "predict":
        pytest.importorskip("dask")
    else:
        pytest.importorskip("onnx")
    model = LSTMModel(3, 4, 2, seed=0, dtype="float64")
    model.save(tmp_path / "model.npz")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, 5, 4)))
    argv = {
        "predict": ["--model", tmp_path / "model.npz", "--input", tmp_path / "x.npy",
                    "--output", tmp_path / "out.npy"],
        "export": [tmp_path / "model.npz", "--onnx", tmp_path / "out.onnx"],
    }[command]  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-m", "xlstm", command, *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()  # `| head -0`: the reader is gone before the line is written
    try:
        _, err = child.communicate(timeout=TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    err = err.decode()
    assert child.returncode == 0, err
    assert "Traceback" not in err
    assert "Exception ignored" not in err
    assert (tmp_path / ("out.npy" if command == "predict" else "out.onnx")).exists()


# --------------------------------------------------------------------------- scheduler


@contextlib.contextmanager
def junk_server():
    """A TCP service on 127.0.0.1 that answers every connection with text, not Dask."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()
    connections = []

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            connections.append(connection)
            with contextlib.suppress(OSError):
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in connections:
            connection.close()
        server.close()


@pytest.mark.parametrize("command", ["predict", "train"])
def test_a_scheduler_address_where_something_else_listens(tmp_path, command):
    pytest.importorskip("dask.distributed")
    CharLSTM("abcdefgh", 4, seed=0).save(tmp_path / "model.npz")
    np.save(tmp_path / "ids.npy", np.zeros((5, 4), dtype=np.int64))
    argv = {
        "predict": ["--model", tmp_path / "model.npz", "--input", tmp_path / "ids.npy",
                    "--output", tmp_path / "y.npy"],
        "train": ["--steps", "2", "--out", tmp_path / "run"],
    }[command]  # fmt: skip
    with junk_server() as address:
        result = subprocess.run(
            [sys.executable, "-m", "xlstm", command, *map(str, argv), "--scheduler", address],
            capture_output=True,
            text=True,
            timeout=60,  # well under the connect timeout of a silent peer
            check=False,
        )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert f"--scheduler '{address}': what answers there is not a dask scheduler" in result.stderr
    assert not (tmp_path / "y.npy").exists()
