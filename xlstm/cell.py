"""One LSTM step, forward and backward (the notebook's API).

The cell works in the notebook's feature-major layout, ``(n_a, m)``; it shares its
arithmetic with the sequence engine (:func:`xlstm._engines.generic.cell_step` and
:func:`xlstm._engines.generic.cell_step_backward`) by working on transposes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from . import _validation
from ._backend import namespace_of
from ._engines.generic import cell_step, cell_step_backward
from ._errstate import ieee_arithmetic
from ._layout import CELL_GRADIENT_KEYS
from .activations import _softmax
from .parameters import pack, unpack_gradients


class CellCache(NamedTuple):
    """The notebook's cell cache, field for field (it unpacks like the notebook's tuple).

    ``parameters`` is a reference to the caller's dict, not a copy.
    """

    a_next: Any
    c_next: Any
    a_prev: Any
    c_prev: Any
    ft: Any
    it: Any
    cct: Any
    ot: Any
    xt: Any
    parameters: Mapping[str, Any]


@ieee_arithmetic
def lstm_cell_forward(
    xt: Any, a_prev: Any, c_prev: Any, parameters: Mapping[str, Any], *, xp: Any = None
) -> tuple[Any, Any, Any, CellCache]:
    r"""One LSTM step.

    .. math::

        f_t = \sigma(W_f [a_{t-1}; x_t] + b_f), \quad
        i_t = \sigma(W_i [a_{t-1}; x_t] + b_i), \quad
        o_t = \sigma(W_o [a_{t-1}; x_t] + b_o), \quad
        \tilde c_t = \tanh(W_c [a_{t-1}; x_t] + b_c), \\
        c_t = f_t \odot c_{t-1} + i_t \odot \tilde c_t, \quad
        a_t = o_t \odot \tanh(c_t), \quad
        \hat y_t = \operatorname{softmax}(W_y a_t + b_y).

    Parameters
    ----------
    xt : array, shape (n_x, m)
    a_prev, c_prev : array, shape (n_a, m)
    parameters : dict
        The notebook's dict (see :func:`lstm_forward`).
    xp : str or namespace, optional
        Default: inferred from all arrays.

    Returns
    -------
    a_next, c_next : array, shape (n_a, m)
    yt_pred : array, shape (n_y, m)
    cache : CellCache
        ``(a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)``.
    """
    _validation.check_parameter_dict(parameters)
    arrays = {"xt": xt, "a_prev": a_prev, "c_prev": c_prev}
    xp = namespace_of({**arrays, **_validation.named_parameters(parameters)}, xp=xp)
    sizes = _validation.parameter_sizes(parameters)
    m = _validation.step_batch(xt, sizes)
    _validation.check_shape("a_prev", a_prev, (sizes.n_a, m), "(n_a, m)")
    _validation.check_shape("c_prev", c_prev, (sizes.n_a, m), "(n_a, m)")

    n_a = sizes.n_a
    W, b = pack(parameters, xp)
    z = a_prev.T @ W[:, :n_a].T + xt.T @ W[:, n_a:].T + b
    gates, c_rows, _, h_rows = cell_step(z, c_prev.T, n_a, xp)
    a_next, c_next = h_rows.T, c_rows.T
    it, ft, ot, cct = (gates[:, k * n_a : (k + 1) * n_a].T for k in range(4))
    yt_pred = _softmax(parameters["Wy"] @ a_next + parameters["by"], 0, xp)
    cache = CellCache(a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)
    return a_next, c_next, yt_pred, cache


@ieee_arithmetic
def lstm_cell_backward(da_next: Any, dc_next: Any, cache: Any, *, xp: Any = None) -> dict[str, Any]:
    r"""Gradients of one LSTM step.

    Parameters
    ----------
    da_next, dc_next : array, shape (n_a, m)
        Total gradients reaching ``a_t`` and ``c_t``.
    cache : CellCache or the notebook's 10-tuple
        From :func:`lstm_cell_forward`.

    Returns
    -------
    dict
        ``dxt (n_x, m)``, ``da_prev (n_a, m)``, ``dc_prev (n_a, m)``,
        ``dWf, dWi, dWc, dWo (n_a, n_a + n_x)``, ``dbf, dbi, dbc, dbo (n_a, 1)``:

    .. math::

        \delta c = \delta c_t + \delta a_t \odot o_t \odot (1 - \tanh^2 c_t), \quad
        dc_{t-1} = \delta c \odot f_t, \quad
        dW_* = dz_* [a_{t-1}; x_t]^T, \quad db_* = \textstyle\sum_m dz_*.
    """
    if not (isinstance(cache, tuple) and len(cache) == 10):
        msg = "`cache` must be the 10-item cache returned by lstm_cell_forward"
        raise TypeError(msg)
    cache = CellCache(*cache)
    keys = ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo")
    _validation.check_parameter_dict(cache.parameters, keys)
    arrays = {"da_next": da_next, "dc_next": dc_next}
    for field in ("a_next", "c_next", "a_prev", "c_prev", "ft", "it", "cct", "ot", "xt"):
        arrays[f"cache.{field}"] = getattr(cache, field)
    named = _validation.named_parameters(cache.parameters, keys)
    xp = namespace_of({**arrays, **named}, xp=xp)
    sizes = _validation.parameter_sizes(cache.parameters, need_output=False)
    m = _validation.step_batch(cache.xt, sizes)
    for name in ("da_next", "dc_next"):
        _validation.check_shape(name, arrays[name], (sizes.n_a, m), "(n_a, m)")
    for field in ("a_next", "c_next", "a_prev", "c_prev", "ft", "it", "cct", "ot"):
        _validation.check_shape(f"cache.{field}", getattr(cache, field), (sizes.n_a, m), "(n_a, m)")

    n_a = sizes.n_a
    gates = xp.concat([cache.it.T, cache.ft.T, cache.ot.T, cache.cct.T], axis=1)
    tanh_c = xp.tanh(cache.c_next.T)
    dz, dc_prev = cell_step_backward(da_next.T, dc_next.T, gates, cache.c_prev.T, tanh_c, n_a, xp)
    W, _ = pack(cache.parameters, xp)
    concat = xp.concat([cache.a_prev, cache.xt], axis=0)
    gradients = {
        "dxt": (dz @ W[:, n_a:]).T,
        "da_prev": (dz @ W[:, :n_a]).T,
        "dc_prev": dc_prev.T,
    }
    gradients.update(unpack_gradients(dz.T @ concat.T, xp.sum(dz, axis=0), n_a, xp))
    return {key: gradients[key] for key in CELL_GRADIENT_KEYS}
