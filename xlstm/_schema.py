"""The parameter schema of an LSTM: keys, shapes, layers x directions, written once.

A model's parameters are one flat dict whose keys name the layer and direction the way
``torch.nn.LSTM`` names its own (see :func:`xlstm._layout.layer_key`)::

    Wf_l0, bf_l0, Wi_l0, ..., bo_l0,            layer 0, forward     W* (n_a, n_a + n_x)
    Wf_l0_reverse, ..., bo_l0_reverse,          layer 0, reverse     b* (n_a, 1)
    Wf_l1, ...                                  layer 1, ...         W* (n_a, n_a + D n_a)
    Wy, by                                      output layer, if any (n_y, D n_a), (n_y, 1)

The same parameters as :func:`xlstm.layers.multilayer_forward`'s ``layers`` list are one
seed-keyed dict (``Wf, bf, ..., bo``) per layer and direction, in the same order ("units").
:class:`Schema` converts between the two and checks a dict against the sizes; the models,
the layers, checkpoints and converters read it from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._layout import GATE_KEYS, OUTPUT_KEYS, layer_key


@dataclass(frozen=True)
class Schema:
    """Sizes of a stacked, optionally bidirectional LSTM (and its output layer).

    Parameters
    ----------
    n_x, n_a : int
        Input features and hidden units per direction.
    num_layers : int, default 1
    bidirectional : bool, default False
    n_y : int, optional
        Classes of a softmax output layer (``Wy``, ``by``); ``None``: no output layer.
    """

    n_x: int
    n_a: int
    num_layers: int = 1
    bidirectional: bool = False
    n_y: int | None = None

    @property
    def directions(self) -> int:
        """``D``: 2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    def units(self) -> Iterator[tuple[int, bool]]:
        """``(layer, reverse)`` of every layer and direction, in ``torch.nn.LSTM`` order."""
        for layer in range(self.num_layers):
            yield layer, False
            if self.bidirectional:
                yield layer, True

    def input_size(self, layer: int) -> int:
        """``n_in`` of ``layer``: ``n_x`` for layer 0, ``D n_a`` above."""
        return self.n_x if layer == 0 else self.directions * self.n_a

    def gate_shapes(self, layer: int) -> dict[str, tuple[int, int]]:
        """Seed gate key -> shape of one direction of ``layer``."""
        weight, bias = (self.n_a, self.n_a + self.input_size(layer)), (self.n_a, 1)
        return {key: weight if key[0] == "W" else bias for key in GATE_KEYS}

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Every flat key and its shape, in order (gates, then ``Wy``, ``by`` if any)."""
        shapes = {
            layer_key(key, layer, reverse): shape
            for layer, reverse in self.units()
            for key, shape in self.gate_shapes(layer).items()
        }
        if self.n_y is not None:
            # The output layer reads the last layer's outputs, both directions concatenated.
            features = self.directions * self.n_a
            shapes[OUTPUT_KEYS[0]], shapes[OUTPUT_KEYS[1]] = (self.n_y, features), (self.n_y, 1)
        return shapes

    def keys(self) -> list[str]:
        """The flat keys in order."""
        return list(self.shapes())

    def to_layers(self, flat: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The flat dict's gate parameters as a ``layers`` list of seed-keyed dicts."""
        return [
            {key: flat[layer_key(key, layer, reverse)] for key in GATE_KEYS}
            for layer, reverse in self.units()
        ]

    def to_flat(self, layers: Sequence[Mapping[str, Any]], prefix: str = "") -> dict[str, Any]:
        """A ``layers`` list (of parameters, or with ``prefix="d"`` of gradients) as a
        flat dict."""
        return {
            prefix + layer_key(key, layer, reverse): unit[prefix + key]
            for (layer, reverse), unit in zip(self.units(), layers, strict=True)
            for key in GATE_KEYS
        }

    def check(self, parameters: Any, name: str = "parameters") -> dict[str, Any]:
        """Check keys and shapes of a flat dict; return a new dict in schema order.

        Raises
        ------
        TypeError
            ``parameters`` is not a dict.
        ValueError
            A key is missing or unexpected, or an array has the wrong shape.
        """
        if not isinstance(parameters, Mapping):
            raise TypeError(f"`{name}` must be a dict of arrays, got {type(parameters).__name__}")
        expected = self.shapes()
        missing = [key for key in expected if key not in parameters]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(f"`{name}` is missing {missing[0]!r}{more}")
        extra = sorted(set(parameters) - set(expected), key=str)
        if extra:
            raise ValueError(f"`{name}` has an unexpected key {extra[0]!r}")
        sizes = "(n_x, n_a)", (self.n_x, self.n_a)
        if self.n_y is not None:
            sizes = "(n_x, n_a, n_y)", (self.n_x, self.n_a, self.n_y)
        for key, shape in expected.items():
            value = parameters[key]
            got = tuple(int(s) for s in getattr(value, "shape", ()))
            if got != shape:
                msg = f"`{name}[{key!r}]` has shape {got}; expected {shape} for sizes {sizes[0]} = "
                raise ValueError(msg + str(sizes[1]))
        return {key: parameters[key] for key in expected}


__all__ = ["Schema"]
