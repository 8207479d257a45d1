"""The numba engine (xlstm._engines.numba) against the generic reference, through the public API.

Shape legend (the seed's): x (n_x, m, T); a0, c0 (n_a, m); da, dc (n_a, m, T).

Bounds checked here:

* float64: every output and gradient within 1e-12 relative of the generic engine;
* float32: within ``F32_TOL`` relative of the generic engine in float64, and no further
  from it than ``F32_FACTOR`` times the generic engine's own float32 error plus 1e-6
  (the kernels' float32 ``tanh`` is a rational approximation: see
  :mod:`xlstm._engines.numba.scalar`);
* the kernels' ``tanh``: at most 4 units in the last place in float64 and 8 in float32
  of ``np.tanh`` in float64.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _helpers import SHAPE_IDS, SHAPES, random_problem, record_worst, rel_err, to_numpy

import xlstm
from xlstm import _threads
from xlstm._engines import dispatch
from xlstm._engines.numba import engine as numba_engine
from xlstm.layers import multilayer_backward, multilayer_forward
from xlstm.training import loss_and_gradients

numba = pytest.importorskip("numba")
tanh = pytest.importorskip("xlstm._engines.numba.scalar").tanh

F64_TOL = 1e-12
F32_TOL = 1e-4
F32_FACTOR = 2.0


def _run(problem, engine, dtype="float64", *, recompute=False, lengths=None, with_dc=True,
         final=False):  # fmt: skip
    """Forward and backward through the public API; every output and gradient as NumPy."""
    on = problem.to(np, dtype)
    a, y, c, caches = xlstm.lstm_forward(
        on["x"], on["a0"], on["params"], on["c0"], engine=engine, recompute=recompute,
        lengths=lengths,
    )  # fmt: skip
    a_n, c_n = xlstm.final_states(caches)
    extra = {}
    if final:
        rng = np.random.default_rng(7)
        shape = (problem.n_a, problem.m)
        extra = {"da_n": rng.standard_normal(shape), "dc_n": rng.standard_normal(shape)}
        extra = {k: v.astype(dtype) for k, v in extra.items()}
    grads = xlstm.lstm_backward(
        on["Ga"], caches, on["Gc"] if with_dc else None, engine=engine, **extra
    )
    results = {"a": a, "y": y, "c": c, "a_n": a_n, "c_n": c_n, **grads}
    return {key: to_numpy(value) for key, value in results.items()}


def _worst(got: dict, expected: dict) -> tuple[float, str]:
    errors = {key: rel_err(got[key], expected[key]) for key in expected}
    key = max(errors, key=errors.get)
    return errors[key], key


def _lengths(m: int, t_x: int, seed: int = 0) -> np.ndarray:
    """Random lengths in [1, T] that include 1 and T (when m allows)."""
    lengths = np.random.default_rng(seed).integers(1, t_x + 1, m)
    lengths[0] = t_x
    if m > 1:
        lengths[-1] = 1
    return lengths


@pytest.fixture(params=["fused", "split"])
def product_path(request, monkeypatch):
    """Both ways the forward pass makes the pre-activations, whatever the size: one product
    ``[W | b] [h; x; 1]`` per step, or a per-segment input projection plus ``W_h h``."""
    limit = 1 << 62 if request.param == "fused" else 0
    for dtype in numba_engine.SUPPORTED_DTYPES:
        monkeypatch.setitem(numba_engine.FUSED_PRODUCT, dtype, limit)
    return request.param


# --------------------------------------------------------------------------- float64 = generic


@pytest.mark.parametrize("with_dc", [True, False], ids=["dc", "no-dc"])
@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_float64_equals_generic(shape, recompute, with_dc, product_path):
    n_x, m, t_x, n_a, n_y = shape
    problem = random_problem(1, n_x, m, t_x, n_a, n_y)
    got = _run(problem, "numba", recompute=recompute, with_dc=with_dc)
    expected = _run(problem, "generic", recompute=recompute, with_dc=with_dc)
    err, key = _worst(got, expected)
    record_worst("numba vs generic float64", err, f"{shape} recompute={recompute} {key}")
    assert err <= F64_TOL, key


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
@pytest.mark.parametrize("shape", [(3, 7, 9, 4, 2), (2, 1, 5, 3, 2), (4, 6, 1, 2, 2)])
def test_lengths_and_final_state_gradients_equal_generic(shape, recompute, product_path):
    n_x, m, t_x, n_a, n_y = shape
    problem = random_problem(2, n_x, m, t_x, n_a, n_y)
    lengths = _lengths(m, t_x)
    got = _run(problem, "numba", recompute=recompute, lengths=lengths, final=True)
    expected = _run(problem, "generic", recompute=recompute, lengths=lengths, final=True)
    err, key = _worst(got, expected)
    record_worst("numba vs generic float64, lengths", err, f"{shape} {key}")
    assert err <= F64_TOL, key
    for j, length in enumerate(lengths):
        assert np.all(got["dx"][:, j, length:] == 0)
        assert np.all(got["a"][:, j, length:] == 0)


def test_final_state_gradients_without_lengths_add_to_the_last_step():
    problem = random_problem(3, 3, 4, 6, 5, 2)
    got = _run(problem, "numba", final=True)
    expected = _run(problem, "generic", final=True)
    err, key = _worst(got, expected)
    assert err <= F64_TOL, key


def test_rows_sorted_by_length_are_recorded_in_the_cache():
    problem = random_problem(4, 3, 5, 6, 4, 2)
    on = problem.to(np)
    lengths = np.array([2, 6, 1, 4, 6])
    _, _, _, (cache, _) = xlstm.lstm_forward(
        on["x"], on["a0"], on["params"], on["c0"], engine="numba", lengths=lengths
    )
    np.testing.assert_array_equal(cache.order, np.argsort(-lengths, kind="stable"))
    np.testing.assert_array_equal(cache.lengths, lengths[cache.order])
    # Standard shapes (views of the engine's own layout), readable by every engine.
    t_x, m, n_a = 6, 5, 4
    assert cache.h.shape == cache.c.shape == (t_x + 1, m, n_a)
    assert cache.gates.shape == (t_x, m, 4 * n_a)
    assert cache.tanh_c.shape == (t_x, m, n_a)


# --------------------------------------------------------------------------- float32


@pytest.mark.parametrize("lengths_id", ["padded", "lengths"])
@pytest.mark.parametrize("shape", [(3, 4, 5, 5, 2), (8, 16, 50, 32, 3), (16, 8, 60, 64, 3)])
def test_float32_is_as_close_to_the_float64_reference_as_generic_float32(
    shape, lengths_id, product_path
):
    n_x, m, t_x, n_a, n_y = shape
    problem = random_problem(5, n_x, m, t_x, n_a, n_y)
    lengths = _lengths(m, t_x) if lengths_id == "lengths" else None
    reference = _run(problem, "generic", "float64", lengths=lengths, final=True)
    ours, _ = _worst(_run(problem, "numba", "float32", lengths=lengths, final=True), reference)
    theirs, _ = _worst(_run(problem, "generic", "float32", lengths=lengths, final=True), reference)
    record_worst("numba float32 vs float64 reference", ours, f"{shape} {lengths_id}")
    assert ours <= F32_TOL
    assert ours <= F32_FACTOR * theirs + 1e-6, (ours, theirs)


@numba.njit(error_model="numpy")
def _tanh_of(values, out):
    for index in range(values.shape[0]):
        out[index] = tanh(values[index])


@pytest.mark.parametrize(("dtype", "max_ulps"), [("float64", 4.0), ("float32", 8.0)])
def test_kernel_tanh_accuracy(dtype, max_ulps):
    """The kernels' tanh against np.tanh in float64, in units of the result's last place."""
    rng = np.random.default_rng(0)
    dense = np.linspace(-25.0, 25.0, 400_001)
    tiny = np.logspace(-30, 1.5, 20_001)
    values = np.concatenate([dense, tiny, -tiny, 5 * rng.standard_normal(100_000), [0.0, 0.625]])
    values = values.astype(dtype)
    out = np.empty_like(values)
    _tanh_of(values, out)
    reference = np.tanh(values.astype(np.float64))
    ulp = np.spacing(np.abs(reference).astype(dtype)).astype(np.float64)
    ulps = np.abs(out.astype(np.float64) - reference) / ulp
    record_worst(f"kernel tanh {dtype} (ulps)", float(ulps.max()), dtype)
    assert ulps.max() <= max_ulps
    # Saturation and special values.
    special = np.array([40.0, -40.0, 1e30, -1e30, np.inf, -np.inf], dtype)
    out = np.empty_like(special)
    _tanh_of(special, out)
    np.testing.assert_array_equal(out, np.sign(special))
    nan = np.array([np.nan], dtype)
    _tanh_of(nan, nan)
    assert np.isnan(nan[0])


# --------------------------------------------------------------------------- caches between engines


@pytest.mark.parametrize("lengths_id", ["padded", "sorted", "unsorted"])
@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
@pytest.mark.parametrize(
    ("forward_engine", "backward_engine"),
    [("numba", "generic"), ("numba", "numpy"), ("generic", "numba"), ("numpy", "numba")],
)
def test_caches_move_between_engines(
    forward_engine, backward_engine, recompute, lengths_id, monkeypatch
):
    """Every engine reads the numba engine's caches; the numba engine reads every padded
    cache and those whose rows are sorted by length, and refuses the others cleanly."""
    threadpool_limits = pytest.importorskip("threadpoolctl").threadpool_limits
    # m = 20 and two BLAS threads: the NumPy engine stores a variable-length batch as two
    # groups of rows (two runs of decreasing lengths), which the numba engine refuses.
    monkeypatch.setattr(_threads, "MIN_WORK", 0)
    n_x, m, t_x, n_a = 3, 20, 7, 4
    problem = random_problem(6, n_x, m, t_x, n_a, 2)
    lengths = {
        "padded": None,
        "sorted": np.sort(_lengths(m, t_x))[::-1].copy(),
        "unsorted": _lengths(m, t_x),
    }[lengths_id]
    on = problem.to(np)
    final = {"da_n": on["a0"], "dc_n": on["c0"]}

    def gradients(engine_forward, engine_backward):
        with threadpool_limits(2, user_api="blas"):
            _, _, _, caches = xlstm.lstm_forward(
                on["x"], on["a0"], on["params"], on["c0"], engine=engine_forward,
                recompute=recompute, lengths=lengths,
            )  # fmt: skip
        stored = caches[0].lengths
        if engine_backward == "numba" and stored is not None and np.any(np.diff(stored) > 0):
            with pytest.raises(ValueError, match=r"`engine='numba'` cannot run.*not sorted"):
                xlstm.lstm_backward(on["Ga"], caches, on["Gc"], engine="numba", **final)
            return None
        grads = xlstm.lstm_backward(on["Ga"], caches, on["Gc"], engine=engine_backward, **final)
        return {key: to_numpy(value) for key, value in grads.items()}

    expected = gradients("generic", "generic")
    got = gradients(forward_engine, backward_engine)
    if got is None:
        assert lengths_id != "padded"
        return
    err, key = _worst(got, expected)
    assert err <= F64_TOL, key


@pytest.mark.parametrize(
    ("forward_engine", "lengths", "expected"),
    [
        ("numba", [4, 1, 3, 2, 4], "numba"),
        ("generic", None, "numba"),
        ("generic", [4, 4, 3, 2, 1], "numba"),
        ("generic", [4, 1, 3, 2, 4], "generic"),
        ("numpy", None, "numba"),
        ("numpy", [4, 1, 3, 2, 4], "numba"),  # one group, rows sorted: SequenceCache.order
    ],
)
def test_auto_backward_picks_an_engine_that_reads_the_cache(forward_engine, lengths, expected):
    problem = random_problem(7, 3, 5, 4, 3, 2)
    on = problem.to(np)
    _, _, _, caches = xlstm.lstm_forward(
        on["x"], on["a0"], on["params"], engine=forward_engine, lengths=lengths
    )
    assert dispatch.select_engine(np, np.float64, "auto", cache=caches[0]).name == expected
    got = xlstm.lstm_backward(on["Ga"], caches)
    reference = xlstm.lstm_backward(on["Ga"], caches, engine="generic")
    err, key = _worst(got, reference)
    assert err <= F64_TOL, key


def test_backward_called_directly_refuses_an_unsorted_cache():
    problem = random_problem(14, 3, 4, 5, 3, 2)
    on = problem.to(np)
    _, _, _, (cache, x) = xlstm.lstm_forward(
        on["x"], on["a0"], on["params"], engine="generic", lengths=[2, 5, 1, 3]
    )
    da = on["Ga"].transpose(2, 1, 0)
    with pytest.raises(ValueError, match=r"cannot read this cache.*not sorted"):
        numba_engine.backward(cache, x.transpose(2, 1, 0), da, None)


# --------------------------------------------------------------------------- layers and training


@pytest.mark.parametrize("lengths_id", ["padded", "lengths"])
def test_bidirectional_multilayer_equals_generic(lengths_id, monkeypatch, product_path):
    threadpool_limits = pytest.importorskip("threadpoolctl").threadpool_limits
    n_x, n_a, m, t_x, layers_count = 3, 5, 6, 7, 2
    rng = np.random.default_rng(8)
    layers = []
    for index in range(2 * layers_count):
        n_in = n_x if index < 2 else 2 * n_a
        layer = {}
        for gate in "fico":
            layer[f"W{gate}"] = 0.5 * rng.standard_normal((n_a, n_a + n_in))
            layer[f"b{gate}"] = 0.5 * rng.standard_normal((n_a, 1))
        layers.append(layer)
    x = rng.standard_normal((n_x, m, t_x))
    d_out = rng.standard_normal((2 * n_a, m, t_x))
    d_final = rng.standard_normal((2 * layers_count, n_a, m))
    lengths = _lengths(m, t_x) if lengths_id == "lengths" else None
    # The two directions run in two threads even at this size.
    monkeypatch.setattr(_threads, "MIN_WORK", 0)

    def run(engine):
        out, (a_n, c_n), cache = multilayer_forward(
            x, layers, bidirectional=True, lengths=lengths, engine=engine
        )
        grads = multilayer_backward(d_out, cache, d_final, d_final)
        flat = {"out": out, "a_n": a_n, "c_n": c_n, "dx": grads["dx"], "da0": grads["da0"]}
        for index, layer in enumerate(grads["layers"]):
            flat.update({f"{key}_{index}": value for key, value in layer.items()})
        return flat

    with threadpool_limits(2, user_api="blas"):
        got = run("numba")
    expected = run("generic")
    err, key = _worst(got, expected)
    record_worst("numba layers vs generic", err, f"{lengths_id} {key}")
    assert err <= F64_TOL, key


def test_training_loss_equals_generic():
    n_x, n_a, n_y, m, t_x = 6, 5, 6, 4, 8
    rng = np.random.default_rng(9)
    parameters = xlstm.init_parameters(n_x, n_a, n_y, dtype="float64", seed=3)
    ids = rng.integers(0, n_x, (m, t_x))
    x = np.eye(n_x)[ids].transpose(2, 0, 1)
    targets = rng.integers(0, n_y, (m, t_x))
    mask = rng.random((m, t_x)) > 0.2
    results = {}
    for engine in ("numba", "generic"):
        loss, grads, (a_n, c_n) = loss_and_gradients(
            x, targets, parameters, mask=mask, engine=engine
        )
        results[engine] = {"loss": np.asarray(loss), "a_n": a_n, "c_n": c_n, **grads}
    err, key = _worst(results["numba"], results["generic"])
    assert err <= F64_TOL, key


# --------------------------------------------------------------------------- contract


def test_deterministic_and_inputs_not_mutated():
    problem = random_problem(10, 24, 16, 30, 48, 3)
    on = problem.to(np, "float32")
    lengths = _lengths(16, 30)
    before = {key: value.copy() for key, value in on.items() if key != "params"}
    params_before = {key: value.copy() for key, value in on["params"].items()}
    lengths_before = lengths.copy()

    def run():
        a, y, c, caches = xlstm.lstm_forward(
            on["x"], on["a0"], on["params"], on["c0"], engine="numba", lengths=lengths
        )
        first = xlstm.lstm_backward(on["Ga"], caches, on["Gc"], engine="numba")
        # Backward leaves the cache as it was: a second call gives the same gradients.
        second = xlstm.lstm_backward(on["Ga"], caches, on["Gc"], engine="numba")
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])
        return {"a": a, "y": y, "c": c, **first}

    one, two = run(), run()
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])
    for key, value in before.items():
        np.testing.assert_array_equal(on[key], value)
    for key, value in params_before.items():
        np.testing.assert_array_equal(on["params"][key], value)
    np.testing.assert_array_equal(lengths, lengths_before)


@pytest.mark.parametrize("batch_split", [False, True], ids=["whole", "batch-split"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
def test_bitwise_reproducible_with_one_and_two_blas_threads(
    dtype, recompute, batch_split, monkeypatch
):
    """The same bits whatever the BLAS thread count, run after run.

    The per-step products here are large enough for OpenBLAS to split them between two
    threads (it splits rows and columns, never the sum of one element), and the kernels
    are element-wise.
    """
    threadpoolctl = pytest.importorskip("threadpoolctl")
    on = random_problem(21, 48, 64, 14, 96, 2).to(np, dtype)
    # With the batch split allowed, two BLAS threads split this batch (m = 64).
    monkeypatch.setattr(numba_engine, "BATCH_SPLIT", batch_split)
    lengths = _lengths(64, 14)

    def run():
        out = {}
        for with_lengths in (None, lengths):
            a, y, c, caches = xlstm.lstm_forward(
                on["x"], on["a0"], on["params"], on["c0"], engine="numba",
                recompute=recompute, lengths=with_lengths,
            )  # fmt: skip
            _, _, _, none = xlstm.lstm_forward(
                on["x"], on["a0"], on["params"], on["c0"], engine="numba", cache=False,
                lengths=with_lengths,
            )  # fmt: skip
            assert none is None
            grads = xlstm.lstm_backward(on["Ga"], caches, on["Gc"], engine="numba")
            tag = "padded" if with_lengths is None else "lengths"
            out.update({f"{tag} {key}": value for key, value in {"a": a, "y": y, "c": c}.items()})
            out.update({f"{tag} {key}": value for key, value in grads.items()})
        return out

    results = []
    for threads in (1, 2, 1, 2):
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            results.append(run())
    for other in results[1:]:
        for key, value in results[0].items():
            np.testing.assert_array_equal(other[key], value, err_msg=key)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "split-products"])
@pytest.mark.parametrize("m", [64, 37])
def test_batch_split_gives_the_whole_batch_bits(dtype, fused, m):
    """The two halves of the batch in two threads: the same h and c, bit for bit."""
    rng = np.random.default_rng(5)
    t_x, n_x, n_a = 9, 12, 20
    x = rng.standard_normal((n_x, m, t_x)).astype(dtype)
    h0 = rng.standard_normal((m, n_a)).astype(dtype)
    c0 = rng.standard_normal((m, n_a)).astype(dtype)
    W = (0.3 * rng.standard_normal((4 * n_a, n_a + n_x))).astype(dtype)
    b = rng.standard_normal(4 * n_a).astype(dtype)
    x_tm = x.transpose(2, 1, 0)

    def run(split):
        return numba_engine._forward(
            x_tm, h0, c0, W, b, recompute=True, lengths=None, fused=fused, split=split
        )

    whole, halves = run(False), run(True)
    assert whole.gates is None
    assert halves.gates is None
    np.testing.assert_array_equal(halves.h, whole.h)
    np.testing.assert_array_equal(halves.c, whole.c)


def test_batch_split_runs_only_where_it_pays(monkeypatch):
    monkeypatch.setattr(_threads, "pair_is_parallel", lambda work: True)
    monkeypatch.setattr(numba_engine, "BATCH_SPLIT", False)
    assert not numba_engine._split_batch(100, 64, 256, 256, recompute=True, lengths=None)
    monkeypatch.setattr(numba_engine, "BATCH_SPLIT", True)
    split = numba_engine._split_batch
    assert split(100, 64, 256, 256, recompute=True, lengths=None)  # S3
    assert not split(100, 64, 256, 256, recompute=False, lengths=None)  # cache keeps gates
    assert not split(100, 64, 256, 256, recompute=True, lengths=np.full(64, 100))
    assert not split(100, 32, 128, 64, recompute=True, lengths=None)  # S2: half batch small
    assert not split(20, 64, 1024, 1024, recompute=True, lengths=None)  # S5: products rule
    monkeypatch.setattr(_threads, "pair_is_parallel", lambda work: False)
    assert not split(100, 64, 256, 256, recompute=True, lengths=None)  # no second core


def test_two_threads_at_once_give_the_sequential_results():
    problems = [random_problem(seed, 6, 8, 20, 16, 2).to(np, "float32") for seed in (11, 12)]

    def run(on):
        _, _, _, caches = xlstm.lstm_forward(on["x"], on["a0"], on["params"], engine="numba")
        grads = xlstm.lstm_backward(on["Ga"], caches, on["Gc"], engine="numba")
        return {key: to_numpy(value) for key, value in grads.items()}

    sequential = [run(on) for on in problems]
    threaded: list = [None, None]
    barrier = threading.Barrier(2)

    def body(index):
        barrier.wait()
        for _ in range(5):
            threaded[index] = run(problems[index])

    threads = [threading.Thread(target=body, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, expected in zip(threaded, sequential, strict=True):
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def test_auto_picks_numba_for_float32_and_float64_and_numpy_otherwise():
    assert xlstm.resolve_engine("numpy", "float32") == "numba"
    assert xlstm.resolve_engine("numpy", "float64") == "numba"
    assert xlstm.resolve_engine("numpy", "float16") == "numpy"
    assert xlstm.resolve_engine("numpy", "float64", lengths=True, final_state_grads=True) == "numba"


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
def test_two_stage_copy_of_large_steps_equals_generic(recompute, monkeypatch):
    """The step-major copy through a feature-major block (large steps) gives the same."""
    monkeypatch.setattr(numba_engine, "TWO_STAGE_COPY_BYTES", 0)
    problem = random_problem(8, 6, 5, 9, 7, 2)
    got = _run(problem, "numba", recompute=recompute, final=True)
    expected = _run(problem, "generic", recompute=recompute, final=True)
    err, key = _worst(got, expected)
    assert err <= F64_TOL, key


def test_per_step_products_run_on_numpys_own_blas():
    """One BLAS library and thread pool for every product (see loops.numpy_gemm_addresses)."""
    from xlstm._engines.numba import blas

    if not blas.numpy_blas_libraries():
        pytest.skip("this NumPy bundles no OpenBLAS (built against another BLAS)")
    single, double = blas.numpy_gemm_addresses()
    assert single != 0
    assert double != 0


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
def test_scipy_blas_fallback_equals_generic(recompute, monkeypatch):
    """Where NumPy's BLAS is not found the loops call SciPy's: same results."""
    monkeypatch.setattr(numba_engine, "_gemm_address", lambda dtype: 0)
    problem = random_problem(4, 5, 6, 7, 8, 2)
    lengths = _lengths(6, 7)
    for with_lengths in (None, lengths):
        got = _run(problem, "numba", recompute=recompute, lengths=with_lengths, final=True)
        expected = _run(problem, "generic", recompute=recompute, lengths=with_lengths, final=True)
        err, key = _worst(got, expected)
        assert err <= F64_TOL, key


def test_without_numpys_blas_or_scipy_auto_gives_the_numpy_engine(monkeypatch):
    """No BLAS for the compiled loops to call: the engine declines by name."""
    monkeypatch.setattr(numba_engine, "_has_scipy_blas", lambda: False)
    monkeypatch.setattr(numba_engine.blas, "numpy_gemm_addresses", lambda: (0, 0))
    assert "SciPy" in numba_engine.unsupported_reason(np, "float32")
    assert xlstm.resolve_engine("numpy", "float32") == "numpy"
    with pytest.raises(ValueError, match="SciPy"):
        xlstm.resolve_engine("numpy", "float32", "numba")


def test_unsupported_dtype_is_a_value_error_when_named():
    with pytest.raises(ValueError, match=r"`engine='numba'` cannot run.*float32 and float64 only"):
        xlstm.resolve_engine("numpy", "float16", "numba")
    with pytest.raises(ValueError, match=r"`dtype` = 'int32'.*float32 and float64 only"):
        numba_engine.compile_seconds("int32")


def test_torch_arrays_are_a_value_error():
    torch = pytest.importorskip("torch")
    problem = random_problem(13, 3, 2, 4, 3, 2)
    on = problem.to(xlstm.get_namespace("torch"))
    with pytest.raises(ValueError, match=r"`engine='numba'` cannot run.*numpy arrays.*torch"):
        xlstm.lstm_forward(on["x"], on["a0"], on["params"], engine="numba")
    assert isinstance(on["x"], torch.Tensor)


def test_compile_seconds_reports_the_start_up_cost_once():
    first = numba_engine.compile_seconds("float64")
    again = numba_engine.compile_seconds("float64")
    assert first >= 0.0
    assert again < 1.0
