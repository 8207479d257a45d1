"""NaN and infinity in the inputs propagate as IEEE arithmetic makes them, without warnings
(docs/api.md, "Non-finite inputs"), on every engine and backend.

Without ``xlstm._errstate.ieee_arithmetic`` around the public entry points, an infinity in
``x`` made NumPy warn ("invalid value encountered in matmul") from inside the backward pass
and the loss, which under ``-W error`` is an exception from deep in the code.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import require_backend, to_numpy

import xlstm
from xlstm._engines.dispatch import ENGINES
from xlstm.layers import multilayer_backward, multilayer_forward
from xlstm.training import loss_and_gradients

N_X, M, T, N_A, N_Y = 3, 2, 5, 4, 3
HOST_ENGINES = [  # generic, numpy, and numba where it is installed
    name for name, spec in ENGINES.items() if name != "cupy" and spec.installed()
]
RNG = np.random.default_rng(0)
X = RNG.standard_normal((N_X, M, T))
PARAMS = xlstm.init_parameters(N_X, N_A, N_Y, seed=0, dtype="float64")
A0 = np.zeros((N_A, M))
TARGETS = RNG.integers(0, N_Y, (M, T))


def poisoned(value, xp=np):
    """``x`` with one non-finite entry: sequence 0, step 1."""
    x = X.copy()
    x[0, 0, 1] = value
    return xp.asarray(x)


class NoWarnings:
    """Records every warning (whatever the filters say) and fails if there was one."""

    def __enter__(self):
        self.catcher = warnings.catch_warnings(record=True)
        self.records = self.catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.catcher.__exit__(*exc)
        assert not [str(r.message) for r in self.records]


def check_propagation(clean, dirty):
    """Sequence 0 is NaN/inf-touched from step 1 on; sequence 1 is exactly the clean result."""
    clean, dirty = to_numpy(clean), to_numpy(dirty)
    np.testing.assert_array_equal(dirty[:, 1, ...], clean[:, 1, ...])
    np.testing.assert_array_equal(dirty[:, 0, :1], clean[:, 0, :1])
    return dirty


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("engine", HOST_ENGINES)
def test_sequence_forward_and_backward(engine, value):
    clean = xlstm.lstm_forward(X, A0, PARAMS, engine=engine)
    with NoWarnings():
        a, y, c, caches = xlstm.lstm_forward(poisoned(value), A0, PARAMS, engine=engine)
        grads = xlstm.lstm_backward(np.ones_like(a), caches, engine=engine)
    check_propagation(clean[0], a)
    check_propagation(clean[1], y)
    if np.isnan(value):
        assert np.isnan(a[:, 0, 1:]).all()
        assert np.isnan(grads["dWf"]).any()
    else:  # an infinite input saturates the gates: the forward pass stays finite
        assert np.isfinite(a).all()


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("engine", HOST_ENGINES)
def test_loss_and_gradients(engine, value):
    with NoWarnings():
        loss, grads, _ = loss_and_gradients(poisoned(value), TARGETS, PARAMS, engine=engine)
    assert not np.isfinite(float(loss)) or value == np.inf
    assert not all(np.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_cell_forward_and_backward(value):
    xt = poisoned(value)[:, :, 1]
    with NoWarnings():
        a, c, y, cache = xlstm.lstm_cell_forward(xt, A0, A0, PARAMS)
        grads = xlstm.lstm_cell_backward(np.ones_like(a), np.ones_like(c), cache)
    np.testing.assert_array_equal(np.isnan(a[:, 0]), np.full(N_A, np.isnan(value)))
    assert np.isfinite(a[:, 1]).all()
    assert not np.isfinite(grads["dWf"]).all()


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("engine", HOST_ENGINES)
def test_multilayer_bidirectional(engine, value):
    gates = {k: v for k, v in PARAMS.items() if k not in ("Wy", "by")}
    upper = xlstm.init_parameters(2 * N_A, N_A, 1, seed=1, dtype="float64")
    upper = {k: v for k, v in upper.items() if k not in ("Wy", "by")}
    layers = [gates, gates, upper, upper]
    with NoWarnings():
        outputs, _, cache = multilayer_forward(
            poisoned(value), layers, bidirectional=True, engine=engine
        )
        grads = multilayer_backward(np.ones_like(outputs), cache)
    assert np.isfinite(outputs[:, 1]).all()
    assert not np.isfinite(grads["dx"]).all() or value == np.inf


def test_softmax_and_sigmoid():
    z = np.array([[np.inf, 1.0], [np.inf, 2.0], [0.0, np.nan]])
    with NoWarnings():
        probabilities = xlstm.softmax(z)
        s = xlstm.sigmoid(np.array([np.inf, -np.inf, np.nan]))
    assert np.isnan(probabilities[:, 0]).all()  # inf - inf
    assert np.isnan(probabilities[:, 1]).all()
    np.testing.assert_array_equal(s[:2], [1.0, 0.0])
    assert np.isnan(s[2])


def test_the_numpy_error_state_is_restored_afterwards():
    before = np.geterr()
    xlstm.lstm_forward(poisoned(np.inf), A0, PARAMS)
    with pytest.raises(ValueError, match="`x`"):
        xlstm.lstm_forward(X[:, :, :0], A0, PARAMS)
    assert np.geterr() == before


@pytest.mark.parametrize("backend", ["torch", "array_api_strict", "jax"])
def test_other_backends(backend):
    xp = require_backend(backend)
    params = {k: xp.asarray(v) for k, v in PARAMS.items()}
    clean = xlstm.lstm_forward(xp.asarray(X), xp.asarray(A0), params, engine="generic")
    with NoWarnings():
        a, _, _, caches = xlstm.lstm_forward(
            poisoned(np.nan, xp), xp.asarray(A0), params, engine="generic"
        )
        xlstm.lstm_backward(xp.ones_like(a), caches, engine="generic")
        a_inf, _, _, caches = xlstm.lstm_forward(
            poisoned(np.inf, xp), xp.asarray(A0), params, engine="generic"
        )
        xlstm.lstm_backward(xp.ones_like(a_inf), caches, engine="generic")
    dirty = check_propagation(clean[0], a)
    assert np.isnan(dirty[:, 0, 1:]).all()


def test_optimiser_steps_and_clipping():
    """A max_norm beyond float32 (``--clip 1e300``) and infinite gradients: no warnings."""
    from xlstm.training import Adam, clip_by_global_norm, clip_by_value, global_norm

    grads = {"dW": np.ones(3, dtype=np.float32)}
    with NoWarnings():
        clipped, norm = clip_by_global_norm(grads, 1e300)
        huge = {"dW": np.array([np.inf, 1.0, 3e38], dtype=np.float32)}
        _, huge_norm = clip_by_global_norm(huge, 1.0)
        total = global_norm({"dW": np.full(2, 3e38, dtype=np.float32)})
        clip_by_value(huge, 1.0)
        optimizer = Adam(lr=0.1)
        parameters = {"W": np.zeros(3, dtype=np.float32)}
        optimizer.update(parameters, huge, optimizer.init(parameters))
    np.testing.assert_array_equal(clipped["dW"], grads["dW"])
    assert np.isinf(huge_norm)
    assert np.isinf(total)


@pytest.mark.gpu
def test_cupy_engine():
    cp = require_backend("cupy")
    params = {k: cp.asarray(v) for k, v in PARAMS.items()}
    with NoWarnings():
        a, _, _, caches = xlstm.lstm_forward(
            poisoned(np.nan, cp), cp.asarray(A0), params, engine="cupy"
        )
        xlstm.lstm_backward(cp.ones_like(a), caches, engine="cupy")
    assert np.isnan(to_numpy(a)[:, 0, 1:]).all()
    assert np.isfinite(to_numpy(a)[:, 1]).all()
