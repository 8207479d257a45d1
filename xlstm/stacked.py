"""A model object for stacked / bidirectional LSTMs: :class:`StackedLSTM`.

Shape legend: ``x (n_x, m, T)``; ``outputs (D n_a, m, T)`` with ``D = 2`` when bidirectional;
states ``a, c (num_layers * D, n_a, m)`` in ``torch.nn.LSTM``'s order; gate order
:data:`xlstm.GATE_ORDER` = (i, f, o, g).

The model holds one flat parameter dict whose keys name the layer and direction the way
``torch.nn.LSTM`` does: ``Wf_l0, bf_l0, ..., Wf_l0_reverse, ..., Wf_l1, ...``.  Gradients come
back as ``dWf_l0`` ..., so the optimisers of :mod:`xlstm.training.optim` (which pair
``parameters[k]`` with ``grads["d" + k]``) work on them unchanged.  Arrays are never modified
in place; :meth:`StackedLSTM.load_parameters` replaces the dict.

It is the functional :func:`xlstm.layers.multilayer_forward` /
:func:`~xlstm.layers.multilayer_backward` with the parameters, the backend and a seeded
dropout generator attached.  ``StackedLSTM.from_torch(module)`` imports a ``torch.nn.LSTM``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import array_api_compat
import numpy as np

from . import convert
from ._backend import backend_name, get_namespace, namespace_of, to_backend
from .layers import GATE_KEYS, multilayer_backward, multilayer_forward
from .parameters import init_parameters


def parameter_key(key: str, layer: int, reverse: bool) -> str:
    """Flat key of one gate parameter: ``parameter_key("Wf", 1, True) == "Wf_l1_reverse"``."""
    return f"{key}_l{layer}" + ("_reverse" if reverse else "")


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"`{name}` = {value}; expected >= 1")
    return int(value)


class StackedLSTM:
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
    fused : {"auto", True, False}, default "auto"
        Fast path of the recurrence, as in :func:`xlstm.lstm_forward`.
    parameters : dict, optional
        Start from these arrays (flat keys, see the module docstring) instead.
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
        fused: Any = "auto",
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.n_x = _check_size("n_x", n_x)
        self.n_a = _check_size("n_a", n_a)
        self.num_layers = _check_size("num_layers", num_layers)
        if not isinstance(bidirectional, bool):
            raise TypeError(f"`bidirectional` must be a bool, got {type(bidirectional).__name__}")
        self.bidirectional = bidirectional
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise TypeError(f"`dropout` must be a float in [0, 1), got {type(dropout).__name__}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` = {dropout}; expected a value in [0, 1)")
        self.dropout = float(dropout)
        self.fused = fused
        init_seed, dropout_seed = np.random.SeedSequence(seed).spawn(2)
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
                        parameters[parameter_key(key, layer, reverse)] = gates[key]
        self._parameters = self._checked(parameters)
        self.xp = namespace_of(self._parameters)

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
            parameter_key(key, layer, reverse)
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
                flat = parameter_key(key, index // self.directions, index % self.directions == 1)
                got = tuple(int(s) for s in layer[key].shape)
                if got != want:
                    raise ValueError(f"`parameters[{flat!r}]` has shape {got}; expected {want}")
        return {key: parameters[key] for key in expected}

    def _layers_of(self, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            {key: parameters[parameter_key(key, layer, reverse)] for key in GATE_KEYS}
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
        """Replace the parameters (e.g. after an optimiser step); keys and shapes checked."""
        checked = self._checked(parameters)
        namespace_of(checked, xp=self.xp)
        self._parameters = checked

    def __repr__(self) -> str:
        return (
            f"StackedLSTM(n_x={self.n_x}, n_a={self.n_a}, num_layers={self.num_layers}, "
            f"bidirectional={self.bidirectional}, dropout={self.dropout}, "
            f"backend={self.backend!r}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ computing

    def _input(self, x: Any) -> Any:
        if isinstance(x, np.ndarray) and self.backend != "numpy":
            return self.xp.asarray(x, dtype=self.dtype, device=self.device)
        return x

    def _state(self, state: Any) -> tuple[Any, Any]:
        if state is None:
            return None, None
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError("`state` must be None or an (a0, c0) tuple")
        return self._input(state[0]), self._input(state[1])

    def forward(self, x: Any, lengths: Any = None, state: Any = None) -> tuple[Any, Any]:
        """Evaluation pass (no dropout): ``(outputs, (a_n, c_n))``."""
        a0, c0 = self._state(state)
        outputs, final, _ = multilayer_forward(
            self._input(x), self.layers, bidirectional=self.bidirectional, lengths=lengths,
            training=False, a0=a0, c0=c0, fused=self.fused,
        )  # fmt: skip
        return outputs, final

    __call__ = forward

    def forward_train(self, x: Any, lengths: Any = None, state: Any = None):
        """Training pass (dropout on): ``(outputs, (a_n, c_n), cache)`` for :meth:`backward`."""
        a0, c0 = self._state(state)
        return multilayer_forward(
            self._input(x), self.layers, bidirectional=self.bidirectional, lengths=lengths,
            dropout=self.dropout, seed=self._dropout_rng, training=True, a0=a0, c0=c0,
            fused=self.fused,
        )  # fmt: skip

    def backward(self, d_outputs: Any, cache: Any, d_a_n: Any = None, d_c_n: Any = None):
        """Gradients of a :meth:`forward_train` pass: ``dWf_l0 ...`` plus ``dx, da0, dc0``."""
        grads = multilayer_backward(d_outputs, cache, d_a_n, d_c_n)
        flat = {key: grads[key] for key in ("dx", "da0", "dc0")}
        for index, layer_grads in enumerate(grads["layers"]):
            layer, direction = divmod(index, self.directions)
            for key in GATE_KEYS:
                flat["d" + parameter_key(key, layer, direction == 1)] = layer_grads["d" + key]
        return flat

    # ------------------------------------------------------------------ moving, converting

    def to(self, backend: Any, *, device: Any = None) -> StackedLSTM:
        """A copy of the model on another backend / device (this one is left as it is)."""
        return StackedLSTM(
            self.n_x, self.n_a, num_layers=self.num_layers, bidirectional=self.bidirectional,
            dropout=self.dropout, fused=self.fused,
            parameters=to_backend(self._parameters, get_namespace(backend), device=device),
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
        fused: Any = "auto",
    ) -> StackedLSTM:
        """Import a ``torch.nn.LSTM`` (or its ``state_dict``; see :func:`xlstm.convert.from_torch`).

        ``dropout`` defaults to the module's ``dropout`` (0 for a bare ``state_dict``).
        """
        weights = convert.from_torch(module, prefix=prefix, xp=backend, dtype=dtype, device=device)
        if dropout is None:
            dropout = float(getattr(module, "dropout", 0.0))
        parameters = {}
        for index, layer in enumerate(weights.layers):
            number, direction = divmod(index, 2 if weights.bidirectional else 1)
            for key in GATE_KEYS:
                parameters[parameter_key(key, number, direction == 1)] = layer[key]
        return cls(
            weights.n_x, weights.n_a, num_layers=weights.num_layers,
            bidirectional=weights.bidirectional, dropout=dropout, fused=fused,
            parameters=parameters,
        )  # fmt: skip

    def to_torch_state_dict(self, *, prefix: str = "", as_tensors: bool = False) -> dict[str, Any]:
        """A ``torch.nn.LSTM`` ``state_dict`` (bias in ``bias_ih``, zeros in ``bias_hh``)."""
        return convert.to_torch(
            self.layers, bidirectional=self.bidirectional, prefix=prefix, as_tensors=as_tensors
        )


__all__ = ["StackedLSTM", "parameter_key"]
