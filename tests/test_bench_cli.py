"""``python -m xlstm bench``: size parsing, the reference contestants, and short runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import xlstm
from xlstm.bench import _harness, cli
from xlstm.bench._naive import naive_backward, naive_forward
from xlstm.bench._torch_peer import upstream_gradients

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


def test_bad_sizes_exit_2_with_message(capsys):
    assert cli.main(["--sizes", "S9"]) == 2
    assert "`--sizes` part 'S9'" in capsys.readouterr().err


def test_bad_option_exit_2(capsys):
    assert cli.main(["--repeat", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_help_exit_0(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "GEMM floor" in out
    assert "S4=(512, 512, 128, 50)" in out


def test_flops():
    assert _harness.forward_flops(8, 32, 16, 100) == 2 * 100 * 16 * 4 * 32 * 40
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


def test_torch_peer_matches_naive():
    pytest.importorskip("torch")
    from xlstm.bench._torch_peer import TorchLSTMPeer, output_numpy

    p = problem()
    peer = TorchLSTMPeer(p.parameters, p.x, p.a0, p.da, p.dc, dtype="float64")
    a, _, _, caches = naive_forward(p.x, p.a0, p.parameters, xp=np)
    np.testing.assert_allclose(output_numpy(peer.forward()), a, rtol=1e-12, atol=1e-12)
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
    for text in ("threads: 2", "sample-steps/s", "GEMM floor", "naive (seed-style)", "check:"):
        assert text in out
    report = json.loads(path.read_text())
    assert report["threads"]["threads"] == 2
    names = {(r["contestant"], r["mode"]) for r in report["results"]}
    for name in ("xlstm", "xlstm generic", "xlstm recompute", "naive (seed-style)", "GEMM floor"):
        assert (name, "forward") in names
        assert (name, "forward_backward") in names
    row = next(
        r for r in report["results"] if r["contestant"] == "xlstm" and r["mode"] == "forward"
    )
    assert row["sample_steps_per_s"] == pytest.approx(3 * 5 / row["median_s"])
    assert row["speedup_vs_naive"] > 0
    assert row["time_over_floor"] > 0
    assert all(c["ok"] for c in report["checks"])
    memory = {m["contestant"]: m for m in report["memory"]}
    assert memory["xlstm"]["forward_kept"] > 0
    assert memory["xlstm"]["forward_backward_peak"] > 0
    assert memory["xlstm recompute"]["forward_kept"] > 0


def test_run_without_torch_and_naive(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = cli.main(["--sizes", TINY, "--no-torch", "--no-naive", "--json", str(path), *FAST])
    assert code == 0
    report = json.loads(path.read_text())
    assert {r["contestant"] for r in report["results"]} == {"xlstm", "GEMM floor"}
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
    assert any(r["speedup_vs_torch"] for r in report["results"])


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
