"""Training models: :class:`LSTMModel` and :class:`CharLSTM`, built on :class:`xlstm.LSTM`.

A model holds an ``num_layers``-deep :class:`xlstm.LSTM` (its recurrent part), a softmax
output layer, an optimiser and the optimiser's state.  One key scheme for everything:
the parameter dict has the LSTM's flat keys (``Wf_l0, bf_l0, ..., Wf_l1, ...``) and the
output layer's ``Wy``, ``by``; gradients are ``"d" + key``.  The arrays are never modified
in place; a training step replaces the model's dict with new arrays.

Shape legend: ``x (n_x, m, T)``, integer ``ids`` and ``targets (m, T)``, ``y (n_y, m, T)``.
States: ``a, c (n_a, m)`` for one layer (the notebook's), ``(L D, n_a, m)`` for more (``L`` layers,
``D = 2`` when bidirectional).
Gate order :data:`xlstm.GATE_ORDER` = (i, f, o, g).

Every model, one layer or more, runs its :class:`xlstm.LSTM` (``model.lstm``: stacked,
optionally bidirectional, variable lengths, dropout between layers in training steps) and
then its head (:mod:`xlstm.training.heads`: a softmax per step or per sequence).

Truncated backpropagation through time: :meth:`LSTMModel.train_step` takes and returns the
state; pass each chunk's final state to the next chunk of the same streams (see
:func:`xlstm.training.data.tbptt_batches`).  Gradients stop at the chunk boundary.

Checkpoints are :mod:`xlstm.checkpoint` files (:meth:`LSTMModel.save`, :func:`load_model`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np

from .. import checkpoint
from .._backend import backend_name, get_namespace, namespace_of, to_backend, to_host
from .._engines.cache import step_masks
from .._engines.dispatch import engine_option
from .._layout import GATE_KEYS, GATE_ORDER, OUTPUT_KEYS, PARAMETER_KEYS, layer_key
from .._schema import Schema
from .._validation import check_flag, check_seed, check_size
from ..activations import _softmax, softmax
from ..cell import lstm_cell_forward
from ..model import LSTM
from ..parameters import init_parameters
from . import heads
from .heads import check_head
from .loss import _one_hot
from .optim import Adam, Optimizer, apply_gradients, optimizer_from_config

CheckpointError = checkpoint.CheckpointError


def _model_keys(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's one-layer dict under the model's keys (``Wf_l0, ..., Wy, by``)."""
    return {
        (layer_key(key, 0) if key in GATE_KEYS else key): parameters[key] for key in PARAMETER_KEYS
    }


class LSTMModel:
    """An :class:`xlstm.LSTM` with a softmax output head, its optimiser and its state.

    Parameters
    ----------
    n_x, n_a, n_y : int
        Inputs, hidden units (per direction), output classes.
    num_layers : int, default 1
    bidirectional : bool, default False
        Both directions; the head reads them concatenated (``Wy (n_y, 2 n_a)``).
    head : {"per_step", "last", "mean"}, default "per_step"
        What is predicted (:mod:`xlstm.training.heads`): a class at every step (tagging,
        next-token prediction; targets ``(m, T)``), or one class per sequence from its
        final states (``"last"``) or from the mean of its outputs (``"mean"``; targets
        ``(m,)``).
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
        Engine of the recurrence, as in :func:`xlstm.lstm_forward` (``fused=`` is a deprecated
        alias).
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
    carried_state : tuple or None
        The ``(a, c)`` of a truncated-BPTT run to keep with the model (what
        :meth:`train_step` returned): :meth:`save` writes it and :func:`load_model` restores
        it, so that the run continues exactly.  ``None``: nothing kept.
    """

    kind = "LSTMModel"

    def __init__(
        self,
        n_x: int,
        n_a: int,
        n_y: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        head: str = "per_step",
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
        num_layers = check_size("num_layers", num_layers)
        bidirectional = check_flag("bidirectional", bidirectional)
        self.head = check_head(head)
        self.schema = Schema(self.n_x, self.n_a, num_layers, bidirectional, self.n_y)
        seed = check_seed(seed)
        init_seed, _ = np.random.SeedSequence(seed).spawn(2)
        if parameters is None:
            parameters = self._initial_parameters(backend, device, dtype, seed, init_seed)
        else:
            parameters = self._check_given_parameters(parameters, backend, dtype)
        # The recurrent part is an xlstm.LSTM (same seed: the same dropout masks as before);
        # the model adds the output layer ``Wy``, ``by`` and the optimiser.
        gates = {key: value for key, value in parameters.items() if key not in OUTPUT_KEYS}
        choice = engine_option(engine, fused, where=type(self).__name__)
        self.lstm = LSTM(
            self.n_x, self.n_a, num_layers=num_layers, bidirectional=bidirectional,
            dropout=dropout, seed=seed, parameters=gates,
        )  # fmt: skip
        self.lstm.engine = choice
        self._head = {key: parameters[key] for key in OUTPUT_KEYS}
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
        self.carried_state: tuple[Any, Any] | None = None

    def _initial_parameters(self, backend, device, dtype, seed, init_seed) -> dict[str, Any]:
        options = {
            "xp": "numpy" if backend is None else backend,
            "dtype": "float32" if dtype is None else dtype,
            "device": device,
        }
        if self.schema.bidirectional:
            # Every direction as xlstm.LSTM initialises it; the output layer reads 2 n_a.
            rng = np.random.default_rng(init_seed)
            layers = [
                init_parameters(self.schema.input_size(layer), self.n_a, 1, seed=rng, **options)
                for layer, _ in self.schema.units()
            ]
            output = init_parameters(1, 2 * self.n_a, self.n_y, seed=rng, **options)
            parameters = self.schema.to_flat(layers)
            parameters.update({key: output[key] for key in OUTPUT_KEYS})
            return self.schema.check(parameters)
        # Layer 0 and the output layer as the seed's init_parameters makes them (a one-layer
        # model is what it always was); deeper layers from the same generator.
        rng = seed if self.schema.num_layers == 1 else np.random.default_rng(init_seed)
        first = init_parameters(self.n_x, self.n_a, self.n_y, seed=rng, **options)
        parameters = _model_keys(first)
        for layer in range(1, self.schema.num_layers):
            deeper = init_parameters(self.n_a, self.n_a, 1, seed=rng, **options)
            parameters.update({layer_key(key, layer): deeper[key] for key in GATE_KEYS})
        return {key: parameters[key] for key in self.parameter_keys()}

    def parameter_keys(self) -> list[str]:
        """The model's keys: the LSTM's (``torch.nn.LSTM`` order), then ``Wy``, ``by``."""
        return self.schema.keys()

    def _check_given_parameters(self, parameters, backend, dtype) -> dict[str, Any]:
        if not isinstance(parameters, Mapping):
            raise TypeError(
                f"`parameters` must be a dict of arrays, got {type(parameters).__name__}"
            )
        if self.schema.num_layers == 1 and "Wf" in parameters:
            parameters = _model_keys(parameters)
        parameters = self.schema.check(parameters)
        xp = namespace_of({f"parameters[{k!r}]": v for k, v in parameters.items()})
        if backend is not None and get_namespace(backend) is not xp:
            msg = f"`parameters` are {backend_name(xp)} arrays but `backend` = {backend!r}"
            raise TypeError(msg)
        found = parameters["Wy"].dtype
        if dtype is not None and checkpoint.dtype_name(found) != checkpoint.dtype_name(dtype):
            msg = f"`parameters` have dtype {found} but `dtype` = {dtype!r}"
            raise TypeError(msg)
        return parameters

    # ------------------------------------------------------------------ properties

    @property
    def parameters(self) -> dict[str, Any]:
        """A new dict of the current parameter arrays (do not modify the arrays in place)."""
        return {**self.lstm.parameters, **self._head}

    def _replace_parameters(self, parameters: Mapping[str, Any]) -> None:
        """Take new arrays from the optimiser (same keys, shapes, backend and dtype)."""
        self.lstm._parameters = {key: parameters[key] for key in self.lstm.parameter_keys()}
        self._head = {key: parameters[key] for key in OUTPUT_KEYS}

    @property
    def num_layers(self) -> int:
        return self.lstm.num_layers

    @property
    def bidirectional(self) -> bool:
        return self.lstm.bidirectional

    @property
    def dropout(self) -> float:
        return self.lstm.dropout

    @property
    def engine(self) -> str:
        """The engine choice of the recurrence (see :func:`xlstm.lstm_forward`)."""
        return self.lstm.engine

    @engine.setter
    def engine(self, engine: str) -> None:
        self.lstm.engine = engine_option(engine)

    def __copy__(self) -> LSTMModel:
        # A copy owns its recurrent part: setting the copy's engine or parameters leaves
        # this model alone (arrays are shared: they are never modified in place).
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.lstm = copy.copy(self.lstm)
        clone._head = dict(self._head)
        return clone

    @property
    def xp(self) -> Any:
        return self.lstm.xp

    @property
    def backend(self) -> str:
        """Backend name: ``"numpy"``, ``"torch"``, ..."""
        return self.lstm.backend

    @property
    def device(self) -> Any:
        return self.lstm.device

    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"float64"``."""
        return checkpoint.dtype_name(self.lstm.dtype)

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
            "bidirectional": self.bidirectional,
            "head": self.head,
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
            hot = _one_hot(self.xp.permute_dims(x, (1, 0)), self.n_x, -1, self.lstm.dtype, self.xp)
            return self.xp.permute_dims(hot, (2, 1, 0))
        return x

    def _targets(self, targets: Any) -> Any:
        if isinstance(targets, np.ndarray):
            return self.xp.asarray(np.ascontiguousarray(targets), device=self.device)
        return targets

    def _state(self, state: Any) -> tuple[Any, Any] | None:
        """The carried state as the LSTM's ``(L, n_a, m)`` arrays (``None``: zeros).

        A one-layer model's state is the notebook's ``(n_a, m)``: a free reshape.
        """
        if state is None:
            return None
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError("`state` must be None or the (a, c) tuple a previous call returned")
        if self._notebook_states:
            state = tuple(
                v if getattr(v, "ndim", None) != 2 else self.xp.reshape(v, (1, *v.shape))
                for v in state
            )
        return state

    @property
    def _notebook_states(self) -> bool:
        """One layer, one direction: states are the notebook's ``(n_a, m)``."""
        return self.num_layers == 1 and not self.bidirectional

    def _final(self, final: tuple[Any, Any]) -> tuple[Any, Any]:
        # Copies: carrying the state to the next chunk keeps no engine buffer alive and
        # cannot see it reused.  One layer: the notebook's (n_a, m).
        if self._notebook_states:
            final = (final[0][0, ...], final[1][0, ...])
        return tuple(self.xp.asarray(v, copy=True) for v in final)

    def forward(
        self, x: Any, state: Any = None, *, lengths: Any = None
    ) -> tuple[Any, tuple[Any, Any]]:
        """Softmax outputs and the final state (inference: no dropout).

        Outputs are ``y (n_y, m, T)`` for the per-step head (zero past each sequence's end
        with ``lengths``) and ``(n_y, m)`` for the sequence heads.
        """
        x = self.inputs(x)
        outputs, final = self.lstm.forward(x, lengths, self._state(state))
        logits = heads.predict(
            self.head, outputs, final[0], lengths, self._head["Wy"], self._head["by"],
            self.lstm.directions, self.xp,
        )  # fmt: skip
        y = _softmax(logits, 0, self.xp)
        if lengths is not None and self.head == "per_step":
            inside = step_masks(np.asarray(lengths), int(x.shape[2]), self.xp, self.device)
            y = y * self.xp.astype(self.xp.permute_dims(inside, (2, 1, 0)), y.dtype)
        return y, self._final(final)

    def _checked_targets(self, x: Any, targets: Any, mask: Any) -> tuple[Any, Any]:
        targets, mask = self._targets(targets), self._targets(mask)
        heads.check_targets(self.head, targets, mask, x, self.n_y, self.xp)
        return targets, mask

    def loss(
        self, x: Any, targets: Any, *, mask: Any = None, lengths: Any = None, state: Any = None
    ):
        """Mean cross-entropy (no gradients): returns ``(loss, state)``."""
        x = self.inputs(x)
        targets, mask = self._checked_targets(x, targets, mask)
        outputs, final = self.lstm.forward(x, lengths, self._state(state))
        loss = heads.loss(
            self.head, outputs, final[0], lengths, self._head["Wy"], self._head["by"],
            targets, mask, self.lstm.directions, self.xp,
        )  # fmt: skip
        return loss, self._final(final)

    def loss_and_gradients(
        self, x: Any, targets: Any, *, mask: Any = None, lengths: Any = None, state: Any = None,
        dropout_rng: Any = None,
    ):  # fmt: skip
        """``(loss, grads, state)``: the batch's cross-entropy and every parameter's gradient.

        Gradients have the keys ``"d" + key`` of :attr:`parameters`.  A training pass:
        dropout (if any) is on, its masks drawn from ``dropout_rng`` (a NumPy ``Generator``
        or seed) when given, else from the model's own generator.  ``lengths`` (one per
        sequence, right-padded batch): steps past each end add nothing (see
        :func:`xlstm.layers.multilayer_forward`).
        """
        x = self.inputs(x)
        targets, mask = self._checked_targets(x, targets, mask)
        outputs, final, cache = self.lstm.forward_train(
            x, lengths, self._state(state), rng=dropout_rng
        )
        result = heads.loss_and_gradients(
            self.head, outputs, final[0], lengths, self._head["Wy"], self._head["by"],
            targets, mask, self.lstm.directions, self.xp,
        )  # fmt: skip
        grads = self.lstm.backward(result.d_outputs, cache, result.d_a_n)
        grads = {"d" + key: grads["d" + key] for key in self.lstm.parameter_keys()}
        grads["dWy"], grads["dby"] = result.dWy, result.dby
        return result.loss, grads, self._final(final)

    def dropout_seed(self) -> int | None:
        """A seed for the dropout masks of one data-parallel step, or ``None`` without dropout.

        Drawn from the model's own dropout generator, which advances: each step's pieces
        of the batch draw new masks (``numpy.random.default_rng((seed, piece))``), and a
        run is reproducible from the model's ``dropout_seed``.
        """
        if not self.lstm.dropout:
            return None
        return int(self.lstm.dropout_generator().integers(2**63))

    def apply_gradients(self, grads: Mapping[str, Any]) -> Any:
        """Clip (if ``clip_norm``) and take one optimiser step.  Returns the gradient norm
        before clipping (a 0-d array), or ``None`` without clipping."""
        parameters, self.opt_state, norm = apply_gradients(
            self.parameters, grads, self.optimizer, self.opt_state, self.clip_norm
        )
        self._replace_parameters(parameters)
        return norm

    def train_step(
        self, x: Any, targets: Any, *, mask: Any = None, lengths: Any = None, state: Any = None
    ) -> tuple[Any, tuple[Any, Any]]:
        """One update on a batch.  Returns ``(loss, state)``: the loss before the update
        (0-d array) and the final ``(a, c)`` to carry into the next chunk."""
        loss, grads, final = self.loss_and_gradients(
            x, targets, mask=mask, lengths=lengths, state=state
        )
        self.apply_gradients(grads)
        return loss, final

    # ------------------------------------------------------------------ moving, saving

    def _copy_to(self, backend: Any, device: Any) -> LSTMModel:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.lstm = self.lstm.to(backend, device=device)
        clone._head = to_backend(self._head, backend, device=device)
        clone.extra = json.loads(json.dumps(self.extra))
        if self.carried_state is not None:
            a, c = self.carried_state
            moved = to_backend({"a": a, "c": c}, backend, device=device)
            clone.carried_state = (moved["a"], moved["c"])
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

        ``".npz"`` is appended when ``path`` has no suffix.  The file holds the parameters,
        the optimiser state, :attr:`extra` and :attr:`carried_state`.
        """
        meta = {
            "class": self.kind,
            **self.config(),
            "clip_norm": self.clip_norm,
            "optimizer": self.optimizer.config(),
            "opt_step": None if self.opt_state is None else int(self.opt_state["step"]),
            "extra": self.extra,
        }
        arrays = {f"param/{k}": to_host(v) for k, v in self.parameters.items()}
        if self.opt_state is not None:
            for slot, buffers in self.opt_state.items():
                if isinstance(buffers, Mapping):
                    arrays.update({f"opt/{slot}/{k}": to_host(v) for k, v in buffers.items()})
        if self.carried_state is not None:
            arrays["state/a"], arrays["state/c"] = self._host_state(self.carried_state)
        return checkpoint.write(path, meta, arrays)

    def _host_state(self, state: Any) -> tuple[np.ndarray, np.ndarray]:
        """A carried ``(a, c)`` as host arrays ``(L D, n_a, m)`` (the checkpoint's layout)."""
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError("`carried_state` must be None or the (a, c) tuple of a train_step")
        a, c = (_host_array(v) for v in state)
        rows = self.num_layers * self.lstm.directions
        if a.shape != c.shape or a.ndim not in (2, 3) or a.shape[-2] != self.n_a:
            msg = (
                f"`state` arrays have shapes {a.shape}, {c.shape}; expected ({rows}, {self.n_a}, m)"
            )
            raise ValueError(msg)
        shape = (rows, self.n_a, a.shape[-1])
        if a.size != np.prod(shape):
            msg = f"`carried_state` arrays have shape {a.shape}; expected {shape}"
            raise ValueError(msg)
        return a.reshape(shape), c.reshape(shape)

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


def _host_array(value: Any) -> np.ndarray:
    # A data-parallel run carries its state as dask arrays on the workers.
    return np.asarray(value.compute()) if hasattr(value, "compute") else to_host(value)


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
        for name, allowed in (("bidirectional", False), ("head", "per_step")):
            if options.get(name, allowed) != allowed:
                msg = (
                    f"`{name}` = {options[name]!r}: a character model predicts the next "
                    f"character at every step from the past alone ({name}={allowed!r})"
                )
                raise ValueError(msg)
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
        host = {k: to_host(v).astype(np.float64) for k, v in self.parameters.items()}
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
        meta["n_x"], meta["n_a"], meta["num_layers"], meta["bidirectional"], meta["n_y"]
    )
    parameters = {k: xp.asarray(arrays[f"param/{k}"], device=device, copy=True) for k in keys}
    options = {
        "num_layers": meta["num_layers"],
        "bidirectional": meta["bidirectional"],
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
        options["head"] = meta.get("head", "per_step")  # files before 0.2 have no head
        model = LSTMModel(meta["n_x"], meta["n_a"], meta["n_y"], **options)
    if meta.get("opt_step") is not None:
        state: dict[str, Any] = {"step": meta["opt_step"]}
        for slot in model.optimizer.slots:
            state[slot] = {
                k: xp.asarray(arrays[f"opt/{slot}/{k}"], device=device, copy=True) for k in keys
            }
        model.opt_state = state
    model.extra = dict(meta.get("extra", {}))
    if "state/a" in arrays:
        carried = tuple(
            xp.asarray(arrays[k], device=device, copy=True) for k in ("state/a", "state/c")
        )
        model.carried_state = model._final(carried)
    return model


__all__ = ["CharLSTM", "CheckpointError", "LSTMModel", "load_model", "read_checkpoint"]
