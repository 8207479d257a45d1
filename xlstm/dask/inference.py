"""Batch inference on a dask array chunked along the batch: :func:`lstm_forward`.

Shape legend: ``x (n_x, m, T)`` (or integer ids ``(m, T)``), ``a, c (n_a, m, T)``,
``y (n_y, m, T)``, states ``(n_a, m)``, ``lengths (m,)``.  Gate order
:data:`xlstm.GATE_ORDER` = (i, f, o, g).

Sequences of a batch are independent, so each chunk of the batch is one task running
:func:`xlstm.lstm_forward` (inference mode) on its own sequences; the results are exactly
those of one call on the whole batch.  Per chunk the graph holds the input's tasks, one
task that runs the recurrence and returns its five outputs together, and one small task
per output array that picks its piece.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import array_api_compat
import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from .. import sequence
from .._backend import namespace_of
from . import _common


def _last_states(a: Any, c: Any, lengths: Any) -> tuple[Any, Any]:
    """The state at each sequence's own last step, as new arrays ``(n_a, k)``."""
    xp = array_api_compat.array_namespace(a)
    if lengths is None:
        return xp.asarray(a[:, :, -1], copy=True), xp.asarray(c[:, :, -1], copy=True)
    n_a, m, t_x = (int(s) for s in a.shape)
    # Row (t m + j) of the time-major view is step t of sequence j: pick t = lengths[j] - 1.
    rows = (lengths.astype("int64") - 1) * m + np.arange(m)
    index = xp.asarray(rows, device=array_api_compat.device(a))

    def take(values: Any) -> Any:
        time_major = xp.reshape(xp.permute_dims(values, (2, 1, 0)), (t_x * m, n_a))
        return xp.take(time_major, index, axis=0).T

    return take(a), take(c)


def _forward_block(x, a0, c0, lengths, parameters, engine):
    """One chunk: ``(a, y, c, a_n, c_n)`` of :func:`xlstm.lstm_forward` in inference mode."""
    x = _common.inputs_block(x, parameters)
    if a0 is None:
        xp = array_api_compat.array_namespace(x)
        a0 = xp.zeros(
            (int(parameters["Wf"].shape[0]), int(x.shape[1])),
            dtype=x.dtype,
            device=array_api_compat.device(x),
        )
    a, y, c, _ = sequence.lstm_forward(
        x, a0, parameters, c0, engine=engine, lengths=lengths, cache=False
    )
    host_lengths = None if lengths is None else np.asarray(lengths)
    return (a, y, c, *_last_states(a, c, host_lengths))


def _meta_of(value: Any) -> Any:
    return value._meta if isinstance(value, da.Array) else value


def lstm_forward(
    x: Any,
    a0: Any,
    parameters: Mapping[str, Any],
    *,
    c0: Any = None,
    lengths: Any = None,
    cache: bool = False,
    engine: str = "auto",
    client: Any = None,
) -> tuple[da.Array, da.Array, da.Array, tuple[da.Array, da.Array]]:
    r"""Run an LSTM over a dask array of sequences chunked along the batch.

    The same equations and numbers as :func:`xlstm.lstm_forward` (inference mode):

    .. math::

        f_t, i_t, o_t = \sigma(W_{f,i,o} [a_{t-1}; x_t] + b_{f,i,o}), \quad
        c_t = f_t \odot c_{t-1} + i_t \odot \tanh(W_c [a_{t-1}; x_t] + b_c), \\
        a_t = o_t \odot \tanh(c_t), \quad y_t = \operatorname{softmax}(W_y a_t + b_y).

    Each chunk of the batch is one task that runs xlstm's own engine on its sequences;
    nothing is computed until the results are.

    Parameters
    ----------
    x : dask array, shape (n_x, m, T), or integer ids (m, T)
        Inputs with NumPy or CuPy chunks (the library and dtype of the parameters).  Only
        the batch axis ``m`` may have several chunks; the others are rechunked to one.
        Integer ids are one-hot encoded inside each task (a character model), so that only
        the ids travel.
    a0 : array, shape (n_a, m), or None
        Initial hidden state: a dask array (rechunked like the batch of ``x``) or an array
        in memory (cut into the same slices); ``None`` is zeros.
    parameters : dict
        The notebook's dict ``Wf, Wi, Wc, Wo (n_a, n_a + n_x)``, ``bf ... bo (n_a, 1)``,
        ``Wy (n_y, n_a)``, ``by (n_y, 1)`` as NumPy or CuPy arrays.  They travel once per
        call, as one key of the graph under a fresh name (persisted with a distributed
        client, so that a copy lost with a worker is made again).
    c0 : array, shape (n_a, m), optional
        Initial cell state, as ``a0``.  Default: zeros.
    lengths : integer array or sequence, shape (m,), optional
        Variable-length batch, as in :func:`xlstm.lstm_forward`; a dask array or an array
        in memory.
    cache : bool, default False
        Only ``False`` (inference) is possible: caches for backward would stay on the
        workers.  For gradients use :func:`xlstm.dask.loss_and_gradients`.
    engine : str, default "auto"
        The engine each task uses (see :func:`xlstm.lstm_forward`).
    client : distributed.Client, optional
        Where the parameters are persisted.  Default: the active client if there is one;
        without one the graph runs on any dask scheduler.  With a client, compute the
        outputs on it.

    Returns
    -------
    a : dask array, shape (n_a, m, T)
    y : dask array, shape (n_y, m, T)
    c : dask array, shape (n_a, m, T)
    final : tuple of dask arrays (a_n, c_n), each (n_a, m)
        The state at each sequence's own last step (:func:`xlstm.final_states`); always
        returned, in place of the local function's ``caches``.  Computing it with the
        other outputs costs nothing more: all five come from the same task.

    All outputs are chunked along the batch like ``x``, with its chunks' library and the
    parameters' dtype.  A chunk's task that keeps killing workers fails with
    ``distributed.KilledWorker`` naming the key ``("xlstm-forward-...", chunk index)``.

    Raises
    ------
    TypeError
        ``x`` is not a dask array; libraries, devices or dtypes that differ; ``cache=True``
        is a ``ValueError``.
    ValueError
        Shapes as in :func:`xlstm.lstm_forward`; unknown chunk sizes.
    """
    if cache is not False:
        msg = (
            "`cache` must be False: xlstm.dask.lstm_forward is inference only; "
            "use xlstm.dask.loss_and_gradients for gradients"
        )
        raise ValueError(msg)
    xp, sizes = _common.model_namespace(parameters)
    m, t_x, _ = _common.check_inputs(x, parameters, sizes)
    x = _common.batch_x(x)
    states = {}
    for name, value in (("a0", a0), ("c0", c0)):
        states[name] = _common.batch_array(name, value, (sizes.n_a, m), "(n_a, m)", 1, x)
    arrays = {name: _meta_of(value) for name, value in states.items() if value is not None}
    namespace_of({**arrays, "parameters['Wf']": parameters["Wf"]})
    if lengths is not None:
        lengths = _common.batch_array("lengths", lengths, (m,), "(m,)", 0, x)
        if not np.issubdtype(lengths.dtype, np.integer):
            raise TypeError(f"`lengths` has dtype {lengths.dtype}; expected an integer dtype")
        # Values are checked in each task by xlstm.lstm_forward (within [1, T]).
    _common.check_engine(engine, xp, parameters["Wf"].dtype, lengths=lengths is not None)

    client = _common.default_client(client)
    shipped = _common.ship_parameters(parameters, client)
    x_index = "ijt" if x.ndim == 3 else "jt"
    arguments = [x, x_index]
    for value in (states["a0"], states["c0"]):
        arguments += [value, None if value is None else "aj"]
    arguments += [lengths, None if lengths is None else "j"]
    arguments += [shipped, None, engine, None]
    name = _common.FORWARD_PREFIX + tokenize(x, states, lengths, shipped, engine)
    dtype = parameters["Wf"].dtype
    parts = da.blockwise(
        _forward_block, "j", *arguments, name=name, dtype=object, concatenate=True,
        meta=np.empty((0,), dtype=object),
    )  # fmt: skip

    def output(index: int, rows: int, ndim: int) -> da.Array:
        axes = {"r": rows, "t": t_x}
        return da.blockwise(
            _common.pick, "rjt"[:ndim], parts, "j", index, None,
            new_axes={k: axes[k] for k in "rt"[: ndim - 1]},
            dtype=dtype, meta=_common.output_meta(x, ndim, dtype),
            name=f"{('a', 'y', 'c', 'a_n', 'c_n')[index]}-{name}",
        )  # fmt: skip

    a = output(0, sizes.n_a, 3)
    y = output(1, sizes.n_y, 3)
    c = output(2, sizes.n_a, 3)
    return a, y, c, (output(3, sizes.n_a, 2), output(4, sizes.n_a, 2))


def compute(*collections: Any, client: Any = None, **options: Any) -> tuple:
    """``dask.compute`` of the outputs of :func:`lstm_forward` (or any dask collections).

    The same results; the difference is the error when a chunk's task keeps killing
    workers (out of memory, a crash in a native library): a ``RuntimeError`` naming the
    chunk's index along the batch instead of ``distributed.KilledWorker``.

    Parameters
    ----------
    *collections
        Dask arrays (or other collections).
    client : distributed.Client, optional
        Default: the active client, else dask's local scheduler.
    **options
        Passed to ``dask.compute`` / ``Client.compute``.
    """
    client = _common.default_client(client)
    try:
        if client is None:
            return dask.compute(*collections, **options)
        return tuple(client.gather(client.compute(list(collections), **options)))
    except Exception as error:
        translated = _common.chunk_error(error)
        if translated is None:
            raise
        raise translated from error


__all__ = ["compute", "lstm_forward"]
