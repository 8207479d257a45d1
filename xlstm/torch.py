r"""xlstm as a ``torch.nn.Module``: :class:`LSTM`, a drop-in for ``torch.nn.LSTM``.

Same constructor, parameters (names, shapes, gate order, initialisation), call and results as
``torch.nn.LSTM``, so a ``state_dict`` loads both ways; underneath, one
``torch.autograd.Function`` runs xlstm's engines forward and xlstm's hand-written
backpropagation through time (:func:`xlstm.layers.multilayer_backward`) backward.

Shape legend (torch's names and layouts)::

    T  time steps     input   (T, m, n_x)   or (m, T, n_x) with batch_first
    m  batch size     output  (T, m, D H)   or (m, T, D H)      D = 2 if bidirectional
    H  hidden size    h0, c0, h_n, c_n  (L D, m, H)            L = num_layers

Gate order of the weights: torch's (i, f, g, o) blocks of ``4 H`` rows
(:data:`xlstm.convert.weights.TORCH_GATE_ORDER`); xlstm's engines stack (i, f, o, g)
(:data:`xlstm.GATE_ORDER`) and the conversion between the two happens once per call here.

Where the arithmetic runs:

* CPU tensors: the tensors' memory seen as NumPy arrays (``Tensor.numpy()``, no copy; the
  feature-first views xlstm's layers take are transposes of torch's layouts, also free) and
  the fastest CPU engine (``engine="auto"``: numba when installed, else NumPy);
* CUDA tensors: the CuPy engine on the tensors' memory through DLPack, on torch's current
  CUDA stream (*unverified*: built and its plumbing tested on the CPU only).

Importing this module imports torch; ``import xlstm`` does not.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from xlstm._backend import get_namespace
from xlstm._engines.dispatch import engine_option
from xlstm._engines.lengths import check_lengths
from xlstm._layout import GATE_PARAMETERS
from xlstm.convert.weights import TORCH_GATE_ORDER
from xlstm.layers import multilayer_backward, multilayer_forward

_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- array bridges


class Bridge(NamedTuple):
    """How tensors of one device become arrays of an xlstm backend and back, without copies."""

    xp: Any
    """The array namespace xlstm runs on: NumPy's (CPU tensors) or CuPy's (CUDA tensors)."""
    to_array: Callable[[torch.Tensor], Any]
    from_array: Callable[[Any], torch.Tensor]
    stream: Callable[[], contextlib.AbstractContextManager]
    """Context in which xlstm runs: CuPy work goes on torch's current stream."""


def _numpy_view(tensor: torch.Tensor) -> np.ndarray:
    # detach(): numpy() refuses tensors that require grad; the memory is the same.
    return tensor.detach().numpy()


def _positive_strides(array: Any, xp: Any) -> Any:
    # torch has no negative strides (a reversed view): the one case that must copy.
    if any(stride < 0 for stride in array.strides):
        return xp.asarray(array, copy=True)
    return array


def cpu_bridge() -> Bridge:
    """CPU tensors as NumPy arrays (shared memory)."""
    xp = get_namespace("numpy")
    return Bridge(
        xp,
        _numpy_view,
        lambda array: torch.from_numpy(_positive_strides(array, np)),
        contextlib.nullcontext,
    )


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as error:
        msg = (
            "xlstm.torch.LSTM on CUDA tensors runs xlstm's CuPy engine: install the `cuda12` "
            "or `cuda13` extra (CuPy), or move the module and inputs to the CPU"
        )
        raise ImportError(msg) from error
    return cupy


def cuda_bridge(device: torch.device) -> Bridge:
    """CUDA tensors as CuPy arrays through DLPack, xlstm's kernels on torch's current stream.

    Raises
    ------
    ImportError
        CuPy is not installed (the message names the extra that installs it).
    """
    cupy = _import_cupy()
    xp = get_namespace(cupy)

    @contextlib.contextmanager
    def stream() -> Iterator[None]:
        # torch's current stream of the tensors' device, as CuPy's current stream: the
        # kernels queue behind torch's pending work and torch's later work behind them.
        pointer = torch.cuda.current_stream(device).cuda_stream
        with cupy.cuda.Device(device.index or 0), cupy.cuda.ExternalStream(pointer):
            yield

    def to_array(tensor: torch.Tensor) -> Any:
        if 0 in tensor.stride():  # an expanded gradient (``output.sum().backward()``)
            tensor = tensor.contiguous()
        return cupy.from_dlpack(tensor.detach())

    def from_array(array: Any) -> torch.Tensor:
        return torch.from_dlpack(_positive_strides(array, xp))

    return Bridge(xp, to_array, from_array, stream)


def bridge_for(device: torch.device) -> Bridge:
    """The bridge of a device: CPU through NumPy, CUDA through CuPy; others refused."""
    if device.type == "cpu":
        return cpu_bridge()
    if device.type == "cuda":
        return cuda_bridge(device)
    msg = f"xlstm.torch.LSTM runs on CPU and CUDA tensors; these are on {device.type!r}"
    raise ValueError(msg)


# --------------------------------------------------------------------------- weights


def gate_dicts(
    weights: list[Any], num_layers: int, directions: int, has_bias: bool, xp: Any
) -> list[dict[str, Any]]:
    """torch's flat weights (per layer and direction: ``w_ih, w_hh[, b_ih, b_hh]``) as
    xlstm's gate dicts ``Wf, bf, ...`` (``W* (H, H + n_in)``, columns [recurrent | input])."""
    per = 4 if has_bias else 2
    layers = []
    for index in range(num_layers * directions):
        w_ih, w_hh = weights[per * index], weights[per * index + 1]
        hidden = int(w_hh.shape[1])
        if has_bias:
            bias = weights[per * index + 2] + weights[per * index + 3]
        else:
            bias = xp.zeros((4 * hidden,), dtype=w_ih.dtype)
        layer = {}
        for block, gate in enumerate(TORCH_GATE_ORDER):
            rows = slice(block * hidden, (block + 1) * hidden)
            weight_key, bias_key = GATE_PARAMETERS[gate]
            layer[weight_key] = xp.concat([w_hh[rows, :], w_ih[rows, :]], axis=1)
            layer[bias_key] = xp.reshape(bias[rows], (hidden, 1))
        layers.append(layer)
    return layers


def torch_gradients(grads: dict[str, Any], hidden: int, has_bias: bool, xp: Any) -> list[Any]:
    """One layer's gradients ``dWf, ...`` in torch's order: ``d w_ih, d w_hh[, d b_ih, d b_hh]``."""
    d_w = [grads["d" + GATE_PARAMETERS[gate][0]] for gate in TORCH_GATE_ORDER]
    d_ih = xp.concat([block[:, hidden:] for block in d_w], axis=0)
    d_hh = xp.concat([block[:, :hidden] for block in d_w], axis=0)
    if not has_bias:
        return [d_ih, d_hh]
    d_b = [
        xp.reshape(grads["d" + GATE_PARAMETERS[gate][1]], (hidden,)) for gate in TORCH_GATE_ORDER
    ]
    d_bias = xp.concat(d_b, axis=0)
    # Two tensors: an optimiser or clipping that scales one .grad in place must not scale both.
    return [d_ih, d_hh, d_bias, xp.asarray(d_bias, copy=True)]


# --------------------------------------------------------------------------- autograd


class Setup(NamedTuple):
    """What one call of :class:`LSTMFunction` needs besides tensors."""

    bridge: Bridge
    num_layers: int
    bidirectional: bool
    has_bias: bool
    batch_first: bool
    lengths: np.ndarray | None
    dropout: float
    seed: int | None
    training: bool
    engine: str
    keep: bool
    """Keep what backward needs (autograd is recording and something requires grad)."""


def _feature_first(array: Any, batch_first: bool, xp: Any) -> Any:
    """torch's ``(T, m, n)`` / ``(m, T, n)`` as xlstm's ``(n, m, T)``: a view."""
    return xp.permute_dims(array, (2, 0, 1) if batch_first else (2, 1, 0))


def _torch_layout(array: Any, batch_first: bool, xp: Any) -> Any:
    """xlstm's ``(n, m, T)`` as torch's ``(T, m, n)`` / ``(m, T, n)``: a view."""
    return xp.permute_dims(array, (1, 2, 0) if batch_first else (2, 1, 0))


class LSTMFunction(torch.autograd.Function):
    """Forward: :func:`xlstm.layers.multilayer_forward`; backward: its hand-written BPTT.

    ``apply(setup, input, h0, c0, *weights)`` -> ``(output, h_n, c_n)``; ``h0``/``c0`` may
    be ``None`` (zeros); ``weights`` in torch's flat order.
    """

    @staticmethod
    def forward(ctx, setup: Setup, x, h0, c0, *weights):
        bridge = setup.bridge
        xp = bridge.xp
        directions = 2 if setup.bidirectional else 1
        with bridge.stream():
            arrays = [bridge.to_array(w) for w in weights]
            layers = gate_dicts(arrays, setup.num_layers, directions, setup.has_bias, xp)
            states = [
                None if s is None else xp.permute_dims(bridge.to_array(s), (0, 2, 1))
                for s in (h0, c0)
            ]
            outputs, (a_n, c_n), cache = multilayer_forward(
                _feature_first(bridge.to_array(x), setup.batch_first, xp),
                layers,
                num_layers=setup.num_layers,
                bidirectional=setup.bidirectional,
                lengths=setup.lengths,
                dropout=setup.dropout,
                seed=setup.seed,
                training=setup.training,
                a0=states[0],
                c0=states[1],
                xp=xp,
                engine=setup.engine,
                cache=setup.keep,
            )
            output = bridge.from_array(_torch_layout(outputs, setup.batch_first, xp))
            # (L D, n_a, m) -> torch's contiguous (L D, m, H): small, so copied.
            h_n = bridge.from_array(xp.permute_dims(a_n, (0, 2, 1))).contiguous()
            c_n = bridge.from_array(xp.permute_dims(c_n, (0, 2, 1))).contiguous()
        ctx.setup, ctx.cache = setup, cache
        # Saved so that autograd refuses a backward after any of them (the input, whose
        # memory xlstm's cache reads; the output, which may be the cache's memory) was
        # modified in place, instead of computing a wrong gradient.
        ctx.save_for_backward(x, output, *[t for t in (h0, c0) if t is not None], *weights)
        return output, h_n, c_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_output, d_h_n, d_c_n):
        setup, cache = ctx.setup, ctx.cache
        if cache is None:
            msg = (
                "xlstm.torch.LSTM kept nothing for backward: the forward pass ran with autograd "
                "off or with no tensor requiring grad"
            )
            raise RuntimeError(msg)
        ctx.saved_tensors  # noqa: B018 (raises if a saved tensor was modified in place)
        bridge = setup.bridge
        xp = bridge.xp
        with bridge.stream():
            grads = multilayer_backward(
                _feature_first(bridge.to_array(d_output), setup.batch_first, xp),
                cache,
                xp.permute_dims(bridge.to_array(d_h_n), (0, 2, 1)),
                xp.permute_dims(bridge.to_array(d_c_n), (0, 2, 1)),
                xp=xp,
            )
            hidden = cache.n_a
            d_weights = []
            for layer in grads["layers"]:
                d_weights += torch_gradients(layer, hidden, setup.has_bias, xp)
            d_x = bridge.from_array(_torch_layout(grads["dx"], setup.batch_first, xp))
            d_states = [
                bridge.from_array(xp.permute_dims(grads[k], (0, 2, 1))) for k in ("da0", "dc0")
            ]
            d_weights = [bridge.from_array(d) for d in d_weights]
        needs = ctx.needs_input_grad
        return (
            None,
            d_x if needs[1] else None,
            d_states[0] if needs[2] else None,
            d_states[1] if needs[3] else None,
            *[d if need else None for d, need in zip(d_weights, needs[4:], strict=True)],
        )


# --------------------------------------------------------------------------- module


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"`{name}` = {value}; expected >= {low}")
    return int(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}")
    return value


class LSTM(torch.nn.Module):
    r"""``torch.nn.LSTM`` whose forward and backward are xlstm's.

    .. math::

        i, f, o = \sigma(W_{i,f,o}[x_t; h_{t-1}] + b), \quad g = \tanh(W_g[x_t; h_{t-1}] + b),
        \quad c_t = f c_{t-1} + i g, \quad h_t = o \tanh(c_t)

    Parameters
    ----------
    input_size, hidden_size : int
        ``n_x`` and ``H``.
    num_layers : int, default 1
    bias : bool, default True
        ``False``: no bias parameters (the biases are zero and not trained).
    batch_first : bool, default False
        Input and output ``(m, T, n)`` instead of ``(T, m, n)`` (not ``h0``, ``h_n``).
    dropout : float in [0, 1), default 0
        Dropout on the outputs of every layer but the last, in training mode.  Masks are
        drawn from a seed taken from torch's default generator, so ``torch.manual_seed``
        reproduces them (they differ from ``torch.nn.LSTM``'s masks).
    bidirectional : bool, default False
    proj_size : int, default 0
        Only 0: projected LSTMs are not supported.
    device, dtype
        Of the parameters, as in torch (``float32`` or ``float64``).
    engine : str, default "auto"
        xlstm's engine (:func:`xlstm.resolve_engine`): ``"auto"`` runs the fastest the
        tensors' device has.

    Attributes
    ----------
    weight_ih_l{k}, weight_hh_l{k} : (4 H, n_in), (4 H, H)
    bias_ih_l{k}, bias_hh_l{k} : (4 H,)
        And their ``_reverse`` twins, gate blocks (i, f, g, o): torch's names, shapes,
        order and initialisation :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`.

    Notes
    -----
    Call ``lstm(input, (h0, c0))`` -> ``(output, (h_n, c_n))`` as ``torch.nn.LSTM``:

    * ``input`` ``(T, m, n_x)`` (``(m, T, n_x)`` with ``batch_first``), unbatched
      ``(T, n_x)``, or a ``PackedSequence`` (then ``output`` is one too, packed as the
      input was);
    * ``lengths=`` (keyword, one per sequence, ``1 <= lengths[j] <= T``): a right-padded
      batch; outputs past each end are zero and ``h_n``, ``c_n`` are each sequence's last
      states, as with a ``PackedSequence``;
    * ``h0``, ``c0`` ``(L D, m, H)``, default zeros.

    The output of a CPU call shares memory with what backward reads: modifying it in place
    makes a later backward raise (as torch's saved-tensor check does), never compute wrongly.
    With ``batch_first`` the output is a transposed view of a time-major array.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: Any = None,
        *,
        engine: str = "auto",
    ) -> None:
        super().__init__()
        from xlstm._validation import check_dropout

        self.input_size = _check_int("input_size", input_size, 1)
        self.hidden_size = _check_int("hidden_size", hidden_size, 1)
        self.num_layers = _check_int("num_layers", num_layers, 1)
        self.bias = _check_bool("bias", bias)
        self.batch_first = _check_bool("batch_first", batch_first)
        self.dropout = float(check_dropout(dropout))
        self.bidirectional = _check_bool("bidirectional", bidirectional)
        if isinstance(proj_size, bool) or proj_size != 0:
            msg = (
                f"`proj_size` = {proj_size!r}: xlstm.torch.LSTM has no projected hidden state; "
                "use proj_size=0 (or torch.nn.LSTM)"
            )
            raise ValueError(msg)
        self.proj_size = 0
        engine_option(engine)  # a bad name fails here, not at the first call
        self.engine = engine
        if dtype is None:
            dtype = torch.get_default_dtype()
        if dtype not in _DTYPES:
            raise TypeError(f"`dtype` = {dtype}; expected torch.float32 or torch.float64")
        factory = {"device": device, "dtype": dtype}
        directions = 2 if self.bidirectional else 1
        names = []
        for layer in range(self.num_layers):
            n_in = self.input_size if layer == 0 else directions * self.hidden_size
            for suffix in ("", "_reverse")[:directions]:
                shapes = {
                    "weight_ih": (4 * self.hidden_size, n_in),
                    "weight_hh": (4 * self.hidden_size, self.hidden_size),
                }
                if self.bias:
                    shapes["bias_ih"] = shapes["bias_hh"] = (4 * self.hidden_size,)
                for kind, shape in shapes.items():
                    name = f"{kind}_l{layer}{suffix}"
                    self.register_parameter(name, torch.nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name)
        self._flat_weights_names = names
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.LSTM's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            torch.nn.init.uniform_(weight, -bound, bound)

    @property
    def all_weights(self) -> list[list[torch.nn.Parameter]]:
        """Per layer and direction: ``[w_ih, w_hh(, b_ih, b_hh)]``, as torch.nn.LSTM's."""
        per = 4 if self.bias else 2
        flat = [getattr(self, name) for name in self._flat_weights_names]
        return [flat[k : k + per] for k in range(0, len(flat), per)]

    def flatten_parameters(self) -> None:
        """Nothing to do (torch.nn.LSTM compacts its weights for cuDNN; xlstm reads them as
        they are): kept so that code written for torch.nn.LSTM runs unchanged."""

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("bidirectional", False)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        if self.dropout:
            text += f", dropout={self.dropout}"
        if self.engine != "auto":
            text += f", engine={self.engine!r}"
        return text

    def _check_state(self, name: str, value: Any, m: int, batched: bool, like: torch.Tensor):
        if value is None:
            return None
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
        count = self.num_layers * (2 if self.bidirectional else 1)
        expected = (count, m, self.hidden_size) if batched else (count, self.hidden_size)
        if tuple(value.shape) != expected:
            legend = "(num_layers * D, m, H)" if batched else "(num_layers * D, H) (unbatched)"
            msg = f"`{name}` has shape {tuple(value.shape)}; expected {legend} = {expected}"
            raise ValueError(msg)
        if value.dtype != like.dtype or value.device != like.device:
            msg = (
                f"`{name}` is {value.dtype} on {value.device}; expected the input's "
                f"{like.dtype} on {like.device}"
            )
            raise TypeError(msg)
        return value if batched else value.unsqueeze(1)

    def forward(self, input, hx=None, *, lengths=None):
        """Run the LSTM: ``(input, (h0, c0))`` -> ``(output, (h_n, c_n))`` (see the class)."""
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise TypeError("`lengths` with a PackedSequence input: it carries its lengths")
            padded, host_lengths = pad_packed_sequence(input)
            batch_first, batched = False, True
        else:
            if not isinstance(input, torch.Tensor):
                kind = type(input).__name__
                msg = f"`input` must be a torch.Tensor or a PackedSequence, got {kind}"
                raise TypeError(msg)
            if input.dim() not in (2, 3):
                msg = (
                    f"`input` must be 3-D (T, m, n_x) (or 2-D unbatched), got {tuple(input.shape)}"
                )
                raise ValueError(msg)
            batched = input.dim() == 3
            padded = input if batched else input.unsqueeze(1)
            batch_first = self.batch_first and batched
            host_lengths = lengths
        if padded.dtype not in _DTYPES:
            raise TypeError(f"`input` has dtype {padded.dtype}; expected float32 or float64")
        weights = [getattr(self, name) for name in self._flat_weights_names]
        if padded.dtype != weights[0].dtype or padded.device != weights[0].device:
            msg = (
                f"`input` is {padded.dtype} on {padded.device} but the parameters are "
                f"{weights[0].dtype} on {weights[0].device}; move one with .to()"
            )
            raise TypeError(msg)
        if padded.shape[-1] != self.input_size:
            msg = (
                f"`input` has {padded.shape[-1]} features; expected input_size = {self.input_size}"
            )
            raise ValueError(msg)
        m = int(padded.shape[0] if batch_first else padded.shape[1])
        t_x = int(padded.shape[1] if batch_first else padded.shape[0])
        if hx is None:
            h0 = c0 = None
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("`hx` must be a tuple (h0, c0) of tensors")
            h0 = self._check_state("h0", hx[0], m, batched, padded)
            c0 = self._check_state("c0", hx[1], m, batched, padded)
        if packed:
            checked = host_lengths.numpy().astype(np.int64)
            checked = None if np.all(checked == t_x) else checked
        else:
            checked = check_lengths(host_lengths, m, t_x)
        keep = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (padded, h0, c0, *weights)
        )
        seed = None
        if self.training and self.dropout > 0.0 and self.num_layers > 1:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        setup = Setup(
            bridge_for(padded.device),
            self.num_layers,
            self.bidirectional,
            self.bias,
            batch_first,
            checked,
            self.dropout,
            seed,
            self.training,
            self.engine,
            keep,
        )
        output, h_n, c_n = LSTMFunction.apply(setup, padded, h0, c0, *weights)
        if packed:
            output = _pack_like(output, host_lengths, input)
        elif not batched:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)


def _pack_like(output: torch.Tensor, lengths: torch.Tensor, like: PackedSequence):
    """``output (T, m, n)`` packed with ``like``'s batch sizes and sorting."""
    if like.sorted_indices is None:
        return pack_padded_sequence(output, lengths, enforce_sorted=True)
    ordered = output.index_select(1, like.sorted_indices)
    data = pack_padded_sequence(ordered, lengths[like.sorted_indices.cpu()], enforce_sorted=True)
    return PackedSequence(data.data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


__all__ = ["LSTM", "LSTMFunction"]
