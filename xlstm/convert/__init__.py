"""Weights from and to ``torch.nn.LSTM``, Keras 3 ``LSTM`` layers and ONNX ``LSTM`` graphs.

The torch and Keras converters are in :mod:`xlstm.convert.weights`; ONNX export and import
(:func:`to_onnx`, :func:`from_onnx`) in :mod:`xlstm.convert.onnx`, which imports ``onnx``
only when called.

Gate orders (the one thing to get right):

* xlstm: :data:`xlstm.GATE_ORDER` = (i, f, o, g); seed keys ``Wi, Wf, Wo, Wc`` (``Wc`` is the
  candidate ``g``), each ``(n_a, n_a + n_in)`` with columns ``[recurrent | input]``, biases
  ``(n_a, 1)``.
* PyTorch: :data:`TORCH_GATE_ORDER` = (i, f, g, o); ``weight_ih_l{k}{sfx} (4 n_a, n_in)``,
  ``weight_hh_l{k}{sfx} (4 n_a, n_a)``, ``bias_ih_l{k}{sfx}``, ``bias_hh_l{k}{sfx} (4 n_a,)``
  with ``sfx`` = ``""`` or ``"_reverse"``; the two biases are always added, so import folds
  them into one and export writes the bias into ``bias_ih`` and zeros into ``bias_hh``.
* Keras 3: :data:`KERAS_GATE_ORDER` = (i, f, c, o), ``c`` being the candidate ``g``;
  ``kernel (n_in, 4 n_a)``, ``recurrent_kernel (n_a, 4 n_a)``, ``bias (4 n_a,)``; gates are
  ``x @ kernel + h @ recurrent_kernel + bias`` (the transpose of ours, row vectors).  Only
  the defaults ``activation="tanh"``, ``recurrent_activation="sigmoid"`` compute what
  xlstm computes: given a layer, :func:`from_keras_layer` checks them (and every other
  setting that changes the computation); bare weights cannot tell.

Lists of layers follow ``torch.nn.LSTM``'s order (layer 0, layer 0 reverse, layer 1, ...),
as :func:`xlstm.layers.multilayer_forward` takes them.  Every array is read through the host
(NumPy), so any backend's arrays and torch tensors (also ones that require grad) are
accepted; results are put on ``xp`` (NumPy by default) with ``xp.asarray``.
"""

from __future__ import annotations

from typing import Any

from .weights import (
    KERAS_GATE_ORDER,
    TORCH_GATE_ORDER,
    LSTMWeights,
    from_keras,
    from_keras_layer,
    from_torch,
    to_keras,
    to_keras_layer,
    to_torch,
)

# --------------------------------------------------------------------------- ONNX
# The code lives in xlstm.convert.onnx, imported on call: `import xlstm` never imports onnx.


def to_onnx(
    model: Any,
    path: Any = None,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    dynamic_time: bool = True,
    batch_size: int | None = None,
    time_steps: int | None = None,
    initial_state: bool = False,
    sequence_lens: bool = False,
    output: str | None = None,
    dtype: str | None = None,
) -> Any:
    """An ONNX model of an LSTM (or of a character model: LSTM plus output layer).

    One ONNX ``LSTM`` node per layer; between layers the node's ``Y (T, D, m, n_a)`` becomes
    ``(T, m, D n_a)``.  Gate order: xlstm (i, f, o, g) is written as ONNX's (i, o, f, c);
    the bias goes into ``Wb`` and zeros into ``Rb`` of ``B (D, 8 n_a)``.

    Parameters
    ----------
    model : xlstm.LSTM, LSTMWeights or character model
        Anything with ``layers``, ``bidirectional``, ``n_x``, ``n_a`` (torch order, any
        backend), or a model whose ``parameters`` hold ``Wy (n_y, n_a)``, ``by (n_y, 1)``
        and whose ``.lstm`` is the recurrent part (a one-layer model holding the seed's
        flat dict ``Wf ... by`` also works).  float32 or float64.
    path : str or path, optional
        Also write the model there (atomically: a temporary file, then ``os.replace``).
    opset : int, optional
        Default :data:`xlstm.convert.onnx.DEFAULT_OPSET` (21: written by onnx >= 1.16 and run by
        onnxruntime >= 1.18, the extra's lower bounds); 13 up to what the installed onnx knows.
    dynamic_batch, dynamic_time : bool, default True
        Symbolic ``m`` and ``T``; with ``False``, ``batch_size`` / ``time_steps`` fix them.
    initial_state : bool, default False
        Add graph inputs ``initial_h``, ``initial_c`` ``(L D, m, n_a)``, torch's order;
        without them every sequence starts from zeros.
    sequence_lens : bool, default False
        Add the graph input ``sequence_lens (m,)`` int32, ``1 <= sequence_lens[j] <= T``: as
        xlstm's ``lengths``, outputs past each end are zero, ``Y_h``, ``Y_c`` are each
        sequence's own last states and the reverse direction starts at each sequence's end.
    output : {"softmax", "logits"}, optional
        A character model's ``Y``: probabilities (default) or logits.  Only for such models.
    dtype : {"float32", "float64"}, optional
        Element type of the graph; default the model's.  ONNX Runtime's ``LSTM`` kernel
        runs float32 only (1.32: "does not support double"): export float64 models with
        ``dtype="float32"`` to deploy them there.

    Returns
    -------
    onnx.ModelProto
        Checked with ``onnx.checker.check_model(full_check=True)``.  Graph inputs ``X (T, m,
        n_x)`` (time-major, ONNX layout 0) and the optional ones above; outputs ``Y (T, m, D
        n_a)`` (forward features, then reverse; ``(T, m, n_y)`` for a character model),
        ``Y_h``, ``Y_c`` ``(L D, m, n_a)``.  Metadata: ``xlstm.model`` and, for a character
        model, ``xlstm.output`` and ``xlstm.vocab``.

    Raises
    ------
    ImportError
        ``onnx`` is not installed (the ``onnx`` extra).
    TypeError, ValueError
        An unsupported model, dtype or option (named).
    """
    from . import onnx as _onnx

    return _onnx.to_onnx(
        model, path, opset=opset, dynamic_batch=dynamic_batch, dynamic_time=dynamic_time,
        batch_size=batch_size, time_steps=time_steps, initial_state=initial_state,
        sequence_lens=sequence_lens, output=output, dtype=dtype,
    )  # fmt: skip


def from_onnx(
    path_or_model: Any,
    *,
    backend: Any = "numpy",
    dtype: Any = None,
    engine: str = "auto",
    fused: Any = None,
) -> Any:
    """An ``xlstm.LSTM`` from an ONNX graph made of ``LSTM`` nodes, or a refusal by name.

    Reads what :func:`to_onnx` writes, what ``torch.onnx.export`` makes of a
    ``torch.nn.LSTM``, and single ``LSTM`` nodes (layout 0 or 1).  Node ``k`` is layer
    ``k``.  ONNX's gate order (i, o, f, c) is mapped to xlstm's (i, f, o, g) and ``Wb + Rb``
    folded into one bias.  Every node that computes what the graph returns must be one xlstm
    reproduces, else the graph is refused naming it:

    * before the first LSTM: only Transpose and Identity (X's layout);
    * between layers: Identity, Transpose, Squeeze of the direction axis and a Reshape merging
      (direction, hidden), checked to give ``(T, m, D n_a)``;
    * after the last: the same layout changes on ``Y``, and ``Y_h``, ``Y_c`` as the nodes' own
      (one layer) or concatenated on axis 0 in layer order;
    * initial states: zeros (a zero constant, ``ConstantOfShape``, ``Expand`` of zeros) or, for
      every layer, its rows ``[l D, (l + 1) D)`` of one state input (``Slice`` on axis 0);
    * ``sequence_lens``: none, or one graph input shared by every node (xlstm's ``lengths``).

    Parameters
    ----------
    path_or_model : str, path, bytes or onnx.ModelProto
        Untrusted.  A path must name a regular file (a FIFO, a device, a directory is refused
        before it is opened; the size is checked with ``fstat``).  External data is refused
        everywhere, before ``onnx.checker`` runs, so no other file is ever opened.  Every
        stored tensor, weights and the small integer constants (Reshape's shape, Squeeze's
        and Slice's axes) alike, is read by one checked reader: element type, shape and
        payload size are checked before an array is built.
    backend : str or namespace, default "numpy"
    dtype : optional
        Default: the file's (float16 is read as float32).
    engine, fused
        As for :class:`xlstm.LSTM`.

    Returns
    -------
    xlstm.LSTM
        ``n_x``, ``n_a``, ``num_layers``, ``bidirectional`` from the graph.

    Raises
    ------
    ValueError
        What an xlstm LSTM cannot express, named: peepholes (input ``P``), ``clip``,
        ``input_forget = 1``, activations other than Sigmoid, Tanh, Tanh, ``direction =
        "reverse"``, a fixed nonzero initial state, a constant ``sequence_lens``, any op on the
        data path other than those above (a Gather or Slice before the first LSTM, an output
        layer), weights that are graph inputs, external data; a malformed or inconsistent
        file; a path that is not a regular file.
    TypeError
        ``engine`` / ``fused`` as :class:`xlstm.LSTM` refuses them.
    ImportError
        ``onnx`` is not installed.
    """
    from . import onnx as _onnx

    return _onnx.from_onnx(path_or_model, backend=backend, dtype=dtype, engine=engine, fused=fused)


__all__ = [
    "KERAS_GATE_ORDER",
    "TORCH_GATE_ORDER",
    "LSTMWeights",
    "from_keras",
    "from_keras_layer",
    "from_onnx",
    "from_torch",
    "to_keras",
    "to_keras_layer",
    "to_onnx",
    "to_torch",
]
