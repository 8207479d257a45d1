r"""xlstm as a JAX function: :func:`lstm`, differentiable with xlstm's own backward.

Shape legend (xlstm's feature-first layout, as :func:`xlstm.layers.multilayer_forward`)::

    n_x  input features     x        (n_x, m, T)
    n_a  hidden units       outputs  (D n_a, m, T)       D = 2 if bidirectional else 1
    m    batch size         a0, c0   (L D, n_a, m)        L = num_layers
    T    time steps         a_n, c_n (L D, n_a, m)

``layers`` is the list of ``L * D`` gate dicts ``Wf, bf, Wi, bi, Wc, bc, Wo, bo`` of
:mod:`xlstm.layers` (``torch.nn.LSTM`` order; :func:`xlstm.convert.from_torch` with
``xp="jax"`` makes them from a ``state_dict``).  Each direction of each layer is one
``jax.custom_vjp`` whose forward and backward are xlstm's:

* ``impl="scan"`` (every device): a ``jax.lax.scan`` over xlstm's generic step
  (:func:`xlstm._engines.generic.cell_step`), the backward a reverse ``lax.scan`` over its
  backward step (:func:`~xlstm._engines.generic.cell_step_backward`), the weight and input
  gradients a few large products after the loop.  The loop is one XLA computation: compile
  time does not grow with ``T``.
* ``impl="callback"`` (CPU): xlstm's fastest CPU engine (numba, else NumPy) on the arrays'
  memory through ``jax.pure_callback``; forward hands its cache (states, gates, ``tanh(c)``)
  to backward as residuals, backward is the engine's BPTT.
* ``impl="auto"`` (default): per platform from :data:`AUTO_IMPL`, ``"scan"`` on every
  platform at present (see ``docs/frameworks.md`` for the measurements).

Everything works under ``jax.jit``, ``jax.grad`` and ``jax.vjp``; ``jax.vmap`` works with
``"scan"`` (and, one call per mapped element, with ``"callback"``).  Importing this module
imports JAX; ``import xlstm`` does not.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xlstm._engines import generic
from xlstm._engines.lengths import check_lengths
from xlstm._layout import GATE_KEYS
from xlstm.parameters import pack

IMPLS = ("auto", "scan", "callback")
"""What ``impl=`` accepts."""


# --------------------------------------------------------------------------- scan


def _inside(lengths: Any, t: Any) -> Any:
    """``(m, 1)`` booleans: step ``t`` is inside each sequence."""
    return (t < lengths)[:, None]


def _scan_forward(W, b, x, h0, c0, lengths):
    """One direction, time-major ``x (T, m, n_x)``: every step's states, gates and tanh(c)."""
    n_a = h0.shape[1]
    w_h, w_x = W[:, :n_a], W[:, n_a:]
    z_input = x @ w_x.T + b  # all steps' input projections: one product before the loop

    def step(carry, inputs):
        h, c = carry
        z_t, t = inputs
        gates, c_new, tanh_c, h_new = generic.cell_step(z_t + h @ w_h.T, c, n_a, jnp)
        if lengths is not None:  # past a sequence's end its state is carried unchanged
            inside = _inside(lengths, t)
            h_new, c_new = jnp.where(inside, h_new, h), jnp.where(inside, c_new, c)
        return (h_new, c_new), (h_new, c_new, gates, tanh_c)

    steps = jnp.arange(x.shape[0])
    (h_n, c_n), (hs, cs, gates, tanh_cs) = jax.lax.scan(step, (h0, c0), (z_input, steps))
    return hs, cs, gates, tanh_cs, h_n, c_n


def _scan_backward(W, x, h0, c0, hs, cs, gates, tanh_cs, lengths, d_hs, d_h_n, d_c_n):
    """xlstm's BPTT as a reverse scan: ``(dW, db, dx, dh0, dc0)``."""
    n_a = h0.shape[1]
    w_h, w_x = W[:, :n_a], W[:, n_a:]
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)

    def step(carry, inputs):
        dh_next, dc_next = carry
        d_h, gates_t, c_prev_t, tanh_c_t, t = inputs
        dz, dc_prev = generic.cell_step_backward(
            d_h + dh_next, dc_next, gates_t, c_prev_t, tanh_c_t, n_a, jnp
        )
        if lengths is None:
            return (dz @ w_h, dc_prev), dz
        # A padded step is the identity: its gradients pass straight through.
        inside = _inside(lengths, t)
        dz = jnp.where(inside, dz, 0.0)
        return (jnp.where(inside, dz @ w_h, dh_next), jnp.where(inside, dc_prev, dc_next)), dz

    steps = jnp.arange(x.shape[0])
    (dh0, dc0), dz = jax.lax.scan(
        step, (d_h_n, d_c_n), (d_hs, gates, c_prev, tanh_cs, steps), reverse=True
    )
    t_x, m, n_x = x.shape
    dz_rows = jnp.reshape(dz, (t_x * m, 4 * n_a))
    inputs = jnp.concatenate(
        [jnp.reshape(h_prev, (t_x * m, n_a)), jnp.reshape(x, (t_x * m, n_x))], axis=1
    )
    dW = dz_rows.T @ inputs
    db = jnp.sum(dz_rows, axis=0)
    dx = jnp.reshape(dz_rows @ w_x, (t_x, m, n_x))
    return dW, db, dx, dh0, dc0


@functools.cache
def _scan_direction(masked: bool):
    """The custom-VJP direction of ``impl="scan"`` (with or without ``lengths``)."""

    @jax.custom_vjp
    def direction(W, b, x, h0, c0, lengths):
        hs, _, _, _, h_n, c_n = _scan_forward(W, b, x, h0, c0, lengths if masked else None)
        return hs, h_n, c_n

    def forward(W, b, x, h0, c0, lengths):
        lengths = lengths if masked else None
        hs, cs, gates, tanh_cs, h_n, c_n = _scan_forward(W, b, x, h0, c0, lengths)
        return (hs, h_n, c_n), (W, x, h0, c0, hs, cs, gates, tanh_cs, lengths)

    def backward(residuals, cotangents):
        W, x, h0, c0, hs, cs, gates, tanh_cs, lengths = residuals
        dW, db, dx, dh0, dc0 = _scan_backward(
            W, x, h0, c0, hs, cs, gates, tanh_cs, lengths, *cotangents
        )
        return dW, db, dx, dh0, dc0, None

    direction.defvjp(forward, backward)
    return direction


# --------------------------------------------------------------------------- callback


def _cpu_engine(dtype: Any, masked: bool):
    from xlstm._backend import get_namespace
    from xlstm._engines.dispatch import select_engine

    xp = get_namespace("numpy")
    return xp, select_engine(xp, np.dtype(dtype), "auto", lengths=masked)


def _callback_forward_host(masked, *arrays):
    from xlstm._engines.cache import final_state, sequence_states

    # The callback may be handed jax.Arrays: NumPy views of their host memory (no copy).
    W, b, x, h0, c0, lengths = (np.asarray(a) for a in arrays)
    xp, engine = _cpu_engine(x.dtype, masked)
    t_x, m, _ = x.shape
    host_lengths = None
    if masked:
        host_lengths = check_lengths(np.asarray(lengths, dtype=np.int64), m, t_x)
    cache = engine.forward(x, h0, c0, W, b, xp=xp, recompute=False, lengths=host_lengths)
    states, _ = sequence_states(cache, xp)
    h_n, c_n = final_state(cache, xp)
    order = np.arange(m) if cache.order is None else cache.order
    row_lengths = np.full(m, t_x) if cache.lengths is None else cache.lengths
    index = np.int32
    return (
        np.ascontiguousarray(states),
        h_n,
        c_n,
        cache.h,
        cache.c,
        cache.gates,
        cache.tanh_c,
        np.asarray(order, dtype=index),
        np.asarray(row_lengths, dtype=index),
    )


def _callback_backward_host(masked, *arrays):
    from xlstm._engines.cache import SequenceCache

    W, b, x, h, c, gates, tanh_c, order, rows, d_hs, d_h_n, d_c_n = (np.asarray(a) for a in arrays)
    xp, engine = _cpu_engine(x.dtype, masked)
    m = x.shape[1]
    order = np.asarray(order, dtype=np.int64)
    sorted_rows = bool(np.any(order != np.arange(m)))
    row_lengths = np.asarray(rows, dtype=np.int64) if masked else None
    if row_lengths is not None and np.all(row_lengths == x.shape[0]):
        row_lengths = None
    cache = SequenceCache(h, c, gates, tanh_c, W, b, row_lengths, order if sorted_rows else None)
    dx, dh0, dc0, dW, db = engine.backward(cache, x, d_hs, None, xp=xp, dh_n=d_h_n, dc_n=d_c_n)
    return dW, db, dx, dh0, dc0


def _shape(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), dtype)


@functools.cache
def _callback_direction(masked: bool):
    """The custom-VJP direction of ``impl="callback"``."""

    def run_forward(W, b, x, h0, c0, lengths):
        t_x, m, _ = x.shape
        n_a = h0.shape[1]
        dtype = x.dtype
        shapes = (
            _shape((t_x, m, n_a), dtype),
            _shape((m, n_a), dtype),
            _shape((m, n_a), dtype),
            _shape((t_x + 1, m, n_a), dtype),
            _shape((t_x + 1, m, n_a), dtype),
            _shape((t_x, m, 4 * n_a), dtype),
            _shape((t_x, m, n_a), dtype),
            _shape((m,), jnp.int32),
            _shape((m,), jnp.int32),
        )
        host = functools.partial(_callback_forward_host, masked)
        return jax.pure_callback(host, shapes, W, b, x, h0, c0, lengths, vmap_method="sequential")

    @jax.custom_vjp
    def direction(W, b, x, h0, c0, lengths):
        hs, h_n, c_n, *_ = run_forward(W, b, x, h0, c0, lengths)
        return hs, h_n, c_n

    def forward(W, b, x, h0, c0, lengths):
        hs, h_n, c_n, *cache = run_forward(W, b, x, h0, c0, lengths)
        return (hs, h_n, c_n), (W, b, x, *cache)

    def backward(residuals, cotangents):
        W, b, x = residuals[:3]
        shapes = tuple(_shape(a.shape, a.dtype) for a in (W, b, x))
        n_a = cotangents[1].shape[1]
        shapes = (
            shapes[0],
            shapes[1],
            shapes[2],
            _shape((x.shape[1], n_a), x.dtype),
            _shape((x.shape[1], n_a), x.dtype),
        )
        host = functools.partial(_callback_backward_host, masked)
        grads = jax.pure_callback(host, shapes, *residuals, *cotangents, vmap_method="sequential")
        return (*grads, None)

    direction.defvjp(forward, backward)
    return direction


# --------------------------------------------------------------------------- choice


AUTO_IMPL = {"cpu": "scan", "gpu": "scan", "tpu": "scan"}
"""What ``impl="auto"`` runs on each JAX platform (:func:`jax.default_backend`), from the
measurements in ``docs/frameworks.md``: on the CPU the scan measured faster than the
callback (whose residual copies and host round trip cost more than the engine gains)."""


def default_impl() -> str:
    """What ``impl="auto"`` runs on JAX's default backend (see :data:`AUTO_IMPL`)."""
    return AUTO_IMPL.get(jax.default_backend(), "scan")


def _check_impl(impl: Any) -> str:
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"`impl` = {impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        return default_impl()
    return impl


# --------------------------------------------------------------------------- public


def _reverse_within(values_tm: Any, lengths: Any) -> Any:
    """Reverse a time-major ``(T, m, n)`` array within each sequence's length."""
    if lengths is None:
        return jnp.flip(values_tm, axis=0)
    steps = jnp.arange(values_tm.shape[0])[:, None]
    source = jnp.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)
    return jnp.take_along_axis(values_tm, source[:, :, None], axis=0)


def _check_lengths(lengths: Any, m: int, t_x: int) -> Any:
    """Host-checked lengths as a JAX int array, or ``None``; traced lengths pass as they are
    (and out-of-range values give NaN outputs, see :func:`lstm`)."""
    if lengths is None:
        return None
    if isinstance(lengths, jax.core.Tracer):
        if lengths.shape != (m,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            msg = (
                f"`lengths` is a {lengths.dtype} array of shape {lengths.shape}; "
                f"expected integers of shape (m,) = ({m},)"
            )
            raise TypeError(msg)
        return lengths
    if isinstance(lengths, jax.Array):
        lengths = np.asarray(lengths)
    host = check_lengths(lengths, m, t_x)
    return None if host is None else jnp.asarray(host, dtype=jnp.int32)


def lstm(
    layers: Sequence[Mapping[str, Any]],
    x: Any,
    a0: Any = None,
    c0: Any = None,
    *,
    lengths: Any = None,
    bidirectional: bool = False,
    impl: str = "auto",
) -> tuple[Any, tuple[Any, Any]]:
    """Stacked (optionally bidirectional) LSTM on JAX arrays with xlstm's forward and BPTT.

    Computes what :func:`xlstm.layers.multilayer_forward` computes (without dropout), as a
    differentiable JAX function: use it under ``jax.jit``, ``jax.grad``, ``jax.vjp``.

    Parameters
    ----------
    layers : list of dict of jax arrays
        ``num_layers * D`` gate dicts ``Wf, bf, Wi, bi, Wc, bc, Wo, bo`` in ``torch.nn.LSTM``
        order (l0, l0 reverse, l1, ...): ``W* (n_a, n_a + n_in)`` with columns
        ``[recurrent | input]``, ``b* (n_a, 1)``; ``n_in = n_x`` for layer 0, ``D n_a`` above.
        A pytree: ``jax.grad`` with respect to it gives the same structure.
    x : jax array, shape (n_x, m, T)
    a0, c0 : jax array, shape (num_layers * D, n_a, m), optional
        Initial states; default zeros.
    lengths : int array or sequence of int, shape (m,), optional
        Real steps of each right-padded sequence, ``1 <= lengths[j] <= T``: outputs past a
        sequence's end are zero, ``a_n``, ``c_n`` are each sequence's last states, the
        reverse direction starts at each sequence's own end.  Checked when concrete; traced
        lengths (an argument of a jitted function) cannot be checked before the run: a value
        outside ``[1, T]`` makes every result NaN (and ``impl="callback"`` raises on the host).
    bidirectional : bool, default False
    impl : {"auto", "scan", "callback"}, default "auto"
        See the module docstring; ``"auto"`` is :func:`default_impl`.

    Returns
    -------
    outputs : jax array, shape (D n_a, m, T)
        Last layer's hidden states (forward direction in rows ``:n_a``).
    (a_n, c_n) : jax arrays, shape (num_layers * D, n_a, m)

    Raises
    ------
    TypeError, ValueError
        Before anything runs: a misshapen or missing parameter, ``x`` not 3-D, arrays of
        different dtypes, bad ``lengths`` or ``impl``.
    """
    from xlstm.layers import _check_layer_shapes, _check_layers

    if not isinstance(bidirectional, bool):
        raise TypeError(f"`bidirectional` must be a bool, got {type(bidirectional).__name__}")
    chosen = _check_impl(impl)
    directions = 2 if bidirectional else 1
    num_layers = _check_layers(layers, None, directions)
    if not hasattr(x, "ndim") or x.ndim != 3:
        raise ValueError(f"`x` must be a 3-D array (n_x, m, T), got {getattr(x, 'shape', x)!r}")
    n_x, m, t_x = (int(s) for s in x.shape)
    if m == 0 or t_x == 0:
        raise ValueError(f"`x` has shape {x.shape}; expected m >= 1 and T >= 1")
    n_a = _check_layer_shapes(layers, n_x, directions)
    dtype = x.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`x` has dtype {dtype}; expected a floating dtype")
    count = num_layers * directions
    for index, layer in enumerate(layers):
        for key in GATE_KEYS:
            if layer[key].dtype != dtype:
                msg = (
                    f"`layers[{index}][{key!r}]` has dtype {layer[key].dtype} but `x` has "
                    f"{dtype}; all arrays must share one floating dtype"
                )
                raise TypeError(msg)
    states = []
    for name, value in (("a0", a0), ("c0", c0)):
        if value is None:
            states.append(jnp.zeros((count, n_a, m), dtype=dtype))
            continue
        if tuple(value.shape) != (count, n_a, m):
            msg = (
                f"`{name}` has shape {tuple(value.shape)}; expected (num_layers * D, n_a, m) "
                f"= {(count, n_a, m)}"
            )
            raise ValueError(msg)
        if value.dtype != dtype:
            raise TypeError(f"`{name}` has dtype {value.dtype} but `x` has {dtype}")
        states.append(value)
    lengths = _check_lengths(lengths, m, t_x)
    masked = lengths is not None
    run = (_scan_direction if chosen == "scan" else _callback_direction)(masked)
    dummy = jnp.zeros((m,), dtype=jnp.int32)
    inside = None if not masked else jnp.arange(t_x)[:, None, None] < lengths[None, :, None]

    inputs = jnp.transpose(x, (2, 1, 0))  # (T, m, n_x): a transpose XLA fuses
    finals_h, finals_c = [], []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            W, b = pack(layers[index], jnp)
            seen = _reverse_within(inputs, lengths) if direction else inputs
            hs, h_n, c_n = run(
                W,
                b,
                seen,
                states[0][index].T,
                states[1][index].T,
                lengths if masked else dummy,
            )
            if masked:
                hs = jnp.where(inside, hs, 0.0)
            outputs.append(_reverse_within(hs, lengths) if direction else hs)
            finals_h.append(h_n.T)
            finals_c.append(c_n.T)
        inputs = outputs[0] if directions == 1 else jnp.concatenate(outputs, axis=-1)
    outputs, a_n, c_n = jnp.transpose(inputs, (2, 1, 0)), jnp.stack(finals_h), jnp.stack(finals_c)
    if isinstance(lengths, jax.core.Tracer):
        # Unchecked (traced) lengths: out of [1, T] gives NaN, never a plausible wrong answer.
        bad = jnp.any((lengths < 1) | (lengths > t_x))
        outputs, a_n, c_n = (jnp.where(bad, jnp.nan, v) for v in (outputs, a_n, c_n))
    return outputs, (a_n, c_n)


__all__ = ["AUTO_IMPL", "IMPLS", "default_impl", "lstm"]
