"""Public switches of the engines: which engine runs, CUDA-graph replay, NumPy workspace.

Engines (``engine=`` on :func:`xlstm.lstm_forward`, :func:`xlstm.lstm_backward`, the
layers, the loss and the models):

``"auto"``
    The backend's fastest engine that can run the call, else ``"generic"``.
``"generic"``
    The array-API reference: the standard only, every backend.
``"numpy"``
    NumPy with preallocated in-place buffers; variable lengths on a shrinking batch.
``"numba"``
    Compiled fused step kernels on NumPy arrays (the ``cpu`` extra).
``"cupy"``
    Fused CUDA kernels, optional CUDA-graph replay.

Nothing here imports CuPy or numba.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ._engines.dispatch import ENGINE_CHOICES, resolve_engine
from ._engines.numpy.workspace import release as release_workspace


def set_graph_replay(enabled: bool | None) -> None:
    """Turn CUDA-graph replay of the CuPy engine on (``True``) or off (``False``).

    ``None`` returns to the default: the environment variable ``XLSTM_CUPY_GRAPHS``
    (``1``/``0``) if set, else off.  Applies to the whole process; does not import CuPy.
    """
    from ._engines.cupy import engine

    engine.set_graph_replay(enabled)


def graph_replay_enabled() -> bool:
    """Whether the CuPy engine's next call replays CUDA graphs."""
    from ._engines.cupy import engine

    return engine.graph_replay_enabled()


@contextmanager
def graph_replay(enabled: bool | None) -> Iterator[None]:
    """Context manager form of :func:`set_graph_replay` (restores the previous setting)."""
    from ._engines.cupy import engine

    with engine.graph_replay(enabled):
        yield


__all__ = [
    "ENGINE_CHOICES",
    "graph_replay",
    "graph_replay_enabled",
    "release_workspace",
    "resolve_engine",
    "set_graph_replay",
]
