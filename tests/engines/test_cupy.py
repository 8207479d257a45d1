"""The CuPy fast path on a GPU: fused kernels and graph replay against references.

Every test here is marked ``gpu`` and skips cleanly without CuPy or a CUDA
device.  References: the generic array-API path on CuPy (``fused=False``), the
NumPy path in float64, and ``torch.nn.LSTM`` on CUDA (cuDNN, packed sequences for
variable lengths) in float64.  Covered: float32/float64/float16, variable-length
batches (lengths 1 and T included) and the reverse direction of the layers,
final-state gradients, the memory-saving (inference) forward, bitwise
identical results run to run and between eager and graph runs, the products
issued through cuBLAS itself (the same bits as ``cupy.matmul``), and no
allocation inside a graph capture.  The same engine is checked without a GPU, with a
NumPy stand-in, in ``tests/engines/test_cupy_cpu.py`` (which also derives the float16
tolerance, ``TOL_FLOAT16 = 8 u``).
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import SEQ_GRAD_KEYS, random_problem, record_worst, rel_err, require_backend, to_numpy

import xlstm
from xlstm._engines import cache as _cache
from xlstm._engines.cupy import _blas, _kernels
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
# float16 storage, float32 math and accumulation, against float64 on the same values:
# a few float16 roundings (u = 2**-11) per step; see tests/engines/test_cupy_cpu.py.
TOL_FLOAT16 = 8 * 2.0**-11
LENGTHS = [5, 1, 3, 5]  # for the "generic" shape (T = 5, m = 4): 1 and T included


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


def _run(arrays, *, fused, recompute=False, with_dc=False, lengths=None, final=False):
    a, y, c, caches = xlstm.lstm_forward(
        arrays["x"],
        arrays["a0"],
        arrays["params"],
        arrays["c0"],
        fused=fused,
        recompute=recompute,
        lengths=lengths,
    )
    dc = arrays["Gc"] if with_dc else None
    finals = {"da_n": arrays["a0"] * 0.5, "dc_n": arrays["c0"] * -0.25} if final else {}
    grads = xlstm.lstm_backward(arrays["Ga"], caches, dc, fused=fused, **finals)
    a_n, c_n = xlstm.final_states(caches)
    outputs = {"a": a, "y": y, "c": c, "a_n": a_n, "c_n": c_n, **grads}
    return {k: to_numpy(v) for k, v in outputs.items()}


def _float64_reference(cp, arrays, **options):
    """The NumPy engine in float64 on the very values of ``arrays`` (any dtype)."""
    host = {k: to_numpy(v).astype(np.float64) for k, v in arrays.items() if k != "params"}
    host["params"] = {k: to_numpy(v).astype(np.float64) for k, v in arrays["params"].items()}
    return _run(host, fused="auto", **options)


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
    graphs = (plan.forward_graph, plan.backward_graphs[("da",)])
    _run(arrays, fused=True)
    assert (plan.forward_graph, plan.backward_graphs[("da",)]) == graphs


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


# --------------------------------------------------------------------------- float16


@pytest.mark.parametrize("shape", ["generic", "medium", "T1", "m1"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_float16_against_float64(cp, shape, recompute, graph):
    """float16 arrays run the fused kernels, within TOL_FLOAT16 of float64."""
    arrays = _on(cp, random_problem(36, *GPU_SHAPES[shape]), "float16")
    options = {"recompute": recompute, "with_dc": True, "final": True}
    reference = _float64_reference(cp, arrays, **options)
    del reference["y"]  # the output layer is the generic code's, not the engine's
    assert xlstm.resolve_engine("cupy", "float16") == "cupy"
    cupy_engine.set_graph_replay(graph)
    for call in range(2):
        fused = _run(arrays, fused=True, **options)
        assert fused["a"].dtype == np.float16
        worst = _assert_close(fused, reference, TOL_FLOAT16, f"float16 {shape} call {call}")
    record_worst("cupy fused float16 vs float64", worst, shape)


def test_float16_with_lengths(cp):
    arrays = _on(cp, random_problem(37, *GPU_SHAPES["generic"]), "float16")
    options = {"with_dc": True, "lengths": LENGTHS, "final": True}
    reference = _float64_reference(cp, arrays, **options)
    del reference["y"]  # the output layer is the generic code's, not the engine's
    worst = _assert_close(
        _run(arrays, fused=True, **options), reference, TOL_FLOAT16, "float16 lengths"
    )
    record_worst("cupy fused float16 vs float64", worst, "lengths")


def test_bfloat16_is_declined_clearly(cp):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    reason = cupy_engine.unsupported_reason(cp, ml_dtypes.bfloat16)
    assert "CuPy has no bfloat16 dtype" in reason


# --------------------------------------------------------------------------- variable lengths


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
@pytest.mark.parametrize("final", [False, True], ids=["no-final", "final"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_lengths_equal_generic_on_cupy(cp, dtype, recompute, final, graph):
    """Sorted rows, shrinking batch: the generic engine's numbers; eager even with replay on."""
    arrays = _on(cp, random_problem(38, *GPU_SHAPES["generic"]), dtype)
    options = {"recompute": recompute, "with_dc": True, "lengths": LENGTHS, "final": final}
    expected = _run(arrays, fused=False, **options)
    cupy_engine.set_graph_replay(graph)
    for call in range(2):
        got = _run(arrays, fused=True, **options)
        worst = _assert_close(got, expected, TOL[dtype], f"lengths call {call}")
    assert len(cupy_engine._PLANS) == 0  # variable-length calls never capture
    record_worst(f"cupy fused lengths vs generic {dtype}", worst, "generic")
    # dx is zero at padded steps (external gradients there are ignored).
    padded = np.arange(5)[None, :] >= np.array(LENGTHS)[:, None]
    assert not got["dx"][:, padded].any()


@pytest.mark.parametrize("lengths", [[1, 1, 1, 1], [5, 5, 5, 4], [2, 3, 1, 2]])
def test_lengths_extremes(cp, lengths):
    """All length 1; all but one full; every sequence shorter than T (steps not run)."""
    arrays = _on(cp, random_problem(39, *GPU_SHAPES["generic"]), "float64")
    options = {"with_dc": True, "lengths": lengths, "final": True}
    _assert_close(
        _run(arrays, fused=True, **options), _run(arrays, fused=False, **options), 1e-12, "lengths"
    )


def test_lengths_cache_order_and_generic_cache(cp):
    """The fused cache is sorted by length; a generic (batch-order) cache goes to generic."""
    arrays = _on(cp, random_problem(40, *GPU_SHAPES["generic"]), "float64")
    args = (arrays["x"], arrays["a0"], arrays["params"], arrays["c0"])
    _, _, _, fused_caches = xlstm.lstm_forward(*args, lengths=LENGTHS, fused=True)
    np.testing.assert_array_equal(fused_caches[0].lengths, [5, 5, 3, 1])
    np.testing.assert_array_equal(fused_caches[0].order, [0, 3, 2, 1])
    _, _, _, generic_caches = xlstm.lstm_forward(*args, lengths=LENGTHS, fused=False)
    with pytest.raises(ValueError, match=r"not sorted by decreasing length"):
        xlstm.lstm_backward(arrays["Ga"], generic_caches, engine="cupy")
    automatic = xlstm.lstm_backward(arrays["Ga"], generic_caches)  # generic engine
    fused = xlstm.lstm_backward(arrays["Ga"], fused_caches)  # CuPy engine
    _assert_close(
        {k: to_numpy(v) for k, v in fused.items()},
        {k: to_numpy(v) for k, v in automatic.items()},
        1e-12,
        "caches",
    )


def test_bidirectional_layers_with_lengths(cp):
    """The reverse direction (inputs reversed within lengths by the layers) on the CuPy engine."""
    rng = np.random.default_rng(41)
    n_x, n_a, m, T = 6, 8, 5, 7
    layers = []
    for layer in range(2):
        n_in = n_x if layer == 0 else 2 * n_a
        for _ in range(2):
            shapes = {**{f"W{g}": (n_a, n_a + n_in) for g in "fico"}}
            shapes.update({f"b{g}": (n_a, 1) for g in "fico"})
            layers.append({k: cp.asarray(0.5 * rng.standard_normal(v)) for k, v in shapes.items()})
    x = cp.asarray(rng.standard_normal((n_x, m, T)))
    d_out = cp.asarray(rng.standard_normal((2 * n_a, m, T)))
    d_a_n = cp.asarray(rng.standard_normal((4, n_a, m)))
    lengths = [7, 1, 4, 7, 2]
    results = {}
    for engine in ("cupy", "generic"):
        out, (a_n, c_n), cache = xlstm.layers.multilayer_forward(
            x, layers, bidirectional=True, lengths=lengths, engine=engine
        )
        grads = xlstm.layers.multilayer_backward(d_out, cache, d_a_n=d_a_n)
        flat = {"out": out, "a_n": a_n, "c_n": c_n, "dx": grads["dx"]}
        for k, layer_grads in enumerate(grads["layers"]):
            flat.update({f"l{k}{name}": v for name, v in layer_grads.items()})
        results[engine] = {key: to_numpy(value) for key, value in flat.items()}
    _assert_close(results["cupy"], results["generic"], 1e-12, "bidirectional")


def test_torch_packed_sequence_oracle(cp):
    """torch.nn.LSTM on packed sequences (CUDA, float64): outputs, final states, gradients."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    n_x, m, T, n_a, n_y = GPU_SHAPES["medium"]
    prob = random_problem(42, n_x, m, T, n_a, n_y)
    lengths = [12, 3, 1, 7, 12, 5, 9, 2]
    arrays = _on(cp, prob, "float64")
    a, _, _, caches = xlstm.lstm_forward(
        arrays["x"], arrays["a0"], arrays["params"], arrays["c0"], lengths=lengths, fused=True
    )
    ours = xlstm.lstm_backward(arrays["Ga"], caches, fused=True)
    a_n, c_n = xlstm.final_states(caches)

    device = torch.device("cuda")
    lstm = torch.nn.LSTM(n_x, n_a, dtype=torch.float64, device=device)
    torch_gates = ("i", "f", "c", "o")  # torch's i, f, g, o as xlstm's key letters
    W = np.concatenate([prob.params[f"W{g}"] for g in torch_gates], axis=0)
    b = np.concatenate([prob.params[f"b{g}"] for g in torch_gates], axis=0)[:, 0]
    with torch.no_grad():
        lstm.weight_hh_l0.copy_(torch.from_numpy(W[:, :n_a]))
        lstm.weight_ih_l0.copy_(torch.from_numpy(W[:, n_a:]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b))
        lstm.bias_hh_l0.zero_()

    def tensor(array):
        return torch.tensor(np.ascontiguousarray(array), device=device, requires_grad=True)

    x = tensor(prob.x.transpose(2, 1, 0))
    h0, c0 = tensor(prob.a0.T[None]), tensor(prob.c0.T[None])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, (h_last, c_last) = lstm(packed, (h0, c0))
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    da = torch.from_numpy(np.ascontiguousarray(prob.Ga.transpose(2, 1, 0))).to(device)
    padded.backward(da)

    def host(t):
        return t.detach().cpu().numpy()

    expected = {
        "a": host(padded).transpose(2, 1, 0),
        "a_n": host(h_last)[0].T,
        "c_n": host(c_last)[0].T,
        "dx": host(x.grad).transpose(2, 1, 0),
        "da0": host(h0.grad)[0].T,
        "dc0": host(c0.grad)[0].T,
    }
    got = {"a": a, "a_n": a_n, "c_n": c_n, **{k: ours[k] for k in ("dx", "da0", "dc0")}}
    worst = _assert_close({k: to_numpy(v) for k, v in got.items()}, expected, 1e-10, "packed")
    record_worst("cupy fused lengths vs torch packed float64", worst, "medium")


# --------------------------------------------------------------------------- inference, determinism


def test_inference_forward_keeps_only_the_states(cp):
    """cache=False runs the memory-saving forward: no gates kept, the same outputs."""
    n_x, m, T, n_a, _ = GPU_SHAPES["medium"]
    arrays = _on(cp, random_problem(43, *GPU_SHAPES["medium"]), "float32")
    args = (arrays["x"], arrays["a0"], arrays["params"], arrays["c0"])
    a_kept, _, _, _ = xlstm.lstm_forward(*args, fused=True)
    a_inference, _, _, caches = xlstm.lstm_forward(*args, fused=True, cache=False)
    assert caches is None
    # Not bitwise: the memory-saving mode projects the inputs in shorter segments.
    assert rel_err(to_numpy(a_inference), to_numpy(a_kept)) <= TOL["float32"]
    pool = cp.get_default_memory_pool()
    W, b = xlstm.parameters.pack(arrays["params"], cp)
    x_tm = arrays["x"].transpose(2, 1, 0)
    cp.cuda.Device().synchronize()
    before = pool.used_bytes()
    cache = cupy_engine.forward(x_tm, arrays["a0"].T, arrays["c0"].T, W, b, recompute=True)
    cp.cuda.Device().synchronize()
    assert cache.gates is None
    assert cache.tanh_c is None
    states = 2 * (T + 1) * m * n_a * 4  # h and c, float32
    gates = 5 * T * m * n_a * 4  # gates and tanh(c), had they been kept
    assert pool.used_bytes() - before < states + gates // 4  # the gate scratch was freed


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("lengths", [None, [12, 3, 1, 7, 12, 5, 9, 2]], ids=["padded", "lengths"])
def test_runs_are_bitwise_identical(cp, graph, dtype, lengths):
    """No atomics anywhere: the same call gives the same bits, whatever ran in between.

    With graph replay the first call captures and later calls replay; every call
    is compared with the first.
    """
    arrays = _on(cp, random_problem(44, *GPU_SHAPES["medium"]), dtype)
    other = _on(cp, random_problem(45, *GPU_SHAPES["medium"]), dtype)
    options = {"with_dc": True, "lengths": lengths, "final": True}
    cupy_engine.set_graph_replay(graph)
    runs = []
    for inputs in (arrays, arrays, other, arrays):
        runs.append(_run(inputs, fused=True, **options))
    for later in (runs[1], runs[3]):
        for key, value in runs[0].items():
            np.testing.assert_array_equal(later[key], value, err_msg=key)


def test_kernels_are_built_once(cp):
    device = cp.cuda.Device().id
    for dtype in _kernels.KERNEL_TYPES:
        assert _kernels.step_kernels(dtype, device) is _kernels.step_kernels(dtype, device)


# --------------------------------------------------------------------------- cuBLAS, capture


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
def test_graph_equals_eager_bitwise(cp, dtype, recompute):
    """Eager and captured products are the same cublasGemmEx calls: the same bits."""
    arrays = _on(cp, random_problem(46, *GPU_SHAPES["medium"]), dtype)
    options = {"recompute": recompute, "with_dc": True, "final": True}
    cupy_engine.set_graph_replay(False)
    eager = _run(arrays, fused=True, **options)
    cupy_engine.set_graph_replay(True)
    for call in range(2):  # capture, replay
        graph = _run(arrays, fused=True, **options)
        for key, value in eager.items():
            np.testing.assert_array_equal(graph[key], value, err_msg=f"{key} call {call}")


# (a shape, a transposed?, b shape, b transposed?): the engine's product layouts
PRODUCTS = {
    "h W_h^T": ((16, 32), False, (32, 128), True),
    "dz W_h": ((16, 128), False, (128, 32), False),
    "dz^T h": ((128, 48), True, (48, 32), False),
    "one row": ((1, 32), False, (32, 128), True),
    "n_x = 1": ((16, 128), False, (128, 1), False),
}


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("name", list(PRODUCTS))
def test_products_give_cupy_matmul_bits(cp, dtype, name):
    """The engine's cublasGemmEx call gives cupy.matmul's bits (same arguments, compute type)."""
    (a_shape, a_t, b_shape, b_t) = PRODUCTS[name]
    rng = np.random.default_rng(47)

    def operand(shape, transposed):
        stored = shape[::-1] if transposed else shape
        array = cp.asarray(rng.standard_normal(stored), dtype=dtype)
        return array.T if transposed else array

    a, b = operand(a_shape, a_t), operand(b_shape, b_t)
    expected = cp.empty((a.shape[0], b.shape[1]), dtype=dtype)
    cp.matmul(a, b, out=expected)
    gemm = cupy_engine._runtime().blas(cp.cuda.Device().id)
    gemm.bind_eager(cp.cuda.get_current_stream().ptr)
    got = cp.full_like(expected, np.nan)
    gemm.matmul(a, b, got)
    np.testing.assert_array_equal(cp.asnumpy(got), cp.asnumpy(expected))
    assert gemm.library.path  # the libcublas CuPy loaded, opened by ctypes


def test_one_by_one_product_under_capture(cp):
    """A 1 x 1 result (cupy.matmul's allocating reduction path) goes through cuBLAS too."""
    arrays = _on(cp, random_problem(48, *GPU_SHAPES["all-ones"]), "float64")
    expected = _run(arrays, fused=False, with_dc=True)
    cupy_engine.set_graph_replay(True)
    for _ in range(2):
        _assert_close(_run(arrays, fused=True, with_dc=True), expected, 1e-12, "1 x 1")


def test_nothing_is_allocated_during_capture(cp):
    """A memory hook sees every pool allocation: none while the capture stream captures."""

    class Allocations(cp.cuda.MemoryHook):
        name = "xlstm_capture_check"

        def __init__(self):
            self.sizes = []  # (bytes, capturing)

        def malloc_preprocess(self, **kwargs):
            capturing = cp.cuda.get_current_stream().is_capturing()
            self.sizes.append((kwargs["mem_size"], capturing))

    arrays = _on(cp, random_problem(49, *GPU_SHAPES["medium"]), "float32")
    cupy_engine.set_graph_replay(True)
    hook = Allocations()
    with hook:
        for recompute in (False, True):
            _run(arrays, fused=True, recompute=recompute, with_dc=True, final=True)
    (plan, *_), count = list(cupy_engine._PLANS._plans.values()), len(cupy_engine._PLANS)
    assert count == 2
    assert plan.forward_graph is not None
    assert [size for size, capturing in hook.sizes if capturing] == []
    assert hook.sizes  # the hook did see the allocations outside the captures


def test_cublas_workspace_and_stream_binding(cp):
    """The engine's handle is its own (not CuPy's), on the current stream, host pointer mode."""
    from cupy_backends.cuda.libs import cublas

    device = cp.cuda.Device().id
    gemm = cupy_engine._runtime().blas(device)
    assert gemm.handle != cp.cuda.device.get_cublas_handle()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        gemm.bind_eager(stream.ptr)
        assert cublas.getStream(gemm.handle) == stream.ptr
        assert cublas.getPointerMode(gemm.handle) == _blas.POINTER_MODE_HOST
        capability = int(cp.cuda.Device(device).compute_capability)
        assert gemm.workspace_bytes == _blas.workspace_bytes(capability)
