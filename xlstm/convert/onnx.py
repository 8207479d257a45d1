"""ONNX export and import: the code behind :func:`xlstm.convert.to_onnx` and ``from_onnx``.

Shape legend (ONNX layout 0, time-major)::

    X            (T, m, n_x)        graph input
    initial_h/c  (L D, m, n_a)      optional graph inputs (``initial_state=True``)
    sequence_lens (m,) int32        optional graph input (``sequence_lens=True``)
    Y            (T, m, D n_a)      forward features first, then reverse (as torch.nn.LSTM)
    Y_h, Y_c     (L D, m, n_a)      torch.nn.LSTM's order: l0, l0 reverse, l1, ...

    one LSTM node per layer:  W (D, 4 n_a, n_in),  R (D, 4 n_a, n_a),  B (D, 8 n_a) = [Wb | Rb]
    its output Y is (T, D, m, n_a), turned into (T, m, D n_a) between layers

Gate orders: xlstm's :data:`xlstm.GATE_ORDER` is (i, f, o, g); ONNX's is (i, o, f, c), ``c``
being the candidate ``g`` (:data:`ONNX_GATE_ORDER`).  Export writes the bias into ``Wb`` and
zeros into ``Rb``; import adds the two.

``onnx`` is imported inside the functions only, so ``import xlstm`` never needs it.
"""

from __future__ import annotations

import itertools
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._layout import layer_key
from .weights import _gate_dict, _host, _place, _stacked_from_gates

ONNX_GATE_ORDER = ("i", "o", "f", "g")
"""Gate blocks of an ONNX ``LSTM`` node's ``W``, ``R``, ``B``, top to bottom (ONNX: i, o, f, c)."""

DEFAULT_OPSET = 21
"""Opset written by default: the highest one that every version the ``onnx`` extra allows
(onnx >= 1.16, onnxruntime >= 1.18) both writes and runs, so a file made anywhere loads
everywhere the extra installs."""

MIN_OPSET = 13
"""Lowest opset written: ``Squeeze`` takes its axes as an input from 13 on."""

# Bounds for untrusted files, checked before any array is built: far above any real LSTM,
# far below what would exhaust memory.
_MAX_HIDDEN = 1 << 16
_MAX_FEATURES = 1 << 20
_MAX_ELEMENTS = 1 << 28
_MAX_LAYERS = 1024
_MAX_FILE_BYTES = (1 << 31) - 1  # protobuf's own limit

_DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")
_NODE_ATTRIBUTES = {
    "hidden_size", "direction", "layout", "activations", "activation_alpha",
    "activation_beta", "clip", "input_forget",
}  # fmt: skip


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        msg = (
            "ONNX export and import need the `onnx` package: the `onnx` extra "
            "(pip install -e '.[onnx]' from a clone)"
        )
        raise ImportError(msg) from error
    return onnx


def _model_class() -> type:
    """:class:`xlstm.LSTM` (imported on call: the model module imports the converters)."""
    from ..model import LSTM

    return LSTM


# =========================================================================== export


class _Recurrent(NamedTuple):
    """What export needs of a model, on the host, in ONNX's gate order."""

    w: list[np.ndarray]
    """Per layer: ``W (D, 4 n_a, n_in)``."""
    r: list[np.ndarray]
    """Per layer: ``R (D, 4 n_a, n_a)``."""
    b: list[np.ndarray]
    """Per layer: ``B (D, 8 n_a)``, the bias then zeros."""
    n_x: int
    n_a: int
    bidirectional: bool
    head: tuple[np.ndarray, np.ndarray] | None
    """``(Wy (n_y, n_a), by (n_y, 1))`` of a character model, else None."""
    kind: str
    vocab: str | None


def _recurrent_part(model: Any) -> tuple[Any, Any, str]:
    """``(recurrent, head parameters or None, kind)``, duck-typed (see :func:`to_onnx`)."""
    parameters = getattr(model, "parameters", None)
    if isinstance(parameters, Mapping) and "Wy" in parameters and "by" in parameters:
        kind = type(model).__name__
        lstm = getattr(model, "lstm", None)
        if lstm is not None:
            return lstm, parameters, kind
        raise TypeError(f"`model` ({kind}) has `Wy` and `by` but no `.lstm`, its recurrent part")
    needed = ("layers", "bidirectional", "n_x", "n_a")
    if all(hasattr(model, name) for name in needed):
        return model, None, type(model).__name__
    msg = (
        "`model` must be an xlstm.LSTM (or LSTMWeights) or a character model with `.lstm` "
        f"and parameters `Wy`, `by`; got {type(model).__name__}"
    )
    raise TypeError(msg)


def _describe(model: Any, output: str | None, dtype: Any) -> _Recurrent:
    recurrent, head_parameters, kind = _recurrent_part(model)
    if head_parameters is None and output is not None:
        msg = f"`output` = {output!r} is for a model with an output layer; {kind} has none"
        raise ValueError(msg)
    if output not in (None, "softmax", "logits"):
        raise ValueError(f"`output` = {output!r}; expected 'softmax' or 'logits'")
    bidirectional = bool(recurrent.bidirectional)
    directions = 2 if bidirectional else 1
    layers = list(recurrent.layers)
    if not layers or len(layers) % directions:
        raise ValueError(f"`model` has {len(layers)} layer entries for D = {directions}")
    n_x, n_a = int(recurrent.n_x), int(recurrent.n_a)
    w, r, b = [], [], []
    for first in range(0, len(layers), directions):
        stacked = [
            _stacked_from_gates(layers[first + d], ONNX_GATE_ORDER, f"layers[{first + d}]")
            for d in range(directions)
        ]
        n_in = n_x if first == 0 else directions * n_a
        for w_ih, w_hh, _ in stacked:
            if w_ih.shape != (4 * n_a, n_in) or w_hh.shape != (4 * n_a, n_a):
                msg = (
                    f"layer {first // directions} has W of shape {w_ih.shape}; expected "
                    f"{(4 * n_a, n_in)} for n_x = {n_x}, n_a = {n_a}"
                )
                raise ValueError(msg)
        w.append(np.stack([w_ih for w_ih, _, _ in stacked]))
        r.append(np.stack([w_hh for _, w_hh, _ in stacked]))
        b.append(np.stack([np.concatenate([bias, np.zeros_like(bias)]) for _, _, bias in stacked]))
    head = None
    if head_parameters is not None:
        # The graph's output layer is a softmax at every step over one direction's states:
        # anything else would export a different model.
        kind_of_head = getattr(model, "head", "per_step")
        if kind_of_head != "per_step" or bidirectional:
            msg = (
                f"`model` ({kind}) has a {'bidirectional ' if bidirectional else ''}"
                f"{kind_of_head!r} head; to_onnx exports output layers of one direction at "
                "every step only: export `model.lstm` and apply `Wy`, `by` yourself"
            )
            raise ValueError(msg)
        wy = _host("parameters['Wy']", head_parameters["Wy"])
        by = _host("parameters['by']", head_parameters["by"])
        if wy.ndim != 2 or wy.shape[1] != n_a or by.shape != (wy.shape[0], 1):
            msg = f"`Wy`, `by` have shapes {wy.shape}, {by.shape}; expected (n_y, n_a), (n_y, 1)"
            raise ValueError(msg)
        head = (wy, by)
    dtypes = sorted({str(array.dtype) for array in (*w, *r, *(head or ()))})
    if dtypes not in (["float32"], ["float64"]):
        raise TypeError(f"`model` has dtypes {dtypes}; export needs float32 or float64")
    if dtype is not None:
        if dtype not in ("float32", "float64"):
            raise ValueError(f"`dtype` = {dtype!r}; expected 'float32', 'float64' or None")
        w, r, b = ([a.astype(dtype) for a in arrays] for arrays in (w, r, b))
        head = None if head is None else (head[0].astype(dtype), head[1].astype(dtype))
    vocab = getattr(model, "vocab", None) if head is not None else None
    return _Recurrent(w, r, b, n_x, n_a, bidirectional, head, kind, vocab)


def _dimension(name: str, dynamic: Any, size: Any, symbol: str) -> str | int:
    if not isinstance(dynamic, bool):
        raise TypeError(f"`dynamic_{name}` must be a bool, got {type(dynamic).__name__}")
    if dynamic:
        if size is not None:
            msg = f"`{_SIZE_NAMES[name]}` fixes the {name} dimension; pass dynamic_{name}=False"
            raise ValueError(msg)
        return symbol
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        msg = f"dynamic_{name}=False needs `{_SIZE_NAMES[name]}`, a positive int; got {size!r}"
        raise ValueError(msg)
    return int(size)


_SIZE_NAMES = {"batch": "batch_size", "time": "time_steps"}


def _check_opset(onnx: Any, opset: Any) -> int:
    highest = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(DEFAULT_OPSET, highest)
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"`opset` must be an int, got {type(opset).__name__}")
    if not MIN_OPSET <= opset <= highest:
        msg = f"`opset` = {opset}; this onnx ({onnx.__version__}) writes {MIN_OPSET} to {highest}"
        raise ValueError(msg)
    return int(opset)


def to_onnx(
    model: Any,
    path: str | os.PathLike | None = None,
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
    """See :func:`xlstm.convert.to_onnx`."""
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    import xlstm

    spec = _describe(model, output, dtype)
    opset = _check_opset(onnx, opset)
    for name, value in (("initial_state", initial_state), ("sequence_lens", sequence_lens)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}")
    t_dim = _dimension("time", dynamic_time, time_steps, "T")
    m_dim = _dimension("batch", dynamic_batch, batch_size, "m")
    elem = TensorProto.FLOAT if spec.w[0].dtype == np.float32 else TensorProto.DOUBLE
    directions = 2 if spec.bidirectional else 1
    num_layers, n_a = len(spec.w), spec.n_a
    count = num_layers * directions

    inputs = [helper.make_tensor_value_info("X", elem, [t_dim, m_dim, spec.n_x])]
    if initial_state:
        inputs += [
            helper.make_tensor_value_info(name, elem, [count, m_dim, n_a])
            for name in ("initial_h", "initial_c")
        ]
    if sequence_lens:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [m_dim]))
    initializers: list[Any] = []
    nodes: list[Any] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    last = num_layers - 1
    features = "X"
    for layer in range(num_layers):
        tag = f"_l{layer}"
        states = ["", ""]
        if initial_state and num_layers == 1:
            states = ["initial_h", "initial_c"]
        elif initial_state:
            # This layer's rows [l D, (l + 1) D) of the (L D, m, n_a) states.
            starts = constant(f"state_start{tag}", np.array([layer * directions], np.int64))
            ends = constant(f"state_end{tag}", np.array([(layer + 1) * directions], np.int64))
            axes = "axis_0" if layer else constant("axis_0", np.array([0], np.int64))
            for index, name in enumerate(("initial_h", "initial_c")):
                states[index] = f"{name}{tag}"
                slice_inputs = [name, starts, ends, axes]
                nodes.append(
                    helper.make_node(
                        "Slice", slice_inputs, [states[index]], name=f"slice_{name}{tag}"
                    )
                )
        one = num_layers == 1
        y_raw = f"Y_raw{tag}"
        nodes.append(
            helper.make_node(
                "LSTM",
                [
                    features,
                    constant(f"W{tag}", spec.w[layer]),
                    constant(f"R{tag}", spec.r[layer]),
                    constant(f"B{tag}", spec.b[layer]),
                    "sequence_lens" if sequence_lens else "",
                    *states,
                ],
                [y_raw, "Y_h" if one else f"Y_h{tag}", "Y_c" if one else f"Y_c{tag}"],
                name=f"lstm{tag}",
                hidden_size=n_a,
                direction="bidirectional" if spec.bidirectional else "forward",
            )
        )
        # ONNX's Y is (T, D, m, n_a); the next layer, and torch's Y, read (T, m, D n_a).
        features = "Y" if layer == last and spec.head is None else f"Y{tag}"
        if directions == 1:
            axis_1 = "axis_1" if layer else constant("axis_1", np.array([1], np.int64))
            nodes.append(
                helper.make_node("Squeeze", [y_raw, axis_1], [features], name=f"squeeze{tag}")
            )
        else:
            merge = "merge_shape" if layer else constant("merge_shape", np.array([0, 0, -1]))
            moved = f"Y_moved{tag}"
            nodes += [
                helper.make_node(
                    "Transpose", [y_raw], [moved], perm=[0, 2, 1, 3], name=f"transpose{tag}"
                ),
                helper.make_node("Reshape", [moved, merge], [features], name=f"merge{tag}"),
            ]
    if num_layers > 1:
        for name in ("Y_h", "Y_c"):
            parts = [f"{name}_l{layer}" for layer in range(num_layers)]
            nodes.append(helper.make_node("Concat", parts, [name], axis=0, name=f"concat_{name}"))
    n_out = directions * n_a
    if spec.head is not None:
        wy, by = spec.head
        n_out = int(wy.shape[0])
        # Row vectors: (T, m, n_a) @ Wy^T + by gives the logits (T, m, n_y).
        wy_t = constant("Wy_T", np.ascontiguousarray(wy.T))
        bias = constant("by", np.ascontiguousarray(by[:, 0]))
        logits = "Y" if output == "logits" else "logits"
        nodes += [
            helper.make_node("MatMul", [features, wy_t], ["scores"], name="output_matmul"),
            helper.make_node("Add", ["scores", bias], [logits], name="output_bias"),
        ]
        if output != "logits":
            nodes.append(helper.make_node("Softmax", [logits], ["Y"], axis=-1, name="softmax"))
    outputs = [
        helper.make_tensor_value_info("Y", elem, [t_dim, m_dim, n_out]),
        helper.make_tensor_value_info("Y_h", elem, [count, m_dim, n_a]),
        helper.make_tensor_value_info("Y_c", elem, [count, m_dim, n_a]),
    ]
    graph = helper.make_graph(nodes, "xlstm", inputs, outputs, initializers)
    opset_ids = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        graph,
        opset_imports=opset_ids,
        producer_name="xlstm",
        producer_version=xlstm.__version__,
        # The oldest IR version that holds this opset, so older runtimes read the file.
        ir_version=helper.find_min_ir_version_for(opset_ids),
        doc_string=(
            f"xlstm {spec.kind}: {num_layers} layer(s), "
            f"{'bidirectional' if spec.bidirectional else 'forward'}, n_x = {spec.n_x}, "
            f"n_a = {n_a}. X (T, m, n_x) -> Y (T, m, {n_out}), Y_h, Y_c (L D, m, n_a)."
        ),
    )
    properties = {"xlstm.model": spec.kind}
    if spec.head is not None:
        properties["xlstm.output"] = output or "softmax"
    if isinstance(spec.vocab, str):
        properties["xlstm.vocab"] = spec.vocab
    helper.set_model_props(proto, properties)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        write_atomic(proto.SerializeToString(), path)
    return proto


def write_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` atomically (:func:`xlstm._atomic.replacing`: the umask's mode, leftovers
    of killed writes removed, safe beside concurrent writers)."""
    from .. import _atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic.replacing(path) as file:
        file.write(data)
    return path


# =========================================================================== import
#
# An ONNX file is untrusted.  Three rules, each in one place:
#
# * every tensor is read by :func:`_tensor_array` only: external data refused (no file but the
#   model is ever opened), element type checked against what the reader expects, sizes
#   checked before anything is allocated, bytes decoded here (``numpy_helper.to_array``, which
#   follows external-data paths, is never called);
# * every node that computes a graph output, or an LSTM node's X or initial state, must be one
#   xlstm reproduces (:func:`_check_dataflow`): Identity and Transpose before the first LSTM,
#   layout changes between and after the LSTMs, Concat of the final states, zeros or the rows
#   of one state input as initial states.  Anything else is refused by op and node name;
# * files are read only when they are regular files, opened without blocking, their size
#   taken from ``fstat`` and capped (:func:`_read_regular_file`).

# Element types each kind of constant may have: weights are floating; the integer constants
# are what the ONNX operators themselves accept (Reshape's shape and Squeeze's axes are
# int64, Slice's starts, ends, axes and steps int32 or int64).
_FLOAT_TYPES = ("FLOAT", "DOUBLE", "FLOAT16")
_INT64 = ("INT64",)
_INDEX_TYPES = ("INT32", "INT64")
_MAX_INDEX_ELEMENTS = 16  # a shape, axes or starts vector between LSTM layers is never longer
# ONNX element type -> (little-endian NumPy dtype, the typed field that may hold the values).
# FLOAT16 values are stored as their bit patterns in ``int32_data``.
_DECODE = {
    "FLOAT": ("<f4", "float_data"),
    "DOUBLE": ("<f8", "double_data"),
    "FLOAT16": ("<f2", "int32_data"),
    "INT32": ("<i4", "int32_data"),
    "INT64": ("<i8", "int64_data"),
}
_OUTPUT_OPS = {"Identity", "Transpose", "Squeeze", "Reshape"}  # after the last LSTM's Y
_INPUT_OPS = {"Identity", "Transpose"}  # before the first LSTM's X: layout only
# Ops allowed on the data path from one layer's Y to the next layer's X.
_LINK_OPS = {"Identity", "Transpose", "Reshape", "Squeeze"}
# Ops through which an initial state is traced to zeros or to a graph input.
_STATE_OPS = {"Identity", "Slice", "Expand", "ConstantOfShape"}
# Ops that only move, reshape or make constants (a MatMul, a Softmax: an output layer is
# refused before anything else is looked at).  Where each may appear is _check_dataflow's.
_PLUMBING = {
    "Cast", "Concat", "Constant", "ConstantOfShape", "Expand", "Gather", "Identity", "Reshape",
    "Shape", "Slice", "Split", "Squeeze", "Transpose", "Unsqueeze",
}  # fmt: skip


def _type_name(code: int) -> str:
    from onnx import TensorProto

    try:
        return TensorProto.DataType.Name(code)
    except ValueError:
        return f"code {code}"


def _is_external(tensor: Any) -> bool:
    from onnx import TensorProto

    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _tensor_array(
    tensor: Any,
    what: str,
    *,
    types: tuple[str, ...],
    shape: tuple[int, ...] | None = None,
    max_elements: int = _MAX_ELEMENTS,
) -> np.ndarray:
    """The one reader of a TensorProto: checks, then decodes the embedded bytes.

    Refused, in this order and before anything is allocated: external data (its location is
    not even looked at), a ``segment``, an element type not in ``types``, negative or too many
    elements, a shape other than ``shape``, a payload whose size does not match the shape.
    Messages name ``what`` and the declared type and shape, never the payload.
    """
    if _is_external(tensor):
        msg = f"{what} is stored as external data; from_onnx reads only tensors inside the model"
        raise ValueError(msg)
    if tensor.HasField("segment"):
        raise ValueError(f"{what} is a segment of a tensor; from_onnx reads whole tensors")
    type_name = _type_name(tensor.data_type)
    if type_name not in types:
        raise ValueError(f"{what} has element type {type_name}; expected {' or '.join(types)}")
    dims = tuple(int(d) for d in tensor.dims)
    count = 1
    for d in dims:
        if d < 0:
            raise ValueError(f"{what} has shape {dims}; dimensions must be >= 0")
        count *= d
        if count > max_elements:
            raise ValueError(f"{what} has shape {dims}: more elements than this reader accepts")
    if shape is not None and dims != shape:
        raise ValueError(f"{what} has shape {dims}; expected {shape}")
    dtype_code, field = _DECODE[type_name]
    dtype = np.dtype(dtype_code)
    if tensor.raw_data:
        stored = len(tensor.raw_data)
        if stored != count * dtype.itemsize:
            msg = (
                f"{what} holds {stored} bytes of data for shape {dims}; "
                f"expected {count * dtype.itemsize}"
            )
            raise ValueError(msg)
        flat = np.frombuffer(tensor.raw_data, dtype=dtype)
    else:
        values = getattr(tensor, field)
        if len(values) != count:
            msg = f"{what} holds {len(values)} values for shape {dims}; expected {count}"
            raise ValueError(msg)
        if type_name == "FLOAT16":
            flat = np.asarray(values, dtype=np.int64).astype(np.uint16).view(np.float16)
        else:
            flat = np.asarray(values, dtype=dtype)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def _graph_tensors(graph: Any, where: str):
    """``(tensor, description)`` for every tensor stored in ``graph`` and its subgraphs."""
    for tensor in graph.initializer:
        yield tensor, f"{where}initializer {tensor.name!r}"
    for sparse in graph.sparse_initializer:
        yield sparse.values, f"{where}sparse initializer {sparse.values.name!r}"
        yield sparse.indices, f"{where}sparse initializer {sparse.values.name!r} (indices)"
    yield from _node_tensors(graph.node, where)


def _node_tensors(nodes: Any, where: str):
    for node in nodes:
        label = f"{where}attribute of {node.op_type} node {node.name or 'unnamed'!r}"
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t, label
            for tensor in attribute.tensors:
                yield tensor, label
            sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
            for item in [*sparse, *attribute.sparse_tensors]:
                yield item.values, label
                yield item.indices, label
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for subgraph in [*subgraphs, *attribute.graphs]:
                yield from _graph_tensors(subgraph, f"{label}: subgraph ")


def _refuse_external_data(model: Any) -> None:
    """External data anywhere (weights, constants, subgraphs, functions) is refused.

    Checked before ``onnx.checker``, which would look up the named files relative to the
    current directory.
    """
    places = [_graph_tensors(model.graph, "")]
    for function in model.functions:
        places.append(_node_tensors(function.node, f"function {function.name!r}: "))
    for info in model.training_info:
        places.append(_graph_tensors(info.initialization, "training initialization: "))
        places.append(_graph_tensors(info.algorithm, "training algorithm: "))
    for tensor, where in itertools.chain(*places):
        if _is_external(tensor):
            msg = (
                f"the {where} is stored as external data; from_onnx reads only tensors inside "
                "the model and opens no other file"
            )
            raise ValueError(msg)


class _Graph:
    """Look-ups into an (untrusted) graph: producers, constants, graph inputs."""

    def __init__(self, graph: Any) -> None:
        self.producer = {name: node for node in graph.node for name in node.output if name}
        self.constants = {tensor.name: tensor for tensor in graph.initializer}
        # An initializer that is also listed as a graph input is a default the caller may
        # override: it is a constant here and not a run-time input.
        self.inputs = {value.name for value in graph.input} - set(self.constants)
        self.outputs = [value.name for value in graph.output]
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.constants[node.output[0]] = attribute.t

    def constant(self, name: str) -> Any:
        """The TensorProto behind ``name`` (through Identity nodes), or None."""
        for _ in range(_MAX_LAYERS):
            if name in self.constants:
                return self.constants[name]
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return None

    def through_identity(self, name: str) -> str:
        """``name`` with Identity nodes stepped over."""
        for _ in range(_MAX_LAYERS):
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity" or name in self.constants:
                return name
            name = node.input[0]
        return name


def _node_label(node: Any) -> str:
    return f"{node.op_type} node {node.name or 'unnamed'!r}"


def _attributes(onnx: Any, node: Any) -> dict[str, Any]:
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list):
            value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        values[attribute.name] = value
    return values


class _Layer(NamedTuple):
    node: Any
    w: np.ndarray  # (D, 4 n_a, n_in)
    r: np.ndarray  # (D, 4 n_a, n_a)
    bias: np.ndarray  # (D, 4 n_a): Wb + Rb
    directions: int
    n_a: int
    layout: int


def _read_node(onnx: Any, node: Any, index: int, graph: _Graph) -> _Layer:
    label = f"LSTM node {index} ({node.name or 'unnamed'!r})"
    attributes = _attributes(onnx, node)
    unknown = sorted(set(attributes) - _NODE_ATTRIBUTES)
    if unknown:
        raise ValueError(f"{label} has unknown attributes {unknown}")
    inputs = list(node.input) + [""] * (8 - len(node.input))
    # Everything xlstm's LSTM does not compute, named together.
    unsupported = []
    if inputs[7]:
        unsupported.append("P (peepholes)")
    if "clip" in attributes:
        unsupported.append(f"clip = {attributes['clip']}")
    if attributes.get("input_forget", 0) != 0:
        unsupported.append(f"input_forget = {attributes['input_forget']}")
    direction = attributes.get("direction", "forward")
    if direction not in ("forward", "bidirectional"):
        unsupported.append(f"direction = {direction!r} (xlstm has forward and bidirectional)")
    directions = 2 if direction == "bidirectional" else 1
    activations = attributes.get("activations")
    if activations is not None and list(activations) != list(_DEFAULT_ACTIVATIONS * directions):
        unsupported.append(f"activations = {list(activations)} (xlstm: Sigmoid, Tanh, Tanh)")
    layout = attributes.get("layout", 0)
    if layout not in (0, 1):
        unsupported.append(f"layout = {layout}")
    if unsupported:
        msg = f"{label} uses what xlstm's LSTM cannot express: {', '.join(unsupported)}"
        raise ValueError(msg)

    def tensor(position: int, name: str) -> Any:
        found = graph.constant(inputs[position])
        if found is None:
            where = "a graph input" if inputs[position] in graph.inputs else "computed"
            msg = (
                f"{label}: `{name}` ({inputs[position]!r}) is {where}, not a constant; "
                "from_onnx reads weights stored in the model (initializers or Constant nodes)"
            )
            raise ValueError(msg)
        return found

    w_proto, r_proto = tensor(1, "W"), tensor(2, "R")
    r_dims = tuple(int(d) for d in r_proto.dims)
    n_a = attributes.get("hidden_size", r_dims[-1] if len(r_dims) == 3 else 0)
    if not isinstance(n_a, int) or not 1 <= n_a <= _MAX_HIDDEN:
        raise ValueError(f"{label} has hidden_size = {n_a!r}; expected 1 to {_MAX_HIDDEN}")
    w_dims = tuple(int(d) for d in w_proto.dims)
    if len(w_dims) != 3 or not 1 <= w_dims[2] <= _MAX_FEATURES:
        raise ValueError(f"{label}: `W` has shape {w_dims}; expected (D, 4 n_a, n_in)")
    n_in = w_dims[2]

    def weight(proto: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
        return _tensor_array(proto, f"{label}: `{name}`", types=_FLOAT_TYPES, shape=shape)

    w = weight(w_proto, (directions, 4 * n_a, n_in), "W")
    r = weight(r_proto, (directions, 4 * n_a, n_a), "R")
    if inputs[3]:
        b = weight(tensor(3, "B"), (directions, 8 * n_a), "B")
    else:
        b = np.zeros((directions, 8 * n_a), dtype=w.dtype)
    if not (w.dtype == r.dtype == b.dtype):
        raise ValueError(f"{label}: `W`, `R`, `B` have dtypes {w.dtype}, {r.dtype}, {b.dtype}")
    # The two biases are always added: fold them (in float64, as convert.from_torch does).
    bias = (b[:, : 4 * n_a].astype(np.float64) + b[:, 4 * n_a :]).astype(w.dtype)
    return _Layer(node, w, r, bias, directions, n_a, layout)


def _int_constant(name: str, graph: _Graph, node: Any, types: tuple[str, ...]) -> list[int]:
    """A small integer vector (a shape, axes, starts) that must be stored in the model."""
    found = graph.constant(name)
    what = f"input {name!r} of the {_node_label(node)}"
    if found is None:
        raise ValueError(f"{what} is computed or a graph input; from_onnx needs it constant")
    array = _tensor_array(found, what, types=types, max_elements=_MAX_INDEX_ELEMENTS)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} has shape {array.shape}; expected a non-empty vector")
    return [int(v) for v in array]


def _replay(onnx: Any, chain: list[Any], graph: _Graph, layer: _Layer, label: str):
    """The axes of an LSTM's Y after ``chain`` (first to last), as tuples of symbols.

    Symbols: T time, m batch, D direction, n hidden.  Only Identity, Transpose, Squeeze of a
    size-1 axis and a Reshape merging trailing axes are understood; anything else could mix
    time, batch and directions, so it is refused.
    """
    sizes = {"D": layer.directions, "n": layer.n_a}
    axes = [("T",), ("D",), ("m",), ("n",)] if layer.layout == 0 else [
        ("m",), ("T",), ("D",), ("n",)
    ]  # fmt: skip

    def fail(node: Any, why: str) -> ValueError:
        return ValueError(f"{label}: the {_node_label(node)} {why}")

    for node in chain:
        attributes = _attributes(onnx, node)
        if node.op_type == "Transpose":
            perm = attributes.get("perm", list(range(len(axes)))[::-1])
            if sorted(perm) != list(range(len(axes))):
                raise fail(node, f"has perm {perm} for rank {len(axes)}")
            axes = [axes[p] for p in perm]
        elif node.op_type == "Squeeze":
            drop = attributes.get("axes")
            if drop is None and len(node.input) > 1 and node.input[1]:
                drop = _int_constant(node.input[1], graph, node, _INT64)
            if not drop:
                raise fail(node, "has no explicit axes")
            if any(not -len(axes) <= a < len(axes) for a in drop):
                raise fail(node, f"has axes {drop} for rank {len(axes)}")
            drop = {a % len(axes) for a in drop}
            if any(math.prod(sizes.get(s, 0) for s in axes[a]) != 1 for a in drop):
                raise fail(node, "removes an axis that is not the size-1 direction axis")
            axes = [axis for a, axis in enumerate(axes) if a not in drop]
        elif node.op_type == "Reshape":
            if attributes.get("allowzero", 0):
                raise fail(node, "has allowzero = 1")
            shape = _int_constant(node.input[1], graph, node, _INT64)
            kept = 0
            while kept < len(shape) and kept < len(axes) and shape[kept] == 0:
                kept += 1  # 0 copies the input's dimension
            merged = tuple(s for axis in axes[kept:] for s in axis)
            known = all(s in sizes for s in merged)
            size = math.prod(sizes[s] for s in merged) if known else None
            if len(shape) != kept + 1 or not merged or shape[kept] not in (-1, size):
                raise fail(node, f"has shape {shape}, which is not a merge of the last axes")
            axes = [*axes[:kept], merged]
        elif node.op_type != "Identity":
            raise fail(node, "is not a layout change (Identity, Transpose, Squeeze, Reshape)")
    # With one direction the size-1 D may be merged into the features or squeezed away.
    return [tuple(s for s in axis if s != "D" or layer.directions == 2) or axis for axis in axes]


def _path_to(graph: _Graph, start: str, target: str, allowed: set[str], label: str, where: str):
    """Nodes from ``target`` (an LSTM output) to ``start``, first to last; only ``allowed`` ops."""
    chain, name = [], start
    while name != target:
        node = graph.producer.get(name)
        if node is None or node.op_type not in allowed or len(chain) > _MAX_LAYERS:
            found = "a graph input" if node is None else f"a {_node_label(node)}"
            msg = (
                f"{label}: the path from {where} reaches {found}; only "
                f"{', '.join(sorted(allowed))} may lie there"
            )
            raise ValueError(msg)
        chain.append(node)
        name = node.input[0]
    return chain[::-1]


def _check_link(onnx: Any, layer: _Layer, previous: _Layer, number: int, graph: _Graph) -> None:
    """Check that layer ``number``'s X is the previous layer's Y as ``(T, m, D n_a)``."""
    label = f"LSTM node {number} ({layer.node.name or 'unnamed'!r})"
    source = previous.node.output[0] if previous.node.output else ""
    if not source:
        raise ValueError(f"{label}: the previous LSTM node has no output Y")
    try:
        chain = _path_to(graph, layer.node.input[0], source, _LINK_OPS, label, "its input X")
    except ValueError as error:
        msg = f"{error}: its input X is not the previous LSTM's output Y after layout changes"
        raise ValueError(msg) from None
    axes = _replay(onnx, chain, graph, previous, label)
    features = ("D", "n") if previous.directions == 2 else ("n",)
    wanted = [("T",), ("m",), features] if layer.layout == 0 else [("m",), ("T",), features]
    if axes != wanted:
        msg = (
            f"{label}: its input X is the previous layer's Y with axes {axes}; expected "
            f"{wanted} (time, batch, features: forward then reverse)"
        )
        raise ValueError(msg)


def _check_input(graph: _Graph, first: _Layer) -> None:
    """The first LSTM's X is a graph input, at most transposed (a layout, not a change)."""
    label = f"LSTM node 0 ({first.node.name or 'unnamed'!r})"
    name = first.node.input[0]
    for _ in range(_MAX_LAYERS):
        if name in graph.inputs:
            return
        node = graph.producer.get(name)
        if node is None:
            msg = f"{label}: its input X ({name!r}) is a constant, not a graph input"
            raise ValueError(msg)
        if node.op_type not in _INPUT_OPS:
            msg = (
                f"{label}: its input X is computed by the {_node_label(node)}; from_onnx "
                "reads X as the graph's input (only Transpose and Identity, which change its "
                f"layout, may come first): a {node.op_type} there would change the model"
            )
            raise ValueError(msg)
        name = node.input[0]
    raise ValueError(f"{label}: its input X is computed by too many nodes")


def _check_outputs(onnx: Any, graph: _Graph, layers: list[_Layer]) -> None:
    """Every graph output is the last LSTM's Y (layout changes only) or the final states."""
    owner = {}
    for index, layer in enumerate(layers):
        for position, name in enumerate(layer.node.output[:3]):
            if name:
                owner[name] = (index, position)
    last = len(layers) - 1
    for output in graph.outputs:
        label = f"graph output {output!r}"
        name = graph.through_identity(output)
        if name in owner and owner[name][1] != 0:
            index, position = owner[name]
            if len(layers) != 1:
                msg = (
                    f"{label} is the {('Y_h', 'Y_c')[position - 1]} of LSTM node {index} alone; "
                    "from_onnx reads the final states of all layers (a Concat in layer order)"
                )
                raise ValueError(msg)
            continue
        node = graph.producer.get(name)
        if node is not None and node.op_type == "Concat" and name not in owner:
            parts = [owner.get(graph.through_identity(part)) for part in node.input]
            position = parts[0][1] if parts[0] else None
            axis = _attributes(onnx, node).get("axis")
            wanted = [(index, position) for index in range(len(layers))]
            if position in (1, 2) and parts == wanted and axis == 0:
                continue
            msg = (
                f"{label} is computed by the {_node_label(node)}, which is not the final "
                "states Y_h or Y_c of every LSTM node concatenated on axis 0 in layer order"
            )
            raise ValueError(msg)
        target = layers[last].node.output[0] if layers[last].node.output else ""
        label = f"LSTM node {last}: {label}"
        try:
            chain = _path_to(graph, output, target, _OUTPUT_OPS, label, "the graph output")
        except ValueError as error:
            msg = (
                f"{error}; from_onnx reads graphs whose outputs are the last LSTM's Y "
                "(up to its layout) and the final states"
            )
            raise ValueError(msg) from None
        axes = _replay(onnx, chain, graph, layers[last], label)
        groups = {("T",), ("m",), ("n",), ("D",), ("D", "n")}
        symbols = sorted(s for axis in axes for s in axis)
        present = sorted(["T", "m", "n"] + (["D"] if layers[last].directions == 2 else []))
        if layers[last].directions == 1:  # its size-1 D may be kept or squeezed away
            symbols = [s for s in symbols if s != "D"]
            present = [s for s in present if s != "D"]
        if any(axis not in groups for axis in axes) or symbols != present:
            msg = (
                f"{label}: the output has axes {axes}: it mixes time, batch and features "
                "(T time, m batch, D direction, n hidden)"
            )
            raise ValueError(msg)


def _state_source(onnx: Any, name: str, graph: _Graph, label: str) -> tuple[Any, ...]:
    """Where an initial state comes from: ``("zero",)`` or ``("input", name, rows)``.

    ``rows`` is ``(start, stop)`` along axis 0 or None for the whole input.  Traced through
    Identity, Expand of a constant, a one-axis Slice of axis 0 with step 1; a nonzero constant
    and any other op are refused by name.
    """
    rows = None
    for _ in range(_MAX_LAYERS):
        found = graph.constant(name)
        if found is not None:
            value = _tensor_array(found, f"{label} ({name!r})", types=_FLOAT_TYPES)
            if np.any(value != 0):
                msg = (
                    f"{label} is a fixed nonzero constant; an xlstm.LSTM starts from zeros or "
                    "from the state passed to forward"
                )
                raise ValueError(msg)
            return ("zero",)
        if name in graph.inputs:
            return ("input", name, rows)
        node = graph.producer.get(name)
        if node is None:
            raise ValueError(f"{label} ({name!r}) is neither computed nor a graph input")
        if node.op_type not in _STATE_OPS:
            msg = (
                f"{label} is computed by the {_node_label(node)}; from_onnx reads initial "
                "states that are zeros or rows of a graph input (Identity, Slice, Expand)"
            )
            raise ValueError(msg)
        if node.op_type == "ConstantOfShape":
            fill = _attributes(onnx, node).get("value")
            if fill is not None:
                what = f"the fill value of the {_node_label(node)}"
                value = _tensor_array(fill, what, types=_FLOAT_TYPES, shape=(1,))
                if np.any(value != 0):
                    raise ValueError(f"{label} is a fixed nonzero constant ({what})")
            return ("zero",)
        if node.op_type == "Slice":
            if rows is not None:
                raise ValueError(f"{label} is sliced twice; from_onnx reads one Slice of rows")
            inputs = [*node.input, "", "", ""][:5]
            starts = _int_constant(inputs[1], graph, node, _INDEX_TYPES)
            ends = _int_constant(inputs[2], graph, node, _INDEX_TYPES)
            axes = _int_constant(inputs[3], graph, node, _INDEX_TYPES) if inputs[3] else [0]
            steps = _int_constant(inputs[4], graph, node, _INDEX_TYPES) if inputs[4] else [1]
            if not (len(starts) == len(ends) == 1 and axes == [0] and steps == [1]):
                msg = f"{label}: the {_node_label(node)} is not a slice of rows (axis 0, step 1)"
                raise ValueError(msg)
            if starts[0] < 0 or ends[0] < starts[0]:
                raise ValueError(f"{label}: the {_node_label(node)} has rows {starts}:{ends}")
            rows = (starts[0], ends[0])
        name = node.input[0]
    raise ValueError(f"{label} is computed by too many nodes")


def _check_states(onnx: Any, graph: _Graph, layers: list[_Layer]) -> None:
    """Initial states: for h and for c, zeros everywhere or each layer's rows of one input.

    That is what ``forward(x, state=(a0, c0))`` computes (``(L D, ...)`` states, torch's
    order); a graph that hands a layer other rows is refused.
    """
    directions = layers[0].directions
    for position, name in ((5, "initial_h"), (6, "initial_c")):
        sources = []
        for index, layer in enumerate(layers):
            inputs = [*layer.node.input, "", "", "", "", "", "", ""]
            label = f"LSTM node {index}: `{name}`"
            if not inputs[position]:
                sources.append(("zero",))
                continue
            sources.append(_state_source(onnx, inputs[position], graph, label))
        if all(source == ("zero",) for source in sources):
            continue
        feeds = {source[1] for source in sources if source[0] == "input"}
        whole = len(layers) == 1 and sources[0][0] == "input" and sources[0][2] is None
        wanted = [(index * directions, (index + 1) * directions) for index in range(len(layers))]
        rows = [source[2] if source[0] == "input" else None for source in sources]
        if len(feeds) != 1 or not (whole or rows == wanted):
            msg = (
                f"`{name}` of the LSTM nodes comes from {sorted(feeds) or 'constants'} with rows "
                f"{rows}; from_onnx reads one (L D, m, n_a) state input whose rows {wanted} "
                "go to the layers in order (or zeros everywhere)"
            )
            raise ValueError(msg)


def _check_sequence_lens(graph: _Graph, layers: list[_Layer]) -> None:
    """All LSTM nodes take the same run-time ``sequence_lens`` (xlstm's ``lengths``) or none."""
    names = []
    for index, layer in enumerate(layers):
        inputs = [*layer.node.input, "", "", "", ""]
        name = graph.through_identity(inputs[4]) if inputs[4] else ""
        label = f"LSTM node {index}: `sequence_lens` ({inputs[4]!r})"
        if name and graph.constant(name) is not None:
            msg = (
                f"{label} is a constant stored in the graph; an xlstm.LSTM takes `lengths` at "
                "run time (export the model without fixed lengths)"
            )
            raise ValueError(msg)
        if name and name not in graph.inputs:
            raise ValueError(f"{label} is computed by the graph; from_onnx reads a graph input")
        names.append(name)
    if len(set(names)) != 1:
        msg = (
            f"the LSTM nodes take `sequence_lens` {names}; an xlstm.LSTM applies one `lengths` "
            "to every layer (all the same graph input, or none)"
        )
        raise ValueError(msg)


def _check_dataflow(onnx: Any, graph: _Graph, layers: list[_Layer]) -> None:
    """Everything that computes what the graph returns is something xlstm reproduces."""
    _check_input(graph, layers[0])
    for number, (previous, layer) in enumerate(itertools.pairwise(layers), start=1):
        _check_link(onnx, layer, previous, number, graph)
    _check_sequence_lens(graph, layers)
    _check_states(onnx, graph, layers)
    _check_outputs(onnx, graph, layers)


def _read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file, its size checked before reading (special files refused).

    A FIFO, a device or a directory is refused from ``stat`` before it is opened (no read
    that blocks, no endless ``/dev/zero``); the file is then opened without blocking, checked
    again with ``fstat`` (it may have been swapped) and read up to the size found there.
    """
    where = f"`path_or_model` ({os.fspath(path)!r})"
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{where} is not a regular file; from_onnx reads model files")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{where} is not a regular file; from_onnx reads model files")
        if info.st_size > _MAX_FILE_BYTES:
            raise ValueError(f"{where} is {info.st_size} bytes; more than an ONNX file can be")
        chunks, left = [], info.st_size
        while left > 0:
            chunk = os.read(descriptor, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left or os.read(descriptor, 1):
            raise ValueError(f"{where} changed size while it was read")
    finally:
        os.close(descriptor)
    return b"".join(chunks)


def _load(onnx: Any, source: Any) -> Any:
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > _MAX_FILE_BYTES:
            raise ValueError(f"`path_or_model` is {len(data)} bytes; more than an ONNX model")
    elif isinstance(source, (str, os.PathLike)):
        data = _read_regular_file(source)
    else:
        msg = f"`path_or_model` must be a path, bytes or a ModelProto, got {type(source).__name__}"
        raise TypeError(msg)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as error:  # protobuf's DecodeError; its module path varies by version
        raise ValueError(f"`path_or_model` is not an ONNX model ({error})") from None
    return model


def from_onnx(
    source: Any, *, backend: Any = "numpy", dtype: Any = None, engine: str = "auto",
    fused: Any = None,
) -> Any:  # fmt: skip
    """See :func:`xlstm.convert.from_onnx`."""
    onnx = _import_onnx()
    from .._engines.dispatch import engine_option

    # Checked before the file is read.
    engine = engine_option(engine, fused, where="xlstm.convert.from_onnx")
    model = _load(onnx, source)
    _refuse_external_data(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "invalid"
        raise ValueError(f"`path_or_model` is not a valid ONNX model: {first}") from None
    graph = _Graph(model.graph)
    others = sorted(
        {
            f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            for node in model.graph.node
            if (node.op_type != "LSTM" and node.op_type not in _PLUMBING)
            or node.domain not in ("", "ai.onnx")
        }
    )
    if others:
        msg = (
            f"the graph has {', '.join(others)} nodes; from_onnx reads graphs made of LSTM "
            "nodes (and reshaping between them): an output layer is not part of an xlstm.LSTM"
        )
        raise ValueError(msg)
    nodes = [node for node in model.graph.node if node.op_type == "LSTM"]
    if not nodes:
        raise ValueError("the graph has no LSTM node")
    if len(nodes) > _MAX_LAYERS:
        raise ValueError(f"the graph has {len(nodes)} LSTM nodes; at most {_MAX_LAYERS} are read")
    layers = [_read_node(onnx, node, index, graph) for index, node in enumerate(nodes)]
    first = layers[0]
    for number, layer in enumerate(layers[1:], start=1):
        if (layer.directions, layer.n_a) != (first.directions, first.n_a):
            msg = (
                f"LSTM node {number} has D = {layer.directions}, hidden_size = {layer.n_a}; "
                f"node 0 has {first.directions}, {first.n_a} (an xlstm.LSTM has one of each)"
            )
            raise ValueError(msg)
        n_in = first.directions * first.n_a
        if layer.w.shape[2] != n_in:
            reads = layer.w.shape[2]
            msg = f"LSTM node {number}: `W` reads {reads} features; expected D n_a = {n_in}"
            raise ValueError(msg)
    _check_dataflow(onnx, graph, layers)
    host = {}
    for number, layer in enumerate(layers):
        for direction in range(layer.directions):
            gates = _gate_dict(
                layer.w[direction], layer.r[direction], layer.bias[direction],
                ONNX_GATE_ORDER, layer.n_a,
            )  # fmt: skip
            for key, value in gates.items():
                host[layer_key(key, number, direction == 1)] = value
    if dtype is None:
        # float16 files become float32: xlstm's models hold float32 or float64.
        dtype = "float64" if first.w.dtype == np.float64 else "float32"
    parameters = _place(host, backend, dtype, None)
    placed = str(parameters["Wf_l0"].dtype)
    dtype_name = next(name for name in ("float16", "float32", "float64") if name in placed)
    model = _model_class()(
        int(first.w.shape[2]), first.n_a, num_layers=len(layers),
        bidirectional=first.directions == 2, backend=backend, dtype=dtype_name,
        parameters=parameters,
    )  # fmt: skip
    model.engine = engine
    return model
