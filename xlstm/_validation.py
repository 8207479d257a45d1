"""Shape checks with messages that name the argument and the expectation.

Types, libraries, devices and dtypes are checked by ``_backend.namespace_of``;
this module checks shapes and sizes, always before any computation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from ._layout import PARAMETER_KEYS


class MissingParameterError(KeyError, ValueError):
    """A parameter dict lacks a key (a ``KeyError`` that is also a ``ValueError``)."""

    def __str__(self) -> str:
        # KeyError's own __str__ shows the repr of the message, quotes and all.
        return str(self.args[0])


class Sizes(NamedTuple):
    """Sizes of an LSTM, read off its parameters."""

    n_x: int
    n_a: int
    n_y: int


def shape_of(array: Any) -> tuple[int, ...]:
    return tuple(int(size) for size in array.shape)


def check_parameter_dict(parameters: Any, keys: tuple[str, ...] = PARAMETER_KEYS) -> None:
    """``parameters`` is a mapping holding every key in ``keys`` (no ``None``)."""
    if not isinstance(parameters, Mapping):
        msg = f"`parameters` must be a dict of arrays, got {type(parameters).__name__}"
        raise TypeError(msg)
    missing = [key for key in keys if key not in parameters]
    if missing:
        msg = f"`parameters` is missing {', '.join(repr(k) for k in missing)}; expected keys {keys}"
        raise MissingParameterError(msg)


def named_parameters(parameters: Mapping[str, Any], keys=PARAMETER_KEYS) -> dict[str, Any]:
    """The parameter arrays keyed by how messages should name them."""
    return {f"parameters[{key!r}]": parameters[key] for key in keys}


def parameter_sizes(parameters: Mapping[str, Any], *, need_output: bool = True) -> Sizes:
    """Read ``n_x, n_a, n_y`` from the weights and check every parameter's shape."""
    gate_weights = ("Wf", "Wi", "Wc", "Wo")
    for key in gate_weights:
        if parameters[key].ndim != 2:
            msg = (
                f"`parameters[{key!r}]` must be 2-D (n_a, n_a + n_x), "
                f"got shape {shape_of(parameters[key])}"
            )
            raise ValueError(msg)
    # The sizes are the shape most of the four gate weights agree on, so that
    # one badly shaped weight is the one named in the error.
    shapes = [shape_of(parameters[key]) for key in gate_weights]
    n_a, n_concat = max(shapes, key=shapes.count)
    n_x = n_concat - n_a
    if n_a < 1 or n_x < 1:
        msg = (
            f"the gate weights have shape {(n_a, n_concat)}; expected (n_a, n_a + n_x) "
            "with n_a >= 1 and n_x >= 1"
        )
        raise ValueError(msg)
    n_y = 0
    if need_output:
        wy = parameters["Wy"]
        if wy.ndim != 2 or wy.shape[1] != n_a or wy.shape[0] < 1:
            msg = (
                f"`parameters['Wy']` has shape {shape_of(wy)}; expected (n_y, n_a) with n_a = {n_a}"
            )
            raise ValueError(msg)
        n_y = int(wy.shape[0])
    expected = {
        "W": (n_a, n_a + n_x),
        "b": (n_a, 1),
    }
    legends = {"W": "(n_a, n_a + n_x)", "b": "(n_a, 1)"}
    for key in ("Wf", "Wi", "Wc", "Wo", "bf", "bi", "bc", "bo"):
        kind = key[0]
        check_shape(f"parameters[{key!r}]", parameters[key], expected[kind], legends[kind])
    if need_output:
        check_shape("parameters['by']", parameters["by"], (n_y, 1), "(n_y, 1)")
    return Sizes(n_x, n_a, n_y)


def check_shape(name: str, array: Any, expected: tuple[int, ...], legend: str) -> None:
    """Raise ``ValueError`` unless ``array.shape == expected``."""
    shape = shape_of(array)
    if shape != expected:
        msg = f"`{name}` has shape {shape}; expected {legend} = {expected}"
        raise ValueError(msg)


def sequence_sizes(x: Any, sizes: Sizes) -> tuple[int, int]:
    """Check ``x`` is ``(n_x, m, T_x)`` with ``m, T_x >= 1``; return ``(m, T_x)``."""
    if x.ndim != 3:
        msg = f"`x` must be 3-D (n_x, m, T_x), got {x.ndim}-D with shape {shape_of(x)}"
        raise ValueError(msg)
    n_x, m, t_x = shape_of(x)
    if n_x != sizes.n_x:
        msg = (
            f"`x` has shape {shape_of(x)} with n_x = {n_x}, but the weights expect "
            f"n_x = {sizes.n_x} (the gate weights are (n_a, n_a + n_x) = "
            f"({sizes.n_a}, {sizes.n_a + sizes.n_x}))"
        )
        raise ValueError(msg)
    _check_nonempty("x", x, m, t_x)
    return m, t_x


def step_batch(xt: Any, sizes: Sizes) -> int:
    """Check ``xt`` is ``(n_x, m)`` with ``m >= 1``; return ``m``."""
    if xt.ndim != 2:
        msg = f"`xt` must be 2-D (n_x, m), got {xt.ndim}-D with shape {shape_of(xt)}"
        raise ValueError(msg)
    n_x, m = shape_of(xt)
    if n_x != sizes.n_x:
        msg = (
            f"`xt` has shape {shape_of(xt)} with n_x = {n_x}, "
            f"but the weights expect n_x = {sizes.n_x}"
        )
        raise ValueError(msg)
    _check_nonempty("xt", xt, m, 1)
    return m


def _check_nonempty(name: str, array: Any, m: int, t_x: int) -> None:
    # Zero-sized batches and sequences are rejected rather than returned empty:
    # an empty sequence has no last state to report and usually means a bug upstream.
    if m == 0:
        raise ValueError(
            f"`{name}` has shape {shape_of(array)} with batch size m = 0; expected m >= 1"
        )
    if t_x == 0:
        raise ValueError(
            f"`{name}` has shape {shape_of(array)} with T_x = 0 time steps; expected T_x >= 1"
        )


def check_size(name: str, value: Any) -> int:
    """A positive int (Python or NumPy), or a ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"`{name}` = {value}; expected >= 1")
    return int(value)


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a Python bool: ``True``/``False`` or a NumPy bool (``np.True_``, what
    comparisons of NumPy scalars give); anything else is a ``TypeError`` naming ``name``.

    Ints (``1``, ``0``) are refused: a flag passed an int is usually an argument in the
    wrong place.
    """
    if not isinstance(value, (bool, np.bool_)):
        kind = type(value).__module__ + "." + type(value).__qualname__
        kind = kind.removeprefix("builtins.")
        raise TypeError(f"`{name}` must be a bool (True or False), got {value!r} ({kind})")
    return bool(value)


def check_dropout(dropout: Any) -> float:
    """A float in ``[0, 1)``, or a ``TypeError``/``ValueError`` naming ``dropout``."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)):
        raise TypeError(f"`dropout` must be a float in [0, 1), got {type(dropout).__name__}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"`dropout` = {dropout}; expected a value in [0, 1)")
    return float(dropout)


def check_seed(seed: Any) -> int | None:
    """``seed`` of a model as an int for ``numpy.random.SeedSequence`` (or ``None``).

    ``None``, a non-negative (NumPy) int, or a ``numpy.random.Generator`` (one int is drawn
    from it); anything else is a ``ValueError`` naming ``seed``.
    """
    if seed is None:
        return None
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` = {seed!r}; expected None, a non-negative int or a Generator")
    return int(seed)
