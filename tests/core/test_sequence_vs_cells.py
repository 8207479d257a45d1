"""The sequence functions equal the loop of cell steps; the engine's options agree with each other.

- ``lstm_forward`` == chaining ``lstm_cell_forward`` over time;
- ``lstm_backward`` == reverse loop of ``lstm_cell_backward`` with the recurrent gradients carried
  in ``da_prev`` / ``dc_prev`` and the weight/bias gradients summed over time (correct BPTT);
- ``fused=False`` (generic array-API path) == ``fused="auto"`` (NumPy fast path) == ``fused=True``;
- ``recompute=True`` == ``recompute=False``.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import (
    CELL_GRAD_KEYS,
    GATE_KEYS,
    SEQ_GRAD_KEYS,
    SHAPE_IDS,
    SHAPES,
    float_tol,
    random_problem,
    rel_err,
    to_numpy,
)

import xlstm


def cell_loop_forward(xp, x, a0, c0, params):
    """Chain lstm_cell_forward over time; returns NumPy a, y, c (n_*, m, T) and the caches."""
    a_list, y_list, c_list, caches = [], [], [], []
    a_t, c_t = a0, c0
    for t in range(x.shape[2]):
        a_t, c_t, y_t, cache = xlstm.lstm_cell_forward(x[:, :, t], a_t, c_t, params)
        a_list.append(to_numpy(a_t))
        y_list.append(to_numpy(y_t))
        c_list.append(to_numpy(c_t))
        caches.append(cache)
    return np.stack(a_list, -1), np.stack(y_list, -1), np.stack(c_list, -1), caches


@pytest.mark.parametrize("give_c0", [True, False], ids=["c0", "c0=None"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_equals_cell_loop(xp, shape, give_c0):
    prob = random_problem(400 + SHAPES.index(shape), *shape)
    d = prob.to(xp)
    c0 = d["c0"] if give_c0 else None
    a, y, c, caches = xlstm.lstm_forward(d["x"], d["a0"], d["params"], c0)
    ra, ry, rc, _ = cell_loop_forward(
        xp, d["x"], d["a0"], d["c0"] if give_c0 else xp.zeros_like(d["a0"]), d["params"]
    )
    tol = float_tol(xp)
    for name, got, ref in (("a", a, ra), ("y", y, ry), ("c", c, rc)):
        assert tuple(got.shape) == ref.shape, name
        err = rel_err(got, ref)
        assert err <= tol, f"{name}: {err:.3e}"
    assert len(caches) == 2
    np.testing.assert_array_equal(to_numpy(caches[1]), prob.x)


@pytest.mark.parametrize("with_dc", [False, True], ids=["dc=None", "dc"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_backward_equals_cell_loop(xp, shape, with_dc):
    prob = random_problem(500 + SHAPES.index(shape), *shape)
    d = prob.to(xp)
    n_a, m, T = prob.n_a, prob.m, prob.T
    _, _, _, caches = xlstm.lstm_forward(d["x"], d["a0"], d["params"], d["c0"])
    got = xlstm.lstm_backward(d["Ga"], caches, dc=d["Gc"] if with_dc else None)

    _, _, _, cell_caches = cell_loop_forward(xp, d["x"], d["a0"], d["c0"], d["params"])
    da_prev = xp.zeros((n_a, m), dtype=xp.float64)
    dc_prev = xp.zeros((n_a, m), dtype=xp.float64)
    totals = {f"d{k}": 0.0 for k in GATE_KEYS}
    dx = [None] * T
    for t in reversed(range(T)):
        dc_next = dc_prev + d["Gc"][:, :, t] if with_dc else dc_prev
        g = xlstm.lstm_cell_backward(d["Ga"][:, :, t] + da_prev, dc_next, cell_caches[t])
        assert set(g) == set(CELL_GRAD_KEYS)
        dx[t] = to_numpy(g["dxt"])
        for k in totals:
            totals[k] = totals[k] + to_numpy(g[k])
        da_prev, dc_prev = g["da_prev"], g["dc_prev"]
    ref = {"dx": np.stack(dx, -1), "da0": to_numpy(da_prev), "dc0": to_numpy(dc_prev), **totals}

    assert set(got) == set(SEQ_GRAD_KEYS)
    tol = float_tol(xp)
    for k in SEQ_GRAD_KEYS:
        err = rel_err(got[k], ref[k])
        assert err <= tol, f"{k}: {err:.3e}"


def _run(prob, dtype, with_dc, **options):
    cast = {k: v.astype(dtype) for k, v in prob.arrays.items()}
    params = {k: cast[k] for k in prob.params}
    a, y, c, caches = xlstm.lstm_forward(cast["x"], cast["a0"], params, cast["c0"], **options)
    backward_options = {k: v for k, v in options.items() if k == "fused"}
    dc = prob.Gc.astype(dtype) if with_dc else None
    grads = xlstm.lstm_backward(prob.Ga.astype(dtype), caches, dc, **backward_options)
    return {"a": a, "y": y, "c": c, **grads}


@pytest.mark.parametrize("with_dc", [False, True], ids=["dc=None", "dc"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=SHAPE_IDS[:3])
def test_numpy_fused_false_matches_auto_and_true(shape, dtype, with_dc):
    prob = random_problem(600 + SHAPES.index(shape), *shape)
    auto = _run(prob, dtype, with_dc, fused="auto")
    tol = 1e-12 if dtype == "float64" else 1e-5
    for fused in (False, True):
        other = _run(prob, dtype, with_dc, fused=fused)
        assert set(other) == set(auto)
        for k, ref in auto.items():
            assert other[k].dtype == ref.dtype, k
            err = rel_err(other[k], ref)
            assert err <= tol, f"fused={fused} {k}: {err:.3e}"


@pytest.mark.parametrize("with_dc", [False, True], ids=["dc=None", "dc"])
def test_recompute_gives_same_results(xp, with_dc):
    prob = random_problem(700, 3, 4, 5, 5, 2)
    d = prob.to(xp)
    results = []
    for recompute in (False, True):
        a, y, c, caches = xlstm.lstm_forward(
            d["x"], d["a0"], d["params"], d["c0"], recompute=recompute
        )
        grads = xlstm.lstm_backward(d["Ga"], caches, dc=d["Gc"] if with_dc else None)
        results.append({"a": a, "y": y, "c": c, **grads})
    plain, recomputed = results
    assert set(plain) == set(recomputed)
    for k in plain:
        err = rel_err(recomputed[k], plain[k])
        assert err <= 1e-12, f"{k}: {err:.3e}"


@pytest.mark.parametrize(("fused", "recompute"), [(False, True), (True, False), (True, True)])
def test_numpy_options_combined_match_reference(fused, recompute):
    """Every (fused, recompute) combination on NumPy equals the generic, stored-gates run."""
    prob = random_problem(800, 2, 3, 4, 3, 2)
    ref = _run(prob, "float64", True, fused=False, recompute=False)
    got = _run(prob, "float64", True, fused=fused, recompute=recompute)
    for k in ref:
        err = rel_err(got[k], ref[k])
        assert err <= 1e-12, f"{k}: {err:.3e}"


@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["padded", "lengths"])
@pytest.mark.parametrize("transpose_min_rows", [0, 1 << 30], ids=["W_h^T copy", "W_h^T view"])
@pytest.mark.parametrize("steps_per_segment", [2, 7], ids=["3 segments", "1 segment"])
def test_numpy_fast_path_layouts_and_segments(
    monkeypatch, transpose_min_rows, steps_per_segment, lengths
):
    """Both layouts of ``W_h^T`` in the NumPy fast path, and a backward pass cut into several
    segments (the first writes the weight gradients, later ones add to them), equal the
    generic path (float64)."""
    from xlstm._engines import cache as _engine
    from xlstm._engines.numpy import step as numpy_engine

    n_x, n_a, m, t_x, n_y = 3, 4, 3, 5, 2
    prob = random_problem(850, n_x, m, t_x, n_a, n_y)
    monkeypatch.setattr(numpy_engine, "TRANSPOSE_MIN_ROWS", transpose_min_rows)
    monkeypatch.setattr(_engine, "SEGMENT_ELEMENTS", steps_per_segment * m * 4 * n_a)
    assert _engine.segment_length(t_x, m, n_a) == min(steps_per_segment, t_x)

    def run(fused):
        a, _, c, caches = xlstm.lstm_forward(
            prob.x, prob.a0, prob.params, prob.c0, fused=fused, lengths=lengths
        )
        grads = xlstm.lstm_backward(prob.Ga, caches, prob.Gc, fused=fused)
        return {"a": a, "c": c, **grads}

    ref, got = run(False), run(True)
    for k in ref:
        err = rel_err(got[k], ref[k])
        assert err <= 1e-12, f"{k}: {err:.3e}"
