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

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np

from . import checkpoint
from ._backend import backend_name, get_namespace, namespace_of, to_backend, to_host
from ._engines.dispatch import engine_option
from ._layout import GATE_ORDER, layer_key
from ._schema import Schema
from ._validation import check_dropout, check_flag, check_seed, check_size
from .convert import weights as convert
from .layers import multilayer_backward, multilayer_forward
from .parameters import init_parameters

parameter_key = layer_key  # the name this module exported before xlstm.LSTM

LAYOUTS = {
    # layout: (shape legend, to features-first (n, m, T), back from features-first)
    "features_first": ("(n, m, T)", (0, 1, 2), (0, 1, 2)),
    "time_major": ("(T, m, n)", (2, 1, 0), (2, 1, 0)),
    "batch_first": ("(m, T, n)", (2, 0, 1), (1, 2, 0)),
}
"""The sequence layouts :class:`LSTM` takes (see its ``layout`` parameter)."""


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
        Deprecated alias of ``engine`` (a ``DeprecationWarning``); it stays on the 0.1
        notebook functions (:func:`xlstm.lstm_forward`) only.
    parameters : dict, optional
        Start from these arrays (flat keys, see the module docstring) instead; they fix
        backend, device and dtype.
    layout : {"features_first", "time_major", "batch_first"}, default "features_first"
        The layout of inputs, outputs and their gradients, and of the states:

        ================  ===============  ==================  ===================
        layout            ``x``            ``outputs``         ``a0, c0, a_n, c_n``
        ================  ===============  ==================  ===================
        features_first    ``(n_x, m, T)``  ``(D n_a, m, T)``   ``(L D, n_a, m)``
        time_major        ``(T, m, n_x)``  ``(T, m, D n_a)``   ``(L D, m, n_a)``
        batch_first       ``(m, T, n_x)``  ``(m, T, D n_a)``   ``(L D, m, n_a)``
        ================  ===============  ==================  ===================

        ``features_first`` is the notebook's; the other two are ``torch.nn.LSTM``'s
        (``batch_first=False`` / ``True``).  Converting is a free view (a transpose): the
        engines read any strides.

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
        layout: str = "features_first",
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"`layout` = {layout!r}; expected one of {tuple(LAYOUTS)}")
        self.layout = layout
        self.n_x = check_size("n_x", n_x)
        self.n_a = check_size("n_a", n_a)
        self.num_layers = check_size("num_layers", num_layers)
        self.bidirectional = check_flag("bidirectional", bidirectional)
        self.dropout = check_dropout(dropout)
        self.engine = engine_option(engine, fused, where="xlstm.LSTM")
        init_seed, dropout_seed = np.random.SeedSequence(check_seed(seed)).spawn(2)
        self._dropout_rng = np.random.default_rng(dropout_seed)
        self.schema = Schema(self.n_x, self.n_a, self.num_layers, bidirectional)
        if parameters is None:
            rng = np.random.default_rng(init_seed)
            layers = [
                init_parameters(
                    self.schema.input_size(layer), self.n_a, 1, xp=backend, dtype=dtype,
                    seed=rng, device=device,
                )
                for layer, _ in self.schema.units()
            ]  # fmt: skip
            parameters = self.schema.to_flat(layers)
        self._parameters = self._checked(parameters)
        self.xp = namespace_of(self._parameters)
        checkpoint.dtype_name(self.dtype)  # float32 or float64 only

    # ------------------------------------------------------------------ layout

    @property
    def directions(self) -> int:
        """``D``: 2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    def parameter_keys(self) -> list[str]:
        """Parameter keys in ``torch.nn.LSTM`` order (layer, direction, gate key)."""
        return self.schema.keys()

    def _checked(self, parameters: Any) -> dict[str, Any]:
        return self.schema.check(parameters)

    # ------------------------------------------------------------------ properties

    @property
    def parameters(self) -> dict[str, Any]:
        """A new dict of the parameter arrays (do not modify the arrays in place)."""
        return dict(self._parameters)

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The parameters as :func:`~xlstm.layers.multilayer_forward`'s ``layers`` list."""
        return self.schema.to_layers(self._parameters)

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

    def _sequence_in(self, name: str, value: Any, features: int) -> Any:
        """A sequence array in the model's layout as the layers' ``(features, m, T)`` view."""
        value = self._input(value)
        legend, to_features_first = LAYOUTS[self.layout][0], LAYOUTS[self.layout][1]
        shape = getattr(value, "shape", None)
        axis = legend.strip("()").split(", ").index("n")
        if shape is None or len(shape) != 3 or int(shape[axis]) != features:
            got = None if shape is None else tuple(int(s) for s in shape)
            msg = (
                f"`{name}` has shape {got}; expected {legend.replace('n', str(features))} "
                f"(layout={self.layout!r})"
            )
            raise ValueError(msg)
        return self.xp.permute_dims(value, to_features_first)

    def _sequence_out(self, value: Any) -> Any:
        return self.xp.permute_dims(value, LAYOUTS[self.layout][2])

    def _states_in(self, value: Any) -> Any:
        if value is None or self.layout == "features_first":
            return self._input(value)
        return self.xp.permute_dims(self._input(value), (0, 2, 1))

    def _states_out(self, value: Any) -> Any:
        return value if self.layout == "features_first" else self.xp.permute_dims(value, (0, 2, 1))

    def _state(self, state: Any) -> tuple[Any, Any]:
        if state is None:
            return None, None
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError("`state` must be None or an (a0, c0) tuple")
        return self._states_in(state[0]), self._states_in(state[1])

    def forward(self, x: Any, lengths: Any = None, state: Any = None) -> tuple[Any, Any]:
        """Inference pass (no dropout, nothing kept for backward): ``(outputs, (a_n, c_n))``.

        In the model's ``layout`` (default ``x (n_x, m, T)``, ``outputs (D n_a, m, T)``,
        ``a_n, c_n (num_layers * D, n_a, m)`` in ``torch.nn.LSTM``'s ``h_n``, ``c_n``
        order); ``state = (a0, c0)`` of the states' shape.
        """
        a0, c0 = self._state(state)
        outputs, final, _ = multilayer_forward(
            self._sequence_in("x", x, self.n_x), self.layers, bidirectional=self.bidirectional,
            lengths=lengths, training=False, a0=a0, c0=c0, engine=self.engine, cache=False,
        )  # fmt: skip
        return self._sequence_out(outputs), tuple(self._states_out(v) for v in final)

    __call__ = forward

    def forward_train(self, x: Any, lengths: Any = None, state: Any = None, *, rng: Any = None):
        """Training pass (dropout on): ``(outputs, (a_n, c_n), cache)`` for :meth:`backward`.

        Dropout masks come from ``rng`` (a NumPy ``Generator`` or seed) when given, else
        from the model's generator (:meth:`dropout_generator`).
        """
        a0, c0 = self._state(state)
        outputs, final, cache = multilayer_forward(
            self._sequence_in("x", x, self.n_x), self.layers, bidirectional=self.bidirectional,
            lengths=lengths, dropout=self.dropout, training=True,
            seed=self._dropout_rng if rng is None else rng,
            a0=a0, c0=c0, engine=self.engine,
        )  # fmt: skip
        return self._sequence_out(outputs), tuple(self._states_out(v) for v in final), cache

    def dropout_generator(self) -> np.random.Generator:
        """The NumPy generator the training passes draw their dropout masks from (seeded
        by ``dropout_seed``); drawing from it advances it."""
        return self._dropout_rng

    def backward(self, d_outputs: Any, cache: Any, d_a_n: Any = None, d_c_n: Any = None):
        """Gradients of a :meth:`forward_train` pass: ``dWf_l0 ...`` plus ``dx, da0, dc0``.

        NumPy gradients given to a model on another backend move there, as inputs do.
        """
        features = self.directions * self.n_a
        grads = multilayer_backward(
            self._sequence_in("d_outputs", d_outputs, features), cache,
            self._states_in(d_a_n), self._states_in(d_c_n),
        )  # fmt: skip
        flat = {
            "dx": self._sequence_out(grads["dx"]),
            "da0": self._states_out(grads["da0"]),
            "dc0": self._states_out(grads["dc0"]),
        }
        flat.update(self.schema.to_flat(grads["layers"], prefix="d"))
        return flat

    # ------------------------------------------------------------------ moving, converting

    def to(self, backend: Any, *, device: Any = None) -> LSTM:
        """A copy of the model on another backend / device (this one is left as it is)."""
        clone = type(self)(
            self.n_x, self.n_a, num_layers=self.num_layers, bidirectional=self.bidirectional,
            dropout=self.dropout, layout=self.layout,
            parameters=to_backend(self._parameters, get_namespace(backend), device=device),
        )  # fmt: skip
        clone.engine = self.engine  # already checked (it may be fused=True's choice)
        clone._dropout_rng = copy.deepcopy(self._dropout_rng)  # the same masks from here on
        return clone

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
        engine: str = "auto", layout: str = "features_first",
    ) -> LSTM:  # fmt: skip
        """Load a checkpoint written by :meth:`save` onto ``backend`` and ``device``.

        ``engine`` and ``layout`` are how the loaded model runs (see :class:`LSTM`); the
        file holds the weights.

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
            parameters=parameters, layout=layout,
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
        fused: Any = None,
        layout: str = "features_first",
    ) -> LSTM:
        """Import a ``torch.nn.LSTM`` (or its ``state_dict``; see :func:`xlstm.convert.from_torch`).

        ``dropout`` defaults to the module's ``dropout`` (0 for a bare ``state_dict``);
        ``engine`` (``fused`` is its deprecated alias) as for :class:`LSTM`.  A GRU or plain
        RNN (module or weights), a module on the meta device, bfloat16 or mixed dtypes are
        refused by name.  ``layout`` is how the model is called (see :class:`LSTM`): pass
        ``"batch_first"`` or ``"time_major"`` to call it as the torch module is called.
        """
        # Checked before any weight is read.
        choice = engine_option(engine, fused, where="xlstm.LSTM.from_torch")
        weights = convert.from_torch(module, prefix=prefix, xp=backend, dtype=dtype, device=device)
        if dropout is None:
            dropout = float(getattr(module, "dropout", 0.0))
        model = cls(
            weights.n_x, weights.n_a, num_layers=weights.num_layers,
            bidirectional=weights.bidirectional, dropout=dropout,
            parameters=cls._weights_schema(weights).to_flat(weights.layers), layout=layout,
        )  # fmt: skip
        model.engine = choice
        return model

    def to_torch_state_dict(self, *, prefix: str = "", as_tensors: bool = False) -> dict[str, Any]:
        """A ``torch.nn.LSTM`` ``state_dict`` (bias in ``bias_ih``, zeros in ``bias_hh``)."""
        return convert.to_torch(
            self.layers, bidirectional=self.bidirectional, prefix=prefix, as_tensors=as_tensors
        )

    @classmethod
    def from_keras(
        cls, layer: Any, *, backend: Any = "numpy", device: Any = None, dtype: Any = None,
        engine: str = "auto", fused: Any = None,
    ) -> LSTM:  # fmt: skip
        """A model from a Keras 3 layer, or from one ``LSTM`` layer's ``get_weights()``.

        ``layer`` is a built ``keras.layers.LSTM``, ``keras.layers.Bidirectional(LSTM,
        merge_mode="concat")`` or ``keras.Sequential`` of them: every setting that changes
        what Keras computes is checked and a layer xlstm does not reproduce is refused naming
        the setting (:func:`xlstm.convert.from_keras_layer`).  A weight list (or dict) gives a
        one-layer model; the weights cannot tell the layer's activations, so that check is
        then the caller's.  ``engine`` and its alias ``fused`` as for :class:`LSTM`.
        """
        choice = engine_option(engine, fused, where="xlstm.LSTM.from_keras")
        if isinstance(layer, (list, tuple, Mapping)):
            gates = convert.from_keras(layer, xp=backend, dtype=dtype, device=device)
            n_a = int(gates["Wf"].shape[0])
            n_x = int(gates["Wf"].shape[1]) - n_a
            model = cls(n_x, n_a, parameters=Schema(n_x, n_a).to_flat([gates]))
        else:
            weights = convert.from_keras_layer(layer, xp=backend, dtype=dtype, device=device)
            model = cls(
                weights.n_x, weights.n_a, num_layers=weights.num_layers,
                bidirectional=weights.bidirectional,
                parameters=cls._weights_schema(weights).to_flat(weights.layers),
            )  # fmt: skip
        model.engine = choice
        return model

    def to_keras(self, *, use_bias: bool = True, as_layer: bool = False) -> Any:
        """The model for Keras 3: one layer's weights, or a built Keras layer of any model.

        By default the ``layer.set_weights(...)`` arrays ``[kernel, recurrent_kernel, bias]``
        of a Keras ``LSTM`` (one-layer, one-direction models); ``use_bias=False`` (a layer
        without bias) gives two arrays and requires the bias to be zero.  With
        ``as_layer=True``, the Keras equivalent of any model, built and filled: an ``LSTM``, a
        ``Bidirectional(LSTM, merge_mode="concat")`` or a ``Sequential`` of them
        (:func:`xlstm.convert.to_keras_layer`; imports ``keras``).
        """
        if not isinstance(as_layer, bool):
            raise TypeError(f"`as_layer` must be a bool, got {type(as_layer).__name__}")
        if as_layer:
            if use_bias is not True:
                raise ValueError("`as_layer=True` makes layers with bias; leave `use_bias` True")
            return convert.to_keras_layer(self)
        if self.num_layers != 1 or self.bidirectional:
            msg = (
                "a Keras LSTM layer is one layer, one direction: to_keras(as_layer=True) "
                "builds the Bidirectional / Sequential equivalent of this model"
            )
            raise ValueError(msg)
        return convert.to_keras(self.layers[0], use_bias=use_bias)

    @staticmethod
    def _weights_schema(weights: Any) -> Schema:
        """The schema of imported weights (:class:`xlstm.convert.weights.LSTMWeights`)."""
        return Schema(weights.n_x, weights.n_a, weights.num_layers, weights.bidirectional)


StackedLSTM = LSTM
"""Deprecated alias of :class:`LSTM` (the name before 0.2), kept for one release."""


__all__ = ["LSTM", "StackedLSTM", "parameter_key"]
