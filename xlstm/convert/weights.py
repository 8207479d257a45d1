"""Weights from and to ``torch.nn.LSTM`` and Keras 3 ``LSTM`` layers.

Gate orders (the one thing to get right):

* xlstm: :data:`xlstm.GATE_ORDER` = (i, f, o, g); seed keys ``Wi, Wf, Wo, Wc`` (``Wc`` is the
  candidate ``g``), each ``(n_a, n_a + n_in)`` with columns ``[recurrent | input]``, biases
  ``(n_a, 1)``.
* PyTorch: :data:`TORCH_GATE_ORDER` = (i, f, g, o); ``weight_ih_l{k}{sfx} (4 n_a, n_in)``,
  ``weight_hh_l{k}{sfx} (4 n_a, n_a)``, ``bias_ih_l{k}{sfx}``, ``bias_hh_l{k}{sfx} (4 n_a,)``
  with ``sfx`` = ``""`` or ``"_reverse"``; the two biases are always added, so import folds
  them into one and export writes the bias into ``bias_ih`` and zeros into ``bias_hh``.
* Keras 3: :data:`KERAS_GATE_ORDER` = (i, f, c, o), ``c`` being the candidate ``g``;
  ``kernel (n_in, 4 n_a)``, ``recurrent_kernel (n_a, 4 n_a)``, ``bias (4 n_a,)``; gates are
  ``x @ kernel + h @ recurrent_kernel + bias`` (the transpose of ours, row vectors).  Only
  the defaults ``activation="tanh"``, ``recurrent_activation="sigmoid"`` compute what
  xlstm computes; the weights cannot tell, so this is the caller's to check.

Lists of layers follow ``torch.nn.LSTM``'s order (layer 0, layer 0 reverse, layer 1, ...),
as :func:`xlstm.layers.multilayer_forward` takes them.  Every array is read through the host
(NumPy), so any backend's arrays and torch tensors (also ones that require grad) are
accepted; results are put on ``xp`` (NumPy by default) with ``xp.asarray``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from ._backend import get_namespace, to_host
from ._layout import GATE_PARAMETERS

TORCH_GATE_ORDER = ("i", "f", "g", "o")
"""Gate blocks of ``torch.nn.LSTM``'s weights and biases, top to bottom."""

KERAS_GATE_ORDER = ("i", "f", "g", "o")
"""Gate blocks of Keras's ``kernel``, ``recurrent_kernel`` and ``bias`` columns (Keras
calls the candidate ``c``: its documented order is i, f, c, o)."""

_TORCH_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


class LSTMWeights(NamedTuple):
    """A stacked LSTM's weights in xlstm's form (see :mod:`xlstm.layers`)."""

    layers: list[dict[str, Any]]
    """``num_layers * D`` dicts ``Wf, bf, Wi, bi, Wc, bc, Wo, bo``, torch order."""
    num_layers: int
    bidirectional: bool
    n_x: int
    n_a: int


# --------------------------------------------------------------------------- helpers


def _host(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        host = value
    elif array_api_compat.is_array_api_obj(value):
        host = np.asarray(to_host(value))
    else:
        raise TypeError(f"`{name}` must be an array or a tensor, got {type(value).__name__}")
    if not np.issubdtype(host.dtype, np.floating):
        raise TypeError(f"`{name}` has dtype {host.dtype}; expected a floating dtype")
    return host


def _check(name: str, array: np.ndarray, expected: tuple[int, ...], legend: str) -> None:
    if tuple(array.shape) != expected:
        msg = f"`{name}` has shape {tuple(array.shape)}; expected {legend} = {expected}"
        raise ValueError(msg)


def _place(host: dict[str, np.ndarray], xp: Any, dtype: Any, device: Any) -> dict[str, Any]:
    namespace = get_namespace(xp)
    placed = {}
    for key, value in host.items():
        target = None if dtype is None else _dtype(namespace, dtype)
        if target is None:
            placed[key] = namespace.asarray(np.array(value, copy=True), device=device)
        else:
            placed[key] = namespace.asarray(value, dtype=target, device=device, copy=True)
    return placed


def _dtype(namespace: Any, dtype: Any) -> Any:
    if isinstance(dtype, str):
        if dtype not in ("float16", "float32", "float64"):
            raise TypeError(f"`dtype` = {dtype!r}; expected 'float32' or 'float64'")
        return getattr(namespace, dtype)
    return dtype


def _gate_dict(w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray, order, n_a: int):
    """Seed gate dict from row-stacked ``w_ih (4 n_a, n_in)``, ``w_hh``, ``bias (4 n_a,)``."""
    out = {}
    for block, gate in enumerate(order):
        rows = slice(block * n_a, (block + 1) * n_a)
        weight_key, bias_key = GATE_PARAMETERS[gate]
        out[weight_key] = np.concatenate([w_hh[rows], w_ih[rows]], axis=1)
        out[bias_key] = bias[rows].reshape(n_a, 1)
    return {key: out[key] for key in ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo")}


def _stacked_from_gates(layer: Mapping[str, Any], order, name: str):
    """``(w_ih (4 n_a, n_in), w_hh (4 n_a, n_a), bias (4 n_a,))`` on the host, in ``order``."""
    if not isinstance(layer, Mapping):
        raise TypeError(f"`{name}` must be a dict of arrays, got {type(layer).__name__}")
    host = {}
    for gate in order:
        for key in GATE_PARAMETERS[gate]:
            if key not in layer:
                raise ValueError(f"`{name}` is missing {key!r}")
            host[key] = _host(f"{name}[{key!r}]", layer[key])
    weight = host["Wf"]
    if weight.ndim != 2 or weight.shape[1] <= weight.shape[0]:
        msg = f"`{name}['Wf']` has shape {weight.shape}; expected (n_a, n_a + n_in)"
        raise ValueError(msg)
    n_a, width = weight.shape
    for gate in order:
        weight_key, bias_key = GATE_PARAMETERS[gate]
        _check(f"{name}[{weight_key!r}]", host[weight_key], (n_a, width), "(n_a, n_a + n_in)")
        _check(f"{name}[{bias_key!r}]", host[bias_key], (n_a, 1), "(n_a, 1)")
    W = np.concatenate([host[GATE_PARAMETERS[g][0]] for g in order], axis=0)
    b = np.concatenate([host[GATE_PARAMETERS[g][1]] for g in order], axis=0).reshape(-1)
    return W[:, n_a:], W[:, :n_a], b


# --------------------------------------------------------------------------- PyTorch


def from_torch(
    state_dict: Any,
    *,
    prefix: str = "",
    xp: Any = "numpy",
    dtype: Any = None,
    device: Any = None,
) -> LSTMWeights:
    """Read a ``torch.nn.LSTM``'s weights (its ``state_dict()`` or the module itself).

    Parameters
    ----------
    state_dict : mapping or torch.nn.LSTM
        Keys ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` and
        their ``_reverse`` twins, values torch tensors or NumPy arrays.  A module is read
        through its ``state_dict()``.  Without biases (``bias=False``) the biases are zero.
    prefix : str, default ""
        Read only the keys starting with it, e.g. ``"encoder.lstm."`` in a larger model's
        ``state_dict``.
    xp, dtype, device
        Where to put the result.  ``dtype=None`` keeps the source's floating dtype.

    Returns
    -------
    LSTMWeights
        ``layers`` for :func:`xlstm.layers.multilayer_forward`, with ``num_layers``,
        ``bidirectional``, ``n_x`` and ``n_a``.  Each layer's bias is
        ``bias_ih + bias_hh`` (added in float64 on the host).

    Raises
    ------
    ValueError
        A missing or misshapen key (named), an unknown key under ``prefix``, layers missing
        in between, or a ``weight_hr_l*`` key: LSTMs with ``proj_size > 0`` are not supported.
    TypeError
        Not a mapping, a value that is not a floating array, or a ``dtype`` that is not
        a real floating dtype.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"`prefix` must be a str, got {type(prefix).__name__}")
    if dtype is not None:  # checked before any conversion: np.int32 would cast silently
        namespace = get_namespace(xp)
        try:
            floating = namespace.isdtype(_dtype(namespace, dtype), "real floating")
        except (TypeError, ValueError, AttributeError):
            floating = False
        if not floating:
            msg = f"`dtype` = {dtype!r}; expected a real floating dtype ('float32' or 'float64')"
            raise TypeError(msg)
    if not isinstance(state_dict, Mapping) and callable(getattr(state_dict, "state_dict", None)):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        msg = f"`state_dict` must be a mapping or a torch.nn.LSTM, got {type(state_dict).__name__}"
        raise TypeError(msg)
    found: dict[tuple[str, int, str], str] = {}
    for key in state_dict:
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        match = _TORCH_KEY.match(key[len(prefix) :])
        if match is None:
            raise ValueError(f"`state_dict` has an unexpected key {key!r} for a torch.nn.LSTM")
        kind, layer, reverse = match.group(1), int(match.group(2)), match.group(3) or ""
        if kind == "weight_hr":
            msg = (
                f"`state_dict` has {key!r}: an LSTM with proj_size > 0 (a projected hidden "
                "state) is not supported; use proj_size=0"
            )
            raise ValueError(msg)
        found[kind, layer, reverse] = key
    if not found:
        raise ValueError(f"`state_dict` has no key {prefix + 'weight_ih_l0'!r}")
    num_layers = 1 + max(layer for _, layer, _ in found)
    bidirectional = any(reverse for _, _, reverse in found)
    suffixes = ("", "_reverse") if bidirectional else ("",)
    has_bias = any(kind.startswith("bias") for kind, _, _ in found)

    def get(kind: str, layer: int, suffix: str) -> np.ndarray:
        key = f"{prefix}{kind}_l{layer}{suffix}"
        if (kind, layer, suffix) not in found:
            raise ValueError(f"`state_dict` is missing {key!r}")
        # Contiguous: NumPy sources may be views with negative strides, which torch refuses.
        return np.ascontiguousarray(_host(f"state_dict[{key!r}]", state_dict[key]))

    first = get("weight_ih", 0, "")
    if first.ndim != 2 or first.shape[0] % 4 or first.shape[0] == 0:
        key = f"{prefix}weight_ih_l0"
        raise ValueError(f"`state_dict[{key!r}]` has shape {first.shape}; expected (4 n_a, n_x)")
    n_a, n_x = first.shape[0] // 4, first.shape[1]
    source_dtype = first.dtype
    layers = []
    for layer in range(num_layers):
        n_in = n_x if layer == 0 else len(suffixes) * n_a
        for suffix in suffixes:
            arrays = {}
            for kind, shape, legend in (
                ("weight_ih", (4 * n_a, n_in), "(4 n_a, n_x)" if layer == 0 else "(4 n_a, D n_a)"),
                ("weight_hh", (4 * n_a, n_a), "(4 n_a, n_a)"),
                ("bias_ih", (4 * n_a,), "(4 n_a,)"),
                ("bias_hh", (4 * n_a,), "(4 n_a,)"),
            ):
                if kind.startswith("bias") and not has_bias:
                    arrays[kind] = np.zeros(shape, dtype=source_dtype)
                    continue
                arrays[kind] = get(kind, layer, suffix)
                key = f"{prefix}{kind}_l{layer}{suffix}"
                _check(f"state_dict[{key!r}]", arrays[kind], shape, legend)
            bias = arrays["bias_ih"].astype(np.float64) + arrays["bias_hh"].astype(np.float64)
            host = _gate_dict(
                arrays["weight_ih"], arrays["weight_hh"], bias.astype(source_dtype),
                TORCH_GATE_ORDER, n_a,
            )  # fmt: skip
            layers.append(_place(host, xp, dtype, device))
    return LSTMWeights(layers, num_layers, bidirectional, int(n_x), int(n_a))


def to_torch(
    layers: Any,
    *,
    bidirectional: bool | None = None,
    prefix: str = "",
    as_tensors: bool = False,
) -> dict[str, Any]:
    """A ``torch.nn.LSTM`` ``state_dict`` from xlstm layers.

    Parameters
    ----------
    layers : LSTMWeights or list of dict
        Gate dicts (``Wf ... bo``; ``Wy``/``by`` are ignored) in torch order, any backend.
    bidirectional : bool
        Required with a list (an ``LSTMWeights`` knows it).
    prefix : str, default ""
    as_tensors : bool, default False
        ``torch.Tensor`` values (for ``module.load_state_dict``) instead of NumPy arrays.

    Returns
    -------
    dict
        ``weight_ih_l{k}{sfx}``, ``weight_hh_l{k}{sfx}``, ``bias_ih_l{k}{sfx}`` (the bias)
        and ``bias_hh_l{k}{sfx}`` (zeros), in the source's dtype.

    Raises
    ------
    ValueError
        A layer whose shapes do not chain (another ``n_a``, or an input width other than
        ``n_x`` for layer 0 and ``D n_a`` above), an odd count for a bidirectional LSTM.
    """
    if isinstance(layers, LSTMWeights):
        if bidirectional is not None and bidirectional != layers.bidirectional:
            raise ValueError("`bidirectional` disagrees with the LSTMWeights given")
        bidirectional = layers.bidirectional
        layers = layers.layers
    if not isinstance(bidirectional, bool):
        raise TypeError("`bidirectional` must be a bool (required when `layers` is a list)")
    if isinstance(layers, Mapping) or not isinstance(layers, Sequence) or not layers:
        raise TypeError("`layers` must be a non-empty list of gate-parameter dicts")
    suffixes = ("", "_reverse") if bidirectional else ("",)
    if len(layers) % len(suffixes):
        msg = f"`layers` has {len(layers)} entries; a bidirectional LSTM needs an even number"
        raise ValueError(msg)
    state = {}
    n_a = None
    for index, layer in enumerate(layers):
        number, suffix = divmod(index, len(suffixes))[0], suffixes[index % len(suffixes)]
        w_ih, w_hh, b = _stacked_from_gates(layer, TORCH_GATE_ORDER, f"layers[{index}]")
        # The layers must chain as torch.nn.LSTM's do: one n_a, and every layer above the
        # first reads the D * n_a outputs of the one below.
        width = int(w_hh.shape[1])
        n_in = int(w_ih.shape[1])
        if n_a is None:
            n_a, n_x = width, n_in
        shape = (n_a, n_a + (n_x if number == 0 else len(suffixes) * n_a))
        if (width, width + n_in) != shape:
            legend = "(n_a, n_a + n_x)" if number == 0 else f"(n_a, n_a + {len(suffixes)} n_a)"
            msg = (
                f"`layers[{index}]['Wf']` has shape {(width, width + n_in)}; layer {number} "
                f"of this LSTM takes {legend} = {shape} (n_a = {n_a} from `layers[0]`): "
                "the layers do not chain"
            )
            raise ValueError(msg)
        tail = f"_l{number}{suffix}"
        state[f"{prefix}weight_ih{tail}"] = np.ascontiguousarray(w_ih)
        state[f"{prefix}weight_hh{tail}"] = np.ascontiguousarray(w_hh)
        state[f"{prefix}bias_ih{tail}"] = np.array(b, copy=True)
        state[f"{prefix}bias_hh{tail}"] = np.zeros_like(b)
    if as_tensors:
        import torch

        state = {key: torch.from_numpy(value) for key, value in state.items()}
    return state


# --------------------------------------------------------------------------- Keras 3


def from_keras(
    weights: Any, *, xp: Any = "numpy", dtype: Any = None, device: Any = None
) -> dict[str, Any]:
    """One Keras 3 ``LSTM`` layer's weights as an xlstm gate dict.

    Parameters
    ----------
    weights : list or mapping
        ``layer.get_weights()``: ``[kernel, recurrent_kernel, bias]`` (or without ``bias``
        for ``use_bias=False``), or a mapping with those keys.  ``kernel (n_x, 4 n_a)``,
        ``recurrent_kernel (n_a, 4 n_a)``, ``bias (4 n_a,)``, columns in Keras's gate order
        i, f, c, o.
    xp, dtype, device
        Where to put the result; ``dtype=None`` keeps the source dtype.

    Returns
    -------
    dict
        ``Wf, bf, Wi, bi, Wc, bc, Wo, bo`` (add ``Wy``, ``by`` for :func:`xlstm.lstm_forward`,
        or use it as one entry of ``layers`` in :func:`xlstm.layers.multilayer_forward`).
    """
    names = ("kernel", "recurrent_kernel", "bias")
    if isinstance(weights, Mapping):
        missing = [key for key in names[:2] if key not in weights]
        if missing:
            raise ValueError(f"`weights` is missing {missing[0]!r}")
        given = {key: weights[key] for key in names if key in weights}
    elif isinstance(weights, Sequence) and not isinstance(weights, str):
        if len(weights) not in (2, 3):
            msg = (
                f"`weights` has {len(weights)} arrays; expected [kernel, recurrent_kernel, bias] "
                "(layer.get_weights() of one Keras LSTM layer)"
            )
            raise ValueError(msg)
        given = dict(zip(names, weights, strict=False))
    else:
        raise TypeError(
            f"`weights` must be a list or a dict of arrays, got {type(weights).__name__}"
        )
    host = {key: _host(f"weights[{key!r}]", value) for key, value in given.items()}
    kernel = host["kernel"]
    if kernel.ndim != 2 or kernel.shape[1] % 4 or kernel.shape[1] == 0:
        raise ValueError(f"`weights['kernel']` has shape {kernel.shape}; expected (n_x, 4 n_a)")
    n_a = kernel.shape[1] // 4
    _check("weights['recurrent_kernel']", host["recurrent_kernel"], (n_a, 4 * n_a), "(n_a, 4 n_a)")
    bias = host.get("bias")
    if bias is None:
        bias = np.zeros(4 * n_a, dtype=kernel.dtype)
    _check("weights['bias']", bias, (4 * n_a,), "(4 n_a,)")
    gates = _gate_dict(kernel.T, host["recurrent_kernel"].T, bias, KERAS_GATE_ORDER, n_a)
    return _place(gates, xp, dtype, device)


def to_keras(parameters: Mapping[str, Any], *, use_bias: bool = True) -> list[np.ndarray]:
    """``[kernel, recurrent_kernel, bias]`` for a Keras 3 ``LSTM`` layer's ``set_weights``.

    ``use_bias=False`` matches a layer made with ``use_bias=False``: two arrays, and the
    bias must be zero (it cannot be represented there).
    """
    if not isinstance(use_bias, bool):
        raise TypeError(f"`use_bias` must be a bool, got {type(use_bias).__name__}")
    w_ih, w_hh, b = _stacked_from_gates(parameters, KERAS_GATE_ORDER, "parameters")
    weights = [np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T)]
    if use_bias:
        return [*weights, np.array(b, copy=True)]
    if np.any(b != 0):
        msg = "`use_bias=False` but the bias is not zero: a Keras layer without bias cannot hold it"
        raise ValueError(msg)
    return weights


__all__ = [
    "KERAS_GATE_ORDER",
    "TORCH_GATE_ORDER",
    "LSTMWeights",
    "from_keras",
    "from_torch",
    "to_keras",
    "to_torch",
]


# --------------------------------------------------------------------------- ONNX
# The code lives in xlstm._onnx, imported on call: `import xlstm` never imports onnx.


def to_onnx(
    model: Any,
    path: Any = None,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    dynamic_time: bool = True,
    batch_size: int | None = None,
    time_steps: int | None = None,
    initial_state: bool = False,
    sequence_lens: bool = False,
    output: str | None = None,
    dtype: str | None = None,
) -> Any:
    """An ONNX model of an LSTM (or of a character model: LSTM plus output layer).

    One ONNX ``LSTM`` node per layer; between layers the node's ``Y (T, D, m, n_a)`` becomes
    ``(T, m, D n_a)``.  Gate order: xlstm (i, f, o, g) is written as ONNX's (i, o, f, c);
    the bias goes into ``Wb`` and zeros into ``Rb`` of ``B (D, 8 n_a)``.

    Parameters
    ----------
    model : xlstm.LSTM, LSTMWeights or character model
        Anything with ``layers``, ``bidirectional``, ``n_x``, ``n_a`` (torch order, any
        backend), or a model whose ``parameters`` hold ``Wy (n_y, n_a)``, ``by (n_y, 1)``
        and whose ``.lstm`` is the recurrent part (a one-layer model holding the seed's
        flat dict ``Wf ... by`` also works).  float32 or float64.
    path : str or path, optional
        Also write the model there (atomically: a temporary file, then ``os.replace``).
    opset : int, optional
        Default :data:`xlstm._onnx.DEFAULT_OPSET` (21: written by onnx >= 1.16 and run by
        onnxruntime >= 1.18, the extra's lower bounds); 13 up to what the installed onnx knows.
    dynamic_batch, dynamic_time : bool, default True
        Symbolic ``m`` and ``T``; with ``False``, ``batch_size`` / ``time_steps`` fix them.
    initial_state : bool, default False
        Add graph inputs ``initial_h``, ``initial_c`` ``(L D, m, n_a)``, torch's order;
        without them every sequence starts from zeros.
    sequence_lens : bool, default False
        Add the graph input ``sequence_lens (m,)`` int32, ``1 <= sequence_lens[j] <= T``: as
        xlstm's ``lengths``, outputs past each end are zero, ``Y_h``, ``Y_c`` are each
        sequence's own last states and the reverse direction starts at each sequence's end.
    output : {"softmax", "logits"}, optional
        A character model's ``Y``: probabilities (default) or logits.  Only for such models.
    dtype : {"float32", "float64"}, optional
        Element type of the graph; default the model's.  ONNX Runtime's ``LSTM`` kernel
        runs float32 only (1.32: "does not support double"): export float64 models with
        ``dtype="float32"`` to deploy them there.

    Returns
    -------
    onnx.ModelProto
        Checked with ``onnx.checker.check_model(full_check=True)``.  Graph inputs ``X (T, m,
        n_x)`` (time-major, ONNX layout 0) and the optional ones above; outputs ``Y (T, m, D
        n_a)`` (forward features, then reverse; ``(T, m, n_y)`` for a character model),
        ``Y_h``, ``Y_c`` ``(L D, m, n_a)``.  Metadata: ``xlstm.model`` and, for a character
        model, ``xlstm.output`` and ``xlstm.vocab``.

    Raises
    ------
    ImportError
        ``onnx`` is not installed (the ``onnx`` extra).
    TypeError, ValueError
        An unsupported model, dtype or option (named).
    """
    from . import _onnx

    return _onnx.to_onnx(
        model, path, opset=opset, dynamic_batch=dynamic_batch, dynamic_time=dynamic_time,
        batch_size=batch_size, time_steps=time_steps, initial_state=initial_state,
        sequence_lens=sequence_lens, output=output, dtype=dtype,
    )  # fmt: skip


def from_onnx(path_or_model: Any, *, backend: Any = "numpy", dtype: Any = None) -> Any:
    """An ``xlstm.LSTM`` from an ONNX graph made of ``LSTM`` nodes.

    Reads what :func:`to_onnx` writes, what ``torch.onnx.export`` makes of a
    ``torch.nn.LSTM``, and single ``LSTM`` nodes (layout 0 or 1).  Node ``k`` is layer
    ``k``; between layers only Identity, Transpose, Squeeze of the direction axis and a
    Reshape merging (direction, hidden) are accepted, checked to give ``(T, m, D n_a)``.
    ONNX's gate order (i, o, f, c) is mapped to xlstm's (i, f, o, g) and ``Wb + Rb`` folded
    into one bias.  Initial states and ``sequence_lens`` are run-time inputs, not read.

    Parameters
    ----------
    path_or_model : str, path, bytes or onnx.ModelProto
        An untrusted file is checked before arrays are built: ``onnx.checker``, element
        types, shapes against ``hidden_size``, payload sizes, and bounds on every size.
    backend : str or namespace, default "numpy"
    dtype : optional
        Default: the file's (float16 is read as float32).

    Returns
    -------
    xlstm.LSTM
        ``n_x``, ``n_a``, ``num_layers``, ``bidirectional`` from the graph.

    Raises
    ------
    ValueError
        What an xlstm LSTM cannot express, named: peepholes (input ``P``), ``clip``,
        ``input_forget = 1``, activations other than Sigmoid, Tanh, Tanh, ``direction =
        "reverse"``, a fixed nonzero initial state, other ops (an output layer), weights that
        are graph inputs or external data; a malformed or inconsistent file.
    ImportError
        ``onnx`` is not installed.
    """
    from . import _onnx

    return _onnx.from_onnx(path_or_model, backend=backend, dtype=dtype)


__all__ += ["from_onnx", "to_onnx"]
