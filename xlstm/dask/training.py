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
from ..training.optim import Optimizer, apply_gradients
from . import _common, _pieces, _servers, _sums

SPLIT_EVERY = 8
"""Per-chunk results added together by one task of the gradient tree."""


# --------------------------------------------------------------------------- the tree


def _tree(parts: da.Array, split_every: int) -> list:
    """``dask.delayed`` sums of the per-chunk results of ``parts``, ``split_every`` per
    node, level by level until at most ``split_every`` remain: that last level."""
    level = list(parts.to_delayed(optimize_graph=False).ravel())
    depth = 0
    while len(level) > split_every:
        level = [
            dask.delayed(_sums.add, pure=True)(
                *level[start : start + split_every],
                dask_key_name=f"xlstm-sum-{tokenize(parts.name, depth, start)}",
            )
            for start in range(0, len(level), split_every)
        ]
        depth += 1
    return level


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

    def run(self, block: Any, label: str, value: Any, *extra: Any, indexed: bool = False):
        """``(loss, grads, (a_T, c_T))``; a step whose carried state was lost is rerun."""
        try:
            try:
                return self._run(block, label, value, extra, indexed)
            except CancelledError:
                # Part of the carried state was lost with a worker: the scheduler cannot
                # rebuild it without the earlier steps.  The tasks are pure, so running
                # the step again from the host copy of that state gives the same numbers.
                given = [v for v in self.given.values() if v is not None]
                if not given or any(id(v) not in _HOST_COPIES for v in given):
                    raise
                for key, lost in self.given.items():
                    if lost is not None:
                        self.pieces[key] = self._state(key, _HOST_COPIES[id(lost)])
                return self._run(block, label, value, extra, indexed)
        except Exception as error:
            translated = _common.chunk_error(error)
            if translated is None:
                raise
            raise translated from error

    def _run(self, block: Any, label: str, value: Any, extra: tuple, indexed: bool) -> tuple:
        shipped = _common.unsent(value, label)
        pieces, x = self.pieces, self.x
        letters = "la"[-len(self.state_rows) :] + "j"
        arguments = [x, "ijt" if x.ndim == 3 else "jt", pieces["targets"], "jt"]
        arguments += [pieces["mask"], None if pieces["mask"] is None else "jt"]
        for key in ("a0", "c0"):
            arguments += [pieces[key], None if pieces[key] is None else letters]
        arguments += [shipped, None]
        for value in extra:
            arguments += [value, None]
        if indexed:  # each task's chunk index, repeated along its rows (for its dropout)
            rows = x.chunks[-2] if x.ndim == 3 else x.chunks[0]
            index = np.repeat(np.arange(len(rows)), rows)
            arguments += [da.from_array(index, chunks=(rows,), name=f"index-{tokenize(rows)}"), "j"]
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
        client = self.client
        if client is None:
            mean = dask.delayed(_sums.add_and_mean, pure=True)(
                *_tree(parts, self.split_every), dask_key_name=f"xlstm-mean-{parts.name}"
            )
            a_t, c_t, total = dask.persist(*finals, mean, optimize_graph=False)
            loss, grads, _ = total.compute()
            return loss, grads, (a_t, c_t)
        from distributed import futures_of

        # The tree's last level (the per-chunk results themselves, up to `split_every`
        # chunks) comes to the client in one round trip with the new state, and the
        # client adds it up: no root task on a worker, no hop to it.  One persist of
        # everything, the weights too (they travel in this graph): the per-chunk tasks
        # run once and keep their names, which the error messages use.
        level = _tree(parts, self.split_every)
        with _common.allow_in_graph(value):
            a_t, c_t, *level = client.persist([*finals, *level], optimize_graph=False)
        by_key = {future.key: future for future in futures_of([a_t, c_t, *level])}
        direct = len(level) == parts.numblocks[0]
        wanted = [by_key[node.key] for node in level]
        if not direct:
            wanted += [by_key[key] for key in (*_block_keys(a_t), *_block_keys(c_t))]
        found = client.gather(wanted)
        loss, grads, _ = _sums.mean(_sums.add(*found[: len(level)]))
        if direct:  # each chunk's result holds its final state
            blocks_a, blocks_c = [part[3] for part in found], [part[4] for part in found]
        else:
            half = (len(found) - len(level)) // 2
            blocks_a, blocks_c = found[len(level) : len(level) + half], found[len(level) + half :]
        xp = array_api_compat.array_namespace(blocks_a[0])
        axis = len(self.state_rows)
        _remember(a_t, xp.concat(blocks_a, axis=axis))
        _remember(c_t, xp.concat(blocks_c, axis=axis))
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
    return call.run(_sums.gradient_block, "parameters", dict(parameters), engine)


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
    a0, c0 = _pieces.split_state(state)
    client = _common.default_client(client)
    call = _Call(x, targets, mask, a0, c0, rows, reference.dtype, split_every, client)
    call.check_states(reference)
    # Only what a task needs travels: the model without its optimiser state.
    light = copy.copy(model)
    light.opt_state = None
    seed = model.dropout_seed() if hasattr(model, "dropout_seed") else None
    return call.run(_sums.model_gradient_block, "model", light, seed, indexed=True)


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
    a0, c0 = _pieces.split_state(state)
    loss, grads, final = loss_and_gradients(
        x, targets, parameters, a0=a0, c0=c0, mask=mask, engine=engine, client=client
    )
    new_parameters, new_state, _ = apply_gradients(
        parameters, grads, optimizer, opt_state, clip_norm
    )
    return new_parameters, new_state, loss, final


class DataParallelTrainer:
    """Training steps of a model whose batches are cut along their sequences across workers.

    Each piece of a batch gives its loss and gradients as sums; the client adds them in
    the order of the batch, divides by the count of positions (as
    :func:`loss_and_gradients`) and takes the optimiser step.  Two kinds of batches:

    * **Arrays in memory** (NumPy, CuPy), as :meth:`xlstm.training.LSTMModel.train_step`
      takes: the batch is cut into ``pieces`` and sent straight to a gradient server on
      each worker (a dask actor, :mod:`xlstm.dask._servers`), with the weights; the state
      comes back with the gradients, in memory, as ``train_step`` returns it.  No graph,
      no scheduler in the step: the fast way (RESULTS §12).  Without a ``distributed``
      client the pieces run in this process.
    * **Dask arrays** chunked along the batch (data already on the workers): a graph of
      one task per chunk (as :func:`loss_and_gradients`); the state stays on the workers
      as dask arrays chunked like the batch.

    Parameters
    ----------
    model : object, optional
        A training model such as :class:`xlstm.training.CharLSTM` (any number of layers,
        any head): each piece runs its ``loss_and_gradients(x, targets, mask=, state=)``
        on a copy without optimiser state, and ``model.apply_gradients(grads)`` (clip,
        update) takes the step on the client.  An object without those methods but with
        the notebook's ``.parameters``, ``.optimizer``, ``.opt_state`` and ``.clip_norm``
        works too: the trainer updates those attributes.  With dropout, every piece of
        every step draws its own masks (from the model's
        :meth:`~xlstm.training.LSTMModel.dropout_seed`), so steps differ from a single
        process's.
    parameters, optimizer, opt_state, clip_norm
        Without a model: the notebook dict, an :class:`xlstm.training.Optimizer`, its state
        (``None``: fresh) and the global-norm clip (``None``: none).
    engine : str, default "auto"
        For the notebook dict (a model uses its own ``engine``).
    client : distributed.Client, optional
        Default: the active client, else dask's local scheduler.
    pieces : int, optional
        Pieces a batch in memory is cut into (fewer if it has fewer sequences).  Default:
        the number of workers at the first step (one without a client).  The cut, not
        the workers, decides the rounding: the same cut gives the same numbers on any
        number of workers.
    split_every : int, default 8
        Dask-array batches: chunks added by one task of the gradient tree.

    Examples
    --------
    >>> trainer = DataParallelTrainer(model, client=client)        # doctest: +SKIP
    >>> state = None
    >>> for ids, targets in batches:                                # NumPy arrays (m, T)
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
        pieces: int | None = None,
        split_every: int = SPLIT_EVERY,
    ) -> None:
        if model is None and (parameters is None or optimizer is None):
            raise TypeError("give a `model`, or both `parameters` and `optimizer`")
        if model is not None and parameters is not None:
            raise TypeError("give a `model` or `parameters`, not both")
        if model is None and not isinstance(optimizer, Optimizer):
            kind = type(optimizer).__name__
            raise TypeError(f"`optimizer` must be an xlstm.training Optimizer, got {kind}")
        if pieces is not None and (
            isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1
        ):
            raise ValueError(f"`pieces` = {pieces!r}; expected an int >= 1 or None")
        self.model = model
        self._parameters = None if parameters is None else dict(parameters)
        self.optimizer = optimizer
        self.opt_state = None if opt_state is None else dict(opt_state)
        self.clip_norm = clip_norm
        self.engine = engine
        self.client = client
        self.pieces = pieces
        self.split_every = split_every
        self._servers: _servers.ServerPool | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        """The current parameter dict (the model's, when there is one)."""
        return dict(self.model.parameters if self.model is not None else self._parameters)

    def step(self, x: Any, targets: Any, *, mask: Any = None, lengths: Any = None, state=None):
        """One update on a batch (arrays in memory, or dask arrays chunked along ``m``).

        Returns ``(loss, state)``: the loss before the update (0-d array, on the client)
        and the final ``(a, c)`` to pass to the next step of the same streams: arrays in
        memory for a batch in memory, dask arrays on the workers for a dask batch.
        ``lengths`` (one per sequence) needs a model and a batch in memory.
        """
        uses_model = self.model is not None and hasattr(self.model, "loss_and_gradients")
        if lengths is not None and not uses_model:
            raise TypeError("`lengths` needs a model with loss_and_gradients(..., lengths=)")
        if isinstance(x, da.Array):
            if lengths is not None:
                raise TypeError("`lengths` takes a batch in memory, not dask arrays")
            loss, grads, final = self._graph_gradients(x, targets, mask, state, uses_model)
        else:
            loss, grads, final = self._server_gradients(
                x, targets, mask, lengths, state, uses_model
            )
        self._apply(grads, uses_model)
        return loss, final

    def _graph_gradients(self, x, targets, mask, state, uses_model):
        if uses_model:
            return _model_gradients(
                self.model, x, targets, mask, state, self.client, self.split_every
            )
        a0, c0 = _pieces.split_state(state)
        return loss_and_gradients(
            x, targets, self.parameters, a0=a0, c0=c0, mask=mask, engine=self.engine,
            client=self.client, split_every=self.split_every,
        )  # fmt: skip

    def _server_gradients(self, x, targets, mask, lengths, state, uses_model):
        model = self.model
        if uses_model:
            m = _pieces.check(x, targets, mask, lengths, state, model.n_x)
            seed = model.dropout_seed() if hasattr(model, "dropout_seed") else None
            light = copy.copy(model)  # what a piece needs: the model without optimiser state
            light.opt_state = None
            function, payload = _sums.model_piece, light
        else:
            parameters = self.parameters
            xp, sizes = _common.model_namespace(parameters)
            m = _pieces.check(x, targets, mask, None, state, sizes.n_x)
            _common.check_engine(self.engine, xp, parameters["Wf"].dtype)
            seed, function, payload = None, _sums.dict_piece, (parameters, self.engine)
        client = _common.default_client(self.client)
        if client is not None and self._servers is None:
            self._servers = _servers.ServerPool(client)
        count = self.pieces
        if count is None:
            count = 1 if client is None else self._servers.start()
            self.pieces = count
        edges = _pieces.bounds(m, count)
        pieces = _pieces.cut(x, targets, mask, lengths, state, seed, edges)
        if client is None:
            parts = [function(payload, *piece) for piece in pieces]
        else:
            parts = self._servers.run(function, payload, pieces, "gradient pass")
        loss, grads, _ = _sums.mean(_sums.add(*parts))
        return loss, grads, _pieces.join(parts)

    def _apply(self, grads: dict[str, Any], uses_model: bool) -> None:
        model = self.model
        if uses_model:
            model.apply_gradients(grads)
            return
        owner = self if model is None else model
        new_parameters, owner.opt_state, _ = apply_gradients(
            self.parameters, grads, owner.optimizer, owner.opt_state, owner.clip_norm
        )
        if model is None:
            self._parameters = new_parameters
        else:
            model.parameters = new_parameters


__all__ = ["DataParallelTrainer", "loss_and_gradients", "train_step"]
