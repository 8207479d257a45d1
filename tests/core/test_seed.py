"""The seed notebook's printed example, reproduced on every backend in float64."""

from __future__ import annotations

import numpy as np
from _helpers import (
    PARAM_KEYS,
    assert_rel_close,
    backend_name,
    params_to,
    ref_cell_backward,
    ref_cell_forward,
    to_numpy,
)

import xlstm

# What the notebook printed for caches[1][1][1] (i.e. x[1][1]), to its 8 printed decimals.
PRINTED_X_1_1 = [
    0.82797464,
    0.23009474,
    0.76201118,
    -0.22232814,
    -0.20075807,
    0.18656139,
    0.41005165,
]


def seed_example():
    """The notebook's ``np.random.seed(1)`` draws, in the notebook's order.

    ``RandomState(1)`` produces the same stream as ``np.random.seed(1)`` followed by
    ``np.random.randn`` calls, without touching NumPy's global state.
    """
    rs = np.random.RandomState(1)
    x = rs.randn(3, 10, 7)
    a0 = rs.randn(5, 10)
    draws = {}
    for gate in "fioc":  # Wf bf Wi bi Wo bo Wc bc: the notebook's draw order
        draws[f"W{gate}"] = rs.randn(5, 5 + 3)
        draws[f"b{gate}"] = rs.randn(5, 1)
    draws["Wy"] = rs.randn(2, 5)
    draws["by"] = rs.randn(2, 1)
    return x, a0, draws


def _rtol(xp):
    return 1e-12 if backend_name(xp) == "numpy" else 1e-11


def test_seed_printed_values(xp):
    x_np, a0_np, p_np = seed_example()
    x = xp.asarray(x_np, dtype=xp.float64)
    a0 = xp.asarray(a0_np, dtype=xp.float64)
    a, y, c, caches = xlstm.lstm_forward(x, a0, params_to(xp, p_np))
    a, y, c = to_numpy(a), to_numpy(y), to_numpy(c)
    rtol = _rtol(xp)
    np.testing.assert_allclose(a[4][3][6], 0.17211776753291672, rtol=rtol, atol=0)
    np.testing.assert_allclose(y[1][4][3], 0.9508734618501101, rtol=rtol, atol=0)
    np.testing.assert_allclose(c[1][2][1], -0.8555449167181982, rtol=rtol, atol=0)
    assert a.shape == (5, 10, 7)
    assert y.shape == (2, 10, 7)
    assert c.shape == (5, 10, 7)
    assert len(caches) == 2
    cached_x = to_numpy(caches[1])
    np.testing.assert_array_equal(cached_x, x_np)
    np.testing.assert_array_equal(cached_x[1][1], x_np[1, 1])
    np.testing.assert_allclose(cached_x[1][1], PRINTED_X_1_1, rtol=0, atol=5e-9)


def test_seed_cell_forward_matches_seed_equations(xp):
    x_np, a0_np, p_np = seed_example()
    p = params_to(xp, p_np)
    xt = xp.asarray(x_np[:, :, 0], dtype=xp.float64)
    a_prev = xp.asarray(a0_np, dtype=xp.float64)
    c_prev = xp.zeros((5, 10), dtype=xp.float64)
    a_next, c_next, yt, cache = xlstm.lstm_cell_forward(xt, a_prev, c_prev, p)
    ra, rc, ry, (ft, it, cct, ot) = ref_cell_forward(x_np[:, :, 0], a0_np, np.zeros((5, 10)), p_np)
    rtol = _rtol(xp)
    assert_rel_close(a_next, ra, rtol, "a_next")
    assert_rel_close(c_next, rc, rtol, "c_next")
    assert_rel_close(yt, ry, rtol, "yt_pred")
    # The seed's 10-tuple: (a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters).
    assert len(cache) == 10
    expected = (ra, rc, a0_np, np.zeros((5, 10)), ft, it, cct, ot, x_np[:, :, 0])
    names = ("a_next", "c_next", "a_prev", "c_prev", "ft", "it", "cct", "ot", "xt")
    for item, ref, name in zip(cache[:9], expected, names, strict=True):
        assert_rel_close(item, ref, rtol, f"cache {name}")
    assert set(cache[9]) >= set(PARAM_KEYS)
    for k in PARAM_KEYS:
        np.testing.assert_array_equal(to_numpy(cache[9][k]), p_np[k])
    # The first step of the sequence is this cell.
    a, _, c, _ = xlstm.lstm_forward(xp.asarray(x_np, dtype=xp.float64), a_prev, p)
    assert_rel_close(xp.asarray(a[:, :, 0]), a_next, rtol, "a[:, :, 0]")
    assert_rel_close(xp.asarray(c[:, :, 0]), c_next, rtol, "c[:, :, 0]")


def test_seed_cell_backward_matches_seed_equations(xp):
    x_np, a0_np, p_np = seed_example()
    rng = np.random.default_rng(11)
    c_prev_np = rng.standard_normal((5, 10))
    da_np = rng.standard_normal((5, 10))
    dc_np = rng.standard_normal((5, 10))
    _, _, _, cache = xlstm.lstm_cell_forward(
        xp.asarray(x_np[:, :, 2], dtype=xp.float64),
        xp.asarray(a0_np, dtype=xp.float64),
        xp.asarray(c_prev_np, dtype=xp.float64),
        params_to(xp, p_np),
    )
    grads = xlstm.lstm_cell_backward(
        xp.asarray(da_np, dtype=xp.float64), xp.asarray(dc_np, dtype=xp.float64), cache
    )
    ref = ref_cell_backward(da_np, dc_np, x_np[:, :, 2], a0_np, c_prev_np, p_np)
    assert set(grads) == set(ref)
    for k, v in ref.items():
        assert_rel_close(grads[k], v, _rtol(xp), k)


def test_seed_default_c0_is_zeros():
    """The seed starts from c = 0; ``c0=None`` (the default) must mean exactly that."""
    x, a0, p = seed_example()
    a, y, c, _ = xlstm.lstm_forward(x, a0, p)
    a_ref, y_ref, c_ref, _ = xlstm.lstm_forward(x, a0, p, np.zeros((5, 10)))
    np.testing.assert_array_equal(a, a_ref)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(c, c_ref)
