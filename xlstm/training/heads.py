r"""Output heads of a training model: what the LSTM's outputs are trained to predict.

Shape legend: ``F = D n_a`` features of the last layer (``D = 2`` when bidirectional),
``outputs (F, m, T)``, final states ``a_n (L D, n_a, m)``, ``Wy (n_y, F)``, ``by (n_y, 1)``.

``"per_step"`` (tagging, next-token prediction)
    A softmax at every step: ``p_t = softmax(W_y a_t + b_y)``; ``targets (m, T)``; with
    ``lengths`` the steps past each sequence's end are masked out.
``"last"`` (sequence classification)
    One softmax per sequence from its final states: the forward direction's state at the
    sequence's own last step and, when bidirectional, the reverse direction's state after
    it has read the whole sequence (``torch.nn.LSTM``'s ``h_n`` of the last layer,
    concatenated); ``targets (m,)``.
``"mean"`` (sequence classification)
    One softmax per sequence from the mean of its outputs over its real steps;
    ``targets (m,)``.

The loss is the mean softmax cross-entropy over the unmasked positions (see
:mod:`xlstm.training.loss`); every head returns the gradients that
:func:`xlstm.layers.multilayer_backward` takes (``d_outputs`` and, for ``"last"``,
``d_a_n``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from .._engines.cache import step_masks
from .._layout import HEADS
from .loss import _check_targets, head_loss, head_loss_and_gradients


def check_head(head: Any) -> str:
    """``head`` is one of :data:`HEADS`."""
    if not isinstance(head, str) or head not in HEADS:
        raise ValueError(f"`head` = {head!r}; expected one of {HEADS}")
    return head


def target_shape(head: str, m: int, t_x: int) -> tuple[int, ...]:
    """Shape of the targets (and mask) of a batch of ``m`` sequences of ``T`` steps."""
    return (m, t_x) if head == "per_step" else (m,)


class HeadResult(NamedTuple):
    """Loss and what backward needs of one batch through a head."""

    loss: Any
    d_outputs: Any
    """``(F, m, T)``, or ``None`` when no gradient was asked for."""
    d_a_n: Any
    """``(L D, n_a, m)`` for the ``"last"`` head, else ``None``."""
    dWy: Any
    dby: Any


def _valid_steps(lengths: Any, m: int, t_x: int, xp: Any, device: Any) -> Any:
    """``(m, T)`` booleans, ``True`` inside each sequence (all ``True`` without lengths)."""
    if lengths is None:
        return None
    inside = step_masks(np.asarray(lengths), t_x, xp, device)  # (T, m, 1)
    return xp.permute_dims(xp.reshape(inside, (t_x, m)), (1, 0))


def _combined_mask(mask: Any, valid: Any, xp: Any) -> Any:
    if valid is None:
        return mask
    if mask is None:
        return valid
    if xp.isdtype(mask.dtype, "bool"):
        return mask & valid
    return xp.where(valid, mask, xp.zeros_like(mask))


def _features(head: str, outputs: Any, a_n: Any, lengths: Any, directions: int, xp: Any):
    """Per-head feature rows: ``(T m, F)`` for per-step, ``(m, F)`` for the others."""
    n_features, m, t_x = (int(s) for s in outputs.shape)
    if head == "per_step":
        return xp.reshape(xp.permute_dims(outputs, (2, 1, 0)), (t_x * m, n_features))
    if head == "last":
        last = a_n[a_n.shape[0] - directions :, ...]  # (D, n_a, m)
        return xp.permute_dims(xp.reshape(last, (n_features, m)), (1, 0))
    # "mean": outputs are zero past each end, so a sum over all steps is the sum over the
    # real ones.
    counts = _counts(lengths, m, t_x, outputs.dtype, xp, array_api_compat.device(outputs))
    return xp.permute_dims(xp.sum(outputs, axis=2) / counts, (1, 0))


def _counts(lengths: Any, m: int, t_x: int, dtype: Any, xp: Any, device: Any) -> Any:
    if lengths is None:
        return xp.full((1, m), float(t_x), dtype=dtype, device=device)
    values = np.asarray(lengths, dtype=np.float64).reshape(1, m)
    return xp.asarray(values, dtype=dtype, device=device)


def check_targets(head: str, targets: Any, mask: Any, x: Any, n_y: int, xp: Any) -> None:
    """Targets (and mask) of the head's shape, classes in ``[0, n_y)`` where unmasked."""
    shape = target_shape(head, int(x.shape[1]), int(x.shape[2]))
    _check_targets(targets, mask, shape, n_y, xp, x)


def weight_total(
    head: str, mask: Any, lengths: Any, m: int, t_x: int, dtype: Any, xp: Any, device: Any
) -> Any:
    """What the head's mean cross-entropy divides by, before ``max(., 1)``: a 0-d array.

    The sum of the weights of the positions that count (``mask``, and the steps inside
    each sequence for the per-step head), or their number without weights.  A batch cut
    into pieces has the mean ``sum_k L_k^sum / sum_k N_k``, with ``N_k`` this total of
    piece ``k`` (the data-parallel trainer adds pieces so).
    """
    if head == "per_step":
        mask = _combined_mask(mask, _valid_steps(lengths, m, t_x, xp, device), xp)
    if mask is None:
        positions = m * t_x if head == "per_step" else m
        return xp.asarray(float(positions), dtype=dtype, device=device)
    return xp.sum(xp.astype(mask, dtype))


def loss(
    head: str, outputs: Any, a_n: Any, lengths: Any, Wy: Any, by: Any, targets: Any,
    mask: Any, directions: int, xp: Any,
) -> Any:  # fmt: skip
    """The head's mean cross-entropy (evaluation)."""
    rows = _features(head, outputs, a_n, lengths, directions, xp)
    targets, mask = _as_steps(head, targets, mask, lengths, outputs, xp)
    return head_loss(rows, Wy, by, targets, mask, "mean", xp)


def _as_steps(head: str, targets: Any, mask: Any, lengths: Any, outputs: Any, xp: Any):
    """Targets and mask as ``(m, T')`` for the row functions (``T' = 1`` per sequence)."""
    _, m, t_x = (int(s) for s in outputs.shape)
    if head == "per_step":
        valid = _valid_steps(lengths, m, t_x, xp, array_api_compat.device(outputs))
        return targets, _combined_mask(mask, valid, xp)
    as_column = lambda v: None if v is None else xp.reshape(v, (m, 1))  # noqa: E731
    return as_column(targets), as_column(mask)


def loss_and_gradients(
    head: str, outputs: Any, a_n: Any, lengths: Any, Wy: Any, by: Any, targets: Any,
    mask: Any, directions: int, xp: Any,
) -> HeadResult:  # fmt: skip
    """The head's loss and the gradients of its inputs and parameters."""
    n_features, m, t_x = (int(s) for s in outputs.shape)
    rows = _features(head, outputs, a_n, lengths, directions, xp)
    step_targets, step_mask = _as_steps(head, targets, mask, lengths, outputs, xp)
    value, d_rows, dWy, dby = head_loss_and_gradients(
        rows, Wy, by, step_targets, step_mask, "mean", xp
    )
    if head == "per_step":
        d_outputs = xp.permute_dims(xp.reshape(d_rows, (t_x, m, n_features)), (2, 1, 0))
        return HeadResult(value, d_outputs, None, dWy, dby)
    if head == "last":
        d_last = xp.reshape(xp.permute_dims(d_rows, (1, 0)), (directions, -1, m))
        zeros = xp.zeros(
            (int(a_n.shape[0]) - directions, *d_last.shape[1:]),
            dtype=Wy.dtype, device=array_api_compat.device(outputs),
        )  # fmt: skip
        d_a_n = xp.concat([zeros, d_last], axis=0)
        return HeadResult(value, xp.zeros_like(outputs), d_a_n, dWy, dby)
    device = array_api_compat.device(outputs)
    counts = _counts(lengths, m, t_x, outputs.dtype, xp, device)
    d_mean = xp.permute_dims(d_rows, (1, 0)) / counts  # (F, m)
    d_outputs = xp.broadcast_to(d_mean[:, :, None], (n_features, m, t_x))
    valid = _valid_steps(lengths, m, t_x, xp, device)
    if valid is not None:
        d_outputs = xp.where(valid[None, :, :], d_outputs, xp.zeros_like(d_outputs))
    return HeadResult(value, d_outputs, None, dWy, dby)


def predict(
    head: str, outputs: Any, a_n: Any, lengths: Any, Wy: Any, by: Any, directions: int, xp: Any
) -> Any:
    """Logits: ``(n_y, m, T)`` per step, ``(n_y, m)`` per sequence."""
    rows = _features(head, outputs, a_n, lengths, directions, xp)
    logits = rows @ Wy.T + by.T
    if head != "per_step":
        return xp.permute_dims(logits, (1, 0))
    _, m, t_x = (int(s) for s in outputs.shape)
    return xp.permute_dims(xp.reshape(logits, (t_x, m, int(Wy.shape[0]))), (2, 1, 0))


__all__ = ["HEADS", "HeadResult", "check_head", "loss", "loss_and_gradients", "predict"]
