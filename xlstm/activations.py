"""Numerically stable sigmoid and softmax, written once for every backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import namespace_of
from ._errstate import ieee_arithmetic


def _sigmoid(x: Any, xp: Any) -> Any:
    # The tanh form cannot overflow: 1 / (1 + exp(-x)) overflows exp for
    # x < -88 in float32 (and warns), tanh saturates quietly to -1 or 1.
    return 0.5 * xp.tanh(0.5 * x) + 0.5


def _softmax(x: Any, axis: int, xp: Any) -> Any:
    # Subtract the maximum of each slice along `axis`, not one global maximum:
    # with a global maximum a column whose entries are all far below it
    # underflows to 0 / 0 = NaN.
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    exponentials = xp.exp(shifted)
    return exponentials / xp.sum(exponentials, axis=axis, keepdims=True)


@ieee_arithmetic
def sigmoid(x: Any, /, *, xp: Any = None) -> Any:
    r"""Logistic sigmoid, element-wise, without overflow.

    .. math:: \sigma(x) = \frac{1}{1 + e^{-x}} = \tfrac12 \tanh(x / 2) + \tfrac12

    Parameters
    ----------
    x : array of real floating dtype
    xp : str or namespace, optional
        Array namespace.  Default: inferred from ``x``.

    Returns
    -------
    array
        Same shape, dtype, backend and device as ``x``; finite for any finite
        ``x`` (no overflow warning at ``|x| = 1000``).
    """
    xp = namespace_of({"x": x}, xp=xp)
    return _sigmoid(x, xp)


@ieee_arithmetic
def softmax(x: Any, /, axis: int = 0, *, xp: Any = None) -> Any:
    r"""Softmax along ``axis``, stable for any magnitude.

    .. math:: \operatorname{softmax}(x)_k = \frac{e^{x_k - \max_j x_j}}{\sum_l e^{x_l - \max_j x_j}}

    The maximum is taken per slice along ``axis`` (per column for the default
    ``axis=0``, as the notebook's ``y`` is ``(n_y, m)``).

    Parameters
    ----------
    x : array of real floating dtype
    axis : int, default 0
        Axis along which the entries sum to one.
    xp : str or namespace, optional
        Array namespace.  Default: inferred from ``x``.

    Returns
    -------
    array
        Same shape, dtype, backend and device as ``x``.  An empty ``x`` (a size-0 axis)
        gives an empty result of the same shape.
    """
    xp = namespace_of({"x": x}, xp=xp)
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"`axis` must be an int, got {type(axis).__name__}")
    axis = int(axis)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"`axis` = {axis} is out of range for an array of {x.ndim} dimensions")
    if any(int(size) == 0 for size in x.shape):
        # No entries: the (empty) result has the input's shape; the maximum of an empty
        # slice has no value, so the formula cannot run.
        return xp.asarray(x, copy=True)
    return _softmax(x, axis, xp)
