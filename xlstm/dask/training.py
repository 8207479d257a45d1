r"""Data-parallel training on dask arrays chunked along the batch.

Shape legend: ``x (n_x, m, T)`` or integer ids ``(m, T)``; ``targets, mask (m, T)``;
states ``a, c (n_a, m)``; gradients shaped like the parameters (``dWf ... dby``).

The loss of :func:`xlstm.training.loss_and_gradients` is a sum over sequences divided by
the number of unmasked positions ``N``, and sequences are independent, so

.. math::

    L = \frac{1}{N} \sum_{\text{chunks } k} L_k^{\text{sum}}, \quad
    \nabla L = \frac{1}{N} \sum_k \nabla L_k^{\text{sum}}, \quad
    N = \sum_k N_k,

with ``L_k^sum`` the ``reduction="sum"`` loss of chunk ``k`` and ``N_k`` its count of
unmasked positions.  Each chunk is one task; the per-chunk sums are added in a tree (a
few chunks per node) and divided by ``N`` once, on a worker; only the result, the size
of the parameters, comes back to the client.  The final states stay on the workers as
dask arrays chunked like the batch, ready to be the next chunk's initial state
(truncated backpropagation through time).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import array_api_compat
import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from .._backend import namespace_of
from ..training import loss as _loss
from ..training.optim import Optimizer, clip_by_global_norm
from . import _common

SPLIT_EVERY = 8
"""Per-chunk results added together by one task of the gradient tree."""

_CHUNK_NAMES = {_common.GRADIENT_PREFIX: "the gradient task", "xlstm-sum-": "a gradient sum"}


def _gradient_block(x, targets, mask, a0, c0, parameters, engine):
    """One chunk: ``(loss_sum, grads_sum, count, a_T, c_T)``."""
    x = _common.inputs_block(x, parameters)
    xp = array_api_compat.array_namespace(x)
    device = array_api_compat.device(x)
    targets = xp.asarray(targets, device=device)
    if mask is not None:
        mask = xp.asarray(mask, device=device)
    loss, grads, (a_t, c_t) = _loss.loss_and_gradients(
        x, targets, parameters, a0, c0, mask, engine=engine, reduction="sum"
    )
    if mask is None:
        count = xp.asarray(float(targets.shape[0] * targets.shape[1]), dtype=x.dtype)
    else:
        count = xp.sum(xp.astype(mask, x.dtype))
    return loss, grads, count, a_t, c_t


def _add(*parts: tuple) -> tuple:
    """The sum of several chunks' ``(loss, grads, count, ...)``: ``(loss, grads, count)``."""
    loss, grads, count = parts[0][0], dict(parts[0][1]), parts[0][2]
    for part in parts[1:]:
        loss = loss + part[0]
        count = count + part[2]
        for key in grads:
            grads[key] = grads[key] + part[1][key]
    return loss, grads, count


def _mean(total: tuple) -> tuple:
    """Divide by the number of unmasked positions, as ``reduction="mean"`` does."""
    loss, grads, count = total
    xp = array_api_compat.array_namespace(loss)
    # An all-masked batch gives loss 0 and zero gradients, not 0 / 0 (as the local call).
    divisor = xp.where(count > 0, count, xp.ones_like(count))
    return loss / divisor, {key: value / divisor for key, value in grads.items()}, count


def _tree_sum(parts: da.Array, split_every: int) -> Any:
    """A ``dask.delayed`` of the mean over the per-chunk results of ``parts``."""
    level = list(parts.to_delayed(optimize_graph=False).ravel())
    depth = 0
    while len(level) > 1 or depth == 0:
        level = [
            dask.delayed(_add, pure=True)(
                *level[start : start + split_every],
                dask_key_name=f"xlstm-sum-{tokenize(parts.name, depth, start)}",
            )
            for start in range(0, len(level), split_every)
        ]
        depth += 1
    return dask.delayed(_mean, pure=True)(level[0], dask_key_name=f"xlstm-mean-{parts.name}")


def loss_and_gradients(
    x: Any,
    targets: Any,
    parameters: Mapping[str, Any],
    *,
    a0: Any = None,
    c0: Any = None,
    mask: Any = None,
    engine: str = "auto",
    client: Any = None,
    split_every: int = SPLIT_EVERY,
) -> tuple[Any, dict[str, Any], tuple[da.Array, da.Array]]:
    """Mean cross-entropy of a batch chunked along ``m`` and the gradient of every parameter.

    The same numbers as :func:`xlstm.training.loss_and_gradients` with
    ``reduction="mean"`` on the whole batch (to rounding): each chunk computes its
    ``reduction="sum"`` loss, gradients and count of unmasked positions; a tree adds them
    (``split_every`` per node) and divides by the total count, on a worker.

    Parameters
    ----------
    x : dask array, shape (n_x, m, T), or integer ids (m, T)
        Inputs chunked along the batch (other axes are rechunked to one chunk).  Ids are
        one-hot encoded in each task.
    targets : integer array, shape (m, T)
        A dask array (rechunked like the batch) or an array in memory (cut to match).
    parameters : dict
        The seed's dict ``Wf ... by`` (NumPy or CuPy arrays of the chunks' library).  With
        a distributed client it is scattered to every worker once per call.
    a0, c0 : array, shape (n_a, m), optional
        Initial states, typically the previous call's final states (dask arrays that stay
        on the workers).  No gradient flows into them.  Default: zeros.
    mask : array, shape (m, T), optional
        ``bool`` or weights; as ``targets``.
    engine : str, default "auto"
        The engine each task uses.
    client : distributed.Client, optional
        Default: the active client, else dask's local scheduler.
    split_every : int, default 8
        Chunks (or partial sums) added by one task of the reduction tree.

    Returns
    -------
    loss : 0-d array
        On the client (NumPy or CuPy).
    grads : dict
        ``dWf, dbf, dWi, dbi, dWc, dbc, dWo, dbo, dWy, dby`` on the client.
    state : tuple of dask arrays (a_T, c_T), each (n_a, m)
        Final states, computed and kept on the workers, chunked like the batch.

    Raises
    ------
    TypeError, ValueError
        As :func:`xlstm.training.loss_and_gradients`, checked before anything runs
        (target values and ids are checked in each task).
    RuntimeError
        A chunk's task kept killing workers (the message names the chunk).
    """
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
        raise ValueError(f"`split_every` = {split_every!r}; expected an int >= 2")
    xp, sizes = _common.model_namespace(parameters)
    m, t_x, _ = _common.check_inputs(x, parameters, sizes)
    x = _common.batch_x(x)
    pieces = {
        "targets": _common.batch_array("targets", targets, (m, t_x), "(m, T)", 0, x),
        "mask": _common.batch_array("mask", mask, (m, t_x), "(m, T)", 0, x),
        "a0": _common.batch_array("a0", a0, (sizes.n_a, m), "(n_a, m)", 1, x),
        "c0": _common.batch_array("c0", c0, (sizes.n_a, m), "(n_a, m)", 1, x),
    }
    if not np.issubdtype(pieces["targets"].dtype, np.integer):
        msg = f"`targets` has dtype {pieces['targets'].dtype}; expected an integer dtype"
        raise TypeError(msg)
    if mask is not None:
        kind = pieces["mask"].dtype
        if not (kind == np.bool_ or np.issubdtype(kind, np.floating)):
            raise TypeError(f"`mask` has dtype {kind}; expected bool or a real floating dtype")
    states = {k: pieces[k]._meta for k in ("a0", "c0") if pieces[k] is not None}
    namespace_of({**states, "parameters['Wf']": parameters["Wf"]})

    client = _common.default_client(client)
    shipped = _common.ship_parameters(parameters, client)
    arguments = [x, "ijt" if x.ndim == 3 else "jt", pieces["targets"], "jt"]
    arguments += [pieces["mask"], None if mask is None else "jt"]
    for key in ("a0", "c0"):
        arguments += [pieces[key], None if pieces[key] is None else "aj"]
    arguments += [shipped, None, engine, None]
    name = _common.GRADIENT_PREFIX + tokenize(x, pieces, shipped, engine)
    parts = da.blockwise(
        _gradient_block, "j", *arguments, name=name, dtype=object, concatenate=True,
        meta=np.empty((0,), dtype=object),
    )  # fmt: skip
    dtype = parameters["Wf"].dtype
    finals = [
        da.blockwise(
            _common.pick, "aj", parts, "j", index, None, new_axes={"a": sizes.n_a},
            dtype=dtype, meta=_common.output_meta(x, 2, dtype), name=f"{label}-{name}",
        )  # fmt: skip
        for index, label in ((3, "a_T"), (4, "c_T"))
    ]
    mean = _tree_sum(parts, split_every)
    try:
        loss, grads, _ = _run(client, finals, mean)
    except Exception as error:
        translated = _common.chunk_error(error, _CHUNK_NAMES)
        if translated is None:
            raise
        raise translated from error
    return loss, grads, (finals[0], finals[1])


def _run(client: Any, finals: list[da.Array], mean: Any) -> tuple:
    """Compute ``mean`` and keep ``finals`` in memory (in place), in one pass over the chunks.

    One persist of all three, unoptimised, so that the per-chunk tasks they share run once
    and keep their names (which the error messages use).
    """
    if client is None:
        a_t, c_t, total = dask.persist(*finals, mean, optimize_graph=False)
        finals[:] = [a_t, c_t]
        return total.compute()
    from distributed import futures_of

    a_t, c_t, total = client.persist([*finals, mean], optimize_graph=False)
    finals[:] = [a_t, c_t]
    return client.gather(futures_of(total)[0])


def train_step(
    parameters: Mapping[str, Any],
    optimizer: Optimizer,
    opt_state: Mapping[str, Any] | None,
    x: Any,
    targets: Any,
    state: Any = None,
    *,
    mask: Any = None,
    clip_norm: float | None = None,
    engine: str = "auto",
    client: Any = None,
) -> tuple[dict[str, Any], dict[str, Any], Any, tuple[da.Array, da.Array]]:
    """One data-parallel optimiser step: gradients on the workers, the update on the client.

    Parameters
    ----------
    parameters : dict
        The seed's dict, on the client.
    optimizer : xlstm.training.Optimizer
    opt_state : dict or None
        The optimiser's state; ``None`` starts a fresh one (``optimizer.init``).
    x, targets, mask
        As :func:`loss_and_gradients`.
    state : tuple (a0, c0) or None
        The previous step's final state (dask arrays on the workers) for truncated BPTT.
    clip_norm : float, optional
        Clip the gradients by global norm first (:func:`xlstm.training.clip_by_global_norm`).
    engine, client
        As :func:`loss_and_gradients`.

    Returns
    -------
    parameters : dict
        New arrays on the client.
    opt_state : dict
    loss : 0-d array
        The loss before the update.
    state : tuple of dask arrays (a_T, c_T)
        Kept on the workers; pass it to the next step of the same streams.
    """
    if not isinstance(optimizer, Optimizer):
        msg = f"`optimizer` must be an xlstm.training Optimizer, got {type(optimizer).__name__}"
        raise TypeError(msg)
    a0, c0 = _split_state(state)
    loss, grads, final = loss_and_gradients(
        x, targets, parameters, a0=a0, c0=c0, mask=mask, engine=engine, client=client
    )
    if clip_norm is not None:
        grads, _ = clip_by_global_norm(grads, clip_norm)
    if opt_state is None:
        opt_state = optimizer.init(parameters)
    new_parameters, new_state = optimizer.update(parameters, grads, opt_state)
    return new_parameters, new_state, loss, final


def _split_state(state: Any) -> tuple[Any, Any]:
    if state is None:
        return None, None
    if not (isinstance(state, tuple) and len(state) == 2):
        raise TypeError("`state` must be None or the (a, c) tuple a previous step returned")
    return state


class DataParallelTrainer:
    """Training steps of a model whose batches are chunked across dask workers.

    The gradients of each batch are computed chunk by chunk on the workers and summed in
    a tree (:func:`loss_and_gradients`); the optimiser runs on the client; the carried
    state for truncated BPTT stays on the workers.

    Parameters
    ----------
    model : object, optional
        Anything with ``.parameters`` (the seed dict), ``.optimizer``, ``.opt_state`` and
        ``.clip_norm``, such as :class:`xlstm.training.CharLSTM`.  When it has
        ``apply_gradients(grads)`` (clip, init the state, update), that does the step;
        otherwise the trainer does it and sets ``model.parameters`` and
        ``model.opt_state``.
    parameters, optimizer, opt_state, clip_norm
        Without a model: the seed dict, an :class:`xlstm.training.Optimizer`, its state
        (``None``: fresh) and the global-norm clip (``None``: none).
    engine : str, default "auto"
    client : distributed.Client, optional
        Default: the active client, else dask's local scheduler.

    Examples
    --------
    >>> trainer = DataParallelTrainer(model, client=client)        # doctest: +SKIP
    >>> state = None
    >>> for ids, targets in batches:                                # dask arrays (m, T)
    ...     loss, state = trainer.step(ids, targets, state=state)
    """

    def __init__(
        self,
        model: Any = None,
        *,
        parameters: Mapping[str, Any] | None = None,
        optimizer: Optimizer | None = None,
        opt_state: Mapping[str, Any] | None = None,
        clip_norm: float | None = None,
        engine: str = "auto",
        client: Any = None,
    ) -> None:
        if model is None and (parameters is None or optimizer is None):
            raise TypeError("give a `model`, or both `parameters` and `optimizer`")
        if model is not None and parameters is not None:
            raise TypeError("give a `model` or `parameters`, not both")
        self.model = model
        if model is None:
            if not isinstance(optimizer, Optimizer):
                kind = type(optimizer).__name__
                raise TypeError(f"`optimizer` must be an xlstm.training Optimizer, got {kind}")
            self._parameters = dict(parameters)
            self.optimizer = optimizer
            self.opt_state = None if opt_state is None else dict(opt_state)
            self.clip_norm = clip_norm
        self.engine = engine
        self.client = client

    @property
    def parameters(self) -> dict[str, Any]:
        """The current parameter dict (the model's, when there is one)."""
        return dict(self.model.parameters if self.model is not None else self._parameters)

    def step(self, x: Any, targets: Any, *, mask: Any = None, state: Any = None):
        """One update on a batch chunked along ``m``.

        Returns ``(loss, state)``: the loss before the update (0-d array, on the client)
        and the final ``(a, c)`` (dask arrays on the workers) to pass to the next step.
        """
        a0, c0 = _split_state(state)
        loss, grads, final = loss_and_gradients(
            x, targets, self.parameters, a0=a0, c0=c0, mask=mask, engine=self.engine,
            client=self.client,
        )  # fmt: skip
        model = self.model
        if model is not None and hasattr(model, "apply_gradients"):
            model.apply_gradients(grads)
            return loss, final
        owner = self if model is None else model
        if owner.clip_norm is not None:
            grads, _ = clip_by_global_norm(grads, owner.clip_norm)
        if owner.opt_state is None:
            owner.opt_state = owner.optimizer.init(self.parameters)
        new_parameters, owner.opt_state = owner.optimizer.update(
            self.parameters, grads, owner.opt_state
        )
        if model is None:
            self._parameters = new_parameters
        else:
            model.parameters = new_parameters
        return loss, final


__all__ = ["DataParallelTrainer", "loss_and_gradients", "train_step"]
