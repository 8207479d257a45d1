"""Parameter dicts: initialisation and the stacked engine layout.

The public form is the notebook's dict (``Wf, bf, Wi, bi, Wc, bc, Wo, bo, Wy, by``).
The engine works on one stacked weight ``W`` of shape ``(4 n_a, n_a + n_x)`` and
one bias ``b`` of shape ``(4 n_a,)`` in :data:`~xlstm._layout.GATE_ORDER`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._backend import get_namespace
from ._layout import GATE_ORDER, GATE_PARAMETERS


def pack(parameters: Mapping[str, Any], xp: Any) -> tuple[Any, Any]:
    """Stack the four gates' weights and biases in ``GATE_ORDER``.

    Returns ``W (4 n_a, n_a + n_x)`` and ``b (4 n_a,)``; new arrays, the
    parameters are not modified.
    """
    weights = [parameters[GATE_PARAMETERS[gate][0]] for gate in GATE_ORDER]
    biases = [parameters[GATE_PARAMETERS[gate][1]] for gate in GATE_ORDER]
    stacked_bias = xp.concat(biases, axis=0)
    return xp.concat(weights, axis=0), xp.reshape(stacked_bias, (stacked_bias.shape[0],))


def unpack_gradients(d_weights: Any, d_bias: Any, n_a: int, xp: Any) -> dict[str, Any]:
    """Split stacked gradients ``dW (4 n_a, ...)``, ``db (4 n_a,)`` into notebook keys."""
    gradients = {}
    for index, gate in enumerate(GATE_ORDER):
        rows = slice(index * n_a, (index + 1) * n_a)
        weight_key, bias_key = GATE_PARAMETERS[gate]
        gradients["d" + weight_key] = d_weights[rows, :]
        gradients["d" + bias_key] = xp.reshape(d_bias[rows], (n_a, 1))
    return gradients


def _resolve_dtype(xp: Any, dtype: Any) -> Any:
    if isinstance(dtype, str):
        if dtype not in ("float16", "float32", "float64"):
            msg = f"`dtype` = {dtype!r}; expected 'float32', 'float64' (or 'float16')"
            raise TypeError(msg)
        return getattr(xp, dtype)
    if dtype is None:
        raise TypeError("`dtype` is None; expected 'float32' or 'float64'")
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"`dtype` = {dtype!r} is not a real floating dtype")
    return dtype


def _generator(seed: Any) -> np.random.Generator:
    """``seed`` as a Generator: ``None``, a non-negative (NumPy) int, a ``SeedSequence``
    or ``BitGenerator``, or a Generator itself (used as it is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (np.random.SeedSequence, np.random.BitGenerator)):
        return np.random.default_rng(seed)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        msg = (
            f"`seed` must be None, a non-negative int or a numpy.random.Generator, "
            f"got {type(seed).__name__}"
        )
        raise TypeError(msg)
    if seed < 0:
        raise ValueError(f"`seed` = {seed}; expected a non-negative int")
    return np.random.default_rng(int(seed))


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    # QR of a Gaussian matrix, signs fixed by diag(R), gives a Haar-uniform
    # orthogonal matrix (Mezzadri 2007).
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def init_parameters(
    n_x: int,
    n_a: int,
    n_y: int,
    *,
    xp: Any = "numpy",
    dtype: Any = "float32",
    seed: int | np.random.Generator | None = None,
    device: Any = None,
    forget_bias: float = 1.0,
) -> dict[str, Any]:
    r"""Initialise the notebook's parameter dict on a backend.

    The scheme is Keras's default for LSTMs: the input columns of each gate
    weight are Glorot-uniform, :math:`U(-\sqrt{6/(n_x + n_a)}, \sqrt{6/(n_x + n_a)})`;
    the recurrent columns of each gate are a random orthogonal ``(n_a, n_a)``
    matrix (keeps the recurrent map norm-preserving at the start); gate biases
    are zero except the forget gate's, ``forget_bias`` (1 by default, as
    recommended by Jozefowicz et al., 2015, so the cell remembers at the
    start); ``Wy`` is Glorot-uniform and ``by`` zero.

    Parameters
    ----------
    n_x, n_a, n_y : int
        Input features, hidden units, output classes (all >= 1).
    xp : str or namespace, default "numpy"
        Backend (see :func:`get_namespace`).
    dtype : str or dtype, default "float32"
    seed : int or numpy.random.Generator, optional
        A non-negative int (or ``SeedSequence``); a Generator is drawn from as it is.
        Random numbers are drawn on the host with NumPy, so a seed gives the
        same values on every backend.
    device : optional
        Device in the backend's terms.  Default: the backend's default.
    forget_bias : float, default 1.0
        Must be finite.

    Returns
    -------
    dict
        ``Wf, Wi, Wc, Wo`` of shape ``(n_a, n_a + n_x)``, ``bf, bi, bc, bo``
        of shape ``(n_a, 1)``, ``Wy (n_y, n_a)``, ``by (n_y, 1)``.
    """
    sizes = []
    for name, value in (("n_x", n_x), ("n_a", n_a), ("n_y", n_y)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"`{name}` = {value}; expected a positive size")
        sizes.append(int(value))
    n_x, n_a, n_y = sizes
    if isinstance(forget_bias, (bool, np.bool_)) or not isinstance(
        forget_bias, (int, float, np.integer, np.floating)
    ):
        kind = type(forget_bias).__name__
        raise TypeError(f"`forget_bias` must be a real number, got {kind}")
    if not np.isfinite(forget_bias):
        raise ValueError(f"`forget_bias` = {forget_bias}; expected a finite number")
    rng = _generator(seed)
    namespace = get_namespace(xp)
    target_dtype = _resolve_dtype(namespace, dtype)

    input_limit = np.sqrt(6.0 / (n_x + n_a))
    host = {}
    for gate in ("f", "i", "c", "o"):
        recurrent = _orthogonal(rng, n_a)
        inputs = rng.uniform(-input_limit, input_limit, size=(n_a, n_x))
        host["W" + gate] = np.concatenate([recurrent, inputs], axis=1)
        host["b" + gate] = np.zeros((n_a, 1))
    host["bf"] = np.full((n_a, 1), float(forget_bias))
    output_limit = np.sqrt(6.0 / (n_a + n_y))
    host["Wy"] = rng.uniform(-output_limit, output_limit, size=(n_y, n_a))
    host["by"] = np.zeros((n_y, 1))

    parameters = {}
    for key in ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo", "Wy", "by"):
        array = namespace.asarray(host[key], dtype=target_dtype, device=device)
        if array.dtype != target_dtype:
            # JAX silently makes float32 from float64 unless x64 is enabled.
            msg = (
                f"backend {xp!r} created {array.dtype} instead of {target_dtype}; "
                "for float64 on JAX call jax.config.update('jax_enable_x64', True) first"
            )
            raise TypeError(msg)
        parameters[key] = array
    return parameters
