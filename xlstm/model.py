"""The model object: :class:`LSTM`, stacked and bidirectional, on any array backend.

Shape legend: ``x (n_x, m, T)``; ``outputs (D n_a, m, T)`` with ``D = 2`` when bidirectional;
states ``a, c (num_layers * D, n_a, m)`` in ``torch.nn.LSTM``'s order; gate order
:data:`xlstm.GATE_ORDER` = (i, f, o, g).

The model holds one flat parameter dict whose keys name the layer and direction the way
``torch.nn.LSTM`` does: ``Wf_l0, bf_l0, ..., Wf_l0_reverse, ..., Wf_l1, ...``.  Gradients come
back as ``dWf_l0`` ..., so the optimisers of :mod:`xlstm.training.optim` (which pair
``parameters[k]`` with ``grads["d" + k]``) work on them unchanged.  Arrays are never modified
in place; :meth:`LSTM.load_parameters` replaces the dict.

It is the functional :func:`xlstm.layers.multilayer_forward` /
:func:`~xlstm.layers.multilayer_backward` with the parameters, the backend and a seeded
dropout generator attached.  It saves and loads :mod:`xlstm.checkpoint` files and converts
weights from and to ``torch.nn.LSTM`` and Keras (:mod:`xlstm.convert`).  The training models
(:class:`xlstm.training.LSTMModel`, :class:`~xlstm.training.CharLSTM`) are built on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np

from . import checkpoint
from ._backend import backend_name, get_namespace, namespace_of, to_backend, to_host
from ._engines.dispatch import engine_option
from ._layout import GATE_KEYS, GATE_ORDER, layer_key
from ._validation import check_dropout, check_flag, check_seed, check_size
from .convert import weights as convert
from .layers import multilayer_backward, multilayer_forward
from .parameters import init_parameters

parameter_key = layer_key  # the name this module exported before xlstm.LSTM


class LSTM:
    """A ``num_layers``-deep, optionally bidirectional LSTM on any array backend.

    Parameters
    ----------
    n_x, n_a : int
        Input features and hidden units (per direction).
    num_layers : int, default 1
    bidirectional : bool, default False
    dropout : float in [0, 1), default 0
        Dropout on the input of every layer but the first, in training passes only.
    backend : str or namespace, default "numpy"
    device : optional
    dtype : {"float32", "float64"}, default "float32"
    seed : int, optional
        Seeds the initialisation (:func:`xlstm.init_parameters` per layer and direction)
        and, independently, the dropout masks.
    engine : {"auto", "generic", "numpy", "numba", "cupy"}, default "auto"
        Engine of the recurrence, as in :func:`xlstm.lstm_forward`.
    fused : optional
        Alias of ``engine``, as in :func:`xlstm.lstm_forward`.
    parameters : dict, optional
        Start from these arrays (flat keys, see the module docstring) instead; they fix
        backend, device and dtype.

    Examples
    --------
    >>> import numpy as np, xlstm
    >>> model = xlstm.LSTM(3, 8, num_layers=2, bidirectional=True, seed=0)
    >>> outputs, (a_n, c_n) = model(np.zeros((3, 4, 5), np.float32))
    >>> outputs.shape, a_n.shape
    ((16, 4, 5), (4, 8, 4))
    """

    def __init__(
        self,
        n_x: int,
        n_a: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        backend: Any = "numpy",
        device: Any = None,
        dtype: Any = "float32",
        seed: int | None = None,
        engine: str = "auto",
        fused: Any = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.n_x = check_size("n_x", n_x)
        self.n_a = check_size("n_a", n_a)
        self.num_layers = check_size("num_layers", num_layers)
        self.bidirectional = check_flag("bidirectional", bidirectional)
        self.dropout = check_dropout(dropout)
        self.engine = engine_option(engine, fused)
        init_seed, dropout_seed = np.random.SeedSequence(check_seed(seed)).spawn(2)
        self._dropout_rng = np.random.default_rng(dropout_seed)
        if parameters is None:
            rng = np.random.default_rng(init_seed)
            parameters = {}
            for layer in range(self.num_layers):
                n_in = self.n_x if layer == 0 else self.directions * self.n_a
                for reverse in self._reverse_flags:
                    gates = init_parameters(
                        n_in, self.n_a, 1, xp=backend, dtype=dtype, seed=rng, device=device
                    )
                    for key in GATE_KEYS:
                        parameters[layer_key(key, layer, reverse)] = gates[key]
        self._parameters = self._checked(parameters)
        self.xp = namespace_of(self._parameters)
        checkpoint.dtype_name(self.dtype)  # float32 or float64 only

    # ------------------------------------------------------------------ layout

    @property
    def directions(self) -> int:
        """``D``: 2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def _reverse_flags(self) -> tuple[bool, ...]:
        return (False, True) if self.bidirectional else (False,)

    def parameter_keys(self) -> list[str]:
        """Parameter keys in ``torch.nn.LSTM`` order (layer, direction, gate key)."""
        return [
            layer_key(key, layer, reverse)
            for layer in range(self.num_layers)
            for reverse in self._reverse_flags
            for key in GATE_KEYS
        ]

    def _checked(self, parameters: Any) -> dict[str, Any]:
        if not isinstance(parameters, Mapping):
            raise TypeError(
                f"`parameters` must be a dict of arrays, got {type(parameters).__name__}"
            )
        expected = self.parameter_keys()
        missing = [key for key in expected if key not in parameters]
        if missing:
            raise ValueError(
                f"`parameters` is missing {missing[0]!r} (and {len(missing) - 1} more)"
            )
        extra = sorted(set(parameters) - set(expected))
        if extra:
            raise ValueError(f"`parameters` has an unexpected key {extra[0]!r}")
        for index, layer in enumerate(self._layers_of(parameters)):
            n_in = self.n_x if index < self.directions else self.directions * self.n_a
            for key in GATE_KEYS:
                want = (self.n_a, self.n_a + n_in) if key[0] == "W" else (self.n_a, 1)
                flat = layer_key(key, index // self.directions, index % self.directions == 1)
                got = tuple(int(s) for s in layer[key].shape)
                if got != want:
                    raise ValueError(f"`parameters[{flat!r}]` has shape {got}; expected {want}")
        return {key: parameters[key] for key in expected}

    def _layers_of(self, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            {key: parameters[layer_key(key, layer, reverse)] for key in GATE_KEYS}
            for layer in range(self.num_layers)
            for reverse in self._reverse_flags
        ]

    # ------------------------------------------------------------------ properties

    @property
    def parameters(self) -> dict[str, Any]:
        """A new dict of the parameter arrays (do not modify the arrays in place)."""
        return dict(self._parameters)

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The parameters as :func:`~xlstm.layers.multilayer_forward`'s ``layers`` list."""
        return self._layers_of(self._parameters)

    @property
    def backend(self) -> str:
        return backend_name(self.xp)

    @property
    def device(self) -> Any:
        return array_api_compat.device(self._parameters["Wf_l0"])

    @property
    def dtype(self) -> Any:
        return self._parameters["Wf_l0"].dtype

    def load_parameters(self, parameters: Mapping[str, Any]) -> None:
        """Replace the parameters (e.g. after an optimiser step).

        Keys, shapes, backend, device and dtype are checked: the model's dtype never
        changes (a float32 array given to a float64 model is a ``TypeError``).
        """
        checked = self._checked(parameters)
        namespace_of(checked, xp=self.xp)
        for key, value in checked.items():
            if value.dtype != self.dtype:
                msg = f"`parameters[{key!r}]` has dtype {value.dtype}; the model is {self.dtype}"
                raise TypeError(msg)
        self._parameters = checked

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_x={self.n_x}, n_a={self.n_a}, "
            f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
            f"dropout={self.dropout}, backend={self.backend!r}, "
            f"dtype={checkpoint.dtype_name(self.dtype)!r}, engine={self.engine!r})"
        )

    # ------------------------------------------------------------------ computing

    def _input(self, x: Any) -> Any:
        """NumPy arrays given to a model on another backend move there (and to its dtype)."""
        if isinstance(x, np.ndarray) and self.backend != "numpy":
            return self.xp.asarray(np.ascontiguousarray(x), dtype=self.dtype, device=self.device)
        return x

    def _state(self, state: Any) -> tuple[Any, Any]:
        if state is None:
            return None, None
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError("`state` must be None or an (a0, c0) tuple")
        return self._input(state[0]), self._input(state[1])

    def forward(self, x: Any, lengths: Any = None, state: Any = None) -> tuple[Any, Any]:
        """Inference pass (no dropout, nothing kept for backward): ``(outputs, (a_n, c_n))``.

        ``x (n_x, m, T)``; ``outputs (D n_a, m, T)``; ``a_n, c_n (num_layers * D, n_a, m)``
        (``torch.nn.LSTM``'s ``h_n``, ``c_n`` order); ``state = (a0, c0)`` of that shape.
        """
        a0, c0 = self._state(state)
        outputs, final, _ = multilayer_forward(
            self._input(x), self.layers, bidirectional=self.bidirectional, lengths=lengths,
            training=False, a0=a0, c0=c0, engine=self.engine, cache=False,
        )  # fmt: skip
        return outputs, final

    __call__ = forward

    def forward_train(self, x: Any, lengths: Any = None, state: Any = None):
        """Training pass (dropout on): ``(outputs, (a_n, c_n), cache)`` for :meth:`backward`."""
        a0, c0 = self._state(state)
        return multilayer_forward(
            self._input(x), self.layers, bidirectional=self.bidirectional, lengths=lengths,
            dropout=self.dropout, seed=self._dropout_rng, training=True, a0=a0, c0=c0,
            engine=self.engine,
        )  # fmt: skip

    def backward(self, d_outputs: Any, cache: Any, d_a_n: Any = None, d_c_n: Any = None):
        """Gradients of a :meth:`forward_train` pass: ``dWf_l0 ...`` plus ``dx, da0, dc0``.

        NumPy gradients given to a model on another backend move there, as inputs do.
        """
        grads = multilayer_backward(
            self._input(d_outputs), cache,
            None if d_a_n is None else self._input(d_a_n),
            None if d_c_n is None else self._input(d_c_n),
        )  # fmt: skip
        flat = {key: grads[key] for key in ("dx", "da0", "dc0")}
        for index, layer_grads in enumerate(grads["layers"]):
            layer, direction = divmod(index, self.directions)
            for key in GATE_KEYS:
                flat["d" + layer_key(key, layer, direction == 1)] = layer_grads["d" + key]
        return flat

    # ------------------------------------------------------------------ moving, converting

    def to(self, backend: Any, *, device: Any = None) -> LSTM:
        """A copy of the model on another backend / device (this one is left as it is)."""
        return type(self)(
            self.n_x, self.n_a, num_layers=self.num_layers, bidirectional=self.bidirectional,
            dropout=self.dropout, engine=self.engine,
            parameters=to_backend(self._parameters, get_namespace(backend), device=device),
        )  # fmt: skip

    def config(self) -> dict[str, Any]:
        """Sizes, layout, dtype and gate order (what a checkpoint's ``meta`` records)."""
        return {
            "n_x": self.n_x,
            "n_a": self.n_a,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "dropout": self.dropout,
            "dtype": checkpoint.dtype_name(self.dtype),
            "gate_order": list(GATE_ORDER),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to a ``.npz`` checkpoint (:mod:`xlstm.checkpoint`), atomically.

        Returns the path written (``".npz"`` appended when ``path`` has no suffix).
        """
        arrays = {f"param/{k}": to_host(v) for k, v in self._parameters.items()}
        return checkpoint.write(path, {"class": "LSTM", **self.config()}, arrays)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, backend: Any = "numpy", device: Any = None,
        engine: str = "auto",
    ) -> LSTM:  # fmt: skip
        """Load a checkpoint written by :meth:`save` onto ``backend`` and ``device``.

        Raises
        ------
        FileNotFoundError
        xlstm.checkpoint.CheckpointError
            The file is not a valid checkpoint of an ``LSTM`` (nothing is loaded).
        """
        meta, arrays = checkpoint.read(path)
        xp = get_namespace(backend)
        parameters = {
            key: xp.asarray(arrays[f"param/{key}"], device=device, copy=True)
            for key in checkpoint.parameter_shapes(
                meta["n_x"], meta["n_a"], meta["num_layers"], meta["bidirectional"]
            )
        }
        return cls(
            meta["n_x"], meta["n_a"], num_layers=meta["num_layers"],
            bidirectional=meta["bidirectional"], dropout=meta["dropout"], engine=engine,
            parameters=parameters,
        )  # fmt: skip

    @classmethod
    def from_torch(
        cls,
        module: Any,
        *,
        prefix: str = "",
        backend: Any = "numpy",
        device: Any = None,
        dtype: Any = None,
        dropout: float | None = None,
        engine: str = "auto",
    ) -> LSTM:
        """Import a ``torch.nn.LSTM`` (or its ``state_dict``; see :func:`xlstm.convert.from_torch`).

        ``dropout`` defaults to the module's ``dropout`` (0 for a bare ``state_dict``).
        """
        weights = convert.from_torch(module, prefix=prefix, xp=backend, dtype=dtype, device=device)
        if dropout is None:
            dropout = float(getattr(module, "dropout", 0.0))
        return cls(
            weights.n_x, weights.n_a, num_layers=weights.num_layers,
            bidirectional=weights.bidirectional, dropout=dropout, engine=engine,
            parameters=cls._flat(weights.layers, weights.bidirectional),
        )  # fmt: skip

    def to_torch_state_dict(self, *, prefix: str = "", as_tensors: bool = False) -> dict[str, Any]:
        """A ``torch.nn.LSTM`` ``state_dict`` (bias in ``bias_ih``, zeros in ``bias_hh``)."""
        return convert.to_torch(
            self.layers, bidirectional=self.bidirectional, prefix=prefix, as_tensors=as_tensors
        )

    @classmethod
    def from_keras(
        cls, weights: Any, *, backend: Any = "numpy", device: Any = None, dtype: Any = None,
        engine: str = "auto",
    ) -> LSTM:  # fmt: skip
        """A one-layer model from a Keras 3 ``LSTM`` layer's ``get_weights()``.

        Keras layers compute what xlstm computes only with their default activations
        (see :mod:`xlstm.convert`).
        """
        gates = convert.from_keras(weights, xp=backend, dtype=dtype, device=device)
        n_a = int(gates["Wf"].shape[0])
        n_x = int(gates["Wf"].shape[1]) - n_a
        return cls(n_x, n_a, engine=engine, parameters=cls._flat([gates], False))

    def to_keras(self, *, use_bias: bool = True) -> list[np.ndarray]:
        """``layer.set_weights(...)`` arrays of a Keras 3 ``LSTM`` layer (one-layer models).

        ``use_bias=False`` (a Keras layer without bias) gives two arrays and requires the
        bias to be zero.
        """
        if self.num_layers != 1 or self.bidirectional:
            msg = "a Keras LSTM layer is one layer, one direction; export each layer separately"
            raise ValueError(msg)
        return convert.to_keras(self.layers[0], use_bias=use_bias)

    @staticmethod
    def _flat(layers: list[Mapping[str, Any]], bidirectional: bool) -> dict[str, Any]:
        directions = 2 if bidirectional else 1
        flat = {}
        for index, layer in enumerate(layers):
            number, direction = divmod(index, directions)
            for key in GATE_KEYS:
                flat[layer_key(key, number, direction == 1)] = layer[key]
        return flat


StackedLSTM = LSTM
"""Deprecated alias of :class:`LSTM` (the name before 0.2), kept for one release."""


__all__ = ["LSTM", "StackedLSTM", "parameter_key"]
