"""Weights from and to ``torch.nn.LSTM`` and Keras 3 ``LSTM`` layers (see :mod:`xlstm.convert`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from .._backend import get_namespace, to_host
from .._layout import GATE_PARAMETERS

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
    """``value`` as a floating NumPy array; what has no host values is refused by name."""
    if array_api_compat.is_torch_array(value):
        # Checked here, not left to torch: a meta tensor has no values (torch raises a bare
        # NotImplementedError) and NumPy has no bfloat16 (torch raises its own TypeError).
        if value.device.type == "meta":
            msg = (
                f"`{name}` is on the meta device: it has a shape but no values. Materialise "
                "the module first (module.to_empty(device='cpu'), then load its weights)"
            )
            raise ValueError(msg)
        if str(value.dtype) == "torch.bfloat16":
            msg = (
                f"`{name}` has dtype torch.bfloat16, which xlstm does not hold; convert the "
                "module first (module.float(), exact for bfloat16)"
            )
            raise TypeError(msg)
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

# Recurrent layers that are not an LSTM: their weights have the same names (torch) or the
# same roles (Keras), with 3 gate blocks (GRU) or 1 (plain RNN) instead of 4.
_OTHER_RNNS = {
    "GRU": "a GRU", "RNN": "a plain RNN", "SimpleRNN": "a SimpleRNN", "GRUCell": "a GRU cell",
    "RNNCell": "a plain RNN cell", "LSTMCell": "an LSTM cell (one step)",
    "SimpleRNNCell": "a SimpleRNN cell", "ConvLSTM1D": "a convolutional LSTM",
    "ConvLSTM2D": "a convolutional LSTM", "ConvLSTM3D": "a convolutional LSTM",
}  # fmt: skip


def _refuse_other_torch_rnn(module: Any) -> None:
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch.nn") and cls.__name__ == "LSTM":
            return
        if cls.__module__.startswith("torch.nn") and cls.__name__ in _OTHER_RNNS:
            msg = (
                f"`state_dict` is a torch.nn.{cls.__name__}: {_OTHER_RNNS[cls.__name__]}, not "
                "an LSTM (torch.nn.LSTM)"
            )
            raise TypeError(msg)


def _refuse_other_rnn_shapes(shape: tuple[int, ...], name: str, library: str) -> None:
    """``shape`` is a recurrent weight's ``(blocks n_a, n_a)`` (torch) or ``(n_a, blocks n_a)``."""
    if len(shape) != 2 or 0 in shape:
        return
    blocks = shape[0] / shape[1] if library == "torch.nn" else shape[1] / shape[0]
    kind = {3: "a GRU's (3 gate blocks)", 1: "a plain RNN's (no gates)"}.get(blocks)
    if kind is not None:
        msg = (
            f"{name} has shape {tuple(shape)}: these are {kind} weights, not an LSTM's "
            "(4 gate blocks)"
        )
        raise ValueError(msg)


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
        _refuse_other_torch_rnn(state_dict)
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

    # Every tensor read once, on the host (meta, bfloat16, non-floating refused by name), in
    # sorted key order so the first one named is the same from run to run.
    hosts = {
        key: np.ascontiguousarray(_host(f"state_dict[{key!r}]", state_dict[key]))
        for key in sorted(found.values())
    }  # contiguous: NumPy sources may be views with negative strides, which torch refuses

    def get(kind: str, layer: int, suffix: str) -> np.ndarray:
        key = f"{prefix}{kind}_l{layer}{suffix}"
        if (kind, layer, suffix) not in found:
            raise ValueError(f"`state_dict` is missing {key!r}")
        return hosts[key]

    # One dtype throughout, as a torch.nn.LSTM holds: a float32 weight_ih beside a float64
    # weight_hh would otherwise be cast silently.
    dtypes: dict[str, str] = {}
    for key, value in hosts.items():
        dtypes.setdefault(str(value.dtype), key)
    if len(dtypes) > 1:
        listed = ", ".join(f"{key!r} is {dtype}" for dtype, key in dtypes.items())
        msg = (
            f"`state_dict` mixes dtypes ({listed}); a torch.nn.LSTM holds one: convert it "
            "first (module.float() or module.double())"
        )
        raise TypeError(msg)
    first = get("weight_ih", 0, "")
    recurrent = get("weight_hh", 0, "")
    _refuse_other_rnn_shapes(
        recurrent.shape, f"`state_dict[{prefix + 'weight_hh_l0'!r}]`", "torch.nn"
    )
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
#
# A Keras layer is read through its config (``get_config()``) and its weights: every setting
# that changes what the layer computes is checked, and a layer xlstm does not compute the
# same way is refused naming the setting.  Settings that only shape training (initialisers,
# regularisers, constraints, dropout, which Keras applies in training only) or what is
# returned (return_sequences, return_state) or how (unroll, use_cudnn) are accepted.

_KERAS_REQUIRED = {"activation": "tanh", "recurrent_activation": "sigmoid", "stateful": False}
_KERAS_IGNORED = {
    "name", "trainable", "dtype", "return_sequences", "return_state", "unroll", "units",
    "use_bias", "kernel_initializer", "recurrent_initializer", "bias_initializer",
    "unit_forget_bias", "kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
    "activity_regularizer", "kernel_constraint", "recurrent_constraint", "bias_constraint",
    "dropout", "recurrent_dropout", "seed", "use_cudnn", "zero_output_for_mask", "go_backwards",
    "input_shape", "batch_input_shape", "time_major", "implementation",
}  # fmt: skip
_KERAS_FLOATS = ("float32", "float64")


def _is_keras_layer(value: Any) -> bool:
    return callable(getattr(value, "get_config", None)) and callable(
        getattr(value, "get_weights", None)
    )


def _keras_dtype(layer: Any, config: Mapping[str, Any], name: str) -> None:
    """The layer computes in its weights' dtype, float32 or float64 (no mixed precision)."""
    compute = getattr(layer, "compute_dtype", None)
    variable = getattr(layer, "variable_dtype", None)
    if compute is None:
        policy = config.get("dtype")
        if isinstance(policy, Mapping):
            policy = policy.get("config", {}).get("name")
        compute = variable = policy
    if compute is None:
        return
    if compute != variable or compute not in _KERAS_FLOATS:
        msg = (
            f"{name} computes in {compute} with {variable} weights (dtype policy); xlstm "
            "reproduces float32 or float64 layers only"
        )
        raise ValueError(msg)


def _check_keras_lstm(layer: Any, name: str, *, backward: bool = False) -> None:
    """Refuse, by setting, a Keras LSTM that computes something other than xlstm's LSTM."""
    kind = type(layer).__name__
    if kind in _OTHER_RNNS:
        raise TypeError(f"{name} is a Keras {kind}: {_OTHER_RNNS[kind]}, not an LSTM")
    if kind != "LSTM":
        raise TypeError(f"{name} is a {kind}; expected a keras.layers.LSTM")
    config = layer.get_config()
    different = [
        f"{key}={config[key]!r} (xlstm: {value!r})"
        for key, value in _KERAS_REQUIRED.items()
        if key in config and config[key] != value
    ]
    if bool(config.get("go_backwards", False)) != backward:
        # Inside Bidirectional the backward copy reads time reversed; that is xlstm's reverse
        # direction.  Alone, a layer reading time backwards is not an xlstm LSTM.
        different.append(f"go_backwards={config.get('go_backwards')!r} (xlstm: {backward!r})")
    unknown = sorted(set(config) - _KERAS_IGNORED - set(_KERAS_REQUIRED))
    different += [f"{key}={config[key]!r} (a setting xlstm does not know)" for key in unknown]
    if different:
        msg = f"{name} computes something xlstm's LSTM does not: {', '.join(different)}"
        raise ValueError(msg)
    _keras_dtype(layer, config, name)


def _keras_lstm_gates(layer: Any, name: str, *, backward: bool = False) -> dict[str, np.ndarray]:
    _check_keras_lstm(layer, name, backward=backward)
    weights = layer.get_weights()
    if not weights:
        raise ValueError(f"{name} has no weights yet: build it (call it on an input) first")
    expected = 3 if layer.get_config().get("use_bias", True) else 2
    if len(weights) != expected:
        msg = f"{name} has {len(weights)} weight arrays; a Keras LSTM has {expected}"
        raise ValueError(msg)
    return from_keras(weights)


def from_keras(
    weights: Any, *, xp: Any = "numpy", dtype: Any = None, device: Any = None
) -> dict[str, Any]:
    """One Keras 3 ``LSTM`` layer's weights as an xlstm gate dict.

    Parameters
    ----------
    weights : keras.layers.LSTM, list or mapping
        The layer itself (its settings are checked, see :func:`from_keras_layer`), or
        ``layer.get_weights()``: ``[kernel, recurrent_kernel, bias]`` (or without ``bias`` for
        ``use_bias=False``), or a mapping with those keys.  ``kernel (n_x, 4 n_a)``,
        ``recurrent_kernel (n_a, 4 n_a)``, ``bias (4 n_a,)``, columns in Keras's gate order i,
        f, c, o.  Bare weights cannot tell which activations the layer used: that is then the
        caller's to check.
    xp, dtype, device
        Where to put the result; ``dtype=None`` keeps the source dtype.

    Returns
    -------
    dict
        ``Wf, bf, Wi, bi, Wc, bc, Wo, bo`` (add ``Wy``, ``by`` for :func:`xlstm.lstm_forward`,
        or use it as one entry of ``layers`` in :func:`xlstm.layers.multilayer_forward`).

    Raises
    ------
    ValueError
        Misshapen weights; a GRU's or SimpleRNN's weights (3 or 1 gate blocks); a layer with
        a setting xlstm does not reproduce (named).
    TypeError
        Neither weights nor a Keras LSTM layer (a GRU layer is named as such; use
        :func:`from_keras_layer` for ``Bidirectional`` and ``Sequential``).
    """
    if _is_keras_layer(weights):
        kind = type(weights).__name__
        if kind in ("Bidirectional", "Sequential"):
            msg = (
                f"`weights` is a Keras {kind}, more than one LSTM layer: use "
                "xlstm.LSTM.from_keras or xlstm.convert.from_keras_layer"
            )
            raise TypeError(msg)
        host = _keras_lstm_gates(weights, "`weights`")
        return _place(host, xp, dtype, device)
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
            "`weights` must be a list or a dict of arrays (or a Keras LSTM layer), got "
            f"{type(weights).__name__}"
        )
    host = {key: _host(f"weights[{key!r}]", value) for key, value in given.items()}
    dtypes = sorted({str(array.dtype) for array in host.values()})
    if len(dtypes) > 1:
        raise TypeError(f"`weights` mixes dtypes {dtypes}; a Keras layer holds one")
    _refuse_other_rnn_shapes(host["recurrent_kernel"].shape, "`weights['recurrent_kernel']`", "")
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


def _keras_entries(layer: Any, name: str) -> tuple[list[dict[str, np.ndarray]], bool]:
    """One stack entry: an LSTM (one gate dict) or a Bidirectional(LSTM) (two)."""
    kind = type(layer).__name__
    if kind == "Bidirectional":
        merge = layer.get_config().get("merge_mode")
        if merge != "concat":
            msg = (
                f"{name} is a Bidirectional with merge_mode={merge!r}; xlstm concatenates the "
                "two directions (merge_mode='concat')"
            )
            raise ValueError(msg)
        _keras_dtype(layer, layer.get_config(), name)
        forward = _keras_lstm_gates(layer.forward_layer, f"{name}.forward_layer")
        backward = _keras_lstm_gates(layer.backward_layer, f"{name}.backward_layer", backward=True)
        return [forward, backward], True
    return [_keras_lstm_gates(layer, name)], False


def from_keras_layer(
    layer: Any, *, xp: Any = "numpy", dtype: Any = None, device: Any = None
) -> LSTMWeights:
    """A Keras 3 ``LSTM``, ``Bidirectional(LSTM)`` or ``Sequential`` of them, checked.

    Parameters
    ----------
    layer : keras.layers.LSTM, keras.layers.Bidirectional or keras.Sequential
        Built (with weights).  Each LSTM must compute what xlstm computes: ``activation="tanh"``,
        ``recurrent_activation="sigmoid"``, ``go_backwards=False`` (True only as the backward
        half of a ``Bidirectional``), ``stateful=False``, a float32 or float64 dtype policy;
        ``Bidirectional`` with ``merge_mode="concat"``; a ``Sequential`` of such layers only,
        each of one ``units`` and direction count.  Accepted as they do not change inference:
        initialisers, regularisers, constraints, ``dropout`` and ``recurrent_dropout`` (Keras
        applies them in training only; they are not carried over), ``return_sequences``,
        ``return_state``, ``unroll``, ``use_bias=False`` (zero bias).
    xp, dtype, device
        Where to put the result; ``dtype=None`` keeps the layer's.

    Returns
    -------
    LSTMWeights
        Layers in torch order (layer 0, layer 0 reverse, layer 1, ...).

    Raises
    ------
    ValueError
        A setting xlstm does not reproduce, named with the layer; layers of different sizes.
    TypeError
        A GRU, SimpleRNN or any other layer in the stack (named), or not a Keras layer.
    """
    if not _is_keras_layer(layer):
        msg = (
            f"`layer` must be a Keras LSTM, Bidirectional or Sequential, got {type(layer).__name__}"
        )
        raise TypeError(msg)
    kind = type(layer).__name__
    if kind == "Sequential":
        members = [
            (f"`layer.layers[{index}]` ({item.name!r})", item)
            for index, item in enumerate(layer.layers)
            if type(item).__name__ != "InputLayer"
        ]
        for label, item in members:
            if type(item).__name__ not in ("LSTM", "Bidirectional"):
                if type(item).__name__ in _OTHER_RNNS:
                    _check_keras_lstm(item, label)  # names the GRU / SimpleRNN
                msg = (
                    f"{label} is a {type(item).__name__}; xlstm.LSTM reads a Sequential of LSTM "
                    "and Bidirectional(LSTM) layers only"
                )
                raise TypeError(msg)
        if not members:
            raise ValueError("`layer` is a Sequential without layers")
    elif kind in ("LSTM", "Bidirectional") or kind in _OTHER_RNNS:
        members = [("`layer`", layer)]
    else:
        msg = f"`layer` is a Keras {kind}; expected an LSTM, a Bidirectional or a Sequential"
        raise TypeError(msg)
    entries, directions = [], set()
    for label, item in members:
        gates, bidirectional = _keras_entries(item, label)
        entries += gates
        directions.add(bidirectional)
    if len(directions) != 1:
        msg = "`layer` mixes Bidirectional and one-direction LSTM layers; xlstm.LSTM has one kind"
        raise ValueError(msg)
    bidirectional = directions.pop()
    n_a = int(entries[0]["Wf"].shape[0])
    n_x = int(entries[0]["Wf"].shape[1]) - n_a
    # to_torch checks that the layers chain (one n_a, inputs D n_a above the first).
    to_torch(entries, bidirectional=bidirectional)
    placed = [_place(gates, xp, dtype, device) for gates in entries]
    count = len(entries) // (2 if bidirectional else 1)
    return LSTMWeights(placed, count, bidirectional, n_x, n_a)


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


def to_keras_layer(weights: Any, *, return_sequences: bool = True) -> Any:
    """A built Keras 3 layer computing what ``weights`` compute (imports ``keras``).

    Parameters
    ----------
    weights : LSTMWeights or xlstm.LSTM
        Anything with ``layers``, ``bidirectional``, ``num_layers``, ``n_x``, ``n_a``.
    return_sequences : bool, default True
        Of the last layer (the ones below always return sequences).

    Returns
    -------
    keras.layers.LSTM, keras.layers.Bidirectional or keras.Sequential
        An ``LSTM`` for one layer and direction, ``Bidirectional(LSTM, merge_mode="concat")``
        for one bidirectional layer, a ``Sequential`` (with its ``Input``) for a stack; in the
        weights' dtype (float32 or float64).  Input ``(m, T, n_x)``, batch first.
    """
    import keras

    if not isinstance(return_sequences, bool):
        raise TypeError(f"`return_sequences` must be a bool, got {type(return_sequences).__name__}")
    layers, bidirectional = list(weights.layers), bool(weights.bidirectional)
    n_x, n_a, count = int(weights.n_x), int(weights.n_a), int(weights.num_layers)
    directions = 2 if bidirectional else 1
    arrays = [to_keras(gates) for gates in layers]
    dtype = str(arrays[0][0].dtype)
    if dtype not in _KERAS_FLOATS:
        raise TypeError(f"`weights` are {dtype}; Keras layers are made float32 or float64")
    built = []
    for number in range(count):
        last = number == count - 1
        lstm = keras.layers.LSTM(n_a, return_sequences=return_sequences or not last, dtype=dtype)
        layer = keras.layers.Bidirectional(lstm, merge_mode="concat", dtype=dtype) if (
            bidirectional
        ) else lstm  # fmt: skip
        layer.build((None, None, n_x if number == 0 else directions * n_a))
        layer.set_weights([a for d in range(directions) for a in arrays[number * directions + d]])
        built.append(layer)
    if count == 1:
        return built[0]
    return keras.Sequential([keras.Input((None, n_x), dtype=dtype), *built])


__all__ = [
    "KERAS_GATE_ORDER",
    "TORCH_GATE_ORDER",
    "LSTMWeights",
    "from_keras",
    "from_keras_layer",
    "from_torch",
    "to_keras",
    "to_keras_layer",
    "to_torch",
]
