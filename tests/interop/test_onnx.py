"""ONNX export and import (xlstm.convert.to_onnx / from_onnx) against three oracles.

* ONNX Runtime running the exported graph equals xlstm's forward (float32, 1e-5 relative);
* ``from_onnx(to_onnx(model))`` gives back the parameters bit for bit, and a
  ``torch.onnx.export`` of ``torch.nn.LSTM`` imports to what torch computes;
* the ONNX backend node tests ``test_lstm_*``: their stored outputs are reproduced.

Shape legend: xlstm ``x (n_x, m, T)``, ``outputs (D n_a, m, T)``, states ``(L D, n_a, m)``;
ONNX ``X (T, m, n_x)``, ``Y (T, m, D n_a)``, ``Y_h``, ``Y_c (L D, m, n_a)``; a bare LSTM node's
``Y`` is ``(T, D, m, n_a)`` (layout 0) or ``(m, T, D, n_a)`` (layout 1).
"""

from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from xlstm import convert  # noqa: E402
from xlstm.convert.onnx import DEFAULT_OPSET, MIN_OPSET, _model_class  # noqa: E402

RTOL = 1e-5


def make_model(n_x, n_a, num_layers=1, bidirectional=False, dtype="float32", seed=0):
    return _model_class()(
        n_x, n_a, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype, seed=seed
    )


def host(array) -> np.ndarray:
    return np.asarray(array)


def assert_close(actual, expected, rtol=RTOL, what=""):
    """Largest difference relative to the largest expected magnitude."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected))), 1e-30) if expected.size else 1.0
    error = float(np.max(np.abs(actual - expected))) / scale if expected.size else 0.0
    assert error <= rtol, f"{what}: relative error {error:.2e} > {rtol:.0e}"


def run_ort(proto, feeds):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def to_onnx_layout(outputs, a_n, c_n):
    """xlstm's ``(D n_a, m, T)``, ``(L D, n_a, m)`` as ``(T, m, D n_a)``, ``(L D, m, n_a)``."""
    return (
        host(outputs).transpose(2, 1, 0),
        host(a_n).transpose(0, 2, 1),
        host(c_n).transpose(0, 2, 1),
    )


# ------------------------------------------------------------------ ONNX Runtime oracle

# (num_layers, bidirectional, T, m, n_x, n_a)
SHAPES = [
    (1, False, 1, 1, 1, 1),
    (1, False, 6, 3, 4, 5),
    (1, True, 5, 2, 3, 4),
    (2, False, 7, 4, 3, 6),
    (2, True, 4, 5, 2, 3),
    (3, True, 6, 3, 5, 4),
    (3, False, 3, 2, 2, 7),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}_{}_T{}_m{}_nx{}_na{}".format(*s))
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("state", [False, True], ids=["zeros", "state"])
def test_onnxruntime_matches_forward(shape, lengths, state):
    num_layers, bidirectional, t_x, m, n_x, n_a = shape
    count = num_layers * (2 if bidirectional else 1)
    model = make_model(n_x, n_a, num_layers, bidirectional, seed=sum(shape))
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n_x, m, t_x)).astype(np.float32)
    feeds = {"X": x.transpose(2, 1, 0)}
    kwargs = {}
    if state:
        a0, c0 = (rng.standard_normal((count, n_a, m)).astype(np.float32) for _ in range(2))
        kwargs["state"] = (a0, c0)
        feeds["initial_h"], feeds["initial_c"] = a0.transpose(0, 2, 1), c0.transpose(0, 2, 1)
    if lengths:
        lens = rng.integers(1, t_x + 1, size=m)
        lens[0] = t_x
        kwargs["lengths"] = lens
        feeds["sequence_lens"] = lens.astype(np.int32)
    proto = convert.to_onnx(model, initial_state=state, sequence_lens=lengths)
    outputs, (a_n, c_n) = model.forward(x, **kwargs)
    for name, got, want in zip(
        ("Y", "Y_h", "Y_c"), run_ort(proto, feeds), to_onnx_layout(outputs, a_n, c_n), strict=True
    ):
        assert_close(got, want, what=name)


def test_one_lstm_node_per_layer_and_checked():
    proto = convert.to_onnx(make_model(3, 4, num_layers=3, bidirectional=True))
    onnx.checker.check_model(proto, full_check=True)
    assert [node.op_type for node in proto.graph.node].count("LSTM") == 3
    assert proto.opset_import[0].version == min(DEFAULT_OPSET, onnx.defs.onnx_opset_version())
    assert [value.name for value in proto.graph.input] == ["X"]
    assert [value.name for value in proto.graph.output] == ["Y", "Y_h", "Y_c"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["T", "m", 8]


@pytest.mark.parametrize("opset", [MIN_OPSET, 17, DEFAULT_OPSET])
def test_opsets_run(opset):
    model = make_model(2, 3, num_layers=2, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    proto = convert.to_onnx(model, opset=opset)
    assert proto.opset_import[0].version == opset
    outputs, _ = model.forward(x)
    assert_close(run_ort(proto, {"X": x.transpose(2, 1, 0)})[0], host(outputs).transpose(2, 1, 0))


def test_fixed_dimensions():
    model = make_model(2, 3, bidirectional=True)
    proto = convert.to_onnx(
        model, dynamic_batch=False, batch_size=4, dynamic_time=False, time_steps=5
    )
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [5, 4, 2]
    x = np.random.default_rng(1).standard_normal((2, 4, 5)).astype(np.float32)
    outputs, _ = model.forward(x)
    assert_close(run_ort(proto, {"X": x.transpose(2, 1, 0)})[0], host(outputs).transpose(2, 1, 0))


def test_float64_model_exported_as_float32_runs():
    model = make_model(3, 4, num_layers=2, bidirectional=True, dtype="float64")
    x = np.random.default_rng(2).standard_normal((3, 2, 6))
    proto = convert.to_onnx(model, dtype="float32")
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    outputs, _ = model.forward(x)
    got = run_ort(proto, {"X": x.transpose(2, 1, 0).astype(np.float32)})[0]
    assert_close(got, host(outputs).transpose(2, 1, 0))


def test_written_to_path_and_read_back(tmp_path):
    model = make_model(3, 4, num_layers=2)
    path = tmp_path / "sub" / "model.onnx"
    proto = convert.to_onnx(model, path)
    assert path.read_bytes() == proto.SerializeToString()
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no temporary left
    back = convert.from_onnx(path)
    assert all(np.array_equal(back.parameters[k], v) for k, v in model.parameters.items())


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")

    def broken(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        convert.to_onnx(make_model(2, 3), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("num_layers", "bidirectional"), [(1, False), (1, True), (3, True)])
def test_round_trip_is_exact(dtype, num_layers, bidirectional):
    model = make_model(3, 5, num_layers, bidirectional, dtype=dtype, seed=7)
    back = convert.from_onnx(convert.to_onnx(model).SerializeToString())
    assert isinstance(back, _model_class())
    assert (back.n_x, back.n_a, back.num_layers, back.bidirectional) == (
        3,
        5,
        num_layers,
        bidirectional,
    )
    assert back.parameters.keys() == model.parameters.keys()
    for key, value in model.parameters.items():
        assert host(back.parameters[key]).dtype == host(value).dtype, key
        assert np.array_equal(host(back.parameters[key]), host(value)), key


def test_lstm_weights_export():
    model = make_model(3, 4, num_layers=2, bidirectional=True)
    weights = convert.LSTMWeights(model.layers, 2, True, 3, 4)
    back = convert.from_onnx(convert.to_onnx(weights))
    assert all(np.array_equal(back.parameters[k], v) for k, v in model.parameters.items())


def test_from_onnx_backend_and_dtype():
    torch = pytest.importorskip("torch")
    model = make_model(2, 3, num_layers=2, bidirectional=True)
    back = convert.from_onnx(convert.to_onnx(model), backend="torch", dtype="float64")
    assert isinstance(back.parameters["Wf_l1_reverse"], torch.Tensor)
    assert back.parameters["Wf_l1_reverse"].dtype == torch.float64
    assert np.array_equal(
        back.parameters["Wf_l1_reverse"].numpy(), host(model.parameters["Wf_l1_reverse"])
    )
    again = convert.from_onnx(convert.to_onnx(back))  # export reads torch tensors too
    assert all(
        np.array_equal(again.parameters[k], back.parameters[k].numpy()) for k in again.parameters
    )


# ------------------------------------------------------------------ character model


def char_model(num_layers=1):
    from xlstm.training import CharLSTM

    options = {"num_layers": num_layers} if num_layers > 1 else {}
    return CharLSTM("abcdefg", 6, seed=3, **options)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("output", ["softmax", "logits"])
def test_char_model(num_layers, output):
    model = char_model(num_layers)
    ids = np.random.default_rng(4).integers(0, model.n_x, size=(3, 5))  # (m, T)
    x = host(model.inputs(ids))  # one-hot (n_x, m, T)
    proto = convert.to_onnx(model, output=output)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["xlstm.vocab"] == "abcdefg"
    assert props["xlstm.output"] == output
    y, (a_n, c_n) = model.forward(ids)
    got, got_h, got_c = run_ort(proto, {"X": np.ascontiguousarray(x.transpose(2, 1, 0))})
    if output == "logits":
        got = np.exp(got - got.max(axis=-1, keepdims=True))
        got /= got.sum(axis=-1, keepdims=True)
    assert_close(got, host(y).transpose(2, 1, 0), what="Y")
    a_n, c_n = host(a_n), host(c_n)
    if a_n.ndim == 2:  # a one-layer model's state is (n_a, m)
        a_n, c_n = a_n[None], c_n[None]
    assert_close(got_h, a_n.transpose(0, 2, 1), what="Y_h")
    assert_close(got_c, c_n.transpose(0, 2, 1), what="Y_c")


def test_char_model_is_not_imported_as_an_lstm():
    with pytest.raises(ValueError, match=r"MatMul.*output layer"):
        convert.from_onnx(convert.to_onnx(char_model()))


# ------------------------------------------------------------------ torch.onnx.export


def torch_export(module, args, **kwargs) -> bytes:
    """``torch.onnx.export`` with the TorchScript exporter (the dynamo one needs onnxscript)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter is deprecated and warns about LSTM batch sizes.
        warnings.simplefilter("ignore")
        try:
            import torch

            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=17, **kwargs)
        except (ImportError, TypeError) as error:
            pytest.skip(f"torch.onnx.export (TorchScript exporter) unavailable: {error}")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "batch_first", "with_state"),
    [
        (1, False, False, False),
        (2, False, False, False),
        (2, True, True, False),
        (3, True, False, True),
    ],
)
def test_torch_onnx_export_imports(num_layers, bidirectional, batch_first, with_state):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    n_x, n_a, t_x, m = 3, 4, 5, 2
    module = torch.nn.LSTM(
        n_x, n_a, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first
    ).eval()
    x = torch.randn((m, t_x, n_x) if batch_first else (t_x, m, n_x))
    count = num_layers * (2 if bidirectional else 1)
    h0, c0 = torch.randn(count, m, n_a), torch.randn(count, m, n_a)
    args = (x, (h0, c0)) if with_state else (x,)
    data = torch_export(module, args, input_names=["X", "h0", "c0"][: 3 if with_state else 1])
    lstm = convert.from_onnx(data)
    assert (lstm.n_x, lstm.n_a, lstm.num_layers, lstm.bidirectional) == (
        n_x, n_a, num_layers, bidirectional,
    )  # fmt: skip
    # The same numbers as from_torch (both fold bias_ih + bias_hh in float64).
    reference = type(lstm).from_torch(module)
    for key, value in reference.parameters.items():
        assert np.array_equal(host(lstm.parameters[key]), host(value)), key
    with torch.no_grad():
        expected, (h_n, c_n) = module(*args)
    x_tm = x.numpy().transpose(1, 0, 2) if batch_first else x.numpy()
    state = (h0.numpy().transpose(0, 2, 1), c0.numpy().transpose(0, 2, 1)) if with_state else None
    outputs, (a_n, c_last) = lstm.forward(x_tm.transpose(2, 1, 0), state=state)
    expected = expected.numpy().transpose(1, 0, 2) if batch_first else expected.numpy()
    assert_close(host(outputs).transpose(2, 1, 0), expected, what="Y")
    assert_close(host(a_n).transpose(0, 2, 1), h_n.numpy(), what="Y_h")
    assert_close(host(c_last).transpose(0, 2, 1), c_n.numpy(), what="Y_c")


# ------------------------------------------------------------------ ONNX backend node tests

NODE_DATA = [
    Path(folder)
    for folder in (
        os.environ.get("XLSTM_ONNX_NODE_DATA"),
        Path(onnx.__file__).parent / "backend" / "test" / "data" / "node",
    )
    if folder
]


def node_case(name):
    """``(model, inputs, outputs)`` of an ONNX backend node test.

    Read from its stored files (``model.onnx``, ``test_data_set_0/*.pb``) in the onnx wheel or
    in ``$XLSTM_ONNX_NODE_DATA``.  onnx 1.2x wheels no longer ship them (onnx PR #7959 removed
    the node test artifacts); then the case comes from onnx's own generator, the code that
    wrote those files (``onnx/backend/test/case/node/lstm.py``).
    """
    for root in NODE_DATA:
        folder = root / name
        if (folder / "model.onnx").is_file():
            data = folder / "test_data_set_0"

            arrays = {
                prefix: [
                    numpy_helper.to_array(onnx.load_tensor(str(p)))
                    for p in sorted(
                        data.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.rsplit("_", 1)[1])
                    )
                ]
                for prefix in ("input", "output")
            }
            return onnx.load(str(folder / "model.onnx")), arrays["input"], arrays["output"]
    # Importing the module runs its exports, which register the cases.
    importlib.import_module("onnx.backend.test.case.node.lstm")
    from onnx.backend.test.case import node as cases

    for case in cases._NodeTestCases:
        if case.name == name:
            inputs, outputs = case.data_sets[0]
            return case.model, list(inputs), list(outputs)
    pytest.skip(f"onnx {onnx.__version__} has no node test {name}")


def bind_weights(model, inputs):
    """The node tests feed W, R, B as graph inputs: store them in the model as initializers."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    weights = set(node.input[1:4]) - {""}
    feeds = {}
    kept = []
    for value, array in zip(list(model.graph.input), inputs, strict=True):
        if value.name in weights:
            model.graph.initializer.append(numpy_helper.from_array(array, value.name))
        else:
            feeds[value.name] = array
            kept.append(value)
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model, node, feeds


@pytest.mark.parametrize(
    "name",
    [
        "test_lstm_defaults",
        "test_lstm_with_initial_bias",
        "test_lstm_batchwise",
        "test_lstm_bidirectional",
    ],
)
def test_onnx_node_tests(name):
    model, inputs, outputs = node_case(name)
    model, node, feeds = bind_weights(model, inputs)
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    lstm = convert.from_onnx(model)
    X = feeds[node.input[0]]
    x = X.transpose(2, 1, 0) if layout == 0 else X.transpose(2, 0, 1)  # (n_x, m, T)
    y, (a_n, c_n) = lstm.forward(np.ascontiguousarray(x))
    directions = 2 if lstm.bidirectional else 1
    y = host(y).reshape(directions, lstm.n_a, *x.shape[1:])  # (D, n_a, m, T)
    ours = {
        0: y.transpose(3, 0, 2, 1) if layout == 0 else y.transpose(2, 3, 0, 1),
        1: host(a_n).transpose(0, 2, 1) if layout == 0 else host(a_n).transpose(2, 0, 1),
        2: host(c_n).transpose(0, 2, 1) if layout == 0 else host(c_n).transpose(2, 0, 1),
    }
    produced = [position for position, out in enumerate(node.output) if out]
    assert len(produced) == len(outputs)
    for position, stored in zip(produced, outputs, strict=True):
        assert_close(ours[position], stored, what=f"{name} output {position}")


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("test_lstm_with_peepholes", r"P \(peepholes\)"),
        ("test_lstm_reverse", r"direction = 'reverse'"),
    ],
)
def test_onnx_node_tests_xlstm_cannot_express(name, match):
    model, inputs, _ = node_case(name)
    model, _, _ = bind_weights(model, inputs)
    with pytest.raises(ValueError, match=match):
        convert.from_onnx(model)


# ------------------------------------------------------------------ untrusted graphs

N_X, N_A = 2, 3


def raw_tensor(name, dims, data):
    """A FLOAT tensor whose payload need not match its shape (onnx.helper checks it)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, raw_data=data)
    tensor.dims.extend(dims)
    return tensor


def lstm_graph(*, attributes=None, peepholes=False, w=None, r=None, b=None, initial_h=None):
    """One LSTM node with constant weights (hidden 3, inputs 2); tensors may be replaced."""
    rng = np.random.default_rng(0)
    tensors = {
        "W": w if w is not None else rng.standard_normal((1, 4 * N_A, N_X)).astype(np.float32),
        "R": r if r is not None else rng.standard_normal((1, 4 * N_A, N_A)).astype(np.float32),
        "B": b if b is not None else np.zeros((1, 8 * N_A), np.float32),
    }
    inputs = ["X", "W", "R", "B", "", "", "", ""]
    if initial_h is not None:
        tensors["initial_h"] = initial_h
        inputs[5] = "initial_h"
    if peepholes:
        tensors["P"] = np.ones((1, 3 * N_A), np.float32)
        inputs[7] = "P"
    initializers = [
        value if isinstance(value, TensorProto) else numpy_helper.from_array(value, name)
        for name, value in tensors.items()
    ]
    node = helper.make_node(
        "LSTM", inputs, ["Y", "Y_h"], hidden_size=N_A, name="lstm", **(attributes or {})
    )
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "m", N_X])],
        [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "m", N_A])],
        initializers,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hand_built_node_reads():
    lstm = convert.from_onnx(lstm_graph())
    assert (lstm.n_x, lstm.n_a, lstm.num_layers, lstm.bidirectional) == (N_X, N_A, 1, False)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"peepholes": True}, r"P \(peepholes\)"),
        ({"attributes": {"clip": 3.0}}, r"clip = 3\.0"),
        ({"attributes": {"input_forget": 1}}, r"input_forget = 1"),
        ({"attributes": {"activations": ["Sigmoid", "Relu", "Tanh"]}}, r"activations = "),
        ({"attributes": {"direction": "reverse"}}, r"direction = 'reverse'"),
    ],
)
def test_unsupported_features_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        convert.from_onnx(lstm_graph(**options))


def test_all_unsupported_features_named_together():
    graph = lstm_graph(peepholes=True, attributes={"clip": 1.0, "input_forget": 1})
    with pytest.raises(ValueError, match=r"P \(peepholes\), clip = 1\.0, input_forget = 1"):
        convert.from_onnx(graph)


def test_default_activations_spelled_out_are_accepted():
    graph = lstm_graph(attributes={"activations": ["Sigmoid", "Tanh", "Tanh"]})
    assert convert.from_onnx(graph).n_a == N_A


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"w": np.zeros((1, 4 * N_A + 1, N_X), np.float32)}, r"`W` has shape \(1, 13, 2\)"),
        ({"r": np.zeros((1, 4 * N_A, N_A + 1), np.float32)}, r"`R` has shape"),
        ({"b": np.zeros((1, 4 * N_A), np.float32)}, r"`B` has shape"),
        ({"w": np.zeros((1, 4 * N_A, N_X), np.int32)}, r"element type INT32"),
        (
            {"w": raw_tensor("W", [1, 4 * N_A, N_X], b"\0" * 8)},
            r"holds 8 bytes|raw_data size \(8 bytes\)",  # ours, or onnx.checker's (1.18+)
        ),
        (
            {"w": raw_tensor("W", [1, 4 * N_A, 1 << 30], b"\0" * 4)},
            r"`W` has shape|raw_data size",
        ),
        ({"initial_h": np.ones((1, 1, N_A), np.float32)}, r"fixed nonzero"),
    ],
)
def test_malformed_tensors_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        convert.from_onnx(lstm_graph(**options))


def test_zero_constant_initial_state_is_accepted():
    assert convert.from_onnx(lstm_graph(initial_h=np.zeros((1, 1, N_A), np.float32))).n_a == N_A


def test_absurd_hidden_size_refused_before_allocation():
    model = lstm_graph()
    next(a for a in model.graph.node[0].attribute if a.name == "hidden_size").i = 1 << 40
    with pytest.raises(ValueError, match="hidden_size"):
        convert.from_onnx(model)


def test_external_data_refused():
    model = lstm_graph()
    tensor = next(t for t in model.graph.initializer if t.name == "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    # onnx.checker refuses a location that is not a file; xlstm refuses external data anyway.
    with pytest.raises(ValueError, match=r"external data|weights\.bin"):
        convert.from_onnx(model)


@pytest.mark.parametrize(
    ("tensor", "shape", "match"),
    [
        (raw_tensor("W", [1, 12, 2], b"\0" * 8), (1, 12, 2), "holds 8 bytes"),
        (raw_tensor("W", [1 << 15, 1 << 15], b""), (1 << 15, 1 << 15), "more elements"),
        (raw_tensor("W", [1, 12, 2], b""), (1, 12, 3), r"has shape \(1, 12, 2\)"),
    ],
)
def test_tensor_checks_before_arrays_are_built(tensor, shape, match):
    # What xlstm checks itself, whatever the installed onnx.checker catches first.
    from xlstm.convert.onnx import _tensor_array

    with pytest.raises(ValueError, match=match):
        _tensor_array(tensor, "`W`", types=("FLOAT",), shape=shape)


def test_external_tensor_refused_by_xlstm():
    from xlstm.convert.onnx import _tensor_array

    tensor = raw_tensor("W", [1, 12, 2], b"")
    tensor.data_location = TensorProto.EXTERNAL
    with pytest.raises(ValueError, match="external data"):
        _tensor_array(tensor, "`W`", types=("FLOAT",), shape=(1, 12, 2))


def test_weights_fed_at_run_time_are_refused():
    model, inputs, _ = node_case("test_lstm_defaults")
    with pytest.raises(ValueError, match=r"`W` .* is a graph input, not a constant"):
        convert.from_onnx(model)


def test_constant_node_weights_are_read():
    model = lstm_graph()
    constants = [
        helper.make_node("Constant", [], [tensor.name], value=tensor)
        for tensor in model.graph.initializer
    ]
    nodes = [*constants, *model.graph.node]
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert convert.from_onnx(model).n_a == N_A


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        (b"not a model", ValueError, "not an ONNX model"),
        (12, TypeError, "path_or_model"),
    ],
)
def test_not_a_model(source, error, match):
    with pytest.raises(error, match=match):
        convert.from_onnx(source)


def test_invalid_model_refused():
    model = lstm_graph()
    model.graph.node[0].input[0] = "nowhere"
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        convert.from_onnx(model)


def test_no_lstm_node():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    with pytest.raises(ValueError, match="no LSTM node"):
        convert.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def two_layer_export():
    return convert.to_onnx(make_model(2, 3, num_layers=2, bidirectional=True))


def test_other_ops_between_layers_refused():
    model = two_layer_export()
    merge = next(n for n in model.graph.node if n.name == "merge_l0")
    relu = helper.make_node("Relu", [merge.output[0]], ["relu_out"], name="relu")
    lstm = next(n for n in model.graph.node if n.name == "lstm_l1")
    lstm.input[0] = "relu_out"
    nodes = list(model.graph.node)
    nodes.insert(nodes.index(merge) + 1, relu)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    with pytest.raises(ValueError, match="Relu"):
        convert.from_onnx(model)


def test_wrong_reshape_between_layers_refused():
    # Without the Transpose, (T, D, m, n_a) reshaped to (T, D, m n_a) mixes batch and features.
    model = two_layer_export()
    merge = next(n for n in model.graph.node if n.name == "merge_l0")
    merge.input[0] = "Y_raw_l0"
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "transpose_l0"))
    with pytest.raises(ValueError, match=r"Reshape between layers|expected \["):
        convert.from_onnx(model)


def test_mismatched_layers_refused():
    first = make_model(2, 3, bidirectional=True)
    model = convert.to_onnx(first)
    # Make the (single) node claim to be followed by a unidirectional one of another size.
    second = convert.to_onnx(make_model(6, 4))
    for tensor in second.graph.initializer:
        tensor.name += "_second"
        model.graph.initializer.append(tensor)
    node = next(n for n in second.graph.node if n.op_type == "LSTM")
    node.input[:] = ["Y", "W_l0_second", "R_l0_second", "B_l0_second"]
    node.output[:] = ["Y2", "Y_h2", "Y_c2"]
    model.graph.node.append(node)
    with pytest.raises(ValueError, match="LSTM node 1 has D = 1, hidden_size = 4"):
        convert.from_onnx(model)


# ------------------------------------------------------------------ export errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"output": "logits"}, ValueError, "no output layer|has none"),
        ({"opset": 5}, ValueError, "`opset` = 5"),
        ({"opset": "21"}, TypeError, "`opset` must be an int"),
        ({"dynamic_batch": False}, ValueError, "batch_size"),
        ({"batch_size": 3}, ValueError, "dynamic_batch=False"),
        ({"dtype": "float16"}, ValueError, "`dtype`"),
        ({"initial_state": 1}, TypeError, "`initial_state` must be a bool"),
    ],
)
def test_export_option_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        convert.to_onnx(make_model(2, 3), **kwargs)


def test_export_refuses_other_objects():
    with pytest.raises(TypeError, match=r"`model` must be an xlstm\.LSTM"):
        convert.to_onnx({"Wf": 1})


def test_import_xlstm_does_not_import_onnx():
    code = (
        "import sys, xlstm, xlstm.convert, xlstm.cli.export, xlstm.training; "
        "sys.exit('onnx' in sys.modules or 'onnxruntime' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_docs_example_runs(tmp_path, monkeypatch):
    page = Path(__file__).resolve().parents[2] / "docs" / "onnx.md"
    if not page.is_file():
        pytest.skip("docs/onnx.md is not next to the tests (installed package)")
    blocks = re.findall(r"```python\n(.+?)\n```", page.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})


# ------------------------------------------------------------------ python -m xlstm export


def export_main(argv):
    from xlstm.cli import export as export_cli

    out, err = io.StringIO(), io.StringIO()
    return export_cli.main(argv, stdout=out, stderr=err), out.getvalue(), err.getvalue()


def test_cli_exports_a_character_model(tmp_path):
    model = char_model()
    checkpoint = model.save(tmp_path / "char.npz")
    target = tmp_path / "char.onnx"
    status, out, err = export_main([str(checkpoint), "--onnx", str(target)])
    assert (status, err) == (0, "")
    assert "wrote" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["char.npz", "char.onnx"]
    ids = np.arange(10).reshape(2, 5) % model.n_x
    x = host(model.inputs(ids)).transpose(2, 1, 0)
    y, _ = model.forward(ids)
    proto = onnx.load(str(target))
    assert_close(run_ort(proto, {"X": np.ascontiguousarray(x)})[0], host(y).transpose(2, 1, 0))


def test_cli_exports_an_lstm(tmp_path):
    model = make_model(3, 4, num_layers=2, bidirectional=True)
    if not hasattr(model, "save"):
        pytest.skip("this xlstm's LSTM has no save/load")
    checkpoint = model.save(tmp_path / "lstm.npz")
    target = tmp_path / "lstm.onnx"
    status, _, err = export_main([str(checkpoint), "--onnx", str(target), "--sequence-lens"])
    assert (status, err) == (0, "")
    back = convert.from_onnx(target)
    assert all(np.array_equal(back.parameters[k], v) for k, v in model.parameters.items())


@pytest.mark.parametrize("content", [None, b"garbage", b"PK\x03\x04broken"])
def test_cli_bad_checkpoint(tmp_path, content):
    checkpoint = tmp_path / "bad.npz"
    if content is not None:
        checkpoint.write_bytes(content)
    status, out, err = export_main([str(checkpoint), "--onnx", str(tmp_path / "out.onnx")])
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("python -m xlstm export: error:")
    assert not (tmp_path / "out.onnx").exists()


def test_cli_without_onnx(tmp_path, monkeypatch):
    checkpoint = char_model().save(tmp_path / "char.npz")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    status, _, err = export_main([str(checkpoint), "--onnx", str(tmp_path / "out.onnx")])
    assert status == 2
    assert err.count("\n") == 1
    assert "pip install -e '.[onnx]'" in err


def test_cli_usage_error():
    status, _, err = export_main(["only-a-checkpoint.npz"])
    assert status == 2
    assert "--onnx" in err
    assert err.count("\n") == 1


def test_python_m_xlstm_export(tmp_path):
    from xlstm import __main__ as entry

    if "export" not in getattr(entry, "COMMANDS", {}):
        pytest.skip("`python -m xlstm export` is not wired into xlstm/__main__.py yet")
    checkpoint = char_model().save(tmp_path / "char.npz")
    target = tmp_path / "char.onnx"
    command = [sys.executable, "-m", "xlstm", "export", str(checkpoint), "--onnx", str(target)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(str(target))
