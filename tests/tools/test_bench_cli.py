"""``python -m xlstm bench``: argument checks, the reference contestants, and short runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import xlstm
from xlstm.bench import _harness
from xlstm.bench._naive import naive_backward, naive_forward
from xlstm.bench._torch_peer import upstream_gradients
from xlstm.cli import bench as cli

TINY = "4,6,3,5"
FAST = ["--repeat", "1", "--pause", "0", "--quiet"]


def problem(dtype="float64", shape=(3, 5, 4, 6)):
    return _harness.make_problem("t", shape, dtype, n_y=2, seed=3)


# --------------------------------------------------------------------------- sizes


def test_parse_sizes_names_shapes_and_mixes():
    assert cli.parse_sizes("S1,s3") == [("S1", (8, 32, 16, 100)), ("S3", (256, 256, 64, 100))]
    assert cli.parse_sizes("8,32,16,100; 1,2,3,4") == [
        ("8x32x16x100", (8, 32, 16, 100)),
        ("1x2x3x4", (1, 2, 3, 4)),
    ]
    assert [label for label, _ in cli.parse_sizes("S5;4,6,3,5")] == ["S5", "4x6x3x5"]
    assert [label for label, _ in cli.parse_sizes(cli.DEFAULT_SIZES)] == list(_harness.SHAPES)


@pytest.mark.parametrize("text", ["S9", "1,2,3", "1,2,3,0", "a,b,c,d", ";", "S1,4"])
def test_parse_sizes_rejects(text):
    with pytest.raises(ValueError, match="`--sizes`"):
        cli.parse_sizes(text)


def one_line_error(capsys) -> str:
    """The run's stderr, checked to be one error line and nothing on stdout."""
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing ran
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("python -m xlstm bench: error: ")
    return lines[0]


def test_bad_sizes_exit_2_with_message(capsys):
    assert cli.main(["--sizes", "S9"]) == 2
    assert "`--sizes` part 'S9'" in one_line_error(capsys)


def test_bad_option_exit_2(capsys):
    assert cli.main(["--repeat", "0"]) == 2
    assert "expected a positive integer, got" in one_line_error(capsys)
    assert cli.main(["--sizes", TINY, "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in one_line_error(capsys)


@pytest.mark.parametrize("text", [str(10**30), "9" * 5000, str(cli.MAX_DIMENSION + 1)])
def test_huge_sizes_exit_2(capsys, text):
    assert cli.main(["--sizes", f"4,6,3,{text}", *FAST]) == 2
    assert "`--sizes` part" in one_line_error(capsys)


def test_sizes_beyond_available_memory_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(_harness, "available_memory", lambda: 2**20)
    assert cli.main(["--sizes", "S1", *FAST]) == 2
    message = one_line_error(capsys)
    assert "`--sizes` S1: the run would hold about" in message
    assert "0.000977 GiB of memory available" in message


def test_run_bytes_grows_with_every_size_and_contestant():
    base = _harness.run_bytes((8, 32, 16, 100), "float32", 4, 2)
    assert base > 4 * 4 * (8 + 32) * 16 * 100  # at least the inputs of every contestant
    for bigger in ((16, 32, 16, 100), (8, 64, 16, 100), (8, 32, 32, 100), (8, 32, 16, 200)):
        assert _harness.run_bytes(bigger, "float32", 4, 2) > base
    assert _harness.run_bytes((8, 32, 16, 100), "float64", 4, 2) == 2 * base
    assert _harness.run_bytes((8, 32, 16, 100), "float32", 5, 2) > base


@pytest.mark.parametrize("pause", ["-0.1", "nan", "inf", "-inf", "soon"])
def test_bad_pause_exit_2(capsys, pause):
    assert cli.main(["--sizes", TINY, "--pause", pause]) == 2
    assert "argument --pause" in one_line_error(capsys)


def test_json_directory_exit_2_before_the_run(capsys, tmp_path):
    assert cli.main(["--sizes", TINY, "--json", str(tmp_path), *FAST]) == 2
    assert "is a directory" in one_line_error(capsys)


def test_json_in_missing_folder_exit_2(capsys, tmp_path):
    path = tmp_path / "missing" / "bench.json"
    assert cli.main(["--sizes", TINY, "--json", str(path), *FAST]) == 2
    assert "folder that does not exist" in one_line_error(capsys)
    assert not path.parent.exists()


def test_json_not_writable_exit_2(capsys, tmp_path, monkeypatch):
    # os.access stands in for a read-only folder: as root every folder is writable.
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    path = tmp_path / "bench.json"
    assert cli.main(["--sizes", TINY, "--json", str(path), *FAST]) == 2
    assert "is not writable" in one_line_error(capsys)
    assert not path.exists()


def test_json_directory_from_the_command_line(tmp_path):
    command = [sys.executable, "-m", "xlstm", "bench", "--json", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"python -m xlstm bench: error: `--json` {str(tmp_path)!r} is a directory"
    ]


def test_engine_that_cannot_run_exit_2(capsys):
    assert cli.main(["--engine", "cupy", "--sizes", TINY, *FAST]) == 2
    assert "`--engine cupy` with --backend numpy" in one_line_error(capsys)


def test_engine_numba_runs_or_says_why(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = cli.main(
        ["--engine", "numba", "--sizes", TINY, "--no-torch", "--json", str(path), *FAST]
    )
    try:
        expected = xlstm.resolve_engine("numpy", "float32", "numba")
    except ValueError:  # numba not installed, or its engine not registered yet
        assert code == 2
        assert "`--engine numba`" in one_line_error(capsys)
        return
    assert code == 0
    report = json.loads(path.read_text())
    assert report["engine"]["ran"] == expected == "numba"
    assert {r["engine"] for r in report["results"] if r["contestant"] == "xlstm"} == {"numba"}


def test_jit_compile_time_is_read_when_the_engine_reports_one(monkeypatch):
    from xlstm._engines.numpy import engine

    assert _harness.jit_compile_seconds("numpy", "float32") is None
    assert _harness.jit_compile_seconds("not an engine", "float32") is None
    asked = []
    monkeypatch.setattr(
        engine, "compile_seconds", lambda dtype: asked.append(dtype) or 1.5, raising=False
    )
    assert _harness.jit_compile_seconds("numpy", "float64") == 1.5
    assert asked == ["float64"]


def test_run_reports_the_compile_time(tmp_path, capsys, monkeypatch):
    from xlstm._engines.numpy import engine

    monkeypatch.setattr(engine, "compile_seconds", lambda dtype: 0.25, raising=False)
    path = tmp_path / "bench.json"
    options = ["--engine", "numpy", "--no-torch", "--no-naive", "--json", str(path)]
    assert cli.main(["--sizes", TINY, *options, *FAST]) == 0
    assert "xlstm engine: --engine numpy ran 'numpy'; JIT compile 0.25 s" in capsys.readouterr().out
    assert json.loads(path.read_text())["engine"] == {
        "asked": "numpy",
        "ran": "numpy",
        "jit_compile_s": 0.25,
    }


def test_threads_not_limited_without_threadpoolctl(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import raises ImportError
    with cli.thread_limits(2, use_torch=False) as notes:
        assert notes["libraries"] == ["NumPy BLAS: NOT limited (install threadpoolctl)"]


def test_help_exit_0(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "products only" in out
    assert "not a\nbound" in out or "not a bound" in out
    for option in ("--profile", "--inference-first", "--no-onnx"):
        assert option in out
    assert "S4=(512, 512, 128, 50)" in out


def test_flops():
    assert _harness.forward_flops(8, 32, 16, 100) == 2 * 100 * 16 * 4 * 32 * 40
    assert _harness.pass_flops((8, 32, 16, 100), "inference") == 2 * 100 * 16 * 4 * 32 * 40
    assert _harness.pass_flops((8, 32, 16, 100), "forward_backward") == 3 * 2 * 100 * 16 * 128 * 40


# --------------------------------------------------------------------------- references


def test_upstream_gradients_layout():
    da, dc = upstream_gradients(5, 4, 6, "float32", np.random.default_rng(0))
    assert da.shape == dc.shape == (5, 4, 6)
    assert da.dtype == dc.dtype == np.float32
    assert not np.any(dc[:, :, :-1])
    assert np.all(dc[:, :, -1] != 0)


def test_naive_matches_xlstm():
    p = problem()
    a, y, c, caches = naive_forward(p.x, p.a0, p.parameters, xp=np)
    a_ref, y_ref, c_ref, caches_ref = xlstm.lstm_forward(p.x, p.a0, p.parameters)
    np.testing.assert_allclose(a, a_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c, c_ref, rtol=1e-12, atol=1e-12)
    grads = naive_backward(p.da, caches, p.dc, xp=np)
    expected = xlstm.lstm_backward(p.da, caches_ref, p.dc)
    assert set(grads) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(grads[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


def test_naive_backward_without_dc_is_zero_dc():
    p = problem()
    *_, caches = naive_forward(p.x, p.a0, p.parameters, xp=np)
    without = naive_backward(p.da, caches, xp=np)
    zero = naive_backward(p.da, caches, np.zeros_like(p.dc), xp=np)
    for key in zero:
        np.testing.assert_array_equal(without[key], zero[key])


def test_naive_does_not_mutate_inputs():
    p = problem()
    before = [p.x.copy(), p.a0.copy(), p.da.copy()]
    *_, caches = naive_forward(p.x, p.a0, p.parameters, xp=np)
    naive_backward(p.da, caches, p.dc, xp=np)
    for old, new in zip(before, [p.x, p.a0, p.da], strict=True):
        np.testing.assert_array_equal(old, new)


def test_default_repeat_gives_a_median_of_five():
    assert cli.build_parser().parse_args([]).repeat >= 5


def test_torch_peer_matches_naive():
    pytest.importorskip("torch")
    from xlstm.bench._torch_peer import TorchLSTMPeer, output_numpy

    p = problem()
    peer = TorchLSTMPeer(p.parameters, p.x, p.a0, p.da, p.dc, dtype="float64")
    a, _, _, caches = naive_forward(p.x, p.a0, p.parameters, xp=np)
    np.testing.assert_allclose(output_numpy(peer.forward()), a, rtol=1e-12, atol=1e-12)
    inferred = peer.inference()
    assert not inferred[0].requires_grad  # nothing kept for backward
    np.testing.assert_allclose(output_numpy(inferred), a, rtol=1e-12, atol=1e-12)
    peer.forward_backward()
    peer.forward_backward()  # gradients are reset, not accumulated, between calls
    expected = _harness._stack_gradients(naive_backward(p.da, caches, p.dc, xp=np))
    got = peer.gradients_numpy()
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


def test_relative_difference():
    ref = {"a": np.array([1.0, -4.0])}
    assert _harness.relative_difference({"a": np.array([1.0, -4.0])}, ref) == 0.0
    assert _harness.relative_difference({"a": np.array([2.0, -4.0])}, ref) == 0.25


def test_relative_difference_compares_only_what_both_hold():
    """An inference-only contestant (ONNX Runtime) has no gradients to compare."""
    ref = {"a": np.array([1.0, -4.0]), "dW": np.ones(2)}
    assert _harness.relative_difference({"a": np.array([2.0, -4.0])}, ref) == 0.25


def test_each_timed_call_follows_an_untimed_warm_call():
    made = {"inference": 0, "forward": 0}

    def counting(mode):
        def call():
            made[mode] += 1

        return call

    contestant = _harness.Contestant(
        "c", "numpy", _harness._no_sync, {mode: counting(mode) for mode in made}
    )
    _harness.run_rounds([contestant], repeat=3, pause=0)
    assert made == {"inference": 6, "forward": 6}
    assert [len(contestant.times[mode]) for mode in made] == [3, 3]


def test_onnx_runtime_inference_contestant_gives_xlstms_outputs(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "bench.json"
    code = cli.main(["--sizes", TINY, "--no-naive", "--json", str(path), *FAST])
    assert code == 0
    report = json.loads(path.read_text())
    rows = {(r["contestant"], r["mode"]) for r in report["results"]}
    assert ("ONNX Runtime", "inference") in rows
    assert ("ONNX Runtime", "forward") not in rows
    check = next(c for c in report["checks"] if c["contestant"] == "ONNX Runtime")
    assert check["ok"]
    assert check["max_relative_difference"] < 1e-5
    xlstm_row = next(
        r for r in report["results"] if r["contestant"] == "xlstm" and r["mode"] == "inference"
    )
    assert xlstm_row["speedup_vs_onnx"] > 0


def test_onnx_runtime_is_left_out_in_float64():
    problem_64 = problem("float64")
    assert problem_64.dtype == "float64"
    assert not _harness.onnx_runtime_available("float64")


def test_profile_and_inference_first(tmp_path, capsys):
    pytest.importorskip("numba")
    pytest.importorskip("threadpoolctl")
    path = tmp_path / "bench.json"
    options = ["--engine", "numba", "--profile", "--inference-first", "--no-torch", "--no-naive"]
    code = cli.main(["--sizes", TINY, *options, "--json", str(path), *FAST])
    assert code == 0
    out = capsys.readouterr().out
    assert "profile (numba engine" in out
    assert "inference first in a fresh process" in out
    report = json.loads(path.read_text())
    assert [row["mode"] for row in report["profile"]] == list(_harness.MODES)
    for row in report["profile"]:
        for key in ("public_ms", "engine_ms", "products_only_ms"):
            assert row[key] > 0
        assert row["outside_ms"] == pytest.approx(row["public_ms"] - row["engine_ms"])
    (first,) = report["inference_first"]
    assert first["engine"] == "numba"
    assert len(first["times_s"]) == len(first["faults"]) == 1
    assert first["first_s"] > 0


def test_profile_of_another_engine_exit_2(capsys):
    assert cli.main(["--sizes", TINY, "--engine", "numpy", "--profile", *FAST]) == 2
    assert "numba engine" in capsys.readouterr().err


def test_cross_check_flags_a_mismatch():
    good = {"a": np.ones(3), "dW": np.ones((2, 2))}
    outputs = {
        "torch.nn.LSTM": good,
        "xlstm": {"a": np.ones(3), "dW": np.ones((2, 2)) * 1.1},
        "naive (seed-style)": good,
    }
    checks = cli.cross_check(outputs, "float32")
    by_name = {c["contestant"]: c for c in checks}
    assert not by_name["xlstm"]["ok"]
    assert by_name["naive (seed-style)"]["ok"]
    assert by_name["xlstm"]["reference"] == "torch.nn.LSTM"


# --------------------------------------------------------------------------- runs


def test_run_numpy_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    options = ["--memory", "--generic", "--recompute"]
    code = cli.main(["--sizes", TINY, "--json", str(path), *options, *FAST])
    assert code == 0
    out = capsys.readouterr().out
    for text in ("threads: 2", "sample-steps/s", "products only", "naive (seed-style)", "check:"):
        assert text in out
    engine = xlstm.resolve_engine("numpy", "float32")
    assert f"xlstm engine: --engine auto ran {engine!r}" in out
    assert "first fwd+bwd call" in out
    report = json.loads(path.read_text())
    assert report["threads"]["threads"] == 2
    assert report["engine"]["asked"] == "auto"
    assert report["engine"]["ran"] == engine
    names = {(r["contestant"], r["mode"]) for r in report["results"]}
    for name in (
        "xlstm",
        "xlstm generic",
        "xlstm recompute",
        "naive (seed-style)",
        "products only",
    ):
        assert (name, "forward") in names
        assert (name, "forward_backward") in names
        # recompute's inference is the plain one; the seed-style loop has none
        with_inference = ("xlstm", "xlstm generic", "products only")
        assert ((name, "inference") in names) == (name in with_inference)
    for r in report["results"]:
        assert r["first_call_s"] > 0
        assert len(r["times_s"]) == 1
        expected = {"xlstm": engine, "xlstm generic": "generic", "xlstm recompute": engine}
        assert r["engine"] == expected.get(r["contestant"])
    row = next(
        r for r in report["results"] if r["contestant"] == "xlstm" and r["mode"] == "forward"
    )
    assert row["sample_steps_per_s"] == pytest.approx(3 * 5 / row["median_s"])
    assert row["speedup_vs_naive"] > 0
    assert row["time_over_products_only"] > 0
    assert all(c["ok"] for c in report["checks"])
    memory = {m["contestant"]: m for m in report["memory"]}
    assert memory["xlstm"]["forward_kept"] > 0
    assert memory["xlstm"]["forward_backward_peak"] > 0
    assert memory["xlstm recompute"]["forward_kept"] > 0


def test_run_without_torch_and_naive(tmp_path, capsys):
    path = tmp_path / "bench.json"
    options = ["--no-torch", "--no-naive", "--no-onnx"]
    code = cli.main(["--sizes", TINY, *options, "--json", str(path), *FAST])
    assert code == 0
    report = json.loads(path.read_text())
    assert {r["contestant"] for r in report["results"]} == {"xlstm", "products only"}
    assert report["torch_peer_device"] is None
    assert report["checks"] == []


def test_run_torch_backend_restores_threads(tmp_path):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    path = tmp_path / "bench.json"
    assert (
        cli.main(
            ["--backend", "torch", "--threads", "1", "--sizes", TINY, "--json", str(path), *FAST]
        )
        == 0
    )
    assert torch.get_num_threads() == before
    report = json.loads(path.read_text())
    assert report["torch_peer_device"] == "cpu"
    assert all(c["ok"] for c in report["checks"])
    ratios = {(r["contestant"], r["mode"]): r["speedup_vs_torch"] for r in report["results"]}
    for mode in ("inference", "forward", "forward_backward"):
        assert ratios["xlstm", mode] > 0  # each against torch's same pass
        assert ("torch.nn.LSTM", mode) in ratios


def test_run_jax_backend(tmp_path):
    pytest.importorskip("jax")
    path = tmp_path / "bench.json"
    assert (
        cli.main(["--backend", "jax", "--sizes", TINY, "--no-torch", "--json", str(path), *FAST])
        == 0
    )
    report = json.loads(path.read_text())
    assert all(c["ok"] for c in report["checks"])


def test_progress_goes_to_stderr(capsys):
    assert cli.main(["--sizes", TINY, "--no-torch", "--repeat", "2", "--pause", "0"]) == 0
    captured = capsys.readouterr()
    assert "round 2/2" in captured.err
    assert "round" not in captured.out


def test_cupy_backend_without_gpu_is_a_clear_error(capsys):
    if _harness._cupy_has_gpu():
        pytest.skip("a GPU is present")
    assert cli.main(["--backend", "cupy", "--sizes", TINY, *FAST]) == 2
    assert "`--backend cupy` needs CuPy and a working CUDA GPU" in capsys.readouterr().err


def test_torch_cuda_without_gpu_is_a_clear_error(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cli.main(["--backend", "torch", "--device", "cuda", "--sizes", TINY, *FAST]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err


def test_python_dash_m_runs():
    command = [sys.executable, "-m", "xlstm", "bench", "--sizes", TINY, "--no-torch", *FAST]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "xlstm bench: backend=numpy" in done.stdout


def test_jax_float64_really_computes_in_float64():
    pytest.importorskip("jax")
    # A subprocess: float64 on JAX switches on jax_enable_x64 for the whole process.
    command = [sys.executable, "-m", "xlstm", "bench", "--backend", "jax", "--dtype", "float64"]
    command += ["--sizes", TINY, *FAST]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "): ok" in done.stdout
