"""Softmax cross-entropy, the output layer's backward and ``loss_and_gradients``.

Shape legend: logits (n_y, m, T), targets and mask (m, T), x (n_x, m, T), a0/c0 (n_a, m).
Gradients are checked against central finite differences in float64 on every backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import PARAM_KEYS, asxp, random_parameters, record_worst, rel_err, to_numpy

import xlstm
from xlstm.training import (
    log_softmax,
    loss_and_gradients,
    one_hot,
    output_backward,
    output_forward,
    sequence_loss,
    softmax_cross_entropy,
)

N_X, N_A, N_Y, M, T = 3, 4, 3, 2, 5
EPS = 1e-6


def reference_loss(logits, targets, mask=None):
    """NumPy float64: mean over unmasked positions of -log softmax(logits)[target]."""
    z = logits - logits.max(axis=0, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=0, keepdims=True))
    m, t = targets.shape
    picked = np.zeros((m, t))
    for j in range(m):
        for k in range(t):
            picked[j, k] = log_p[targets[j, k], j, k] if 0 <= targets[j, k] < len(log_p) else 0.0
    w = np.ones((m, t)) if mask is None else mask.astype(np.float64)
    return -(w * picked).sum() / max(w.sum(), 1.0) if w.sum() else 0.0


def problem(seed=0):
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.standard_normal((N_Y, M, T))
    targets = rng.integers(0, N_Y, (M, T))
    mask = rng.random((M, T)) > 0.3
    mask[0, 0] = True
    return logits, targets, mask


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_cross_entropy_value_and_gradient_vs_finite_differences(xp, masked):
    logits, targets, mask = problem()
    mask_np = mask if masked else None
    mask_xp = xp.asarray(mask) if masked else None
    loss, dlogits = softmax_cross_entropy(asxp(xp, logits), xp.asarray(targets), mask_xp)
    assert abs(float(loss) - reference_loss(logits, targets, mask_np)) < 1e-12
    numeric = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        shifted = []
        for sign in (1.0, -1.0):
            z = logits.copy()
            z[index] += sign * EPS
            shifted.append(reference_loss(z, targets, mask_np))
        numeric[index] = (shifted[0] - shifted[1]) / (2 * EPS)
    err = rel_err(dlogits, numeric)
    record_worst("cross-entropy gradient vs finite differences", err, f"mask={masked}")
    assert err < 1e-7
    if masked:
        masked_out = ~mask
        assert np.all(to_numpy(dlogits)[:, masked_out] == 0.0)


def test_cross_entropy_is_stable_for_huge_logits(xp):
    logits = np.zeros((N_Y, 1, 2))
    logits[:, 0, 0] = [1000.0, -1000.0, 0.0]
    logits[:, 0, 1] = [-1e4, 1e4, 1e4]
    targets = np.array([[1, 2]])
    loss, dlogits = softmax_cross_entropy(asxp(xp, logits), xp.asarray(targets))
    # -log p: 2000 for the first position, log 2 for the second; mean over 2 positions.
    assert float(loss) == pytest.approx((2000.0 + np.log(2.0)) / 2, rel=1e-12)
    assert np.all(np.isfinite(to_numpy(dlogits)))
    z = to_numpy(log_softmax(asxp(xp, logits)))
    assert np.all(np.isfinite(z))


def test_masked_positions_may_hold_padding_and_all_masked_gives_zero(xp):
    logits, targets, mask = problem(1)
    targets = np.where(mask, targets, -1)
    loss, _ = softmax_cross_entropy(asxp(xp, logits), xp.asarray(targets), xp.asarray(mask))
    assert abs(float(loss) - reference_loss(logits, targets, mask)) < 1e-12
    none = xp.asarray(np.zeros((M, T), dtype=bool))
    loss, dlogits = softmax_cross_entropy(asxp(xp, logits), xp.asarray(targets), none)
    assert float(loss) == 0.0
    assert np.all(to_numpy(dlogits) == 0.0)


def test_float_mask_weights_and_sum_reduction(xp):
    logits, targets, _ = problem(2)
    weights = np.random.default_rng(3).random((M, T))
    loss, dz = softmax_cross_entropy(
        asxp(xp, logits), xp.asarray(targets), asxp(xp, weights), reduction="sum"
    )
    mean, dz_mean = softmax_cross_entropy(asxp(xp, logits), xp.asarray(targets), asxp(xp, weights))
    assert float(loss) == pytest.approx(float(mean) * weights.sum(), rel=1e-12)
    assert rel_err(dz, to_numpy(dz_mean) * weights.sum()) < 1e-12


def test_one_hot_by_comparison(xp):
    ids = xp.asarray(np.array([[0, 2, -1], [1, 5, 2]]))
    hot = to_numpy(one_hot(ids, 3, dtype=xp.float64))
    assert hot.shape == (3, 2, 3)
    assert hot[:, 0, 0].tolist() == [1, 0, 0]
    assert hot[:, 0, 2].tolist() == [0, 0, 0]  # -1: no class
    assert hot[:, 1, 1].tolist() == [0, 0, 0]  # out of range: no class
    last = to_numpy(one_hot(ids, 3, axis=-1, dtype=xp.float64))
    assert np.array_equal(last, np.moveaxis(hot, 0, -1))


def _full_problem(xp, seed=0):
    rng = np.random.default_rng(seed)
    params = random_parameters(rng, N_X, N_A, N_Y)
    x = rng.standard_normal((N_X, M, T))
    targets = rng.integers(0, N_Y, (M, T))
    mask = rng.random((M, T)) > 0.25
    a0 = rng.standard_normal((N_A, M))
    c0 = rng.standard_normal((N_A, M))
    on = {k: asxp(xp, v) for k, v in params.items()}
    return params, on, x, targets, mask, a0, c0


def test_loss_and_gradients_vs_finite_differences(xp):
    """Directional derivatives along two random directions per parameter, with a mask."""
    params, on, x, targets, mask, a0, c0 = _full_problem(xp)
    args = (asxp(xp, x), xp.asarray(targets))
    states = (asxp(xp, a0), asxp(xp, c0), xp.asarray(mask))
    _, grads, _ = loss_and_gradients(*args, on, *states)
    assert tuple(grads) == tuple("d" + k for k in PARAM_KEYS)
    rng = np.random.default_rng(9)
    worst = 0.0
    for key in PARAM_KEYS:
        for _ in range(2):
            direction = rng.standard_normal(params[key].shape)
            values = []
            for sign in (1.0, -1.0):
                moved = dict(on)
                moved[key] = asxp(xp, params[key] + sign * EPS * direction)
                values.append(float(loss_and_gradients(*args, moved, *states)[0]))
            numeric = (values[0] - values[1]) / (2 * EPS)
            analytic = float(np.sum(to_numpy(grads["d" + key]) * direction))
            worst = max(worst, abs(numeric - analytic) / max(abs(numeric), 1e-3))
    record_worst("loss_and_gradients vs finite differences (directional)", worst, "all params")
    assert worst < 1e-6


def test_loss_and_gradients_elementwise_finite_differences_numpy():
    params, on, x, targets, mask, a0, c0 = _full_problem(np)
    _, grads, _ = loss_and_gradients(x, targets, on, a0, c0, mask)
    worst = 0.0
    for key in PARAM_KEYS:
        numeric = np.zeros_like(params[key])
        for index in np.ndindex(params[key].shape):
            values = []
            for sign in (1.0, -1.0):
                moved = dict(params)
                moved[key] = params[key].copy()
                moved[key][index] += sign * EPS
                values.append(float(loss_and_gradients(x, targets, moved, a0, c0, mask)[0]))
            numeric[index] = (values[0] - values[1]) / (2 * EPS)
        worst = max(worst, rel_err(grads["d" + key], numeric))
    record_worst("loss_and_gradients vs finite differences (every entry)", worst, "numpy")
    assert worst < 1e-7


def test_pieces_compose_to_loss_and_gradients(xp):
    """lstm_forward -> output_forward -> softmax_cross_entropy -> output_backward ->
    lstm_backward gives what the one call gives."""
    _, on, x, targets, mask, a0, c0 = _full_problem(xp, 4)
    x, a0, c0 = asxp(xp, x), asxp(xp, a0), asxp(xp, c0)
    t, w = xp.asarray(targets), xp.asarray(mask)
    loss, grads, (a_t, c_t) = loss_and_gradients(x, t, on, a0, c0, w)
    a, _, c, caches = xlstm.lstm_forward(x, a0, on, c0)
    logits = output_forward(a, on["Wy"], on["by"])
    loss2, dlogits = softmax_cross_entropy(logits, t, w)
    da, dWy, dby = output_backward(dlogits, a, on["Wy"])
    seq = xlstm.lstm_backward(da, caches)
    assert abs(float(loss) - float(loss2)) < 1e-12
    for key in ("dWf", "dbf", "dWi", "dbi", "dWc", "dbc", "dWo", "dbo"):
        assert rel_err(grads[key], seq[key]) < 1e-12, key
    assert rel_err(grads["dWy"], dWy) < 1e-12
    assert rel_err(grads["dby"], dby) < 1e-12
    assert rel_err(a_t, a[:, :, T - 1]) == 0.0
    assert rel_err(c_t, c[:, :, T - 1]) == 0.0
    value, (a_s, _) = sequence_loss(x, t, on, a0, c0, w)
    assert abs(float(value) - float(loss)) < 1e-12
    assert rel_err(a_s, a_t) == 0.0


def test_truncated_bptt_carries_the_state_exactly(xp):
    """Two chunks with the state carried give the loss of the whole sequence."""
    _, on, x, targets, _, a0, c0 = _full_problem(xp, 5)
    x, t = asxp(xp, x), xp.asarray(targets)
    whole, _, _ = loss_and_gradients(x, t, on, asxp(xp, a0), asxp(xp, c0), reduction="sum")
    first, _, (a, c) = loss_and_gradients(
        x[:, :, :2], t[:, :2], on, asxp(xp, a0), asxp(xp, c0), reduction="sum"
    )
    second, _, _ = loss_and_gradients(x[:, :, 2:], t[:, 2:], on, a, c, reduction="sum")
    assert float(first) + float(second) == pytest.approx(float(whole), rel=1e-12)


def test_fused_and_generic_paths_agree():
    """NumPy's fast paths (engine and output layer) against the generic ones, with padding."""
    _, on, x, targets, mask, a0, c0 = _full_problem(np, 6)
    targets = np.where(mask, targets, -1)
    fast = loss_and_gradients(x, targets, on, a0, c0, mask, engine="auto")
    slow = loss_and_gradients(x, targets, on, a0, c0, mask, engine="generic")
    assert float(fast[0]) == pytest.approx(float(slow[0]), rel=1e-13)
    for key in fast[1]:
        assert rel_err(fast[1][key], slow[1][key]) < 1e-12


def test_inputs_are_not_modified(xp):
    _, on, x, targets, mask, a0, c0 = _full_problem(xp, 7)
    arrays = {"x": asxp(xp, x), "a0": asxp(xp, a0), "c0": asxp(xp, c0)}
    before = {k: to_numpy(v) for k, v in {**on, **arrays}.items()}
    loss_and_gradients(
        arrays["x"], xp.asarray(targets), on, arrays["a0"], arrays["c0"], xp.asarray(mask)
    )
    for key, value in {**on, **arrays}.items():
        assert np.array_equal(to_numpy(value), before[key]), key


def test_float32_runs_and_returns_float32(xp):
    _, _, x, targets, _, _, _ = _full_problem(xp, 8)
    params = xlstm.init_parameters(N_X, N_A, N_Y, xp=xp, dtype="float32", seed=0)
    loss, grads, (a, _) = loss_and_gradients(asxp(xp, x, "float32"), xp.asarray(targets), params)
    assert loss.dtype == xp.float32
    assert all(g.dtype == xp.float32 for g in grads.values())
    assert a.dtype == xp.float32


# --------------------------------------------------------------------------- errors


def test_errors_name_the_argument(xp):
    logits, targets, mask = problem()
    z = asxp(xp, logits)
    with pytest.raises(TypeError, match="`targets` has dtype"):
        softmax_cross_entropy(z, asxp(xp, targets.astype(float)))
    with pytest.raises(ValueError, match=r"`targets` has shape \(2, 4\); expected \(2, 5\)"):
        softmax_cross_entropy(z, xp.asarray(targets[:, :4]))
    with pytest.raises(ValueError, match=r"`targets` holds class indices outside \[0, 3\)"):
        softmax_cross_entropy(z, xp.asarray(np.full((M, T), 3)))
    with pytest.raises(ValueError, match="`mask` has shape"):
        softmax_cross_entropy(z, xp.asarray(targets), xp.asarray(mask[:, :2]))
    with pytest.raises(TypeError, match="`mask` has dtype"):
        softmax_cross_entropy(z, xp.asarray(targets), xp.asarray(mask.astype(np.int64)))
    with pytest.raises(ValueError, match="`reduction` = 'max'"):
        softmax_cross_entropy(z, xp.asarray(targets), reduction="max")
    with pytest.raises(TypeError, match="`indices` has dtype"):
        one_hot(z, 3)
    with pytest.raises(ValueError, match="`n_classes` = 0"):
        one_hot(xp.asarray(targets), 0)


def test_loss_and_gradients_errors():
    torch = pytest.importorskip("torch")
    _, on, x, targets, _, a0, _ = _full_problem(np)
    with pytest.raises(TypeError, match="`targets` is a torch array"):
        loss_and_gradients(x, torch.asarray(targets), on)
    with pytest.raises(ValueError, match=r"`targets` has shape \(2, 4\); expected \(2, 5\)"):
        loss_and_gradients(x, targets[:, :4], on)
    with pytest.raises(ValueError, match="`a0` has shape"):
        loss_and_gradients(x, targets, on, a0[:, :1])
    with pytest.raises(ValueError, match="missing 'Wy'"):
        loss_and_gradients(x, targets, {k: v for k, v in on.items() if k != "Wy"})
    with pytest.raises(TypeError, match="dtype"):
        loss_and_gradients(x.astype(np.float32), targets, on)


def test_recompute_flag_is_checked():
    import numpy as np

    from xlstm import init_parameters
    from xlstm.training import loss_and_gradients

    params = init_parameters(2, 3, 2, seed=0)
    x = np.zeros((2, 1, 3), np.float32)
    targets = np.zeros((1, 3), np.int64)
    with pytest.raises(TypeError, match=r"`recompute` must be a bool \(True or False\), got 1"):
        loss_and_gradients(x, targets, params, recompute=1)
    loss_and_gradients(x, targets, params, recompute=np.True_)
