"""Choosing the engine: the one place that decides which engine runs a call.

Users name an engine with ``engine=``:

* ``"auto"`` (default): the backend's fastest engine that can run the call (NumPy:
  ``"numba"`` when numba is installed, else ``"numpy"``; CuPy: ``"cupy"``), otherwise
  ``"generic"``.  The choice is made from the engines' declared capabilities before
  anything runs; an engine that fails raises, nothing falls back after an exception.
* ``"generic"``: the array-API reference, on every backend.
* ``"numpy"``, ``"numba"``, ``"cupy"``: that engine, or a ``ValueError`` saying why it
  cannot run this call.

``fused=`` is kept as an alias, as in Keras's ``use_cudnn``: ``fused=False`` is
``engine="generic"``, ``fused=True`` asks for the backend's fast path (the first of its
engines that can run, or a ``ValueError``), ``fused="auto"`` is ``engine="auto"``.

Engines are imported only when selected, so ``import xlstm`` never imports CuPy or numba.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from .._backend import backend_name, get_namespace
from .cache import SequenceCache
from .contract import Engine, EngineSpec

ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("generic", "xlstm._engines.generic", backends=None),
        EngineSpec("numpy", "xlstm._engines.numpy.engine", ("numpy",), threaded_directions=True),
        EngineSpec(
            "numba", "xlstm._engines.numba.engine", ("numpy",), requires="numba", extra="cpu",
            threaded_directions=True,
        ),
        EngineSpec(
            "cupy", "xlstm._engines.cupy.engine", ("cupy",), requires="cupy", extra="cuda12",
            supports_lengths=True, supports_final_state_grads=True,
        ),
    )
}  # fmt: skip
"""Every engine, by the name users pass as ``engine=``."""

AUTO_ORDER: dict[str, tuple[str, ...]] = {"numpy": ("numba", "numpy"), "cupy": ("cupy",)}
"""Per backend, the fast engines ``"auto"`` tries in turn before ``"generic"``."""

ENGINE_CHOICES = ("auto", *ENGINES)
"""What ``engine=`` accepts."""

_FAST = "fast"  # internal: what ``fused=True`` asks for


def engine_option(engine: Any = "auto", fused: Any = None, *, where: str | None = None) -> str:
    """Check ``engine=`` and the ``fused=`` alias; return one engine choice.

    ``fused=`` is the 0.1 seed functions' spelling; ``where`` names any other caller
    (``"xlstm.LSTM"``, ...), which then warns that the alias is deprecated there.

    Raises
    ------
    TypeError
        ``engine`` not a str, ``fused`` not ``True``/``False``/``"auto"`` (``0`` is not
        ``False``), or both given.
    ValueError
        An unknown engine name.
    """
    if not isinstance(engine, str):
        msg = f"`engine` must be one of {ENGINE_CHOICES}, got {type(engine).__name__}"
        raise TypeError(msg)
    if engine not in ENGINE_CHOICES:
        raise ValueError(f"`engine` = {engine!r}; expected one of {ENGINE_CHOICES}")
    if fused is None:
        return engine
    if not (fused is True or fused is False or (isinstance(fused, str) and fused == "auto")):
        raise TypeError(f"`fused` = {fused!r}; expected 'auto', True or False (or use `engine=`)")
    if engine != "auto":
        msg = f"pass `engine=` or its alias `fused=`, not both (engine={engine!r}, fused={fused!r})"
        raise TypeError(msg)
    if where is not None:
        msg = (
            f"`fused=` is deprecated for {where}; pass engine='auto', 'generic' or a named "
            "engine (fused=True: the backend's fast engine, e.g. engine='numba')"
        )
        warnings.warn(msg, DeprecationWarning, stacklevel=3)
    if fused is True:
        return _FAST
    return "generic" if fused is False else "auto"


def _reason(
    spec: EngineSpec, xp: Any, dtype: Any, lengths: bool, final: bool, cache: Any
) -> str | None:
    """Why ``spec`` cannot run this call, from its declared capabilities; ``None``: it can."""
    backend = backend_name(xp)
    if spec.backends is not None and backend not in spec.backends:
        return f"it runs on {' or '.join(spec.backends)} arrays, these are {backend} arrays"
    if spec.requires != backend and not spec.installed():  # holding cupy arrays: cupy is there
        return f"{spec.requires} is not installed (pip install -e '.[{spec.extra}]' from a clone)"
    if lengths and not spec.supports_lengths:
        return "it does not support variable-length batches (`lengths`)"
    if final and not spec.supports_final_state_grads:
        return "it does not support gradients of the final states (`da_n`, `dc_n`)"
    return spec.load().unsupported_reason(xp, dtype, cache=cache)


@functools.cache
def _engine(name: str) -> Engine:
    module = ENGINES[name].load()
    return Engine(ENGINES[name], module.forward, module.backward)


def select_engine(
    xp: Any,
    dtype: Any,
    engine: str = "auto",
    *,
    lengths: bool = False,
    final_state_grads: bool = False,
    cache: SequenceCache | None = None,
) -> Engine:
    """The engine to run: the only function in xlstm that decides.

    Parameters
    ----------
    xp : namespace
        The call's array namespace.
    dtype : dtype
        The call's floating dtype.
    engine : str
        What :func:`engine_option` returned.
    lengths : bool
        The call has a variable-length batch (forward) or a cache with lengths (backward).
    final_state_grads : bool
        Backward takes gradients of the final states.
    cache : SequenceCache, optional
        Backward: the cache the engine must read.

    Raises
    ------
    ValueError
        A named engine (or ``fused=True``) cannot run this call; the message says why.
    """
    lengths = lengths or (cache is not None and cache.lengths is not None)
    needs = (xp, dtype, lengths, final_state_grads, cache)
    if engine in ("auto", _FAST):
        reasons = []
        for name in AUTO_ORDER.get(backend_name(xp), ()):
            reason = _reason(ENGINES[name], *needs)
            if reason is None:
                return _engine(name)
            reasons.append(f"{name}: {reason}")
        if engine == _FAST:
            why = "; ".join(reasons) if reasons else "this backend has none"
            msg = (
                f"`fused=True` but no fast path of backend {backend_name(xp)!r} can run this "
                f"call ({why}); pass engine='auto' or engine='generic'"
            )
            raise ValueError(msg)
        return _engine("generic")
    reason = _reason(ENGINES[engine], *needs)
    if reason is not None:
        raise ValueError(f"`engine={engine!r}` cannot run this call: {reason}")
    return _engine(engine)


def resolve_engine(
    backend: Any = "numpy",
    dtype: Any = "float32",
    engine: str = "auto",
    *,
    lengths: bool = False,
    final_state_grads: bool = False,
) -> str:
    """The name of the engine that would run a call (nothing is computed).

    Parameters
    ----------
    backend : str or namespace, default "numpy"
    dtype : str or dtype, default "float32"
    engine : {"auto", "generic", "numpy", "numba", "cupy"}, default "auto"
    lengths, final_state_grads : bool
        The call has a variable-length batch / gradients of the final states.

    Raises
    ------
    ValueError
        A named engine cannot run such a call (the message says why).

    Examples
    --------
    >>> import xlstm
    >>> xlstm.resolve_engine("numpy", "float64", "generic")
    'generic'
    """
    xp = get_namespace(backend)
    if isinstance(dtype, str):
        dtype = getattr(xp, dtype) if backend_name(xp) != "numpy" else np.dtype(dtype)
    choice = engine_option(engine)
    selected = select_engine(
        xp, dtype, choice, lengths=lengths, final_state_grads=final_state_grads
    )
    return selected.name


__all__ = [
    "AUTO_ORDER",
    "ENGINES",
    "ENGINE_CHOICES",
    "engine_option",
    "resolve_engine",
    "select_engine",
]
