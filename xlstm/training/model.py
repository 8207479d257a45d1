"""Training models: :class:`LSTMModel` and :class:`CharLSTM`, built on :class:`xlstm.LSTM`.

A model holds an ``num_layers``-deep :class:`xlstm.LSTM` (its recurrent part), a softmax
output layer, an optimiser and the optimiser's state.  One key scheme for everything:
the parameter dict has the LSTM's flat keys (``Wf_l0, bf_l0, ..., Wf_l1, ...``) and the
output layer's ``Wy``, ``by``; gradients are ``"d" + key``.  The arrays are never modified
in place; a training step replaces the model's dict with new arrays.

Shape legend: ``x (n_x, m, T)``, integer ``ids`` and ``targets (m, T)``, ``y (n_y, m, T)``.
States: ``a, c (n_a, m)`` for one layer (the seed's), ``(num_layers, n_a, m)`` for more.
Gate order :data:`xlstm.GATE_ORDER` = (i, f, o, g).

One layer runs the seed-compatible functions (:func:`xlstm.training.loss_and_gradients`,
with the NumPy output-layer fast path); more layers run :func:`xlstm.layers.multilayer_forward`
/ :func:`~xlstm.layers.multilayer_backward` with dropout between layers in training steps.

Truncated backpropagation through time: :meth:`LSTMModel.train_step` takes and returns the
state; pass each chunk's final state to the next chunk of the same streams (see
:func:`xlstm.training.data.tbptt_batches`).  Gradients stop at the chunk boundary.

Checkpoints are :mod:`xlstm.checkpoint` files (:meth:`LSTMModel.save`, :func:`load_model`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np

from .. import checkpoint
from .._backend import backend_name, get_namespace, namespace_of, to_backend, to_host
from .._engines.dispatch import engine_option
from .._layout import GATE_KEYS, GATE_ORDER, OUTPUT_KEYS, PARAMETER_KEYS, layer_key
from .._validation import check_dropout, check_seed, check_size
from ..activations import _softmax, softmax
from ..cell import lstm_cell_forward
from ..layers import multilayer_backward, multilayer_forward
from ..model import LSTM
from ..parameters import init_parameters
from ..sequence import lstm_forward
from .loss import (
    _one_hot,
    loss_and_gradients,
    output_backward,
    output_forward,
    sequence_loss,
    softmax_cross_entropy,
)
from .optim import Adam, Optimizer, clip_by_global_norm, optimizer_from_config

CheckpointError = checkpoint.CheckpointError


def _seed_keys(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A one-layer model's dict under the seed's keys (``Wf, ..., Wy, by``)."""
    return {
        key: parameters[layer_key(key, 0) if key in GATE_KEYS else key] for key in PARAMETER_KEYS
    }


def _model_keys(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's one-layer dict under the model's keys (``Wf_l0, ..., Wy, by``)."""
    return {
        (layer_key(key, 0) if key in GATE_KEYS else key): parameters[key] for key in PARAMETER_KEYS
    }


class LSTMModel:
    """An ``num_layers``-deep LSTM with a softmax output layer, its optimiser and its state.

    Parameters
    ----------
    n_x, n_a, n_y : int
        Inputs, hidden units, output classes.
    num_layers : int, default 1
    dropout : float in [0, 1), default 0
        Dropout on the input of every layer but the first, in training steps only.
    backend : str or namespace, optional
        ``"numpy"`` (default), ``"cupy"``, ``"torch"``, ``"jax"``, ``"array_api_strict"``;
        with ``parameters``, theirs.
    device : optional
        In the backend's terms (``"cuda:0"`` for torch).  Default: the backend's default.
    dtype : {"float32", "float64"}, optional
        Default ``"float32"``; with ``parameters``, theirs.
    seed : int, optional
        Seed of the initialisation (:func:`xlstm.init_parameters`, layer by layer) and of
        the dropout masks: same numbers on every backend.
    optimizer : Optimizer, optional
        Default ``Adam(lr=2e-3)``.
    clip_norm : float or None, default 5.0
        Clip gradients by global norm before each update (``None``: no clipping).
    engine : {"auto", "generic", "numpy", "numba", "cupy"}, default "auto"
        Engine of the recurrence, as in :func:`xlstm.lstm_forward` (``fused=`` is its alias).
    parameters : dict, optional
        Start from these arrays instead of a fresh initialisation: the model's keys
        (``Wf_l0, ..., Wy, by``), or for one layer the seed's (``Wf, ..., Wy, by``).  They
        fix backend, device, dtype and sizes, which must then agree.

    Attributes
    ----------
    parameters : dict
        The model's parameter dict (a new dict after every step; arrays never change).
    optimizer, opt_state
        The optimiser and its explicit state (``None`` until the first step).
    extra : dict
        JSON-serialisable data saved with the model (e.g. training progress).
    """

    kind = "LSTMModel"

    def __init__(
        self,
        n_x: int,
        n_a: int,
        n_y: int,
        *,
        num_layers: int = 1,
        dropout: float = 0.0,
        backend: Any = None,
        device: Any = None,
        dtype: Any = None,
        seed: Any = None,
        optimizer: Optimizer | None = None,
        clip_norm: float | None = 5.0,
        engine: str = "auto",
        fused: Any = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.n_x, self.n_a, self.n_y = (
            check_size(k, v) for k, v in (("n_x", n_x), ("n_a", n_a), ("n_y", n_y))
        )
        self.num_layers = check_size("num_layers", num_layers)
        self.dropout = check_dropout(dropout)
        self.engine = engine_option(engine, fused)
        init_seed, dropout_seed = np.random.SeedSequence(check_seed(seed)).spawn(2)
        self._dropout_rng = np.random.default_rng(dropout_seed)
        if parameters is None:
            parameters = self._initial_parameters(backend, device, dtype, seed, init_seed)
        else:
            parameters = self._check_given_parameters(parameters, backend, dtype)
        self._parameters = parameters
        self.xp = namespace_of(self._parameters)
        if optimizer is None:
            optimizer = Adam(lr=2e-3)
        if not isinstance(optimizer, Optimizer):
            msg = f"`optimizer` must be an xlstm.training Optimizer, got {type(optimizer).__name__}"
            raise TypeError(msg)
        if clip_norm is not None and not (
            isinstance(clip_norm, (int, float, np.integer, np.floating))
            and not isinstance(clip_norm, bool)
            and 0 < clip_norm < float("inf")
        ):
            raise ValueError(f"`clip_norm` = {clip_norm!r}; expected a positive number or None")
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.opt_state: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}

    def _initial_parameters(self, backend, device, dtype, seed, init_seed) -> dict[str, Any]:
        options = {
            "xp": "numpy" if backend is None else backend,
            "dtype": "float32" if dtype is None else dtype,
            "device": device,
        }
        # Layer 0 and the output layer as the seed's init_parameters makes them (a one-layer
        # model is what it always was); deeper layers from the same generator.
        rng = seed if self.num_layers == 1 else np.random.default_rng(init_seed)
        first = init_parameters(self.n_x, self.n_a, self.n_y, seed=rng, **options)
        parameters = _model_keys(first)
        for layer in range(1, self.num_layers):
            deeper = init_parameters(self.n_a, self.n_a, 1, seed=rng, **options)
            parameters.update({layer_key(key, layer): deeper[key] for key in GATE_KEYS})
        return {key: parameters[key] for key in self.parameter_keys()}

    def parameter_keys(self) -> list[str]:
        """The model's keys: the LSTM's (``torch.nn.LSTM`` order), then ``Wy``, ``by``."""
        gates = checkpoint.parameter_shapes(self.n_x, self.n_a, self.num_layers, False)
        return [*gates, *OUTPUT_KEYS]

    def _check_given_parameters(self, parameters, backend, dtype) -> dict[str, Any]:
        if not isinstance(parameters, Mapping):
            raise TypeError(
                f"`parameters` must be a dict of arrays, got {type(parameters).__name__}"
            )
        if self.num_layers == 1 and "Wf" in parameters:
            parameters = _model_keys(parameters)
        expected = checkpoint.parameter_shapes(self.n_x, self.n_a, self.num_layers, False, self.n_y)
        missing = [key for key in expected if key not in parameters]
        if missing:
            raise ValueError(
                f"`parameters` is missing {missing[0]!r} (and {len(missing) - 1} more)"
            )
        extra = sorted(set(parameters) - set(expected))
        if extra:
            raise ValueError(f"`parameters` has an unexpected key {extra[0]!r}")
        xp = namespace_of({f"parameters[{k!r}]": parameters[k] for k in expected})
        for key, shape in expected.items():
            got = tuple(int(s) for s in parameters[key].shape)
            if got != shape:
                msg = (
                    f"`parameters[{key!r}]` has shape {got}; expected {shape} for sizes "
                    f"(n_x, n_a, n_y) = {(self.n_x, self.n_a, self.n_y)}"
                )
                raise ValueError(msg)
        if backend is not None and get_namespace(backend) is not xp:
            msg = f"`parameters` are {backend_name(xp)} arrays but `backend` = {backend!r}"
            raise TypeError(msg)
        found = parameters[next(iter(expected))].dtype
        if dtype is not None and checkpoint.dtype_name(found) != checkpoint.dtype_name(dtype):
            msg = f"`parameters` have dtype {found} but `dtype` = {dtype!r}"
            raise TypeError(msg)
        return {key: parameters[key] for key in expected}

    # ------------------------------------------------------------------ properties

    @property
    def parameters(self) -> dict[str, Any]:
        """A new dict of the current parameter arrays (do not modify the arrays in place)."""
        return dict(self._parameters)

    @property
    def lstm(self) -> LSTM:
        """The recurrent part as an :class:`xlstm.LSTM` (sharing the current arrays)."""
        gates = {key: value for key, value in self._parameters.items() if key not in OUTPUT_KEYS}
        return LSTM(
            self.n_x, self.n_a, num_layers=self.num_layers, dropout=self.dropout,
            engine=self.engine, parameters=gates,
        )  # fmt: skip

    def _layers(self) -> list[dict[str, Any]]:
        """The gate parameters as :func:`~xlstm.layers.multilayer_forward`'s ``layers``."""
        return [
            {key: self._parameters[layer_key(key, layer)] for key in GATE_KEYS}
            for layer in range(self.num_layers)
        ]

    @property
    def backend(self) -> str:
        """Backend name: ``"numpy"``, ``"torch"``, ..."""
        return backend_name(self.xp)

    @property
    def device(self) -> Any:
        return array_api_compat.device(self._parameters["Wy"])

    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"float64"``."""
        return checkpoint.dtype_name(self._parameters["Wy"].dtype)

    @property
    def step(self) -> int:
        """Optimiser steps taken so far."""
        return 0 if self.opt_state is None else int(self.opt_state["step"])

    def config(self) -> dict[str, Any]:
        """Sizes, layers, dtype and gate order (what a checkpoint's ``meta`` records)."""
        return {
            "n_x": self.n_x,
            "n_a": self.n_a,
            "n_y": self.n_y,
            "num_layers": self.num_layers,
            "bidirectional": False,
            "dropout": self.dropout,
            "dtype": self.dtype,
            "gate_order": list(GATE_ORDER),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_x={self.n_x}, n_a={self.n_a}, n_y={self.n_y}, "
            f"num_layers={self.num_layers}, backend={self.backend!r}, dtype={self.dtype!r}, "
            f"step={self.step})"
        )

    # ------------------------------------------------------------------ computing

    def inputs(self, x: Any) -> Any:
        """``x`` as the model's ``(n_x, m, T)`` input array.

        Integer ``(m, T)`` ids (a NumPy array or one of the model's backend) become one-hot
        columns; ids outside ``[0, n_x)`` are a ``ValueError``.  A floating
        ``(n_x, m, T)`` array passes through (a NumPy one moves to the model's backend).
        """
        moves = isinstance(x, np.ndarray) and (
            np.issubdtype(x.dtype, np.integer) or self.backend != "numpy"
        )
        if moves:
            x = self.xp.asarray(np.ascontiguousarray(x), device=self.device)
        if array_api_compat.is_array_api_obj(x) and self.xp.isdtype(x.dtype, "integral"):
            if x.ndim != 2:
                raise ValueError(
                    f"integer `x` must be ids of shape (m, T), got shape {tuple(x.shape)}"
                )
            if x.shape[0] * x.shape[1] and not bool(self.xp.all((x >= 0) & (x < self.n_x))):
                raise ValueError(f"integer `x` holds ids outside [0, n_x) = [0, {self.n_x})")
            # One-hot built time-major (T, m, n_x) and viewed as (n_x, m, T): the engine's
            # time-major reads are then contiguous.
            hot = _one_hot(
                self.xp.permute_dims(x, (1, 0)), self.n_x, -1, self._parameters["Wy"].dtype, self.xp
            )
            return self.xp.permute_dims(hot, (2, 1, 0))
        return x

    def _targets(self, targets: Any) -> Any:
        if isinstance(targets, np.ndarray):
            return self.xp.asarray(np.ascontiguousarray(targets), device=self.device)
        return targets

    def _state(self, state: Any) -> tuple[Any, Any]:
        if state is None:
            return None, None
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError("`state` must be None or the (a, c) tuple a previous call returned")
        return state

    def forward(self, x: Any, state: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """Softmax outputs ``y (n_y, m, T)`` and the final state (inference: no dropout)."""
        x = self.inputs(x)
        a0, c0 = self._state(state)
        if self.num_layers == 1:
            if a0 is None:
                a0 = self.xp.zeros((self.n_a, int(x.shape[1])), dtype=x.dtype, device=self.device)
            a, y, c, _ = lstm_forward(
                x, a0, _seed_keys(self._parameters), c0, engine=self.engine, cache=False
            )
            last = (a[:, :, -1], c[:, :, -1])
            return y, tuple(self.xp.asarray(v, copy=True) for v in last)
        outputs, final, _ = multilayer_forward(
            x, self._layers(), training=False, a0=a0, c0=c0, engine=self.engine, cache=False
        )
        logits = output_forward(outputs, self._parameters["Wy"], self._parameters["by"])
        return _softmax(logits, 0, self.xp), final

    def loss(self, x: Any, targets: Any, *, mask: Any = None, state: Any = None):
        """Mean cross-entropy (no gradients): returns ``(loss, state)``."""
        a0, c0 = self._state(state)
        x, targets, mask = self.inputs(x), self._targets(targets), self._targets(mask)
        if self.num_layers == 1:
            return sequence_loss(
                x, targets, _seed_keys(self._parameters), a0, c0, mask, engine=self.engine
            )
        outputs, final, _ = multilayer_forward(
            x, self._layers(), training=False, a0=a0, c0=c0, engine=self.engine, cache=False
        )
        logits = output_forward(outputs, self._parameters["Wy"], self._parameters["by"])
        loss, _ = softmax_cross_entropy(logits, targets, mask)
        return loss, final

    def loss_and_gradients(self, x: Any, targets: Any, *, mask: Any = None, state: Any = None):
        """``(loss, grads, state)``: the batch's cross-entropy and every parameter's gradient.

        Gradients have the keys ``"d" + key`` of :attr:`parameters`.  A training pass:
        dropout (if any) is on.
        """
        a0, c0 = self._state(state)
        x, targets, mask = self.inputs(x), self._targets(targets), self._targets(mask)
        if self.num_layers == 1:
            loss, grads, final = loss_and_gradients(
                x, targets, _seed_keys(self._parameters), a0, c0, mask, engine=self.engine
            )
            return (
                loss,
                {"d" + k: v for k, v in _model_keys({k[1:]: v for k, v in grads.items()}).items()},
                final,
            )
        outputs, final, cache = multilayer_forward(
            x, self._layers(), dropout=self.dropout, seed=self._dropout_rng, training=True,
            a0=a0, c0=c0, engine=self.engine,
        )  # fmt: skip
        Wy = self._parameters["Wy"]
        logits = output_forward(outputs, Wy, self._parameters["by"])
        loss, dlogits = softmax_cross_entropy(logits, targets, mask)
        d_outputs, dWy, dby = output_backward(dlogits, outputs, Wy)
        layer_grads = multilayer_backward(d_outputs, cache)["layers"]
        grads = {}
        for index, gates in enumerate(layer_grads):
            grads.update({"d" + layer_key(key, index): gates["d" + key] for key in GATE_KEYS})
        grads["dWy"], grads["dby"] = dWy, dby
        # Copies: carrying the state to the next chunk keeps no engine buffer alive.
        final = tuple(self.xp.asarray(v, copy=True) for v in final)
        return loss, grads, final

    def apply_gradients(self, grads: Mapping[str, Any]) -> Any:
        """Clip (if ``clip_norm``) and take one optimiser step.  Returns the gradient norm
        before clipping (a 0-d array), or ``None`` without clipping."""
        norm = None
        if self.clip_norm is not None:
            grads, norm = clip_by_global_norm(grads, self.clip_norm)
        if self.opt_state is None:
            self.opt_state = self.optimizer.init(self._parameters)
        self._parameters, self.opt_state = self.optimizer.update(
            self._parameters, grads, self.opt_state
        )
        return norm

    def train_step(
        self, x: Any, targets: Any, *, mask: Any = None, state: Any = None
    ) -> tuple[Any, tuple[Any, Any]]:
        """One update on a batch.  Returns ``(loss, state)``: the loss before the update
        (0-d array) and the final ``(a, c)`` to carry into the next chunk."""
        loss, grads, final = self.loss_and_gradients(x, targets, mask=mask, state=state)
        self.apply_gradients(grads)
        return loss, final

    # ------------------------------------------------------------------ moving, saving

    def _copy_to(self, backend: Any, device: Any) -> LSTMModel:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._parameters = to_backend(self._parameters, backend, device=device)
        clone.xp = get_namespace(backend)
        clone.extra = json.loads(json.dumps(self.extra))
        if self.opt_state is not None:
            clone.opt_state = {
                key: (
                    to_backend(value, backend, device=device)
                    if isinstance(value, Mapping)
                    else value
                )
                for key, value in self.opt_state.items()
            }
        return clone

    def to(self, backend: Any, *, device: Any = None) -> LSTMModel:
        """A copy of the model (parameters and optimiser state) on another backend/device.

        The model itself is left as it is.
        """
        return self._copy_to(backend, device)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a ``.npz`` checkpoint atomically (:mod:`xlstm.checkpoint`); returns its path.

        ``".npz"`` is appended when ``path`` has no suffix.
        """
        meta = {
            "class": self.kind,
            **self.config(),
            "clip_norm": self.clip_norm,
            "optimizer": self.optimizer.config(),
            "opt_step": None if self.opt_state is None else int(self.opt_state["step"]),
            "extra": self.extra,
        }
        arrays = {f"param/{k}": to_host(v) for k, v in self._parameters.items()}
        if self.opt_state is not None:
            for slot, buffers in self.opt_state.items():
                if isinstance(buffers, Mapping):
                    arrays.update({f"opt/{slot}/{k}": to_host(v) for k, v in buffers.items()})
        return checkpoint.write(path, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: Any = None, device: Any = None) -> LSTMModel:
        """Load a checkpoint onto ``backend`` (default: NumPy) and ``device``.

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            The file is not a readable xlstm checkpoint, or its contents disagree with each
            other (sizes, dtype, gate order, class); nothing is loaded.
        """
        model = load_model(path, backend=backend, device=device)
        if not isinstance(model, cls):
            msg = f"`path` {str(path)!r} holds a {type(model).__name__}, not a {cls.__name__}"
            raise ValueError(msg)
        return model


class CharLSTM(LSTMModel):
    """A character-level language model: ``n_x = n_y = len(vocab)``, one-hot inputs.

    Parameters
    ----------
    vocab : str
        The distinct characters, in id order (``sorted(set(text))`` is the usual choice).
    n_a : int, default 128
    **options
        As :class:`LSTMModel` (num_layers, dropout, backend, device, dtype, seed, optimizer,
        clip_norm, engine, ...).
    """

    kind = "CharLSTM"

    def __init__(self, vocab: str, n_a: int = 128, **options: Any) -> None:
        if not isinstance(vocab, str):
            raise TypeError(
                f"`vocab` must be a str of distinct characters, got {type(vocab).__name__}"
            )
        if not vocab or len(set(vocab)) != len(vocab):
            raise ValueError("`vocab` must be a non-empty string of distinct characters")
        super().__init__(len(vocab), n_a, len(vocab), **options)
        self.vocab = vocab
        self._index = {ch: i for i, ch in enumerate(vocab)}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "vocab": self.vocab}

    def encode(self, text: str) -> np.ndarray:
        """Character ids of ``text`` (int64 NumPy array); unknown characters are an error."""
        try:
            return np.fromiter((self._index[ch] for ch in text), dtype=np.int64, count=len(text))
        except KeyError as error:
            raise ValueError(
                f"`text` holds {error.args[0]!r}, which is not in the vocabulary"
            ) from None

    def decode(self, ids: Any) -> str:
        """The text of a sequence of ids (any shape, read in C order).

        Raises
        ------
        TypeError
            ``ids`` are not integers.
        ValueError
            An id is outside ``[0, n_x)`` (a negative id is not counted from the end).
        """
        host = to_host(ids) if array_api_compat.is_array_api_obj(ids) else np.asarray(ids)
        flat = host.reshape(-1)
        if flat.size == 0:
            return ""
        if not np.issubdtype(flat.dtype, np.integer):
            raise TypeError(f"`ids` must be integer character ids, got dtype {flat.dtype}")
        bad = np.flatnonzero((flat < 0) | (flat >= self.n_x))
        if bad.size:
            where = int(bad[0])
            msg = (
                f"`ids` holds {int(flat[where])} (at flat position {where}); character ids are "
                f"in [0, {self.n_x}) for this vocabulary of {self.n_x}"
            )
            raise ValueError(msg)
        return "".join(self.vocab[i] for i in flat.tolist())

    def sample(
        self, length: int, *, prime: str = "", temperature: float = 1.0, seed: Any = None
    ) -> str:
        """Generate ``length`` characters after ``prime``.

        One character at a time through every layer with :func:`xlstm.lstm_cell_forward`
        on a NumPy float64 copy of the parameters (one character is latency-bound, and the
        host draws the random numbers anyway), so the text for a given seed is the same on
        every backend.
        """
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"`length` = {length!r}; expected a non-negative int")
        if isinstance(temperature, (bool, np.bool_)) or not isinstance(
            temperature, (int, float, np.integer, np.floating)
        ):
            kind = type(temperature).__name__
            raise TypeError(
                f"`temperature` must be a positive number, got {temperature!r} ({kind})"
            )
        if not temperature > 0 or not np.isfinite(temperature):
            raise ValueError(f"`temperature` = {temperature!r}; expected a positive number")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        host = {k: to_host(v).astype(np.float64) for k, v in self._parameters.items()}
        layers = [
            {
                **{key: host[layer_key(key, layer)] for key in GATE_KEYS},
                # lstm_cell_forward also computes an output layer: the last layer's is ours.
                "Wy": host["Wy"] if layer == self.num_layers - 1 else np.zeros((1, self.n_a)),
                "by": host["by"] if layer == self.num_layers - 1 else np.zeros((1, 1)),
            }
            for layer in range(self.num_layers)
        ]
        states = [(np.zeros((self.n_a, 1)), np.zeros((self.n_a, 1))) for _ in layers]
        eye = np.eye(self.n_x)

        def step(index: int) -> np.ndarray:
            inputs = eye[:, index : index + 1]
            for layer, parameters in enumerate(layers):
                a, c = states[layer]
                a, c, _, _ = lstm_cell_forward(inputs, a, c, parameters)
                states[layer] = (a, c)
                inputs = a
            logits = (host["Wy"] @ inputs[:, 0] + host["by"][:, 0]) / temperature
            return softmax(logits, xp=np)

        prime_ids = self.encode(prime) if prime else [int(rng.integers(self.n_x))]
        for index in prime_ids[:-1]:
            step(int(index))
        current = int(prime_ids[-1])
        out = []
        for _ in range(int(length)):
            probs = step(current)
            current = int(rng.choice(self.n_y, p=probs))
            out.append(self.vocab[current])
        return (prime if prime else "") + "".join(out)


# ---------------------------------------------------------------------- loading

_CLASSES = {"LSTMModel": LSTMModel, "CharLSTM": CharLSTM}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a training model's checkpoint: ``(meta, arrays)`` (NumPy arrays).

    Every check of :func:`load_model` happens here, before anything is built (see
    :func:`xlstm.checkpoint.read`).
    """
    meta, arrays = checkpoint.read(
        path, optimizer_slots=lambda config: optimizer_from_config(config).slots
    )
    if meta["class"] not in _CLASSES:
        msg = (
            f"`path` {str(path)!r} holds an {meta['class']}, not a training model: "
            "load it with xlstm.LSTM.load"
        )
        raise CheckpointError(msg)
    return meta, arrays


def load_model(path: str | os.PathLike, *, backend: Any = None, device: Any = None) -> LSTMModel:
    """Load an :class:`LSTMModel` or :class:`CharLSTM` checkpoint onto any backend.

    Parameters
    ----------
    path : str or path
    backend : str or namespace, optional
        Default ``"numpy"``.
    device : optional

    Raises
    ------
    FileNotFoundError
    ValueError (:class:`xlstm.checkpoint.CheckpointError`)
        Corrupt, truncated or inconsistent file; nothing is loaded.
    """
    meta, arrays = read_checkpoint(path)
    backend = "numpy" if backend is None else backend
    xp = get_namespace(backend)
    keys = checkpoint.parameter_shapes(
        meta["n_x"], meta["n_a"], meta["num_layers"], False, meta["n_y"]
    )
    parameters = {k: xp.asarray(arrays[f"param/{k}"], device=device, copy=True) for k in keys}
    options = {
        "num_layers": meta["num_layers"],
        "dropout": meta["dropout"],
        "parameters": parameters,
        "backend": backend,
        "dtype": meta["dtype"],
        "optimizer": optimizer_from_config(meta["optimizer"]),
        "clip_norm": meta.get("clip_norm"),
    }
    if meta["class"] == "CharLSTM":
        model: LSTMModel = CharLSTM(meta["vocab"], meta["n_a"], **options)
    else:
        model = LSTMModel(meta["n_x"], meta["n_a"], meta["n_y"], **options)
    if meta.get("opt_step") is not None:
        state: dict[str, Any] = {"step": meta["opt_step"]}
        for slot in model.optimizer.slots:
            state[slot] = {
                k: xp.asarray(arrays[f"opt/{slot}/{k}"], device=device, copy=True) for k in keys
            }
        model.opt_state = state
    model.extra = dict(meta.get("extra", {}))
    return model


__all__ = ["CharLSTM", "CheckpointError", "LSTMModel", "load_model", "read_checkpoint"]
