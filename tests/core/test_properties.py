"""Property tests (hypothesis, NumPy) over shapes and values, extreme magnitudes included.

pytest runs with ``filterwarnings = ["error"]`` and each test also turns warnings into errors
itself, so any overflow / invalid-value RuntimeWarning fails the test.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _helpers import SEQ_GRAD_KEYS, random_parameters, ref_softmax, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import xlstm

sizes = st.integers(min_value=1, max_value=4)
scales = st.sampled_from([1e-3, 1.0, 1e3, 1e6])
dtypes = st.sampled_from(["float32", "float64"])


@settings(max_examples=40, deadline=None)
@given(
    n_x=sizes,
    m=sizes,
    T=sizes,
    n_a=sizes,
    n_y=sizes,
    weight_scale=scales,
    input_scale=scales,
    dtype=dtypes,
    seed=st.integers(0, 2**32 - 1),
    with_dc=st.booleans(),
)
def test_lstm_finite_and_bounded(
    n_x, m, T, n_a, n_y, weight_scale, input_scale, dtype, seed, with_dc
):
    rng = np.random.default_rng(seed)
    drawn = random_parameters(rng, n_x, n_a, n_y, weight_scale)
    p = {k: v.astype(dtype) for k, v in drawn.items()}
    x = (input_scale * rng.standard_normal((n_x, m, T))).astype(dtype)
    a0 = np.tanh(rng.standard_normal((n_a, m))).astype(dtype)
    c0 = rng.standard_normal((n_a, m)).astype(dtype)
    da = rng.standard_normal((n_a, m, T)).astype(dtype)
    dc = rng.standard_normal((n_a, m, T)).astype(dtype) if with_dc else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, y, c, caches = xlstm.lstm_forward(x, a0, p, c0)
        grads = xlstm.lstm_backward(da, caches, dc)
    atol = 1e-12 if dtype == "float64" else 1e-5
    for name, value in (("a", a), ("y", y), ("c", c), *grads.items()):
        assert np.all(np.isfinite(value)), name
        assert value.dtype == np.dtype(dtype), name
    assert set(grads) == set(SEQ_GRAD_KEYS)
    assert np.all(np.abs(a) <= 1.0)
    assert np.all((y >= 0) & (y <= 1))
    np.testing.assert_allclose(np.sum(y, axis=0), 1.0, rtol=0, atol=atol * n_y)
    # |c_t| <= |c_{t-1}| + 1 since f, i are in [0, 1] and the candidate is in [-1, 1].
    bound = np.abs(c0.astype(np.float64))[:, :, None] + np.arange(1, T + 1)
    assert np.all(np.abs(c) <= bound * (1 + 4 * np.finfo(dtype).eps))


@settings(max_examples=30, deadline=None)
@given(
    z=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
        elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
    )
)
def test_sigmoid_properties(z):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = xlstm.sigmoid(z)
        s_neg = xlstm.sigmoid(-z)
    assert s.shape == z.shape
    assert np.all((s >= 0) & (s <= 1))
    np.testing.assert_allclose(s + s_neg, 1.0, rtol=0, atol=4e-16)
    moderate = np.abs(z) < 30
    np.testing.assert_allclose(s[moderate], 1 / (1 + np.exp(-z[moderate])), rtol=1e-13, atol=4e-16)


@settings(max_examples=30, deadline=None)
@given(
    z=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
        elements=st.floats(-1e10, 1e10, allow_nan=False, allow_infinity=False),
    ),
    data=st.data(),
)
def test_softmax_properties(z, data):
    axis = data.draw(st.integers(-z.ndim, z.ndim - 1))
    shift = data.draw(st.floats(-1e3, 1e3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = xlstm.softmax(z, axis=axis)
        s_shifted = xlstm.softmax(z + shift, axis=axis)
    assert s.shape == z.shape
    assert np.all(np.isfinite(s))
    assert np.all((s >= 0) & (s <= 1))
    np.testing.assert_allclose(np.sum(s, axis=axis), 1.0, rtol=0, atol=1e-12 * z.shape[axis])
    # Argmax is preserved: the largest entry of each slice gets the largest probability.
    np.testing.assert_array_equal(
        np.take_along_axis(s, np.expand_dims(np.argmax(z, axis=axis), axis), axis),
        np.max(s, axis=axis, keepdims=True),
    )
    if np.max(np.abs(z)) < 1e3:
        np.testing.assert_allclose(s_shifted, s, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(s, ref_softmax(z, axis=axis), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activations_at_1000_on_every_backend(xp, dtype):
    z_np = np.array([[-1000.0, 1000.0, 0.0], [1000.0, -1000.0, -1000.0]])
    z = xp.asarray(z_np, dtype=getattr(xp, dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = to_numpy(xlstm.sigmoid(z))
        p = to_numpy(xlstm.softmax(z))
        p1 = to_numpy(xlstm.softmax(z, axis=1))
    for value in (s, p, p1):
        assert np.all(np.isfinite(value))
    np.testing.assert_allclose(s, [[0, 1, 0.5], [1, 0, 0]], rtol=0, atol=1e-7)
    np.testing.assert_allclose(p, [[0, 1, 1], [1, 0, 0]], rtol=0, atol=1e-7)
    np.testing.assert_allclose(p1, [[0, 1, 0], [1, 0, 0]], rtol=0, atol=1e-7)


def test_softmax_columns_with_different_scales_no_nan(xp):
    """The seed subtracts one global max: a column far below it became 0 / 0 = NaN."""
    base = np.array([[1.0, 0.5], [0.0, -2.0], [-1.0, 0.25]])
    offsets = np.array([1000.0, -1000.0])  # one column near +1000, one near -1000
    z = xp.asarray(base + offsets, dtype=xp.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = to_numpy(xlstm.softmax(z, axis=0))
    assert np.all(np.isfinite(got))
    # Softmax is shift-invariant per column, so it equals the softmax of the unshifted columns.
    np.testing.assert_allclose(got, ref_softmax(base, axis=0), rtol=1e-12)


def test_saturated_lstm_no_warnings_on_every_backend(xp):
    """Weights and inputs of magnitude 1e6 saturate every gate; nothing overflows."""
    rng = np.random.default_rng(5)
    p = {
        k: xp.asarray(v, dtype=xp.float32) for k, v in random_parameters(rng, 3, 4, 2, 1e6).items()
    }
    x = xp.asarray(1e6 * rng.standard_normal((3, 2, 4)), dtype=xp.float32)
    a0 = xp.zeros((4, 2), dtype=xp.float32)
    da = xp.ones((4, 2, 4), dtype=xp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, y, c, caches = xlstm.lstm_forward(x, a0, p)
        grads = xlstm.lstm_backward(da, caches, da)
    for name, value in (("a", a), ("y", y), ("c", c), *grads.items()):
        assert np.all(np.isfinite(to_numpy(value))), name
    np.testing.assert_allclose(np.sum(to_numpy(y), axis=0), 1.0, atol=1e-6)
