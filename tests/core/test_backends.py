"""Choosing and moving backends: get_namespace, init_parameters, to_backend, lazy imports."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import array_api_compat
import numpy as np
import pytest
from _helpers import PARAM_KEYS, backend_name, require_backend, to_numpy

import xlstm

REPO = Path(__file__).resolve().parents[2]
MODULES = {"numpy": "numpy", "torch": "torch", "jax": "jax.numpy", "cupy": "cupy"}
MODULES["array_api_strict"] = "array_api_strict"


def test_gate_order_constant():
    assert xlstm.GATE_ORDER == ("i", "f", "o", "g")


def test_get_namespace_by_name_and_module(xp):
    name = backend_name(xp)
    by_name = xlstm.get_namespace(name)
    by_module = xlstm.get_namespace(importlib.import_module(MODULES[name]))
    by_namespace = xlstm.get_namespace(xp)
    for ns in (by_name, by_module, by_namespace):
        assert backend_name(ns) == name
        probe = ns.asarray([1.0, 2.0])
        assert backend_name(array_api_compat.array_namespace(probe)) == name


@pytest.mark.parametrize("bad", ["bogus", "Numpy", ""])
def test_get_namespace_unknownbackend_name(bad):
    with pytest.raises(TypeError, match=r"`xp`"):
        xlstm.get_namespace(bad)


@pytest.mark.parametrize("bad", [None, 3, np.float64])
def test_get_namespace_not_a_backend(bad):
    with pytest.raises(TypeError, match=r"`xp`"):
        xlstm.get_namespace(bad)


# ---------------------------------------------------------------------------------------------
# init_parameters
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n_x", "n_a", "n_y"), [(3, 5, 2), (1, 1, 1), (7, 2, 4)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_parameters_shapes_and_dtype(n_x, n_a, n_y, dtype):
    p = xlstm.init_parameters(n_x, n_a, n_y, dtype=dtype, seed=0)
    assert set(p) == set(PARAM_KEYS)
    expected = {k: (n_a, n_a + n_x) for k in ("Wf", "Wi", "Wc", "Wo")}
    expected.update({k: (n_a, 1) for k in ("bf", "bi", "bc", "bo")})
    expected.update(Wy=(n_y, n_a), by=(n_y, 1))
    for k, shape in expected.items():
        assert isinstance(p[k], np.ndarray), k
        assert p[k].shape == shape, k
        assert p[k].dtype == np.dtype(dtype), k
        assert np.all(np.isfinite(p[k])), k
    assert np.any(p["Wf"] != 0)
    assert np.any(p["Wy"] != 0)


def test_init_parameters_default_dtype_is_float32():
    p = xlstm.init_parameters(2, 3, 2, seed=0)
    assert all(v.dtype == np.float32 for v in p.values())


def test_init_parameters_deterministic_by_seed():
    first = xlstm.init_parameters(3, 4, 2, seed=123, dtype="float64")
    again = xlstm.init_parameters(3, 4, 2, seed=123, dtype="float64")
    other = xlstm.init_parameters(3, 4, 2, seed=124, dtype="float64")
    for k in PARAM_KEYS:
        np.testing.assert_array_equal(first[k], again[k])
    assert any(not np.array_equal(first[k], other[k]) for k in PARAM_KEYS)
    assert not np.array_equal(first["Wf"], other["Wf"])
    unseeded = [xlstm.init_parameters(3, 4, 2)["Wf"] for _ in range(2)]
    assert not np.array_equal(*unseeded)


@pytest.mark.parametrize("forget_bias", [0.0, 2.5, -1.0])
def test_init_parameters_forget_bias(forget_bias):
    base = xlstm.init_parameters(3, 4, 2, seed=9, dtype="float64", forget_bias=0.0)
    p = xlstm.init_parameters(3, 4, 2, seed=9, dtype="float64", forget_bias=forget_bias)
    np.testing.assert_allclose(p["bf"] - base["bf"], forget_bias, rtol=0, atol=0)
    for k in PARAM_KEYS:
        if k != "bf":
            np.testing.assert_array_equal(p[k], base[k], err_msg=k)


def test_init_parameters_forget_bias_default_is_one():
    base = xlstm.init_parameters(3, 4, 2, seed=9, dtype="float64", forget_bias=0.0)
    default = xlstm.init_parameters(3, 4, 2, seed=9, dtype="float64")
    np.testing.assert_array_equal(default["bf"] - base["bf"], 1.0)


@pytest.mark.parametrize("how", ["name", "module", "namespace"])
def test_init_parameters_on_each_backend(xp, how):
    name = backend_name(xp)
    spec = {"name": name, "module": importlib.import_module(MODULES[name]), "namespace": xp}[how]
    p = xlstm.init_parameters(3, 4, 2, xp=spec, dtype="float64", seed=5)
    ref = xlstm.init_parameters(3, 4, 2, xp="numpy", dtype="float64", seed=5)
    for k in PARAM_KEYS:
        assert backend_name(array_api_compat.array_namespace(p[k])) == name, k
        assert p[k].dtype == xp.float64
        # Same seed, same numbers on every backend (drawn on the host, then moved).
        np.testing.assert_array_equal(to_numpy(p[k]), ref[k], err_msg=k)
    # and they drive the LSTM on that backend
    x = xp.asarray(np.ones((3, 2, 3)), dtype=xp.float64)
    a, y, c, _ = xlstm.lstm_forward(x, xp.zeros((4, 2), dtype=xp.float64), p)
    for out in (a, y, c):
        assert backend_name(array_api_compat.array_namespace(out)) == name
        assert np.all(np.isfinite(to_numpy(out)))


def test_init_parameters_device(xp):
    device = array_api_compat.device(xp.asarray(0.0))  # the backend's own CPU / GPU device
    specs = [device, "cpu"] if backend_name(xp) in ("numpy", "torch") else [device]
    for spec in specs:
        p = xlstm.init_parameters(2, 3, 2, xp=xp, seed=0, device=spec)
        for k, v in p.items():
            assert array_api_compat.device(v) == device, (spec, k)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "pattern"),
    [
        ((0, 3, 2), {}, ValueError, r"`n_x`"),
        ((3, 0, 2), {}, ValueError, r"`n_a`"),
        ((3, 3, 0), {}, ValueError, r"`n_y`"),
        ((3.0, 3, 2), {}, TypeError, r"`n_x`"),
        ((3, 3, 2), {"dtype": "int32"}, TypeError, r"`dtype`"),
        ((3, 3, 2), {"xp": "bogus"}, TypeError, r"`xp`"),
    ],
)
def test_init_parameters_bad_arguments(args, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        xlstm.init_parameters(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# to_backend
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_to_backend_round_trip_numpy_torch_numpy(dtype):
    ns = require_backend("torch")
    p = xlstm.init_parameters(3, 4, 2, seed=1, dtype=dtype)
    snapshot = {k: v.copy() for k, v in p.items()}
    t = xlstm.to_backend(p, "torch")
    assert t is not p
    for k, v in t.items():
        assert backend_name(array_api_compat.array_namespace(v)) == "torch", k
        assert v.dtype == getattr(ns, dtype), k
    back = xlstm.to_backend(t, "numpy")
    assert set(back) == set(p)
    for k in p:
        assert isinstance(back[k], np.ndarray), k
        assert back[k].dtype == np.dtype(dtype), k
        np.testing.assert_array_equal(back[k], snapshot[k], err_msg=k)
        np.testing.assert_array_equal(p[k], snapshot[k], err_msg=k)  # source untouched
    # a copy, not a view of the source
    back["Wf"][0, 0] += 1.0
    assert p["Wf"][0, 0] == snapshot["Wf"][0, 0]


def test_to_backend_every_backend_and_device(xp):
    name = backend_name(xp)
    p = xlstm.init_parameters(2, 3, 2, seed=2, dtype="float64")
    moved = xlstm.to_backend(p, xp)
    by_name = xlstm.to_backend(p, name)
    for k in p:
        assert backend_name(array_api_compat.array_namespace(moved[k])) == name, k
        np.testing.assert_array_equal(to_numpy(moved[k]), p[k], err_msg=k)
        np.testing.assert_array_equal(to_numpy(by_name[k]), p[k], err_msg=k)
    if name == "torch":
        on_cpu = xlstm.to_backend(p, "torch", device="cpu")
        assert all(str(v.device) == "cpu" for v in on_cpu.values())
    # back to NumPy is exact as well
    home = xlstm.to_backend(moved, "numpy")
    for k in p:
        np.testing.assert_array_equal(home[k], p[k], err_msg=k)


def test_to_backend_rejects_non_dicts_and_non_arrays():
    with pytest.raises(TypeError, match=r"`parameters`"):
        xlstm.to_backend([np.zeros(2)], "numpy")
    with pytest.raises(TypeError, match=r"\bWf\b"):
        xlstm.to_backend({"Wf": [1.0, 2.0]}, "numpy")


# ---------------------------------------------------------------------------------------------
# import xlstm must not import the optional heavy backends
# ---------------------------------------------------------------------------------------------
def test_import_does_not_pull_in_optional_backends():
    code = (
        "import sys, numpy as np, xlstm\n"
        "heavy = ('torch', 'cupy', 'jax')\n"
        "def loaded(): return [m for m in heavy if m in sys.modules]\n"
        "assert not loaded(), loaded()\n"
        "p = xlstm.init_parameters(2, 3, 2, seed=0, dtype='float64')\n"
        "a, y, c, caches = xlstm.lstm_forward(np.ones((2, 1, 3)), np.zeros((3, 1)), p)\n"
        "xlstm.lstm_backward(np.ones((3, 1, 3)), caches)\n"
        "assert not loaded(), loaded()\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
