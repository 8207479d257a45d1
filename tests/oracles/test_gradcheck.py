"""Central-difference gradient checks (float64, NumPy) of every gradient xlstm returns.

Loss: L = sum(a * Ga) + sum(c * Gc) with random Ga, Gc, so that dL/da = Ga and dL/dc = Gc are
exactly the ``da`` / ``dc`` arguments of the backward functions. "dc not given" is Gc = 0
(``dc=None`` for ``lstm_backward``, a zero ``dc_next`` for ``lstm_cell_backward``).
The other backends are compared with the NumPy gradients at the end of the file.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import (
    CELL_GRAD_KEYS,
    CELL_GRAD_OF,
    PARAM_KEYS,
    SEQ_GRAD_KEYS,
    SEQ_GRAD_OF,
    SHAPE_IDS,
    SHAPES,
    central_difference,
    float_tol,
    random_problem,
    record_worst,
    ref_cell_backward,
    rel_err,
    to_numpy,
)

import xlstm

H = 1e-5  # central-difference step: truncation ~H**2 and round-off ~eps/H balance near here
FD_TOL = 1e-6


def check_against_fd(analytic: dict, numeric: dict, grad_of: dict, label: str) -> None:
    worst, worst_key = 0.0, None
    for key, name in grad_of.items():
        got = to_numpy(analytic[key])
        assert got.shape == numeric[name].shape, (key, got.shape, numeric[name].shape)
        err = rel_err(got, numeric[name])
        if err >= worst:
            worst, worst_key = err, key
        assert err < FD_TOL, f"{label} {key}: relative error {err:.3e} vs central differences"
    record_worst("gradcheck", worst, f"{label} ({worst_key})")


def _sequence_loss(with_dc, Ga, Gc):
    def loss(arr):
        params = {k: arr[k] for k in PARAM_KEYS}
        a, _, c, _ = xlstm.lstm_forward(arr["x"], arr["a0"], params, arr["c0"])
        total = np.sum(a * Ga)
        if with_dc:
            total += np.sum(c * Gc)
        return float(total)

    return loss


def _cell_loss(with_dc, Ga, Gc):
    def loss(arr):
        params = {k: arr[k] for k in PARAM_KEYS}
        a_next, c_next, _, _ = xlstm.lstm_cell_forward(
            arr["xt"], arr["a_prev"], arr["c_prev"], params
        )
        total = np.sum(a_next * Ga)
        if with_dc:
            total += np.sum(c_next * Gc)
        return float(total)

    return loss


@pytest.mark.parametrize("with_dc", [False, True], ids=["dc=None", "dc"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_lstm_backward_central_differences(shape, with_dc):
    prob = random_problem(100 + SHAPES.index(shape), *shape)
    _, _, _, caches = xlstm.lstm_forward(prob.x, prob.a0, dict(prob.params), prob.c0)
    grads = xlstm.lstm_backward(prob.Ga, caches, dc=prob.Gc if with_dc else None)
    assert set(grads) == set(SEQ_GRAD_KEYS)
    numeric = central_difference(
        _sequence_loss(with_dc, prob.Ga, prob.Gc), prob.arrays, SEQ_GRAD_OF.values(), step=H
    )
    check_against_fd(grads, numeric, SEQ_GRAD_OF, f"lstm_backward {shape} dc={with_dc}")


@pytest.mark.parametrize("with_dc", [False, True], ids=["dc=0", "dc"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_lstm_cell_backward_central_differences(shape, with_dc):
    prob = random_problem(200 + SHAPES.index(shape), *shape)
    arrays = {"xt": prob.x[:, :, -1], "a_prev": prob.a0, "c_prev": prob.c0, **prob.params}
    Ga = prob.Ga[:, :, 0]
    Gc = prob.Gc[:, :, 0] if with_dc else np.zeros_like(prob.Gc[:, :, 0])
    _, _, _, cache = xlstm.lstm_cell_forward(arrays["xt"], prob.a0, prob.c0, dict(prob.params))
    grads = xlstm.lstm_cell_backward(Ga, Gc, cache)
    assert set(grads) == set(CELL_GRAD_KEYS)
    loss = _cell_loss(with_dc, Ga, Gc)
    numeric = central_difference(loss, arrays, CELL_GRAD_OF.values(), step=H)
    check_against_fd(grads, numeric, CELL_GRAD_OF, f"lstm_cell_backward {shape} dc={with_dc}")


def test_gradients_have_parameter_shapes_and_no_output_layer(xp):
    prob = random_problem(3, 3, 2, 4, 5, 2)
    d = prob.to(xp)
    _, _, _, caches = xlstm.lstm_forward(d["x"], d["a0"], d["params"], d["c0"])
    grads = xlstm.lstm_backward(d["Ga"], caches, d["Gc"])
    assert set(grads) == set(SEQ_GRAD_KEYS)  # no dWy / dby: the output layer is the caller's
    for key, name in SEQ_GRAD_OF.items():
        assert tuple(grads[key].shape) == prob.arrays[name].shape, key


def test_dc_none_equals_zero_dc(xp):
    prob = random_problem(4, 2, 3, 4, 3, 2)
    d = prob.to(xp)
    _, _, _, caches = xlstm.lstm_forward(d["x"], d["a0"], d["params"], d["c0"])
    g_none = xlstm.lstm_backward(d["Ga"], caches)
    g_zero = xlstm.lstm_backward(d["Ga"], caches, xp.zeros_like(d["Gc"]))
    for k in SEQ_GRAD_KEYS:
        np.testing.assert_array_equal(to_numpy(g_none[k]), to_numpy(g_zero[k]), err_msg=k)


def test_c0_none_equals_zero_c0(xp):
    prob = random_problem(5, 2, 3, 4, 3, 2)
    d = prob.to(xp)
    out_none = xlstm.lstm_forward(d["x"], d["a0"], d["params"])
    out_zero = xlstm.lstm_forward(d["x"], d["a0"], d["params"], xp.zeros_like(d["a0"]))
    for got, ref in zip(out_none[:3], out_zero[:3], strict=True):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(ref))
    g_none = xlstm.lstm_backward(d["Ga"], out_none[3], d["Gc"])
    g_zero = xlstm.lstm_backward(d["Ga"], out_zero[3], d["Gc"])
    assert tuple(g_none["dc0"].shape) == (3, 3)
    for k in SEQ_GRAD_KEYS:
        np.testing.assert_array_equal(to_numpy(g_none[k]), to_numpy(g_zero[k]), err_msg=k)


@pytest.mark.parametrize("with_dc", [False, True], ids=["dc=None", "dc"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_backend_gradients_match_numpy(xp, shape, with_dc):
    """Every backend's gradients equal NumPy's FD-checked ones.

    The sequence runs the generic path (``fused=False``), so on NumPy this compares the generic
    path with the fast path the finite-difference tests checked. The cell is compared with the
    seed's own backward equations (``ref_cell_backward``).
    """
    prob = random_problem(300 + SHAPES.index(shape), *shape)
    dc_np = prob.Gc if with_dc else None
    _, _, _, caches_np = xlstm.lstm_forward(prob.x, prob.a0, dict(prob.params), prob.c0)
    ref = xlstm.lstm_backward(prob.Ga, caches_np, dc=dc_np)
    d = prob.to(xp)
    _, _, _, caches = xlstm.lstm_forward(d["x"], d["a0"], d["params"], d["c0"], fused=False)
    got = xlstm.lstm_backward(d["Ga"], caches, dc=d["Gc"] if with_dc else None, fused=False)
    tol = float_tol(xp)
    for k in SEQ_GRAD_KEYS:
        err = rel_err(got[k], ref[k])
        assert err <= tol, f"{k}: {err:.3e}"

    xt = prob.x[:, :, 0]
    dc_next = prob.Gc[:, :, 0] if with_dc else np.zeros_like(prob.Gc[:, :, 0])
    ref_cell = ref_cell_backward(prob.Ga[:, :, 0], dc_next, xt, prob.a0, prob.c0, prob.params)
    _, _, _, cache = xlstm.lstm_cell_forward(
        xp.asarray(xt, dtype=xp.float64), d["a0"], d["c0"], d["params"]
    )
    got_cell = xlstm.lstm_cell_backward(
        xp.asarray(prob.Ga[:, :, 0], dtype=xp.float64),
        xp.asarray(dc_next, dtype=xp.float64),
        cache,
    )
    for k in CELL_GRAD_KEYS:
        err = rel_err(got_cell[k], ref_cell[k])
        assert err <= tol, f"cell {k}: {err:.3e}"
