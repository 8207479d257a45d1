r"""One piece of a batch: its loss and gradients as sums, and how pieces add up.

Shape legend: ``x (n_x, m, T)`` or integer ids ``(m, T)``; ``targets, mask (m, T)`` (or
``(m,)`` for a model's per-sequence head); states ``(..., n_a, m)``.

A mean over the batch is the sum over its pieces divided by their total count:

.. math::

    L = \frac{\sum_k L_k^{\text{sum}}}{\max(N, 1)}, \quad
    \nabla L = \frac{\sum_k \nabla L_k^{\text{sum}}}{\max(N, 1)}, \quad N = \sum_k N_k.

Every piece function returns ``(loss_sum, grads_sum, count, a_T, c_T)``; both ways of
running the pieces (tasks of a graph, :mod:`xlstm.dask.training`, or calls on the gradient
servers, :mod:`xlstm.dask._servers`) run these same functions and add the pieces in the
order of the batch, so they give the same numbers.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from ..training import heads
from ..training import loss as _loss
from . import _common


def gradient_block(x, targets, mask, a0, c0, parameters, engine):
    """One piece, notebook parameter dict: ``(loss_sum, grads_sum, count, a_T, c_T)``."""
    x = _common.inputs_block(x, parameters)
    xp = array_api_compat.array_namespace(x)
    device = array_api_compat.device(x)
    targets = xp.asarray(targets, device=device)
    if mask is not None:
        mask = xp.asarray(mask, device=device)
    loss, grads, (a_t, c_t) = _loss.loss_and_gradients(
        x, targets, parameters, a0, c0, mask, engine=engine, reduction="sum"
    )
    m, t_x = (int(size) for size in targets.shape)
    count = heads.weight_total("per_step", mask, None, m, t_x, x.dtype, xp, device)
    return loss, grads, count, a_t, c_t


def model_gradient_block(x, targets, mask, a0, c0, model, seed=None, index=None, lengths=None):
    """One piece through a model's own ``loss_and_gradients`` (a mean), scaled to sums.

    ``seed`` (a model's :meth:`~xlstm.training.LSTMModel.dropout_seed`, or ``None``) and
    the piece's ``index`` give the piece's dropout masks, ``default_rng((seed, index))``:
    new each step, different in every piece.
    """
    options: dict[str, Any] = {"mask": mask}
    if a0 is not None:
        options["state"] = (a0, c0)
    if lengths is not None:
        options["lengths"] = lengths
    if seed is not None:
        index = int(np.asarray(index).reshape(-1)[0])  # a graph task gets a chunk (1,)
        options["dropout_rng"] = np.random.default_rng((int(seed), index))
    loss, grads, (a_t, c_t) = model.loss_and_gradients(x, targets, **options)
    count = _model_count(model, x, mask, lengths, loss)
    # The model divides by max(count, 1); so does `mean` below: count * mean is the sum.
    return loss * count, {k: g * count for k, g in grads.items()}, count, a_t, c_t


def _model_count(model: Any, x: Any, mask: Any, lengths: Any, loss: Any) -> Any:
    """What the model's mean divided by: its head's count, or every ``(m, T)`` position."""
    xp = array_api_compat.array_namespace(loss)
    device = array_api_compat.device(loss)
    if mask is not None:
        mask = xp.asarray(mask, device=device)
    head = getattr(model, "head", None)
    if head not in heads.HEADS:  # a model of its own: targets (m, T), no lengths
        head, lengths = "per_step", None
    m, t_x = (int(s) for s in (x.shape if x.ndim == 2 else x.shape[1:]))
    return heads.weight_total(head, mask, lengths, m, t_x, loss.dtype, xp, device)


def add(*parts: tuple) -> tuple:
    """The sum of several pieces' ``(loss, grads, count, ...)``: ``(loss, grads, count)``."""
    loss, grads, count = parts[0][0], dict(parts[0][1]), parts[0][2]
    for part in parts[1:]:
        loss = loss + part[0]
        count = count + part[2]
        for key in grads:
            grads[key] = grads[key] + part[1][key]
    return loss, grads, count


def mean(total: tuple) -> tuple:
    """Divide by the number of unmasked positions, as ``reduction="mean"`` does."""
    loss, grads, count = total
    xp = array_api_compat.array_namespace(loss)
    # An all-masked batch gives loss 0 and zero gradients, not 0 / 0 (as the local call).
    divisor = xp.where(count > 0, count, xp.ones_like(count))
    return loss / divisor, {key: value / divisor for key, value in grads.items()}, count


def add_and_mean(*parts: tuple) -> tuple:
    """The root of a tree: the last sum, divided in the same task."""
    return mean(add(*parts))


# The gradient servers call function(payload, *piece), piece = (x, targets, mask, a0, c0,
# seed, index, lengths).


def model_piece(model, x, targets, mask, a0, c0, seed, index, lengths):
    """A server's piece of a model's batch (:func:`model_gradient_block`)."""
    return model_gradient_block(x, targets, mask, a0, c0, model, seed, index, lengths)


def dict_piece(payload, x, targets, mask, a0, c0, seed, index, lengths):
    """A server's piece of a notebook dict's batch: ``payload = (parameters, engine)``."""
    parameters, engine = payload
    return gradient_block(x, targets, mask, a0, c0, parameters, engine)
