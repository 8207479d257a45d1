"""Choosing the engine: the generic path or a backend's fast path.

``fused`` is three-valued, as in Keras's ``use_cudnn``:

* ``"auto"`` (default): the backend's fast path when it has one and it accepts
  the inputs, otherwise the generic path;
* ``False``: always the generic array-API path (tests, benchmarks, debugging);
* ``True``: the fast path or a ``ValueError`` saying why it cannot run.

A fast path that is chosen runs; exceptions inside it propagate (no silent
fallback).  Fast paths are imported only when selected, so ``import xlstm``
never imports CuPy.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from . import _engine
from ._backend import backend_name

FAST_PATHS = {"numpy": "xlstm._numpy.engine", "cupy": "xlstm._cupy.engine"}
"""Backend name -> module with ``unsupported_reason, forward, backward``."""


def select_engine(xp: Any, dtype: Any, fused: Any) -> ModuleType:
    """Return the engine module to run for namespace ``xp`` and ``dtype``."""
    if fused not in ("auto", True, False) or fused is None:
        msg = f"`fused` = {fused!r}; expected 'auto', True or False"
        raise TypeError(msg)
    if fused is False:
        return _engine
    name = backend_name(xp)
    if name not in FAST_PATHS:
        if fused is True:
            msg = f"`fused=True` but backend {name!r} has no fast path; pass fused='auto' or False"
            raise ValueError(msg)
        return _engine
    fast = importlib.import_module(FAST_PATHS[name])
    reason = fast.unsupported_reason(xp, dtype)
    if reason is None:
        return fast
    if fused is True:
        msg = (
            f"`fused=True` but the {name} fast path cannot run: {reason}; "
            "pass fused='auto' or False"
        )
        raise ValueError(msg)
    return _engine
