"""The CuPy fast path on a GPU: fused kernels and graph replay against references.

Every test here is marked ``gpu`` and skips cleanly without CuPy or a CUDA
device.  References: the generic array-API path on CuPy (``fused=False``), the
NumPy path in float64, and ``torch.nn.LSTM`` on CUDA (cuDNN) in float64.  The
same engine is checked without a GPU, with a NumPy stand-in, in
``tests/test_cupy_cpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import SEQ_GRAD_KEYS, random_problem, record_worst, rel_err, to_numpy
from conftest import require_backend

import xlstm
from xlstm._engines import cache as _cache
from xlstm._engines.cupy import _kernels
from xlstm._engines.cupy import engine as cupy_engine

pytestmark = pytest.mark.gpu

# (n_x, m, T, n_a, n_y): generic, degenerate sizes, and one where the products are not tiny.
GPU_SHAPES = {
    "generic": (3, 4, 5, 5, 2),
    "all-ones": (1, 1, 1, 1, 1),
    "T1": (2, 3, 1, 4, 3),
    "m1": (4, 1, 3, 2, 2),
    "na1": (2, 3, 4, 1, 2),
    "medium": (16, 8, 12, 32, 4),
}
# fused vs generic on CuPy: the same algorithm, summed in a different order.
TOL = {"float64": 1e-12, "float32": 2e-5}


@pytest.fixture
def cp():
    """CuPy itself (skips without CuPy or a device); graph replay reset around each test."""
    require_backend("cupy")
    import cupy

    cupy_engine.set_graph_replay(None)
    cupy_engine.clear_graph_cache()
    yield cupy
    cupy_engine.set_graph_replay(None)
    cupy_engine.clear_graph_cache()


def _on(cp, prob, dtype):
    arrays = {k: cp.asarray(getattr(prob, k), dtype=dtype) for k in ("x", "a0", "c0", "Ga", "Gc")}
    arrays["params"] = {k: cp.asarray(v, dtype=dtype) for k, v in prob.params.items()}
    return arrays


def _run(arrays, *, fused, recompute=False, with_dc=False, xp=None):
    a, y, c, caches = xlstm.lstm_forward(
        arrays["x"],
        arrays["a0"],
        arrays["params"],
        arrays["c0"],
        fused=fused,
        recompute=recompute,
    )
    dc = arrays["Gc"] if with_dc else None
    grads = xlstm.lstm_backward(arrays["Ga"], caches, dc, fused=fused)
    outputs = {"a": a, "y": y, "c": c, **grads}
    return {k: to_numpy(v) for k, v in outputs.items()}


def _assert_close(actual, expected, tol, label):
    worst = 0.0
    for key, value in expected.items():
        assert actual[key].shape == value.shape, (label, key)
        assert np.isfinite(actual[key]).all(), (label, key)
        err = rel_err(actual[key], value)
        assert err <= tol, f"{label}: {key} relative error {err:.3e} > {tol:.1e}"
        worst = max(worst, err)
    return worst


@pytest.mark.parametrize("shape", list(GPU_SHAPES), ids=list(GPU_SHAPES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
@pytest.mark.parametrize("with_dc", [False, True], ids=["no-dc", "dc"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_fused_equals_generic_on_cupy(cp, shape, dtype, recompute, with_dc, graph):
    prob = random_problem(11, *GPU_SHAPES[shape])
    arrays = _on(cp, prob, dtype)
    generic = _run(arrays, fused=False, recompute=recompute, with_dc=with_dc)
    cupy_engine.set_graph_replay(graph)
    for call in range(2):  # graph: capture, then replay
        fused = _run(arrays, fused=True, recompute=recompute, with_dc=with_dc)
        worst = _assert_close(fused, generic, TOL[dtype], f"{shape} call {call}")
    record_worst(f"cupy fused vs generic {dtype}", worst, shape)


@pytest.mark.parametrize("shape", ["generic", "medium"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_cupy_equals_numpy_float64(cp, shape, dtype, graph):
    prob = random_problem(12, *GPU_SHAPES[shape])
    reference = _run(
        {**{k: getattr(prob, k) for k in ("x", "a0", "c0", "Ga", "Gc")}, "params": prob.params},
        fused="auto",
        with_dc=True,
    )
    cupy_engine.set_graph_replay(graph)
    fused = _run(_on(cp, prob, dtype), fused=True, with_dc=True)
    worst = _assert_close(fused, reference, {"float64": 1e-11, "float32": 5e-5}[dtype], shape)
    record_worst(f"cupy fused vs numpy float64 ({dtype})", worst, shape)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_torch_cudnn_oracle(cp, graph):
    """torch.nn.LSTM on CUDA in float64 (gate order i, f, g, o mapped explicitly)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    n_x, m, T, n_a, n_y = GPU_SHAPES["medium"]
    prob = random_problem(13, n_x, m, T, n_a, n_y)
    cupy_engine.set_graph_replay(graph)
    ours = _run(_on(cp, prob, "float64"), fused=True)

    device = torch.device("cuda")
    lstm = torch.nn.LSTM(n_x, n_a, dtype=torch.float64, device=device)
    torch_gates = ("i", "f", "c", "o")  # torch's i, f, g, o as xlstm's key letters
    W = np.concatenate([prob.params[f"W{g}"] for g in torch_gates], axis=0)
    b = np.concatenate([prob.params[f"b{g}"] for g in torch_gates], axis=0)[:, 0]
    with torch.no_grad():
        lstm.weight_hh_l0.copy_(torch.from_numpy(W[:, :n_a]))
        lstm.weight_ih_l0.copy_(torch.from_numpy(W[:, n_a:]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(0.25 * b))
        lstm.bias_hh_l0.copy_(torch.from_numpy(0.75 * b))

    def tensor(array):
        return torch.tensor(np.ascontiguousarray(array), device=device, requires_grad=True)

    x = tensor(prob.x.transpose(2, 1, 0))  # (T, m, n_x)
    h0, c0 = tensor(prob.a0.T[None]), tensor(prob.c0.T[None])
    out, (_, c_last) = lstm(x, (h0, c0))
    da = torch.from_numpy(np.ascontiguousarray(prob.Ga.transpose(2, 1, 0))).to(device)
    out.backward(da)

    def host(t):
        return t.detach().cpu().numpy()

    expected = {
        "a": host(out).transpose(2, 1, 0),
        "dx": host(x.grad).transpose(2, 1, 0),
        "da0": host(h0.grad)[0].T,
        "dc0": host(c0.grad)[0].T,
    }
    d_hh, d_ih = host(lstm.weight_hh_l0.grad), host(lstm.weight_ih_l0.grad)
    d_b = host(lstm.bias_ih_l0.grad)
    for k, gate in enumerate(torch_gates):
        rows = slice(k * n_a, (k + 1) * n_a)
        expected[f"dW{gate}"] = np.concatenate([d_hh[rows], d_ih[rows]], axis=1)
        expected[f"db{gate}"] = d_b[rows, None]
    worst = _assert_close(ours, expected, 1e-10, "torch oracle")
    assert rel_err(ours["c"][:, :, -1], host(c_last)[0].T) <= 1e-10
    record_worst("cupy fused vs torch cuDNN float64", worst, "medium")


def test_graph_results_survive_later_replays(cp):
    """No aliasing: a result keeps its values after later calls of the same shape."""
    shape = GPU_SHAPES["medium"]
    problems = [random_problem(seed, *shape) for seed in (21, 22, 23)]
    eager = [_run(_on(cp, p, "float64"), fused=True, with_dc=True) for p in problems]
    cupy_engine.set_graph_replay(True)
    kept = []
    for p in problems:  # capture on the first, replay on the others
        arrays = _on(cp, p, "float64")
        a, y, c, caches = xlstm.lstm_forward(
            arrays["x"], arrays["a0"], arrays["params"], arrays["c0"]
        )
        grads = xlstm.lstm_backward(arrays["Ga"], caches, arrays["Gc"])
        kept.append(({"a": a, "y": y, "c": c, **grads}, caches, arrays))
    for (results, _, _), expected in zip(kept, eager, strict=True):
        _assert_close({k: to_numpy(v) for k, v in results.items()}, expected, 1e-12, "kept")
    # Backward again on the oldest cache: copied back in, same gradients as eagerly.
    _, caches, arrays = kept[0]
    grads = xlstm.lstm_backward(arrays["Ga"], caches, arrays["Gc"])
    again = {k: to_numpy(v) for k, v in grads.items()}
    _assert_close(again, {k: eager[0][k] for k in SEQ_GRAD_KEYS}, 1e-12, "stale cache")
    assert len(cupy_engine._PLANS) == 1


def test_graph_is_captured_once_and_replayed(cp):
    arrays = _on(cp, random_problem(31, *GPU_SHAPES["medium"]), "float32")
    cupy_engine.set_graph_replay(True)
    _run(arrays, fused=True)
    (plan,) = cupy_engine._PLANS._plans.values()
    graphs = (plan.forward_graph, plan.backward_graphs[False])
    _run(arrays, fused=True)
    assert (plan.forward_graph, plan.backward_graphs[False]) == graphs


def test_generic_cache_through_graph_backward(cp):
    prob = random_problem(32, *GPU_SHAPES["medium"])
    arrays = _on(cp, prob, "float64")
    expected = _run(arrays, fused=False, with_dc=True)
    _, _, _, caches = xlstm.lstm_forward(
        arrays["x"], arrays["a0"], arrays["params"], arrays["c0"], fused=False
    )
    cupy_engine.set_graph_replay(True)
    grads = xlstm.lstm_backward(arrays["Ga"], caches, arrays["Gc"], fused=True)
    _assert_close(
        {k: to_numpy(v) for k, v in grads.items()},
        {k: expected[k] for k in SEQ_GRAD_KEYS},
        1e-12,
        "generic cache",
    )


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
def test_several_segments(cp, monkeypatch, graph, recompute):
    n_x, m, T, n_a, n_y = 5, 3, 9, 6, 2
    monkeypatch.setattr(_cache, "SEGMENT_ELEMENTS", 2 * m * 4 * n_a)  # 2 steps a segment
    arrays = _on(cp, random_problem(33, n_x, m, T, n_a, n_y), "float64")
    expected = _run(arrays, fused=False, recompute=recompute, with_dc=True)
    cupy_engine.set_graph_replay(graph)
    for _ in range(2):
        got = _run(arrays, fused=True, recompute=recompute, with_dc=True)
        _assert_close(got, expected, 1e-12, "segments")


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_non_default_stream(cp, graph):
    arrays = _on(cp, random_problem(34, *GPU_SHAPES["medium"]), "float32")
    expected = _run(arrays, fused=False, with_dc=True)
    cupy_engine.set_graph_replay(graph)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(2):
            got = _run(arrays, fused=True, with_dc=True)
            _assert_close(got, expected, TOL["float32"], "side stream")


def test_saturating_preactivations_stay_finite(cp):
    prob = random_problem(35, *GPU_SHAPES["medium"], scale=60.0, input_scale=10.0)
    for dtype in ("float32", "float64"):
        got = _run(_on(cp, prob, dtype), fused=True, with_dc=True)
        for key, value in got.items():
            assert np.isfinite(value).all(), (dtype, key)


def test_float16_is_declined_clearly(cp):
    prob = random_problem(36, *GPU_SHAPES["generic"])
    arrays = _on(cp, prob, "float16")
    with pytest.raises(ValueError, match=r"cupy fast path cannot run: dtype float16"):
        xlstm.lstm_forward(arrays["x"], arrays["a0"], arrays["params"], fused=True)
    a, _, _, _ = xlstm.lstm_forward(arrays["x"], arrays["a0"], arrays["params"])  # generic
    assert a.dtype == cp.float16


def test_lengths_and_final_state_gradients_use_the_generic_path(cp):
    """The fused engine has no variable lengths (SUPPORTS_LENGTHS): auto passes it over."""
    arrays = _on(cp, random_problem(37, *GPU_SHAPES["generic"]), "float32")
    lengths = [5, 3, 1, 4]
    args = (arrays["x"], arrays["a0"], arrays["params"], arrays["c0"])
    with pytest.raises(ValueError, match=r"lengths"):
        xlstm.lstm_forward(*args, lengths=lengths, fused=True)
    _a, _, _, caches = xlstm.lstm_forward(*args, lengths=lengths)
    assert caches[0].lengths is not None
    grads = xlstm.lstm_backward(arrays["Ga"], caches)
    assert np.isfinite(to_numpy(grads["dx"])).all()


def test_kernels_are_built_once(cp):
    device = cp.cuda.Device().id
    for dtype in _kernels.C_TYPES:
        assert _kernels.step_kernels(dtype, device) is _kernels.step_kernels(dtype, device)
