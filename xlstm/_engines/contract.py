"""The engine contract: what every sequence engine implements, written once.

An engine is a module with three functions (:class:`EngineModule`) and a description
(:class:`EngineSpec`) in the registry of :mod:`xlstm._engines.dispatch`, the one place
that decides which engine runs.

Layout at the boundary (time-major, batch in rows; see :mod:`xlstm._layout`)::

    x        (T, m, n_x)      any strides: the notebook's (n_x, m, T) array passes as a view
    h0, c0   (m, n_a)
    W        (4 n_a, n_a + n_x)   stacked in GATE_ORDER, columns [recurrent | input]
    b        (4 n_a,)
    da, dc   (T, m, n_a)      external gradients reaching h_t, c_t (dc may be None)
    dh_n, dc_n (m, n_a)       gradients reaching the final states (None: zero)
    lengths  host int64 (m,) or None, 1 <= lengths <= T (checked by the caller)

``forward`` returns a :class:`~xlstm._engines.cache.SequenceCache`; ``backward`` returns
``(dx (T, m, n_x), dh0 (m, n_a), dc0 (m, n_a), dW (4 n_a, n_a + n_x), db (4 n_a,))``.
Arrays are never modified in place; the returned arrays are new (or views of new arrays).

Capabilities are named on the spec so that the dispatcher can say *why* an engine cannot
run a call before anything is computed; an engine never falls back to another one itself.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from .cache import SequenceCache


class EngineModule(Protocol):
    """The functions of an engine module."""

    def unsupported_reason(
        self, xp: Any, dtype: Any, *, cache: SequenceCache | None = None
    ) -> str | None:
        """Why this engine cannot run on ``xp``/``dtype`` (or read ``cache``); ``None``: it can.

        Only what the :class:`EngineSpec` cannot state (a dtype list, the order of a
        cache's rows).  Must be cheap and must not import optional dependencies.
        """

    def forward(
        self, x: Any, h0: Any, c0: Any, W: Any, b: Any, *, xp: Any, recompute: bool,
        lengths: Any = None,
    ) -> SequenceCache:  # fmt: skip
        """Run the recurrence; ``recompute=True`` stores no gates (``cache.gates is None``)."""

    def backward(
        self, cache: SequenceCache, x: Any, da: Any, dc: Any, *, xp: Any,
        dh_n: Any = None, dc_n: Any = None,
    ) -> tuple[Any, Any, Any, Any, Any]:  # fmt: skip
        """Backpropagation through time: ``(dx, dh0, dc0, dW, db)``."""


@dataclass(frozen=True)
class EngineSpec:
    """One engine: where it lives and what it can do.

    Attributes
    ----------
    name : str
        What users pass as ``engine=``.
    module : str
        Module implementing :class:`EngineModule`, imported only when the engine runs.
    backends : tuple of str or None
        Backend names (:func:`xlstm._backend.backend_name`) it runs on; ``None``: all.
    requires : str or None
        Optional dependency (an importable module name) it needs, and ``extra``, the
        pip extra that installs it.
    supports_lengths : bool
        ``forward`` takes ``lengths`` and ``backward`` reads caches that have them.
    supports_final_state_grads : bool
        ``backward`` takes ``dh_n`` / ``dc_n``.
    threaded_directions : bool
        Its loops release the GIL: the layers may run the two directions of a
        bidirectional layer in two threads (:mod:`xlstm._threads`).
    """

    name: str
    module: str
    backends: tuple[str, ...] | None
    requires: str | None = None
    extra: str | None = None
    supports_lengths: bool = True
    supports_final_state_grads: bool = True
    threaded_directions: bool = False

    def installed(self) -> bool:
        """Whether the optional dependency is importable (checked without importing it)."""
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def load(self) -> ModuleType:
        """The engine module (imported on first use)."""
        return importlib.import_module(self.module)


@dataclass(frozen=True)
class Engine:
    """A selected engine: its spec and its module's functions."""

    spec: EngineSpec
    forward: Any
    backward: Any

    @property
    def name(self) -> str:
        return self.spec.name


__all__ = ["Engine", "EngineModule", "EngineSpec"]
