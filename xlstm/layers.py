r"""Stacked and bidirectional LSTMs, forward and backward, on the sequence engine.

Shape legend (feature-first, like the seed)::

    n_x  input features     x        (n_x, m, T)
    n_a  hidden units       outputs  (D n_a, m, T)       D = 2 if bidirectional else 1
    m    batch size         a0, c0   (L D, n_a, m)        L = num_layers
    T    time steps         a_n, c_n (L D, n_a, m)

``layers`` is a list of ``L * D`` gate-parameter dicts in ``torch.nn.LSTM``'s order
(layer 0 forward, layer 0 reverse, layer 1 forward, ...), each with the notebook's keys
``Wf, bf, Wi, bi, Wc, bc, Wo, bo``: ``W* (n_a, n_a + n_in)`` with columns
``[recurrent | input]``, ``b* (n_a, 1)``, where ``n_in = n_x`` for layer 0 and ``D n_a``
above.  Gate order of the stacked engine weights: :data:`xlstm.GATE_ORDER` = (i, f, o, g).

What the layers compute (as ``torch.nn.LSTM`` does):

* layer ``l`` reads the outputs of layer ``l - 1`` (the input ``x`` for ``l = 0``), after
  dropout when ``training`` and ``l > 0``: each element is zeroed with probability
  ``dropout`` and the rest scaled by ``1 / (1 - dropout)`` (inverted dropout; masks drawn
  with a seeded ``numpy.random.Generator`` and moved to the backend);
* the forward direction runs the sequence as :func:`xlstm.lstm_forward` does; the reverse
  direction runs each sequence backwards *within its own length* (it starts at the
  sequence's last real step), and its outputs are put back in time order;
* a layer's output is ``concat([forward, reverse])`` along the features;
* with ``lengths`` (one per sequence, right-padded batch) outputs past a sequence's end are
  zero, states stop there (so ``a_n``, ``c_n`` are each sequence's own last states, and
  for the reverse direction the state after its step at ``t = 0``), no gradient flows
  from padded positions and ``dx`` is zero there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from . import _direction, _threads, _validation
from ._backend import namespace_of
from ._direction import Direction
from ._engines.cache import time_major
from ._engines.dispatch import engine_option
from ._engines.lengths import check_lengths
from ._errstate import ieee_arithmetic
from ._layout import GATE_GRADIENT_KEYS, GATE_KEYS
from ._schema import Schema
from ._validation import shape_of

DirectionCache = Direction
"""One direction of one layer (:class:`xlstm._direction.Direction`); the name of 0.1."""


class MultiLayerCache(NamedTuple):
    """What :func:`multilayer_backward` needs from :func:`multilayer_forward`."""

    directions: tuple[Direction, ...]
    """``L * D`` entries in ``torch.nn.LSTM`` order."""
    dropout_masks: tuple[Any, ...]
    """Per layer: the scaled mask ``(T, m, D n_a)`` applied to its input, or ``None``."""
    lengths: Any
    """Host ``int64`` lengths ``(m,)``, or ``None`` when no sequence is padded."""
    num_layers: int
    bidirectional: bool
    n_a: int


# --------------------------------------------------------------------------- validation


def _check_layers(layers: Any, num_layers: Any, directions: int) -> int:
    """Check the list itself and its keys; return the number of layers."""
    if isinstance(layers, Mapping) or not isinstance(layers, Sequence):
        msg = (
            "`layers` must be a list of per-layer parameter dicts (torch.nn.LSTM order: "
            f"l0, l0_reverse, l1, ...), got {type(layers).__name__}"
        )
        raise TypeError(msg)
    if num_layers is None:
        if len(layers) == 0 or len(layers) % directions:
            msg = (
                f"`layers` has {len(layers)} entries; expected a positive multiple of "
                f"{directions} (num_layers * {directions} directions)"
            )
            raise ValueError(msg)
        num_layers = len(layers) // directions
    if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)):
        raise TypeError(f"`num_layers` must be an int, got {type(num_layers).__name__}")
    if num_layers < 1:
        raise ValueError(f"`num_layers` = {num_layers}; expected >= 1")
    if len(layers) != num_layers * directions:
        msg = (
            f"`layers` has {len(layers)} entries; expected num_layers * directions = "
            f"{num_layers} * {directions} = {num_layers * directions}"
        )
        raise ValueError(msg)
    for index, layer in enumerate(layers):
        if not isinstance(layer, Mapping):
            msg = f"`layers[{index}]` must be a dict of arrays, got {type(layer).__name__}"
            raise TypeError(msg)
        missing = [key for key in GATE_KEYS if key not in layer]
        if missing:
            msg = (
                f"`layers[{index}]` is missing {', '.join(repr(k) for k in missing)}; "
                f"expected keys {GATE_KEYS}"
            )
            raise _validation.MissingParameterError(msg)
    return int(num_layers)


def _check_layer_shapes(layers: Sequence[Mapping[str, Any]], n_x: int, directions: int) -> int:
    """Every weight ``(n_a, n_a + n_in)`` and bias ``(n_a, 1)``; return ``n_a``."""
    first = layers[0]["Wf"]
    if first.ndim != 2 or first.shape[0] < 1:
        msg = f"`layers[0]['Wf']` has shape {shape_of(first)}; expected (n_a, n_a + n_x)"
        raise ValueError(msg)
    n_a = int(first.shape[0])
    schema = Schema(n_x, n_a, len(layers) // directions, directions == 2)
    for index, ((layer, _), unit) in enumerate(zip(schema.units(), layers, strict=True)):
        legend = "(n_a, n_a + n_x)" if layer == 0 else "(n_a, n_a + D n_a)"
        for key, shape in schema.gate_shapes(layer).items():
            name = f"layers[{index}][{key!r}]"
            _validation.check_shape(name, unit[key], shape, legend if key[0] == "W" else "(n_a, 1)")
    return n_a


def _check_dropout(dropout: Any, training: Any) -> float:
    rate = _validation.check_dropout(dropout)
    _validation.check_flag("training", training)
    return rate


def _initial_states(a0, c0, count, n_a, m, xp, dtype, device):
    """``a0``/``c0`` ``(L D, n_a, m)`` as per-direction rows ``(m, n_a)`` (zeros if None)."""
    rows = []
    for name, value in (("a0", a0), ("c0", c0)):
        if value is None:
            zeros = xp.zeros((m, n_a), dtype=dtype, device=device)
            rows.append([zeros] * count)
        else:
            _validation.check_shape(name, value, (count, n_a, m), "(num_layers * D, n_a, m)")
            rows.append([value[k, ...].T for k in range(count)])
    return rows


# --------------------------------------------------------------------------- forward


def _dropout_mask(rng: np.random.Generator, shape, rate: float, xp, dtype, device) -> Any:
    keep = rng.random(shape) >= rate
    return xp.asarray(keep / (1.0 - rate), dtype=dtype, device=device)


@ieee_arithmetic
def multilayer_forward(
    x: Any,
    layers: Sequence[Mapping[str, Any]],
    *,
    num_layers: int | None = None,
    bidirectional: bool = False,
    lengths: Any = None,
    dropout: float = 0.0,
    seed: int | np.random.Generator | None = None,
    training: bool = True,
    a0: Any = None,
    c0: Any = None,
    xp: Any = None,
    engine: str = "auto",
    fused: Any = None,
    recompute: bool = False,
    cache: bool = True,
) -> tuple[Any, tuple[Any, Any], MultiLayerCache | None]:
    """Run a stacked (and optionally bidirectional) LSTM over a batch of sequences.

    Parameters
    ----------
    x : array, shape (n_x, m, T)
    layers : list of dict
        ``num_layers * D`` gate-parameter dicts in ``torch.nn.LSTM`` order (see the module
        docstring); :func:`xlstm.convert.from_torch` makes them from a ``state_dict``.
    num_layers : int, optional
        Checked against ``len(layers)``; default: inferred from it.
    bidirectional : bool, default False
    lengths : sequence of int or integer array (m,), optional
        Real steps of each right-padded sequence, ``1 <= lengths[j] <= T``.
    dropout : float in [0, 1), default 0
        Dropout on the input of every layer but the first, when ``training``.
    seed : int or numpy.random.Generator, optional
        Source of the dropout masks.
    training : bool, default True
        ``False`` switches dropout off.
    a0, c0 : array, shape (num_layers * D, n_a, m), optional
        Initial states, ``torch.nn.LSTM`` order.  Default: zeros.
    xp, engine, recompute, cache
        As in :func:`xlstm.lstm_forward`: ``cache=False`` keeps nothing for backward
        (inference) and returns ``None`` as the cache.
    fused : optional
        Deprecated alias of ``engine`` (a ``DeprecationWarning``).

    Returns
    -------
    outputs : array, shape (D n_a, m, T)
        Last layer's hidden states, the forward direction's in rows ``:n_a`` and the
        reverse direction's in rows ``n_a:``; zero past each sequence's end.
    (a_n, c_n) : arrays, shape (num_layers * D, n_a, m)
        Final states of every layer and direction (each sequence's own last step).
    cache : MultiLayerCache
        For :func:`multilayer_backward`.  ``outputs`` may share memory with it.
    """
    bidirectional = _validation.check_flag("bidirectional", bidirectional)
    directions = 2 if bidirectional else 1
    num_layers = _check_layers(layers, num_layers, directions)
    rate = _check_dropout(dropout, training)
    arrays = {"x": x}
    for index, layer in enumerate(layers):
        arrays.update({f"layers[{index}][{key!r}]": layer[key] for key in GATE_KEYS})
    if a0 is not None:
        arrays["a0"] = a0
    if c0 is not None:
        arrays["c0"] = c0
    xp = namespace_of(arrays, xp=xp)
    if x.ndim != 3:
        raise ValueError(f"`x` must be 3-D (n_x, m, T), got shape {shape_of(x)}")
    n_x, m, t_x = shape_of(x)
    if m == 0 or t_x == 0:
        raise ValueError(f"`x` has shape {shape_of(x)}; expected m >= 1 and T >= 1")
    n_a = _check_layer_shapes(layers, n_x, directions)
    recompute = _validation.check_flag("recompute", recompute)
    cache = _validation.check_flag("cache", cache)
    keep = cache
    recompute = recompute or not keep  # inference keeps only the states (the outputs)
    lengths = check_lengths(lengths, m, t_x)
    device = array_api_compat.device(x)
    count = num_layers * directions
    h0s, c0s = _initial_states(a0, c0, count, n_a, m, xp, x.dtype, device)
    choice = engine_option(engine, fused, where="xlstm.layers.multilayer_forward")
    selected = _direction.select(xp, x.dtype, choice, lengths=lengths is not None)
    # Independent directions side by side in two threads (see xlstm._threads).
    threaded = selected.spec.threaded_directions
    rng = None
    if training and rate > 0.0 and num_layers > 1:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def run_direction(index: int, reverse: bool, inputs_tm: Any):
        run = _direction.forward(
            inputs_tm, h0s[index], c0s[index], layers[index], xp=xp, choice=choice,
            recompute=recompute, lengths=lengths, reverse=reverse, engine=selected,
        )  # fmt: skip
        states, _ = _direction.states(run, xp)
        h_n, c_n = _direction.final_states(run, xp)
        return run, states, h_n.T, c_n.T

    inputs_tm = time_major(x, xp)
    results, masks = [], []
    for layer in range(num_layers):
        mask = None
        if layer > 0 and rng is not None:
            mask = _dropout_mask(rng, shape_of(inputs_tm), rate, xp, x.dtype, device)
            inputs_tm = inputs_tm * mask
        masks.append(mask)
        first = layer * directions
        if directions == 2 and threaded:
            work = m * t_x * 4 * n_a * (n_a + int(inputs_tm.shape[2]))
            pair = _threads.run_pair(
                lambda: run_direction(first, False, inputs_tm),  # noqa: B023 (run at once)
                ieee_arithmetic(lambda: run_direction(first + 1, True, inputs_tm)),  # noqa: B023
                work=work,
            )
        else:
            pair = [run_direction(first + d, d == 1, inputs_tm) for d in range(directions)]
        results.extend(pair)
        outputs = [states for _, states, _, _ in pair]
        inputs_tm = outputs[0] if directions == 1 else xp.concat(outputs, axis=-1)
    directions_cache = [entry for entry, _, _, _ in results]
    finals_h = [h_n for _, _, h_n, _ in results]
    finals_c = [c_n for _, _, _, c_n in results]

    outputs, finals = time_major(inputs_tm, xp), (xp.stack(finals_h), xp.stack(finals_c))
    if not keep:
        return outputs, finals, None
    record = MultiLayerCache(
        tuple(directions_cache), tuple(masks), lengths, num_layers, bidirectional, n_a
    )
    return outputs, finals, record


# --------------------------------------------------------------------------- backward


@ieee_arithmetic
def multilayer_backward(
    d_outputs: Any,
    cache: MultiLayerCache,
    d_a_n: Any = None,
    d_c_n: Any = None,
    *,
    xp: Any = None,
) -> dict[str, Any]:
    """Backpropagation through time for :func:`multilayer_forward`.

    Parameters
    ----------
    d_outputs : array, shape (D n_a, m, T)
        Gradient of the loss with respect to ``outputs`` (entries past a sequence's end are
        ignored).
    cache : MultiLayerCache
    d_a_n, d_c_n : array, shape (num_layers * D, n_a, m), optional
        Gradients with respect to the final states ``a_n``, ``c_n``.

    Returns
    -------
    dict
        ``dx (n_x, m, T)`` (zero past each end), ``da0``, ``dc0`` ``(num_layers * D, n_a, m)``
        and ``layers``: a list, in the order of ``layers``, of dicts ``dWf, dbf, ..., dbo``
        of the shapes of the parameters.
    """
    if not isinstance(cache, MultiLayerCache):
        raise TypeError("`cache` must be the MultiLayerCache returned by multilayer_forward")
    directions = 2 if cache.bidirectional else 1
    count = cache.num_layers * directions
    n_a = cache.n_a
    reference = cache.directions[0].x
    arrays = {"d_outputs": d_outputs, "cache input": reference}
    final_grads = d_a_n is not None or d_c_n is not None
    for name, value in (("d_a_n", d_a_n), ("d_c_n", d_c_n)):
        if value is not None:
            arrays[name] = value
    xp = namespace_of(arrays, xp=xp)
    t_x, m, _ = shape_of(reference)
    _validation.check_shape("d_outputs", d_outputs, (directions * n_a, m, t_x), "(D n_a, m, T)")
    for name, value in (("d_a_n", d_a_n), ("d_c_n", d_c_n)):
        if value is not None:
            _validation.check_shape(name, value, (count, n_a, m), "(num_layers * D, n_a, m)")

    def run_direction(index: int, reverse: bool, d_inputs_tm: Any):
        direction = 1 if reverse else 0
        final = {}
        if d_a_n is not None:
            final["dh_n"] = d_a_n[index, ...].T
        if d_c_n is not None:
            final["dc_n"] = d_c_n[index, ...].T
        dx_tm, dh0, dc0, grads = _direction.backward(
            cache.directions[index],
            d_inputs_tm[..., direction * n_a : (direction + 1) * n_a],
            xp=xp,
            engine=engines[index],
            **final,
        )
        return dx_tm, grads, dh0.T, dc0.T

    # The forward pass's engine choice, for what backward needs (a cache to read, maybe
    # final-state gradients): selected up front, so that a refusal comes before any work.
    engines = [
        _direction.select(
            xp, entry.x.dtype, entry.choice, final_state_grads=final_grads, cache=entry.cache
        )
        for entry in cache.directions
    ]
    d_inputs_tm = time_major(d_outputs, xp)
    layer_grads: list[dict[str, Any]] = [{} for _ in range(count)]
    d_h0, d_c0 = [None] * count, [None] * count
    for layer in range(cache.num_layers - 1, -1, -1):
        first = layer * directions
        if directions == 2 and engines[first].spec.threaded_directions:
            n_in = int(cache.directions[first].x.shape[2])
            pair = _threads.run_pair(
                lambda: run_direction(first, False, d_inputs_tm),  # noqa: B023 (run at once)
                ieee_arithmetic(lambda: run_direction(first + 1, True, d_inputs_tm)),  # noqa: B023
                work=2 * m * t_x * 4 * n_a * (n_a + n_in),
            )
        else:
            pair = [run_direction(first + d, d == 1, d_inputs_tm) for d in range(directions)]
        total = None
        for direction, (dx_tm, grads, dh0, dc0) in enumerate(pair):
            total = dx_tm if total is None else total + dx_tm
            layer_grads[first + direction] = grads
            d_h0[first + direction], d_c0[first + direction] = dh0, dc0
        mask = cache.dropout_masks[layer]
        d_inputs_tm = total if mask is None else total * mask
    return {
        "dx": time_major(d_inputs_tm, xp),
        "da0": xp.stack(d_h0),
        "dc0": xp.stack(d_c0),
        "layers": [{key: grads[key] for key in GATE_GRADIENT_KEYS} for grads in layer_grads],
    }


__all__ = [
    "GATE_KEYS",
    "DirectionCache",
    "MultiLayerCache",
    "multilayer_backward",
    "multilayer_forward",
]
