"""The one engine selection (xlstm._engines.dispatch): names, the fused alias, reasons."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from _helpers import random_problem

import xlstm
from xlstm._engines import dispatch
from xlstm._engines.cupy import engine as cupy_engine


@pytest.mark.parametrize("name", ["numpy", "torch", "jax", "array_api_strict"])
def test_auto_picks_each_backends_engine(name):
    pytest.importorskip({"jax": "jax.numpy"}.get(name, name))
    xp = xlstm.get_namespace(name)
    picked = dispatch.select_engine(xp, xp.float32, "auto")
    expected = dispatch.AUTO_ORDER.get(name, ("generic",))[0] if name == "numpy" else "generic"
    if name == "numpy" and not dispatch.ENGINES[expected].installed():
        expected = "numpy"
    assert picked.name == expected
    assert dispatch.select_engine(xp, xp.float32, "generic").name == "generic"


@pytest.mark.parametrize("name", ["torch", "jax", "array_api_strict"])
def test_fused_true_without_a_fast_path_is_a_value_error(name):
    pytest.importorskip({"jax": "jax.numpy"}.get(name, name))
    xp = xlstm.get_namespace(name)
    with pytest.raises(ValueError, match=rf"`fused=True` but no fast path of backend '{name}'"):
        dispatch.select_engine(xp, xp.float32, dispatch.engine_option(fused=True))


@pytest.mark.parametrize("name", ["torch", "array_api_strict"])
def test_naming_another_backends_engine_says_why(name):
    pytest.importorskip(name)
    xp = xlstm.get_namespace(name)
    with pytest.raises(ValueError, match=rf"`engine='numpy'` cannot run.*{name} arrays"):
        dispatch.select_engine(xp, xp.float32, "numpy")


def test_cupy_dispatch_without_cupy():
    """A namespace named ``cupy`` routes to the CuPy engine: float16/32/64, lengths, finals."""
    fake_cupy = types.ModuleType("cupy")
    for dtype in ("float16", "float32", "float64"):
        assert dispatch.select_engine(fake_cupy, np.dtype(dtype), "auto").name == "cupy"
        assert dispatch.select_engine(fake_cupy, np.dtype(dtype), "fast").name == "cupy"
    assert dispatch.select_engine(fake_cupy, np.dtype("int32"), "auto").name == "generic"
    with pytest.raises(ValueError, match=r"cupy: dtype int32 is not supported"):
        dispatch.select_engine(fake_cupy, np.dtype("int32"), "fast")
    with pytest.raises(ValueError, match=r"`engine='cupy'` cannot run this call: dtype int32"):
        dispatch.select_engine(fake_cupy, np.dtype("int32"), "cupy")
    picked = dispatch.select_engine(
        fake_cupy, np.float32, "cupy", lengths=True, final_state_grads=True
    )
    assert picked.name == "cupy"
    assert cupy_engine.unsupported_reason(None, np.float32) is None


def test_declared_capabilities_decide_before_anything_runs(monkeypatch):
    """An engine that declares no lengths / final-state gradients is passed over by
    "auto" and refused when named, from its spec alone."""
    spec = dispatch.ENGINES["numpy"]
    limited = dispatch.EngineSpec(
        spec.name, spec.module, spec.backends, supports_lengths=False,
        supports_final_state_grads=False, threaded_directions=True,
    )  # fmt: skip
    monkeypatch.setitem(dispatch.ENGINES, "numpy", limited)
    monkeypatch.setitem(dispatch.AUTO_ORDER, "numpy", ("numpy",))
    assert dispatch.select_engine(np, np.float32, "auto", lengths=True).name == "generic"
    with pytest.raises(ValueError, match=r"does not support variable-length"):
        dispatch.select_engine(np, np.float32, "numpy", lengths=True)
    with pytest.raises(ValueError, match=r"does not support gradients of the final states"):
        dispatch.select_engine(np, np.float32, "numpy", final_state_grads=True)


@pytest.mark.parametrize(
    ("engine", "fused", "error", "match"),
    [
        ("auto", 0, TypeError, r"`fused` = 0; expected 'auto', True or False"),
        ("auto", 1, TypeError, r"`fused` = 1"),
        ("auto", "yes", TypeError, r"`fused` = 'yes'"),
        ("numpy", True, TypeError, r"not both"),
        ("fast", None, ValueError, r"`engine` = 'fast'; expected one of"),
        ("cuda", None, ValueError, r"`engine` = 'cuda'"),
        (None, None, TypeError, r"`engine` must be one of"),
        (True, None, TypeError, r"`engine` must be one of"),
    ],
)
def test_bad_engine_options(engine, fused, error, match):
    prob = random_problem(0, 3, 2, 4, 3, 2)
    with pytest.raises(error, match=match):
        xlstm.lstm_forward(prob.x, prob.a0, prob.params, engine=engine, fused=fused)
    with pytest.raises(error, match=match):
        dispatch.engine_option(engine, fused)


def test_fused_alias_maps_to_engines():
    assert dispatch.engine_option("auto", False) == "generic"
    assert dispatch.engine_option("auto", "auto") == "auto"
    assert dispatch.engine_option("auto", None) == "auto"
    assert dispatch.engine_option("numpy", None) == "numpy"


def test_resolve_engine_names_what_runs():
    assert xlstm.resolve_engine("numpy", "float64", "generic") == "generic"
    assert xlstm.resolve_engine("numpy", "float64", "numpy") == "numpy"
    assert xlstm.resolve_engine("numpy", "float32", "auto") in ("numpy", "numba")
    with pytest.raises(ValueError, match="is not a real floating dtype"):
        xlstm.resolve_engine("numpy", "int32", "numpy")


def test_numpy_engine_refuses_a_cache_it_cannot_read_and_auto_reads_it_generically():
    """A variable-length cache in batch order (from the generic engine) is not in the
    NumPy engine's sorted order: "auto" gives it to the generic engine, "numpy" refuses."""
    prob = random_problem(3, 2, 8, 6, 4, 2)
    lengths = [6, 1, 5, 2, 6, 3, 1, 4]
    a, _, _, caches = xlstm.lstm_forward(
        prob.x, prob.a0, prob.params, prob.c0, engine="generic", lengths=lengths
    )
    picked = dispatch.select_engine(np, np.float64, "auto", cache=caches[0])
    assert picked.name == "generic"
    with pytest.raises(ValueError, match=r"`engine='numpy'` cannot run.*not grouped"):
        xlstm.lstm_backward(np.ones_like(a), caches, engine="numpy")
    reference = xlstm.lstm_backward(np.ones_like(a), caches, engine="generic")
    automatic = xlstm.lstm_backward(np.ones_like(a), caches)
    for key, value in reference.items():
        np.testing.assert_array_equal(automatic[key], value, err_msg=key)


def test_missing_optional_engine_names_its_extra(monkeypatch):
    spec = dispatch.EngineSpec("fake", "xlstm._engines.generic", ("numpy",), requires="no_such")
    monkeypatch.setitem(dispatch.ENGINES, "fake", spec)
    with pytest.raises(ValueError, match=r"no_such is not installed"):
        dispatch.select_engine(np, np.float32, "fake")


def test_import_xlstm_imports_no_optional_library():
    code = (
        "import sys, xlstm; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('cupy', 'torch', 'jax', 'numba', 'dask', 'distributed', 'onnx', 'onnxruntime')]; "
        "assert not bad, bad"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
