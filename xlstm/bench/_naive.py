"""Seed-style LSTM: the straightforward per-step loop, kept as a benchmark contestant.

This is the seed notebook's algorithm, step by step, with its two BPTT bugs fixed
(weight gradients are *summed* over the steps, and the cell-state gradient is
carried back to the previous step). It is deliberately not optimised: every step
looks the weights up in the parameter dict, concatenates ``[a_prev; x_t]``, makes
four small matrix products for the gates (and twelve in backward), and keeps a
cache tuple that holds the whole parameter dict. ``python -m xlstm bench`` times it
as "naive" to show what the engine gains over that way of writing an LSTM.

It is written against the array API (``xp`` required), so the same loop runs on
NumPy, CuPy, torch tensors or JAX; results are stacked at the end instead of being
written into preallocated arrays, which JAX does not allow.

Shapes (seed layout): x (n_x, m, T); a0, c0 (n_a, m); W* (n_a, n_a + n_x) acting on
``[a_prev; x_t]``; b* (n_a, 1); Wy (n_y, n_a); by (n_y, 1). Keys: Wf bf Wi bi Wc bc
Wo bo Wy by (``Wc`` is the candidate gate ``g``).
"""

from __future__ import annotations

from typing import Any


def _sigmoid(z: Any, xp: Any) -> Any:
    # The tanh form: same cost as 1 / (1 + exp(-z)) but no overflow warning.
    return 0.5 * xp.tanh(0.5 * z) + 0.5


def _softmax(z: Any, xp: Any) -> Any:
    e = xp.exp(z - xp.max(z, axis=0, keepdims=True))
    return e / xp.sum(e, axis=0, keepdims=True)


def naive_cell_forward(xt, a_prev, c_prev, parameters, *, xp):
    """One seed-style step. Returns ``(a_next, c_next, yt_pred, cache)``.

    ``cache = (a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)``.
    """
    Wf = parameters["Wf"]
    bf = parameters["bf"]
    Wi = parameters["Wi"]
    bi = parameters["bi"]
    Wc = parameters["Wc"]
    bc = parameters["bc"]
    Wo = parameters["Wo"]
    bo = parameters["bo"]
    Wy = parameters["Wy"]
    by = parameters["by"]

    concat = xp.concat((a_prev, xt), axis=0)
    ft = _sigmoid(Wf @ concat + bf, xp)
    it = _sigmoid(Wi @ concat + bi, xp)
    cct = xp.tanh(Wc @ concat + bc)
    c_next = ft * c_prev + it * cct
    ot = _sigmoid(Wo @ concat + bo, xp)
    a_next = ot * xp.tanh(c_next)
    yt_pred = _softmax(Wy @ a_next + by, xp)
    cache = (a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)
    return a_next, c_next, yt_pred, cache


def naive_forward(x, a0, parameters, c0=None, *, xp):
    """Seed-style sequence forward. Returns ``(a, y, c, caches)``; a, c (n_a, m, T)."""
    T = x.shape[2]
    a_next = a0
    c_next = xp.zeros_like(a0) if c0 is None else c0
    a_steps, y_steps, c_steps, caches = [], [], [], []
    for t in range(T):
        a_next, c_next, yt, cache = naive_cell_forward(
            x[:, :, t], a_next, c_next, parameters, xp=xp
        )
        a_steps.append(a_next)
        y_steps.append(yt)
        c_steps.append(c_next)
        caches.append(cache)
    a = xp.stack(a_steps, axis=-1)
    y = xp.stack(y_steps, axis=-1)
    c = xp.stack(c_steps, axis=-1)
    return a, y, c, (caches, x)


def naive_cell_backward(da_next, dc_next, cache, *, xp):
    """One seed-style backward step (the seed's formulas, which are correct).

    ``dc_next`` is the whole gradient reaching ``c_next`` except the part through
    ``a_next``; ``da_next`` is the whole gradient reaching ``a_next``.
    """
    (a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters) = cache
    n_a = a_next.shape[0]

    dtanh = ot * (1 - xp.tanh(c_next) ** 2)
    dot = da_next * xp.tanh(c_next) * ot * (1 - ot)
    dcct = (dc_next * it + dtanh * it * da_next) * (1 - cct**2)
    dit = (dc_next * cct + dtanh * cct * da_next) * it * (1 - it)
    dft = (dc_next * c_prev + dtanh * c_prev * da_next) * ft * (1 - ft)

    concat_t = xp.concat((a_prev, xt), axis=0).T
    dWf = dft @ concat_t
    dWi = dit @ concat_t
    dWc = dcct @ concat_t
    dWo = dot @ concat_t
    dbf = xp.sum(dft, axis=1, keepdims=True)
    dbi = xp.sum(dit, axis=1, keepdims=True)
    dbc = xp.sum(dcct, axis=1, keepdims=True)
    dbo = xp.sum(dot, axis=1, keepdims=True)

    Wf = parameters["Wf"]
    Wi = parameters["Wi"]
    Wc = parameters["Wc"]
    Wo = parameters["Wo"]
    da_prev = Wf[:, :n_a].T @ dft + Wi[:, :n_a].T @ dit + Wc[:, :n_a].T @ dcct + Wo[:, :n_a].T @ dot
    dc_prev = dc_next * ft + dtanh * ft * da_next
    dxt = Wf[:, n_a:].T @ dft + Wi[:, n_a:].T @ dit + Wc[:, n_a:].T @ dcct + Wo[:, n_a:].T @ dot
    return {
        "dxt": dxt,
        "da_prev": da_prev,
        "dc_prev": dc_prev,
        "dWf": dWf,
        "dbf": dbf,
        "dWi": dWi,
        "dbi": dbi,
        "dWc": dWc,
        "dbc": dbc,
        "dWo": dWo,
        "dbo": dbo,
    }


_WEIGHT_KEYS = ("dWf", "dbf", "dWi", "dbi", "dWc", "dbc", "dWo", "dbo")


def naive_backward(da, caches, dc=None, *, xp):
    """Seed-style BPTT, correct. Returns dx da0 dc0 dWf dbf dWi dbi dWc dbc dWo dbo.

    ``da``, ``dc`` (n_a, m, T): gradients reaching each a_t / c_t from outside the
    recurrence (``dc=None`` means zero).
    """
    step_caches, _ = caches
    T = da.shape[2]
    da_prevt = xp.zeros_like(da[:, :, 0])
    dc_prevt = xp.zeros_like(da[:, :, 0])
    totals = None
    dx_steps = []
    for t in reversed(range(T)):
        dc_in = dc_prevt if dc is None else dc_prevt + dc[:, :, t]
        grads = naive_cell_backward(da[:, :, t] + da_prevt, dc_in, step_caches[t], xp=xp)
        dx_steps.append(grads["dxt"])
        if totals is None:
            totals = {key: grads[key] for key in _WEIGHT_KEYS}
        else:
            totals = {key: totals[key] + grads[key] for key in _WEIGHT_KEYS}
        da_prevt = grads["da_prev"]
        dc_prevt = grads["dc_prev"]
    dx_steps.reverse()
    return {"dx": xp.stack(dx_steps, axis=-1), "da0": da_prevt, "dc0": dc_prevt, **totals}
