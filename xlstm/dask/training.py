r"""Data-parallel training on dask arrays chunked along the batch.

Shape legend: ``x (n_x, m, T)`` or integer ids ``(m, T)``; ``targets, mask (m, T)``;
states ``a, c (n_a, m)`` (``(num_layers, n_a, m)`` for a stacked model); gradients shaped
like the parameters (``dWf ... dby``, or a model's ``dWf_l0 ... dby``).

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
dask arrays chunked like the batch, ready to be the next batch's initial state
(truncated backpropagation through time).

A worker lost *during* a step costs its tasks a rerun elsewhere (they are pure).  A
worker lost *between* steps takes its part of the carried state with it, which the
scheduler cannot rebuild without the earlier steps; so each call also brings a host copy
of the new state back with the gradients (``n_a x m`` numbers per state, small beside
the gradients) and reruns a step whose state was lost from that copy.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from concurrent.futures import CancelledError
from typing import Any

import array_api_compat
import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.core import flatten

from .._backend import namespace_of
from ..training import loss as _loss
from ..training.optim import Optimizer, apply_gradients
from . import _common

SPLIT_EVERY = 8
"""Per-chunk results added together by one task of the gradient tree."""


# --------------------------------------------------------------------------- per-chunk tasks


def _count(targets: Any, mask: Any, xp: Any, dtype: Any) -> Any:
    """Unmasked positions of a chunk (the sum of the weights), as ``reduction="mean"``."""
    if mask is None:
        return xp.asarray(float(targets.shape[0] * targets.shape[1]), dtype=dtype)
    return xp.sum(xp.astype(mask, dtype))


def _gradient_block(x, targets, mask, a0, c0, parameters, engine):
    """One chunk, notebook parameter dict: ``(loss_sum, grads_sum, count, a_T, c_T)``."""
    x = _common.inputs_block(x, parameters)
    xp = array_api_compat.array_namespace(x)
    device = array_api_compat.device(x)
    targets = xp.asarray(targets, device=device)
    if mask is not None:
        mask = xp.asarray(mask, device=device)
    loss, grads, (a_t, c_t) = _loss.loss_and_gradients(
        x, targets, parameters, a0, c0, mask, engine=engine, reduction="sum"
    )
    return loss, grads, _count(targets, mask, xp, x.dtype), a_t, c_t


def _model_gradient_block(x, targets, mask, a0, c0, model):
    """One chunk through a model's own ``loss_and_gradients`` (a mean): scaled to sums."""
    state = None if a0 is None else (a0, c0)
    loss, grads, (a_t, c_t) = model.loss_and_gradients(x, targets, mask=mask, state=state)
    xp = array_api_compat.array_namespace(loss)
    count = _count(targets, None if mask is None else xp.asarray(mask), xp, loss.dtype)
    # The model divides by max(count, 1); so does _mean below: count * mean is the sum.
    return loss * count, {k: g * count for k, g in grads.items()}, count, a_t, c_t


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


def _add_and_mean(*parts: tuple) -> tuple:
    """The root of the tree: the last sum, divided in the same task (one hop fewer)."""
    return _mean(_add(*parts))


def _tree_mean(parts: da.Array, split_every: int) -> Any:
    """A ``dask.delayed`` of the mean over the per-chunk results of ``parts``."""
    level = list(parts.to_delayed(optimize_graph=False).ravel())
    depth = 0
    while len(level) > split_every:
        level = [
            dask.delayed(_add, pure=True)(
                *level[start : start + split_every],
                dask_key_name=f"xlstm-sum-{tokenize(parts.name, depth, start)}",
            )
            for start in range(0, len(level), split_every)
        ]
        depth += 1
    return dask.delayed(_add_and_mean, pure=True)(*level, dask_key_name=f"xlstm-mean-{parts.name}")


# --------------------------------------------------------------------------- one call


class _Call:
    """One distributed gradient computation: its inputs aligned on the batch chunks."""

    def __init__(self, x, targets, mask, a0, c0, state_rows, dtype, split_every, client):
        if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
            raise ValueError(f"`split_every` = {split_every!r}; expected an int >= 2")
        self.x = _common.batch_x(x)
        self.m, self.t_x = (int(s) for s in self.x.shape[-2:])
        self.state_rows, self.dtype = state_rows, dtype
        self.split_every, self.client = split_every, client
        shape, legend = (self.m, self.t_x), "(m, T)"
        self.pieces = {
            "targets": _common.batch_array("targets", targets, shape, legend, 0, self.x),
            "mask": _common.batch_array("mask", mask, shape, legend, 0, self.x),
        }
        if not np.issubdtype(self.pieces["targets"].dtype, np.integer):
            msg = f"`targets` has dtype {self.pieces['targets'].dtype}; expected an integer dtype"
            raise TypeError(msg)
        if mask is not None:
            kind = self.pieces["mask"].dtype
            if not (kind == np.bool_ or np.issubdtype(kind, np.floating)):
                raise TypeError(f"`mask` has dtype {kind}; expected bool or a real floating dtype")
        if (a0 is None) != (c0 is None) and len(state_rows) > 1:
            raise TypeError("a stacked model's state is both `a0` and `c0`, or neither")
        self.given = {"a0": a0, "c0": c0}
        for key, value in self.given.items():
            self.pieces[key] = self._state(key, value)

    def _state(self, name: str, value: Any) -> da.Array | None:
        rows = self.state_rows
        legend = "(n_a, m)" if len(rows) == 1 else "(num_layers, n_a, m)"
        return _common.batch_array(name, value, (*rows, self.m), legend, len(rows), self.x)

    def check_states(self, reference: Any) -> None:
        """``a0``/``c0`` chunks of the library, device and dtype of ``reference``."""
        metas = {k: self.pieces[k]._meta for k in ("a0", "c0") if self.pieces[k] is not None}
        namespace_of({**metas, "parameters": reference})

    def run(self, block: Any, shipped: Any, *extra: Any) -> tuple:
        """``(loss, grads, (a_T, c_T))``; a step whose carried state was lost is rerun."""
        try:
            try:
                return self._run(block, shipped, extra)
            except CancelledError:
                # Part of the carried state was lost with a worker: the scheduler cannot
                # rebuild it without the earlier steps.  The tasks are pure, so running
                # the step again from the host copy of that state gives the same numbers.
                given = [v for v in self.given.values() if v is not None]
                if not given or any(id(v) not in _HOST_COPIES for v in given):
                    raise
                for key, value in self.given.items():
                    if value is not None:
                        self.pieces[key] = self._state(key, _HOST_COPIES[id(value)])
                return self._run(block, shipped, extra)
        except Exception as error:
            translated = _common.chunk_error(error)
            if translated is None:
                raise
            raise translated from error

    def _run(self, block: Any, shipped: Any, extra: tuple) -> tuple:
        pieces, x = self.pieces, self.x
        letters = "la"[-len(self.state_rows) :] + "j"
        arguments = [x, "ijt" if x.ndim == 3 else "jt", pieces["targets"], "jt"]
        arguments += [pieces["mask"], None if pieces["mask"] is None else "jt"]
        for key in ("a0", "c0"):
            arguments += [pieces[key], None if pieces[key] is None else letters]
        arguments += [shipped, None]
        for value in extra:
            arguments += [value, None]
        name = _common.GRADIENT_PREFIX + tokenize(x, pieces, shipped, extra, block)
        parts = da.blockwise(
            block, "j", *arguments, name=name, dtype=object, concatenate=True,
            meta=np.empty((0,), dtype=object),
        )  # fmt: skip
        meta = _common.output_meta(x, len(letters), self.dtype)
        new_axes = dict(zip(letters, self.state_rows, strict=False))

        def final(index: int, label: str) -> da.Array:
            return da.blockwise(
                _common.pick, letters, parts, "j", index, None, new_axes=new_axes,
                dtype=self.dtype, meta=meta, name=f"{label}-{name}",
            )  # fmt: skip

        finals = [final(3, "a_T"), final(4, "c_T")]
        mean = _tree_mean(parts, self.split_every)
        client = self.client
        if client is None:
            a_t, c_t, total = dask.persist(*finals, mean, optimize_graph=False)
            loss, grads, _ = total.compute()
            return loss, grads, (a_t, c_t)
        from distributed import futures_of

        # One persist of all three, unoptimised: the per-chunk tasks they share run once
        # and keep their names (which the error messages use).
        a_t, c_t, total = client.persist([*finals, mean], optimize_graph=False)
        by_key = {future.key: future for future in futures_of([a_t, c_t, total])}
        wanted = [by_key[key] for key in (*_block_keys(a_t), *_block_keys(c_t))]
        # One round trip: the gradients, and a host copy of the new state.
        result, *blocks = client.gather([by_key[total.key], *wanted])
        loss, grads, _ = result
        half = len(blocks) // 2
        xp = array_api_compat.array_namespace(blocks[0])
        axis = len(self.state_rows)
        _remember(a_t, xp.concat(blocks[:half], axis=axis))
        _remember(c_t, xp.concat(blocks[half:], axis=axis))
        return loss, grads, (a_t, c_t)


def _block_keys(array: da.Array) -> list:
    return list(flatten(array.__dask_keys__()))


# Host copies of the final states a distributed call returned, by id() of the dask array,
# dropped with the array: a worker lost between steps then costs a rerun of the step from
# the copy, not the run.
_HOST_COPIES: dict[int, Any] = {}


def _remember(array: da.Array, host: Any) -> None:
    _HOST_COPIES[id(array)] = host
    weakref.finalize(array, _HOST_COPIES.pop, id(array), None)


# --------------------------------------------------------------------------- public layer


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
        one-hot encoded in each task, so only the ids travel.
    targets : integer array, shape (m, T)
        A dask array (rechunked like the batch) or an array in memory (cut to match).
    parameters : dict
        The notebook's dict ``Wf ... by`` (NumPy or CuPy arrays of the chunks' library).  It
        travels once per call, as one key under a fresh name.
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
    xp, sizes = _common.model_namespace(parameters)
    _common.check_inputs(x, parameters, sizes)
    dtype = parameters["Wf"].dtype
    client = _common.default_client(client)
    call = _Call(x, targets, mask, a0, c0, (sizes.n_a,), dtype, split_every, client)
    call.check_states(parameters["Wf"])
    _common.check_engine(engine, xp, dtype)
    shipped = _common.ship_parameters(parameters, client)
    return call.run(_gradient_block, shipped, engine)


def _model_gradients(
    model: Any, x: Any, targets: Any, mask: Any, state: Any, client: Any, split_every: int
) -> tuple[Any, dict[str, Any], tuple[da.Array, da.Array]]:
    """:func:`loss_and_gradients` through a model's own ``loss_and_gradients`` per chunk."""
    _common.check_collection("x", x)
    ids = x.ndim == 2 and np.issubdtype(x.dtype, np.integer)
    if not ids and (x.ndim != 3 or int(x.shape[0]) != model.n_x):
        msg = f"`x` has shape {x.shape}; expected (n_x, m, T) with n_x = {model.n_x} or ids (m, T)"
        raise ValueError(msg)
    reference = next(iter(model.parameters.values()))
    if not ids:
        namespace_of({"x": x._meta, "parameters": reference})
    layers = int(getattr(model, "num_layers", 1))
    rows = (model.n_a,) if layers == 1 else (layers, model.n_a)
    a0, c0 = _split_state(state)
    client = _common.default_client(client)
    call = _Call(x, targets, mask, a0, c0, rows, reference.dtype, split_every, client)
    call.check_states(reference)
    # Only what a task needs travels: the model without its optimiser state.
    light = copy.copy(model)
    light.opt_state = None
    shipped = _common.ship(light, client, "model")
    return call.run(_model_gradient_block, shipped)


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
        The notebook's dict, on the client.
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
    new_parameters, new_state, _ = apply_gradients(
        parameters, grads, optimizer, opt_state, clip_norm
    )
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
    a tree (as :func:`loss_and_gradients`); the optimiser runs on the client; the carried
    state for truncated BPTT stays on the workers.

    Parameters
    ----------
    model : object, optional
        A training model such as :class:`xlstm.training.CharLSTM` (any number of layers):
        each chunk runs its ``loss_and_gradients(x, targets, mask=, state=)`` on a copy
        without optimiser state, and ``model.apply_gradients(grads)`` (clip, update)
        takes the step on the client.  An object without those methods but with the
        notebook's ``.parameters``, ``.optimizer``, ``.opt_state`` and ``.clip_norm`` works
        too: the trainer updates those attributes.  With dropout, each chunk draws its
        own masks, so steps differ from a single process's.
    parameters, optimizer, opt_state, clip_norm
        Without a model: the notebook dict, an :class:`xlstm.training.Optimizer`, its state
        (``None``: fresh) and the global-norm clip (``None``: none).
    engine : str, default "auto"
        For the notebook dict (a model uses its own ``engine``).
    client : distributed.Client, optional
        Default: the active client, else dask's local scheduler.
    split_every : int, default 8
        Chunks added by one task of the gradient tree.

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
        split_every: int = SPLIT_EVERY,
    ) -> None:
        if model is None and (parameters is None or optimizer is None):
            raise TypeError("give a `model`, or both `parameters` and `optimizer`")
        if model is not None and parameters is not None:
            raise TypeError("give a `model` or `parameters`, not both")
        if model is None and not isinstance(optimizer, Optimizer):
            kind = type(optimizer).__name__
            raise TypeError(f"`optimizer` must be an xlstm.training Optimizer, got {kind}")
        self.model = model
        self._parameters = None if parameters is None else dict(parameters)
        self.optimizer = optimizer
        self.opt_state = None if opt_state is None else dict(opt_state)
        self.clip_norm = clip_norm
        self.engine = engine
        self.client = client
        self.split_every = split_every

    @property
    def parameters(self) -> dict[str, Any]:
        """The current parameter dict (the model's, when there is one)."""
        return dict(self.model.parameters if self.model is not None else self._parameters)

    def step(self, x: Any, targets: Any, *, mask: Any = None, state: Any = None):
        """One update on a batch chunked along ``m``.

        Returns ``(loss, state)``: the loss before the update (0-d array, on the client)
        and the final ``(a, c)`` (dask arrays on the workers) to pass to the next step.
        """
        model = self.model
        if model is not None and hasattr(model, "loss_and_gradients"):
            loss, grads, final = _model_gradients(
                model, x, targets, mask, state, self.client, self.split_every
            )
            model.apply_gradients(grads)
            return loss, final
        a0, c0 = _split_state(state)
        loss, grads, final = loss_and_gradients(
            x, targets, self.parameters, a0=a0, c0=c0, mask=mask, engine=self.engine,
            client=self.client, split_every=self.split_every,
        )  # fmt: skip
        owner = self if model is None else model
        new_parameters, owner.opt_state, _ = apply_gradients(
            self.parameters, grads, owner.optimizer, owner.opt_state, owner.clip_norm
        )
        if model is None:
            self._parameters = new_parameters
        else:
            model.parameters = new_parameters
        return loss, final


__all__ = ["DataParallelTrainer", "loss_and_gradients", "train_step"]
