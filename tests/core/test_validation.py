"""Bad input fails early with a clear error naming the argument; inputs are never modified.

TypeError: None, non-arrays, integer/bool/complex dtypes, mixed libraries, mixed float dtypes.
ValueError: wrong ndim or shape, size mismatches, T_x = 0 or m = 0.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import PARAM_KEYS, SEQ_GRAD_KEYS, random_problem, require_backend, to_numpy

import xlstm

N_X, M, T, N_A, N_Y = 3, 4, 5, 6, 2  # n_a != m and n_x != n_y so swapped axes are caught

BOTH = r"(?s)(?=.*numpy)(?=.*torch)"  # message names both libraries


def problem(seed=0):
    return random_problem(seed, N_X, M, T, N_A, N_Y)


def np_args():
    p = problem()
    return p.x, p.a0, dict(p.params), p.c0


def forward_caches():
    x, a0, params, c0 = np_args()
    return xlstm.lstm_forward(x, a0, params, c0)[3]


def cell_args():
    x, a0, params, c0 = np_args()
    return x[:, :, 0], a0, c0, params


# ---------------------------------------------------------------------------------------------
# Shapes (ValueError)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [
        ("x", (N_X, M)),  # 2-D
        ("x", (N_X, M, T, 1)),  # 4-D
        ("x", (N_X + 1, M, T)),  # n_x mismatch with the weights
        ("a0", (N_A + 1, M)),
        ("a0", (N_A, M + 1)),  # batch mismatch
        ("a0", (M, N_A)),  # transposed
        ("a0", (N_A, M, 1)),
        ("a0", (N_A,)),
        ("c0", (N_A + 1, M)),
        ("c0", (N_A, M + 1)),
        ("c0", (N_A, M, 1)),
    ],
)
def test_forward_bad_shape(name, bad_shape):
    x, a0, params, c0 = np_args()
    args = {"x": x, "a0": a0, "c0": c0}
    args[name] = np.zeros(bad_shape)
    with pytest.raises(ValueError, match=rf"`{name}`"):
        xlstm.lstm_forward(args["x"], args["a0"], params, args["c0"])


def test_forward_bad_shape_every_backend(xp):
    p = problem().to(xp)
    with pytest.raises(ValueError, match=r"`a0`"):
        xlstm.lstm_forward(p["x"], p["a0"][:, :-1], p["params"], p["c0"])
    with pytest.raises(ValueError, match=r"`x`"):
        xlstm.lstm_forward(p["x"][:, :, 0], p["a0"], p["params"])


def _bad_parameter_shapes(key):
    n = N_A + N_X
    good = {
        **{k: (N_A, n) for k in ("Wf", "Wi", "Wc", "Wo")},
        **{k: (N_A, 1) for k in ("bf", "bi", "bc", "bo")},
        "Wy": (N_Y, N_A),
        "by": (N_Y, 1),
    }[key]
    shapes = [(*good, 1), (good[0] * good[1],)]  # wrong ndim: 3-D and 1-D
    if key.startswith("W") and key != "Wy":
        shapes += [(N_A, n + 1), (N_A + 1, n)]
    elif key == "Wy":
        shapes += [(N_Y, N_A + 1)]
    elif key == "by":
        shapes += [(N_Y + 1, 1)]
    else:
        shapes += [(N_A + 1, 1), (1, N_A)]
    return shapes


@pytest.mark.parametrize(
    ("key", "bad_shape"),
    [pytest.param(k, s, id=f"{k}-{s}") for k in PARAM_KEYS for s in _bad_parameter_shapes(k)],
)
def test_parameter_bad_shape_names_the_key(key, bad_shape):
    x, a0, params, c0 = np_args()
    params[key] = np.zeros(bad_shape)
    with pytest.raises(ValueError, match=rf"\b{key}\b"):
        xlstm.lstm_forward(x, a0, params, c0)
    xt, a_prev, c_prev, _ = cell_args()
    with pytest.raises(ValueError, match=rf"\b{key}\b"):
        xlstm.lstm_cell_forward(xt, a_prev, c_prev, params)


@pytest.mark.parametrize("key", PARAM_KEYS)
def test_missing_parameter_names_the_key(key):
    x, a0, params, c0 = np_args()
    del params[key]
    with pytest.raises(ValueError, match=rf"\b{key}\b"):
        xlstm.lstm_forward(x, a0, params, c0)
    xt, a_prev, c_prev, _ = cell_args()
    with pytest.raises(ValueError, match=rf"\b{key}\b"):
        xlstm.lstm_cell_forward(xt, a_prev, c_prev, params)


@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [
        ("xt", (N_X,)),
        ("xt", (N_X, M, 1)),
        ("xt", (N_X + 1, M)),
        ("a_prev", (N_A + 1, M)),
        ("a_prev", (N_A, M + 1)),
        ("c_prev", (N_A, M + 1)),
        ("c_prev", (N_A,)),
    ],
)
def test_cell_forward_bad_shape(name, bad_shape):
    xt, a_prev, c_prev, params = cell_args()
    args = {"xt": xt, "a_prev": a_prev, "c_prev": c_prev}
    args[name] = np.zeros(bad_shape)
    with pytest.raises(ValueError, match=rf"`{name}`"):
        xlstm.lstm_cell_forward(args["xt"], args["a_prev"], args["c_prev"], params)


@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [
        ("da", (N_A, M)),
        ("da", (N_A, M, T + 1)),
        ("da", (N_A + 1, M, T)),
        ("da", (N_A, M + 1, T)),
        ("da", (M, N_A, T)),
        ("dc", (N_A, M, T - 1)),
        ("dc", (N_A, M)),
        ("dc", (N_A + 1, M, T)),
    ],
)
def test_backward_bad_shape(name, bad_shape):
    caches = forward_caches()
    args = {"da": np.ones((N_A, M, T)), "dc": np.ones((N_A, M, T))}
    args[name] = np.zeros(bad_shape)
    with pytest.raises(ValueError, match=rf"`{name}`"):
        xlstm.lstm_backward(args["da"], caches, args["dc"])


@pytest.mark.parametrize(
    ("name", "bad_shape"),
    [("da_next", (N_A, M + 1)), ("da_next", (N_A,)), ("dc_next", (N_A + 1, M))],
)
def test_cell_backward_bad_shape(name, bad_shape):
    cache = xlstm.lstm_cell_forward(*cell_args())[3]
    args = {"da_next": np.ones((N_A, M)), "dc_next": np.ones((N_A, M))}
    args[name] = np.zeros(bad_shape)
    with pytest.raises(ValueError, match=rf"`{name}`"):
        xlstm.lstm_cell_backward(args["da_next"], args["dc_next"], cache)


@pytest.mark.parametrize("what", ["T_x", "m"])
def test_empty_sequence_or_batch_rejected(xp, what):
    p = problem()
    x, a0, c0 = p.x, p.a0, p.c0
    if what == "T_x":
        x = x[:, :, :0]
    else:
        x, a0, c0 = x[:, :0, :], a0[:, :0], c0[:, :0]
    args = [xp.asarray(v, dtype=xp.float64) for v in (x, a0)]
    params = {k: xp.asarray(v, dtype=xp.float64) for k, v in p.params.items()}
    pattern = r"T_x = 0" if what == "T_x" else r"m = 0"
    with pytest.raises(ValueError, match=pattern):
        xlstm.lstm_forward(*args, params)
    with pytest.raises(ValueError, match=pattern):
        xlstm.lstm_forward(*args, params, xp.asarray(c0, dtype=xp.float64))
    if what == "m":
        with pytest.raises(ValueError, match=pattern):
            xlstm.lstm_cell_forward(args[0][:, :, 0], args[1], args[1], params)


# ---------------------------------------------------------------------------------------------
# Types and dtypes (TypeError)
# ---------------------------------------------------------------------------------------------
BAD_DTYPES = [np.int64, np.int32, np.bool_, np.complex128]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["x", "a0", "c0", "Wf", "by"])
def test_forward_bad_dtype(name, dtype):
    x, a0, params, c0 = np_args()
    args = {"x": x, "a0": a0, "c0": c0, **params}
    args[name] = args[name].astype(dtype)
    params = {k: args[k] for k in PARAM_KEYS}
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        xlstm.lstm_forward(args["x"], args["a0"], params, args["c0"])


def test_bad_dtype_every_backend(xp):
    p = problem().to(xp)
    with pytest.raises(TypeError, match=r"`x`"):
        xlstm.lstm_forward(xp.astype(p["x"], xp.int32), p["a0"], p["params"])
    with pytest.raises(TypeError, match=r"`a0`"):
        xlstm.lstm_forward(p["x"], xp.astype(p["a0"], xp.bool), p["params"])
    with pytest.raises(TypeError, match=r"`x`"):
        xlstm.sigmoid(xp.asarray([1, 2, 3]))


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["xt", "a_prev", "c_prev", "Wo"])
def test_cell_forward_bad_dtype(name, dtype):
    xt, a_prev, c_prev, params = cell_args()
    args = {"xt": xt, "a_prev": a_prev, "c_prev": c_prev, **params}
    args[name] = args[name].astype(dtype)
    params = {k: args[k] for k in PARAM_KEYS}
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        xlstm.lstm_cell_forward(args["xt"], args["a_prev"], args["c_prev"], params)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_backward_bad_dtype(dtype):
    caches = forward_caches()
    good = np.ones((N_A, M, T))
    with pytest.raises(TypeError, match=r"`da`"):
        xlstm.lstm_backward(good.astype(dtype), caches)
    with pytest.raises(TypeError, match=r"`dc`"):
        xlstm.lstm_backward(good, caches, good.astype(dtype))
    cache = xlstm.lstm_cell_forward(*cell_args())[3]
    with pytest.raises(TypeError, match=r"`da_next`"):
        xlstm.lstm_cell_backward(good[:, :, 0].astype(dtype), good[:, :, 0], cache)
    with pytest.raises(TypeError, match=r"`dc_next`"):
        xlstm.lstm_cell_backward(good[:, :, 0], good[:, :, 0].astype(dtype), cache)


@pytest.mark.parametrize("name", ["x", "a0", "parameters", *PARAM_KEYS])
def test_forward_none(name):
    x, a0, params, c0 = np_args()
    args = {"x": x, "a0": a0, "parameters": params}
    if name in PARAM_KEYS:
        params[name] = None
    else:
        args[name] = None
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        xlstm.lstm_forward(args["x"], args["a0"], args["parameters"], c0)


@pytest.mark.parametrize("name", ["x", "a0", "parameters"])
def test_forward_not_an_array(name):
    x, a0, params, c0 = np_args()
    args = {"x": x, "a0": a0, "parameters": params}
    args[name] = "not an array" if name != "parameters" else [params[k] for k in PARAM_KEYS]
    with pytest.raises(TypeError, match=rf"`{name}`"):
        xlstm.lstm_forward(args["x"], args["a0"], args["parameters"], c0)


def test_python_lists_are_not_arrays():
    x, a0, params, c0 = np_args()
    with pytest.raises(TypeError, match=r"`x`"):
        xlstm.lstm_forward(x.tolist(), a0, params, c0)


@pytest.mark.parametrize("name", ["xt", "a_prev", "c_prev", "parameters"])
def test_cell_forward_none(name):
    xt, a_prev, c_prev, params = cell_args()
    args = {"xt": xt, "a_prev": a_prev, "c_prev": c_prev, "parameters": params}
    args[name] = None
    with pytest.raises(TypeError, match=rf"`{name}`"):
        xlstm.lstm_cell_forward(args["xt"], args["a_prev"], args["c_prev"], args["parameters"])


def test_backward_none_and_bad_caches():
    caches = forward_caches()
    good = np.ones((N_A, M, T))
    with pytest.raises(TypeError, match=r"`da`"):
        xlstm.lstm_backward(None, caches)
    for bad in (None, caches[0], list(caches), (caches[1], caches[0])):
        with pytest.raises(TypeError, match=r"`caches`"):
            xlstm.lstm_backward(good, bad)
    cell_cache = xlstm.lstm_cell_forward(*cell_args())[3]
    with pytest.raises(TypeError, match=r"`da_next`"):
        xlstm.lstm_cell_backward(None, good[:, :, 0], cell_cache)
    with pytest.raises(TypeError, match=r"`dc_next`"):
        xlstm.lstm_cell_backward(good[:, :, 0], None, cell_cache)
    for bad in (None, caches, tuple(cell_cache)[:9]):
        with pytest.raises(TypeError, match=r"`cache`"):
            xlstm.lstm_cell_backward(good[:, :, 0], good[:, :, 0], bad)


def test_mixed_libraries_forward():
    torch = require_backend("torch")
    x, a0, params, c0 = np_args()
    t_params = {k: torch.asarray(v) for k, v in params.items()}
    with pytest.raises(TypeError, match=BOTH):
        xlstm.lstm_forward(x, a0, t_params, c0)
    with pytest.raises(TypeError, match=BOTH):
        xlstm.lstm_forward(torch.asarray(x), a0, t_params)
    with pytest.raises(TypeError, match=BOTH):
        xlstm.lstm_forward(x, a0, params, torch.asarray(c0))
    mixed = dict(params, Wc=torch.asarray(params["Wc"]))
    with pytest.raises(TypeError, match=BOTH):
        xlstm.lstm_forward(x, a0, mixed, c0)
    with pytest.raises(TypeError, match=BOTH):
        xlstm.lstm_cell_forward(x[:, :, 0], a0, c0, t_params)


def test_mixed_libraries_backward():
    torch = require_backend("torch")
    caches = forward_caches()
    good = np.ones((N_A, M, T))
    with pytest.raises(TypeError, match=BOTH):
        xlstm.lstm_backward(torch.asarray(good), caches)
    with pytest.raises(TypeError, match=BOTH):
        xlstm.lstm_backward(good, caches, torch.asarray(good))
    cache = xlstm.lstm_cell_forward(*cell_args())[3]
    with pytest.raises(TypeError, match=BOTH):
        xlstm.lstm_cell_backward(torch.asarray(good[:, :, 0]), good[:, :, 0], cache)


@pytest.mark.parametrize("other", ["jax", "array_api_strict"])
def test_mixed_libraries_other_backends(other):
    ns = require_backend(other)
    x, a0, params, c0 = np_args()
    lib = "jax" if other == "jax" else "array_api_strict"
    with pytest.raises(TypeError, match=rf"(?s)(?=.*numpy)(?=.*{lib})"):
        xlstm.lstm_forward(ns.asarray(x), a0, params, c0)


@pytest.mark.parametrize("name", ["x", "a0", "c0", "Wf", "by"])
def test_mixed_float_dtypes_rejected(xp, name):
    p = problem()
    arrays = {k: xp.asarray(v, dtype=xp.float64) for k, v in p.arrays.items()}
    arrays[name] = xp.astype(arrays[name], xp.float32)
    params = {k: arrays[k] for k in PARAM_KEYS}
    with pytest.raises(TypeError, match=r"(?s)(?=.*float32)(?=.*float64)"):
        xlstm.lstm_forward(arrays["x"], arrays["a0"], params, arrays["c0"])


def test_mixed_float_dtypes_backward():
    caches = forward_caches()
    with pytest.raises(TypeError, match=r"(?s)(?=.*`da`)(?=.*float32)(?=.*float64)"):
        xlstm.lstm_backward(np.ones((N_A, M, T), dtype=np.float32), caches)
    with pytest.raises(TypeError, match=r"(?s)(?=.*`dc`)(?=.*float32)(?=.*float64)"):
        xlstm.lstm_backward(np.ones((N_A, M, T)), caches, np.ones((N_A, M, T), np.float32))


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", ["yes", 0, 1, 1.5])
def test_bad_fused_value(fused):
    x, a0, params, c0 = np_args()
    with pytest.raises(TypeError, match=r"`fused`"):
        xlstm.lstm_forward(x, a0, params, c0, fused=fused)
    caches = forward_caches()
    with pytest.raises(TypeError, match=r"`fused`"):
        xlstm.lstm_backward(np.ones((N_A, M, T)), caches, fused=fused)


def test_fused_true_without_fast_path():
    ns = require_backend("array_api_strict")
    p = problem().to(ns)
    with pytest.raises(ValueError, match=r"fused"):
        xlstm.lstm_forward(p["x"], p["a0"], p["params"], fused=True)


def test_xp_override_must_match_arrays():
    x, a0, params, c0 = np_args()
    require_backend("torch")
    with pytest.raises(TypeError, match=r"`xp`"):
        xlstm.lstm_forward(x, a0, params, c0, xp="torch")
    a, *_ = xlstm.lstm_forward(x, a0, params, c0, xp="numpy")
    assert isinstance(a, np.ndarray)


# ---------------------------------------------------------------------------------------------
# Inputs are never modified
# ---------------------------------------------------------------------------------------------
def _snapshot(tree):
    return {k: to_numpy(v) for k, v in tree.items()}


def _assert_same(before, after_tree, what):
    for k, v in before.items():
        np.testing.assert_array_equal(to_numpy(after_tree[k]), v, err_msg=f"{what} {k} modified")


@pytest.mark.parametrize(("fused", "recompute"), [("auto", False), ("auto", True), (False, False)])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_no_mutation(backend, fused, recompute):
    ns = require_backend(backend)
    d = problem(7).to(ns)
    params = d["params"]
    inputs = {k: d[k] for k in ("x", "a0", "c0", "Ga", "Gc")}
    before_inputs, before_params = _snapshot(inputs), _snapshot(params)
    key_order = list(params)

    a, y, c, caches = xlstm.lstm_forward(
        d["x"], d["a0"], params, d["c0"], fused=fused, recompute=recompute
    )
    outputs_before = _snapshot({"a": a, "y": y, "c": c})
    grads = xlstm.lstm_backward(d["Ga"], caches, d["Gc"], fused=fused)
    grads_first = _snapshot(grads)
    # Backward twice on the same caches: nothing in the cache was consumed or overwritten.
    grads_again = xlstm.lstm_backward(d["Ga"], caches, d["Gc"], fused=fused)
    _assert_same(grads_first, grads_again, "second backward differs:")
    assert set(grads) == set(SEQ_GRAD_KEYS)

    xt = d["x"][:, :, 0]
    _, _, _, cache = xlstm.lstm_cell_forward(xt, d["a0"], d["c0"], params)
    xlstm.lstm_cell_backward(d["Ga"][:, :, 0], d["Gc"][:, :, 0], cache)

    _assert_same(before_inputs, inputs, "input")
    _assert_same(before_params, params, "parameter")
    _assert_same(outputs_before, {"a": a, "y": y, "c": c}, "forward output")
    assert list(params) == key_order  # no keys added or removed
