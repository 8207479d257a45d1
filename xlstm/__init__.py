"""xlstm: one LSTM written against the Python array API standard.

The same functions run on NumPy, CuPy, PyTorch, JAX and array-api-strict
arrays; the backend is inferred from the arguments.  The public API follows the
notebook (``lstm_cell_forward``, ``lstm_forward``, ``lstm_cell_backward``,
``lstm_backward``) with correct backpropagation through time.  Conventions are
stated once in :mod:`xlstm._layout`.

Beyond the seed: :class:`xlstm.LSTM` (the model: stacked, bidirectional, variable
lengths, save/load, PyTorch and Keras weights), :mod:`xlstm.training` (loss, optimisers,
character model, ``python -m xlstm train``), :mod:`xlstm.layers` (the functions under the
model), :mod:`xlstm.engines` (engine choice and switches), :mod:`xlstm.checkpoint`.
None of them, and nothing here, imports CuPy, PyTorch, JAX, numba, dask or onnx.
"""

from ._backend import BACKENDS, get_namespace, to_backend
from ._engines.cache import SequenceCache
from ._layout import GATE_ORDER, GATE_PARAMETERS, PARAMETER_KEYS
from .activations import sigmoid, softmax
from .cell import CellCache, lstm_cell_backward, lstm_cell_forward
from .engines import (
    ENGINE_CHOICES,
    graph_replay,
    release_workspace,
    resolve_engine,
    set_graph_replay,
)
from .model import LSTM, StackedLSTM
from .parameters import init_parameters
from .sequence import final_states, lstm_backward, lstm_forward

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "ENGINE_CHOICES",
    "GATE_ORDER",
    "GATE_PARAMETERS",
    "LSTM",
    "PARAMETER_KEYS",
    "CellCache",
    "SequenceCache",
    "StackedLSTM",
    "__version__",
    "final_states",
    "get_namespace",
    "graph_replay",
    "init_parameters",
    "lstm_backward",
    "lstm_cell_backward",
    "lstm_cell_forward",
    "lstm_forward",
    "release_workspace",
    "resolve_engine",
    "set_graph_replay",
    "sigmoid",
    "softmax",
    "to_backend",
]
