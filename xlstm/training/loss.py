r"""Softmax cross-entropy over the per-step outputs, and the output layer's backward.

Shape legend (the notebook's names)::

    n_x  inputs     x        (n_x, m, T)      n_a  hidden   a, c   (n_a, m, T)
    n_y  classes    logits   (n_y, m, T)      m    batch    targets, mask  (m, T)
    T    time steps Wy (n_y, n_a), by (n_y, 1)

The output layer and the loss, per step ``t`` and sequence ``j``:

.. math::

    z_t = W_y a_t + b_y, \quad
    \log p_t = z_t - \max z_t - \log \textstyle\sum_k e^{z_{t,k} - \max z_t}, \quad
    L = \frac{1}{N} \sum_{j, t} w_{j,t} \, (-\log p_{t}[\mathrm{target}_{j,t}]),

with ``w`` the mask (all ones without one) and ``N = sum(w)`` for ``reduction="mean"``
(``N = 1`` for ``"sum"``).  The gradient is ``dz = w (p - one_hot(target)) / N`` and

.. math::

    dW_y = \textstyle\sum_t dz_t a_t^T, \quad db_y = \textstyle\sum_t dz_t, \quad
    da_t = W_y^T dz_t,

where ``da`` is what :func:`xlstm.lstm_backward` takes.  :func:`loss_and_gradients` chains
the recurrence, this layer and backpropagation through time for every parameter at once.
Gate order is :data:`xlstm.GATE_ORDER` = (i, f, o, g) wherever weights are stacked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import array_api_compat

from .. import _direction, _validation
from .._backend import library_name, namespace_of
from .._engines.cache import time_major
from .._engines.dispatch import engine_option
from .._errstate import ieee_arithmetic
from .._layout import GRADIENT_KEYS
from .._validation import shape_of

REDUCTIONS = ("mean", "sum")


# --------------------------------------------------------------------------- validation


def _check_same_library(name: str, array: Any, xp: Any, reference: Any) -> None:
    """``array`` is an array of the same library and device as ``reference``."""
    if not array_api_compat.is_array_api_obj(array):
        raise TypeError(f"`{name}` must be an array, got {type(array).__name__}")
    if array_api_compat.array_namespace(array) is not xp:
        msg = (
            f"`{name}` is a {library_name(array)} array but the model's arrays are "
            f"{library_name(reference)} arrays; move it with xp.asarray first"
        )
        raise TypeError(msg)
    if array_api_compat.device(array) != array_api_compat.device(reference):
        msg = (
            f"`{name}` is on device {array_api_compat.device(array)} but the other arrays are "
            f"on {array_api_compat.device(reference)}"
        )
        raise TypeError(msg)


def _check_targets(
    targets: Any, mask: Any, shape: tuple[int, ...], n_classes: int, xp: Any, reference: Any
) -> None:
    """Integer ``targets`` of ``shape`` in ``[0, n_classes)`` where ``mask`` is set."""
    _check_same_library("targets", targets, xp, reference)
    if not xp.isdtype(targets.dtype, "integral"):
        msg = f"`targets` has dtype {targets.dtype}; expected an integer dtype (class indices)"
        raise TypeError(msg)
    if shape_of(targets) != shape:
        raise ValueError(f"`targets` has shape {shape_of(targets)}; expected {shape}")
    if mask is not None:
        _check_same_library("mask", mask, xp, reference)
        if not (xp.isdtype(mask.dtype, "bool") or xp.isdtype(mask.dtype, "real floating")):
            msg = f"`mask` has dtype {mask.dtype}; expected bool or a real floating dtype (weights)"
            raise TypeError(msg)
        if shape_of(mask) != shape:
            raise ValueError(f"`mask` has shape {shape_of(mask)}; expected {shape}")
    # Positions the mask switches off may hold anything (padding, -1, ...).
    bad = (targets < 0) | (targets >= n_classes)
    if mask is not None:
        bad = bad & (mask if xp.isdtype(mask.dtype, "bool") else mask != 0)
    if bool(xp.any(bad)):
        msg = f"`targets` holds class indices outside [0, {n_classes}) at unmasked positions"
        raise ValueError(msg)


def _check_reduction(reduction: Any) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` = {reduction!r}; expected one of {REDUCTIONS}")


# --------------------------------------------------------------------------- generic layer


def _log_softmax(z: Any, axis: int, xp: Any) -> tuple[Any, Any]:
    """``(log p, p)`` along ``axis``: the per-slice maximum is subtracted first."""
    shifted = z - xp.max(z, axis=axis, keepdims=True)
    exponentials = xp.exp(shifted)
    total = xp.sum(exponentials, axis=axis, keepdims=True)
    return shifted - xp.log(total), exponentials / total


def _one_hot(indices: Any, n_classes: int, axis: int, dtype: Any, xp: Any) -> Any:
    # A comparison with arange broadcasts without any indexed assignment, so it
    # works on immutable arrays (JAX) and on every device; -1 or other out-of-range
    # indices give an all-zero row.
    classes = xp.arange(n_classes, dtype=indices.dtype, device=array_api_compat.device(indices))
    axis = axis % (indices.ndim + 1)
    shape = [1] * (indices.ndim + 1)
    shape[axis] = n_classes
    return xp.astype(xp.expand_dims(indices, axis=axis) == xp.reshape(classes, tuple(shape)), dtype)


def _weights_and_count(mask: Any, size: int, dtype: Any, reduction: str, xp: Any):
    """Per-position weights (``None`` without a mask) and the loss's divisor."""
    weights = None if mask is None else xp.astype(mask, dtype)
    if reduction == "sum":
        return weights, 1.0
    if weights is None:
        return None, float(size)
    count = xp.sum(weights)
    # An all-masked batch gives loss 0 and zero gradients, not 0 / 0.
    return weights, xp.where(count > 0, count, xp.ones_like(count))


def _cross_entropy(logits: Any, targets: Any, weights: Any, count: Any, axis: int, xp: Any):
    """Loss and ``dlogits`` for classes along ``axis``; see the module docstring."""
    log_p, p = _log_softmax(logits, axis, xp)
    hot = _one_hot(targets, logits.shape[axis], axis, logits.dtype, xp)
    nll = -xp.sum(hot * log_p, axis=axis)
    if weights is None:
        return xp.sum(nll) / count, (p - hot) / count
    scale = xp.expand_dims(weights / count, axis=axis)
    return xp.sum(weights * nll) / count, (p - hot) * scale


def _output_rows(h_rows: Any, Wy: Any, by: Any) -> Any:
    """Logits ``(N, n_y)`` of hidden-state rows ``(N, n_a)``."""
    return h_rows @ Wy.T + by.T


def _numpy_output_cross_entropy(h_rows, Wy, by, targets, weights, count):
    """NumPy fast path of ``_cross_entropy(_output_rows(...), axis=1)``: same numbers.

    Why: the generic version makes about ten temporaries of the logits' size and a one-hot
    matrix; here the logits buffer becomes the probabilities and then ``dz`` in place, and
    the target entries are picked by index (an indexed write, which the generic path cannot
    use because JAX arrays are immutable).
    """
    import numpy as np

    z = h_rows @ Wy.T
    z += by.T
    z -= z.max(axis=1, keepdims=True)
    rows = np.arange(z.shape[0])
    # Masked-out positions may hold any target (padding): pick class 0 there; their
    # weight is zero below.
    picked = targets if weights is None else np.where(weights != 0, targets, 0)
    shifted_target = z[rows, picked]
    np.exp(z, out=z)
    total = z.sum(axis=1)
    z /= total[:, None]
    nll = np.log(total) - shifted_target  # -log p[target], from the shifted logits: no log(0)
    z[rows, picked] -= 1.0
    if weights is None:
        z *= z.dtype.type(1.0 / count)
        return np.sum(nll) / count, z
    z *= (weights / count)[:, None]
    return np.sum(weights * nll) / count, z


# --------------------------------------------------------------------------- public layer


@ieee_arithmetic
def log_softmax(z: Any, /, axis: int = 0, *, xp: Any = None) -> Any:
    r"""Logarithm of the softmax along ``axis``, stable for any magnitude.

    .. math:: \log\operatorname{softmax}(z)_k = z_k - \max_j z_j - \log\sum_l e^{z_l - \max_j z_j}

    Parameters
    ----------
    z : array of real floating dtype
    axis : int, default 0
        The class axis (0 in the notebook layout ``(n_y, m, T)``).
    xp : str or namespace, optional
        Default: inferred from ``z``.
    """
    xp = namespace_of({"z": z}, xp=xp)
    _check_axis(axis, z.ndim)
    return _log_softmax(z, axis, xp)[0]


def _check_axis(axis: Any, ndim: int) -> None:
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"`axis` must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"`axis` = {axis} is out of range for an array of {ndim} dimensions")


def one_hot(indices: Any, n_classes: int, /, *, axis: int = 0, dtype: Any = None) -> Any:
    """One-hot encoding of integer ``indices`` with a new class axis at ``axis``.

    ``indices`` of shape ``(m, T)`` give ``(n_classes, m, T)`` for ``axis=0`` (the notebook's
    ``x``) or ``(m, T, n_classes)`` for ``axis=-1``.  Indices outside ``[0, n_classes)``
    give all-zero vectors.  Built by comparison with ``arange`` (no indexed assignment),
    on the backend and device of ``indices``.

    Parameters
    ----------
    indices : integer array
    n_classes : int
    axis : int, default 0
    dtype : dtype, optional
        Default: the backend's default floating dtype.
    """
    if not array_api_compat.is_array_api_obj(indices):
        raise TypeError(f"`indices` must be an array, got {type(indices).__name__}")
    xp = array_api_compat.array_namespace(indices)
    if not xp.isdtype(indices.dtype, "integral"):
        raise TypeError(f"`indices` has dtype {indices.dtype}; expected an integer dtype")
    if not isinstance(n_classes, int) or isinstance(n_classes, bool):
        raise TypeError(f"`n_classes` must be an int, got {type(n_classes).__name__}")
    if n_classes < 1:
        raise ValueError(f"`n_classes` = {n_classes}; expected a positive number of classes")
    _check_axis(axis, indices.ndim + 1)
    if dtype is None:
        dtype = xp.asarray(0.0, device=array_api_compat.device(indices)).dtype
    return _one_hot(indices, n_classes, axis, dtype, xp)


@ieee_arithmetic
def softmax_cross_entropy(
    logits: Any,
    targets: Any,
    /,
    mask: Any = None,
    *,
    axis: int = 0,
    reduction: str = "mean",
    xp: Any = None,
) -> tuple[Any, Any]:
    """Softmax cross-entropy and its gradient with respect to the logits.

    Parameters
    ----------
    logits : array, shape (n_y, m, T)
        Unnormalised scores ``Wy a_t + by``; the class axis is ``axis``.
    targets : integer array, shape (m, T)
        Class indices: ``logits`` without its class axis.
    mask : array, shape (m, T), optional
        ``bool`` (False = padding, ignored) or real weights.  Targets at masked-out
        positions are not checked (padding may hold ``-1``).
    axis : int, default 0
    reduction : {"mean", "sum"}, default "mean"
        ``"mean"`` divides by the number of unmasked positions (the sum of the weights).
    xp : str or namespace, optional

    Returns
    -------
    loss : 0-d array
    dlogits : array, shape of ``logits``
        ``(softmax(logits) - one_hot(targets)) * mask / N``.

    Raises
    ------
    TypeError
        Non-integer targets, a mask of the wrong dtype, arrays of another library.
    ValueError
        Shapes that do not match, targets out of range, an unknown reduction.
    """
    xp = namespace_of({"logits": logits}, xp=xp)
    _check_axis(axis, logits.ndim)
    _check_reduction(reduction)
    axis = axis % logits.ndim
    shape = shape_of(logits)
    _check_targets(targets, mask, shape[:axis] + shape[axis + 1 :], shape[axis], xp, logits)
    weights, count = _weights_and_count(
        mask, math.prod(shape_of(targets)), logits.dtype, reduction, xp
    )
    return _cross_entropy(logits, targets, weights, count, axis, xp)


def output_forward(a: Any, Wy: Any, by: Any, /, *, xp: Any = None) -> Any:
    """Logits ``Wy a_t + by`` of the output layer at every step.

    Parameters
    ----------
    a : array, shape (n_a, m, T)
    Wy : array, shape (n_y, n_a)
    by : array, shape (n_y, 1)

    Returns
    -------
    logits : array, shape (n_y, m, T)
    """
    xp = namespace_of({"a": a, "Wy": Wy, "by": by}, xp=xp)
    n_y, n_a, m, t_x = _check_output_shapes(a, Wy, by)
    rows = _output_rows(xp.reshape(time_major(a, xp), (t_x * m, n_a)), Wy, by)
    return time_major(xp.reshape(rows, (t_x, m, n_y)), xp)


def output_backward(dlogits: Any, a: Any, Wy: Any, /, *, xp: Any = None) -> tuple[Any, Any, Any]:
    """Backward of :func:`output_forward`.

    Parameters
    ----------
    dlogits : array, shape (n_y, m, T)
    a : array, shape (n_a, m, T)
    Wy : array, shape (n_y, n_a)

    Returns
    -------
    da : array, shape (n_a, m, T)
        The ``da`` that :func:`xlstm.lstm_backward` takes.
    dWy : array, shape (n_y, n_a)
    dby : array, shape (n_y, 1)
    """
    xp = namespace_of({"dlogits": dlogits, "a": a, "Wy": Wy}, xp=xp)
    n_y, n_a = shape_of(Wy) if Wy.ndim == 2 else (None, None)
    if a.ndim != 3 or Wy.ndim != 2 or a.shape[0] != n_a:
        msg = (
            f"`a` has shape {shape_of(a)} and `Wy` {shape_of(Wy)}; "
            "expected (n_a, m, T) and (n_y, n_a)"
        )
        raise ValueError(msg)
    _, m, t_x = shape_of(a)
    _validation.check_shape("dlogits", dlogits, (n_y, m, t_x), "(n_y, m, T)")
    dz = xp.reshape(time_major(dlogits, xp), (t_x * m, n_y))
    h_rows = xp.reshape(time_major(a, xp), (t_x * m, n_a))
    da = time_major(xp.reshape(dz @ Wy, (t_x, m, n_a)), xp)
    return da, dz.T @ h_rows, xp.reshape(xp.sum(dz, axis=0), (n_y, 1))


def _check_output_shapes(a: Any, Wy: Any, by: Any) -> tuple[int, int, int, int]:
    if Wy.ndim != 2:
        raise ValueError(f"`Wy` has shape {shape_of(Wy)}; expected (n_y, n_a)")
    n_y, n_a = shape_of(Wy)
    if a.ndim != 3 or a.shape[0] != n_a:
        raise ValueError(f"`a` has shape {shape_of(a)}; expected (n_a, m, T) with n_a = {n_a}")
    _validation.check_shape("by", by, (n_y, 1), "(n_y, 1)")
    return n_y, n_a, int(a.shape[1]), int(a.shape[2])


# --------------------------------------------------------------------------- whole model


def _prepare(x, targets, parameters, a0, c0, mask, xp, engine, fused, reduction, where):
    """Validate everything up front; return what the forward pass needs."""
    _validation.check_parameter_dict(parameters)
    arrays = {"x": x, **_validation.named_parameters(parameters)}
    if a0 is not None:
        arrays["a0"] = a0
    if c0 is not None:
        arrays["c0"] = c0
    xp = namespace_of(arrays, xp=xp)
    sizes = _validation.parameter_sizes(parameters)
    m, t_x = _validation.sequence_sizes(x, sizes)
    for name, state in (("a0", a0), ("c0", c0)):
        if state is not None:
            _validation.check_shape(name, state, (sizes.n_a, m), "(n_a, m)")
    _check_reduction(reduction)
    _check_targets(targets, mask, (m, t_x), sizes.n_y, xp, x)
    choice = engine_option(engine, fused, where=where)
    return xp, sizes, m, t_x, _direction.select(xp, x.dtype, choice), choice


def _run_forward(x, parameters, a0, c0, engine, choice, xp, sizes, m, recompute):
    """The recurrence in the engine layout: the cache holds ``h (T+1, m, n_a)``."""
    zeros = xp.zeros((m, sizes.n_a), dtype=x.dtype, device=array_api_compat.device(x))
    h0 = zeros if a0 is None else a0.T
    c0_rows = zeros if c0 is None else c0.T
    return _direction.forward(
        time_major(x, xp), h0, c0_rows, parameters, xp=xp, choice=choice, recompute=recompute,
        engine=engine,
    )  # fmt: skip


def _final_state(cache: Any, t_x: int, xp: Any) -> tuple[Any, Any]:
    # Copies, so that carrying the state to the next chunk keeps no engine buffer alive
    # and cannot see it reused.
    return (
        xp.asarray(cache.h[t_x, ...].T, copy=True),
        xp.asarray(cache.c[t_x, ...].T, copy=True),
    )


def _time_major_rows(values: Any, xp: Any) -> Any:
    """``(m, T)`` per-position values to the engine's row order ``(T m,)``."""
    m, t_x = values.shape
    return xp.reshape(xp.permute_dims(values, (1, 0)), (t_x * m,))


@ieee_arithmetic
def loss_and_gradients(
    x: Any,
    targets: Any,
    parameters: Mapping[str, Any],
    a0: Any = None,
    c0: Any = None,
    mask: Any = None,
    *,
    xp: Any = None,
    engine: str = "auto",
    fused: Any = None,
    recompute: bool = False,
    reduction: str = "mean",
) -> tuple[Any, dict[str, Any], tuple[Any, Any]]:
    """Cross-entropy of a batch and the gradient of **every** parameter, in one call.

    Forward through the LSTM, the output layer ``z_t = Wy a_t + by`` and the softmax
    cross-entropy; backward through all of them (backpropagation through time over the
    whole batch, gradients summed over steps).

    Parameters
    ----------
    x : array, shape (n_x, m, T)
        Inputs (for a character model, one-hot columns; see :func:`one_hot`).
    targets : integer array, shape (m, T)
        The class to predict at each step.
    parameters : dict
        The notebook's dict: ``Wf, Wi, Wc, Wo (n_a, n_a + n_x)``, ``bf, bi, bc, bo (n_a, 1)``,
        ``Wy (n_y, n_a)``, ``by (n_y, 1)``.
    a0, c0 : array, shape (n_a, m), optional
        Initial states (default zeros).  Pass the previous chunk's final state for
        truncated backpropagation through time: no gradient flows into it.
    mask : array, shape (m, T), optional
        ``bool`` or real weights; masked-out positions add nothing to loss or gradients.
    xp : str or namespace, optional
    engine
        The recurrence's engine, as in :func:`xlstm.lstm_forward`.
    fused : optional
        Deprecated alias of ``engine`` (a ``DeprecationWarning``).
    recompute : bool, default False
        Memory-saving mode of :func:`xlstm.lstm_forward`.
    reduction : {"mean", "sum"}, default "mean"

    Returns
    -------
    loss : 0-d array
    grads : dict
        ``dWf, dbf, dWi, dbi, dWc, dbc, dWo, dbo, dWy, dby``, shaped like the parameters.
    state : tuple (a_T, c_T)
        Final hidden and cell states ``(n_a, m)``, new arrays.

    Raises
    ------
    TypeError, ValueError
        As :func:`xlstm.lstm_forward` and :func:`softmax_cross_entropy`.
    """
    recompute = _validation.check_flag("recompute", recompute)
    xp, sizes, m, t_x, selected, choice = _prepare(
        x, targets, parameters, a0, c0, mask, xp, engine, fused, reduction,
        "xlstm.training.loss_and_gradients",
    )  # fmt: skip
    run = _run_forward(x, parameters, a0, c0, selected, choice, xp, sizes, m, recompute)
    cache = run.cache

    # The output layer runs on all T*m hidden rows at once, in the engine's
    # time-major order (a free reshape of h[1:]), and hands dh back in that order.
    h_rows = xp.reshape(cache.h[1:, ...], (t_x * m, sizes.n_a))
    Wy, by = parameters["Wy"], parameters["by"]
    loss, dh_rows, dWy, dby = head_loss_and_gradients(h_rows, Wy, by, targets, mask, reduction, xp)
    dh = xp.reshape(dh_rows, (t_x, m, sizes.n_a))
    _, _, _, grads = _direction.backward(run, dh, xp=xp, engine=selected)
    grads["dWy"], grads["dby"] = dWy, dby
    return loss, {key: grads[key] for key in GRADIENT_KEYS}, _final_state(cache, t_x, xp)


def head_loss_and_gradients(
    h_rows: Any, Wy: Any, by: Any, targets: Any, mask: Any, reduction: str, xp: Any
) -> tuple[Any, Any, Any, Any]:
    """The output layer and the loss on hidden-state rows, forward and backward.

    Parameters
    ----------
    h_rows : array, shape (T m, n_h)
        Hidden states in time-major row order (row ``t m + j`` is step ``t`` of sequence
        ``j``): a free reshape of the engines' ``(T, m, n_h)`` states.
    Wy, by : array, shape (n_y, n_h), (n_y, 1)
    targets, mask : array, shape (m, T)
        Checked by the caller; ``mask`` may be ``None``.
    reduction : {"mean", "sum"}

    Returns
    -------
    loss : 0-d array
    dh_rows : array, shape (T m, n_h)
    dWy, dby : arrays shaped like ``Wy``, ``by``
    """
    weights, count = _weights_and_count(
        None if mask is None else _time_major_rows(mask, xp),
        int(h_rows.shape[0]), h_rows.dtype, reduction, xp,
    )  # fmt: skip
    target_rows = _time_major_rows(targets, xp)
    if array_api_compat.is_numpy_namespace(xp):
        loss, dz = _numpy_output_cross_entropy(h_rows, Wy, by, target_rows, weights, count)
    else:
        loss, dz = _cross_entropy(_output_rows(h_rows, Wy, by), target_rows, weights, count, 1, xp)
    n_y = int(Wy.shape[0])
    return loss, dz @ Wy, dz.T @ h_rows, xp.reshape(xp.sum(dz, axis=0), (n_y, 1))


def head_loss(
    h_rows: Any, Wy: Any, by: Any, targets: Any, mask: Any, reduction: str, xp: Any
) -> Any:
    """The loss of :func:`head_loss_and_gradients` alone (evaluation: no temporaries for
    gradients)."""
    weights, count = _weights_and_count(
        None if mask is None else _time_major_rows(mask, xp),
        int(h_rows.shape[0]), h_rows.dtype, reduction, xp,
    )  # fmt: skip
    log_p, _ = _log_softmax(_output_rows(h_rows, Wy, by), 1, xp)
    hot = _one_hot(_time_major_rows(targets, xp), int(Wy.shape[0]), 1, h_rows.dtype, xp)
    nll = -xp.sum(hot * log_p, axis=1)
    total = xp.sum(nll) if weights is None else xp.sum(weights * nll)
    return total / count


@ieee_arithmetic
def sequence_loss(
    x: Any,
    targets: Any,
    parameters: Mapping[str, Any],
    a0: Any = None,
    c0: Any = None,
    mask: Any = None,
    *,
    xp: Any = None,
    engine: str = "auto",
    fused: Any = None,
    reduction: str = "mean",
) -> tuple[Any, tuple[Any, Any]]:
    """The loss of :func:`loss_and_gradients` without the backward pass (for evaluation).

    Returns
    -------
    loss : 0-d array
    state : tuple (a_T, c_T)
    """
    xp, sizes, m, t_x, selected, choice = _prepare(
        x, targets, parameters, a0, c0, mask, xp, engine, fused, reduction,
        "xlstm.training.sequence_loss",
    )  # fmt: skip
    cache = _run_forward(x, parameters, a0, c0, selected, choice, xp, sizes, m, True).cache
    h_rows = xp.reshape(cache.h[1:, ...], (t_x * m, sizes.n_a))
    loss = head_loss(h_rows, parameters["Wy"], parameters["by"], targets, mask, reduction, xp)
    return loss, _final_state(cache, t_x, xp)


__all__ = [
    "GRADIENT_KEYS",
    "log_softmax",
    "loss_and_gradients",
    "one_hot",
    "output_backward",
    "output_forward",
    "sequence_loss",
    "softmax_cross_entropy",
]
