"""from_onnx on hostile graphs and files: nothing outside the model is read, nothing it cannot
reproduce is imported.

Each graph here is a valid ONNX model (``onnx.checker`` accepts it, and where it runs, ONNX
Runtime runs it) that an importer dropping or misreading one node would turn into a silently
different model; the tests assert it is refused, by the node's op and name, and that what is
accepted agrees with ONNX Runtime.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from xlstm import convert  # noqa: E402
from xlstm.convert.onnx import _model_class  # noqa: E402


def make_model(n_x=2, n_a=3, num_layers=1, bidirectional=False, seed=0):
    return _model_class()(n_x, n_a, num_layers=num_layers, bidirectional=bidirectional, seed=seed)


def run_ort(proto, feeds):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def insert_before(model, consumer_name, nodes, initializers=(), position=0):
    """Put ``nodes`` in front of input ``position`` of the node named ``consumer_name``."""
    consumer = next(n for n in model.graph.node if n.name == consumer_name)
    nodes[0].input[0] = consumer.input[position]
    consumer.input[position] = nodes[-1].output[0]
    everything = list(model.graph.node)
    at = everything.index(consumer)
    everything[at:at] = nodes
    del model.graph.node[:]
    model.graph.node.extend(everything)
    model.graph.initializer.extend(initializers)
    onnx.checker.check_model(model, full_check=True)
    return model


def make_external(tensor, location):
    tensor.ClearField("raw_data")
    tensor.ClearField("int64_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location


# ------------------------------------------------------------------ external data


SECRET = np.array([7_000_001, 7_000_002, 7_000_003], np.int64)  # what a 24-byte file decodes to


@pytest.mark.parametrize(
    ("layers", "bidirectional", "constant"),
    [(2, True, "merge_shape"), (2, False, "axis_1")],
    ids=["reshape-shape", "squeeze-axes"],
)
def test_external_data_on_a_small_constant_is_refused_unread(
    tmp_path, monkeypatch, layers, bidirectional, constant
):
    model = convert.to_onnx(make_model(num_layers=layers, bidirectional=bidirectional))
    tensor = next(t for t in model.graph.initializer if t.name == constant)
    make_external(tensor, "secret.bin")
    (tmp_path / "secret.bin").write_bytes(SECRET.tobytes())
    monkeypatch.chdir(tmp_path)
    opened = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    monkeypatch.setattr(numpy_helper, "to_array", lambda *a, **k: pytest.fail("to_array called"))
    with pytest.raises(
        ValueError, match=rf"initializer '{constant}' is stored as external data"
    ) as caught:
        convert.from_onnx(model.SerializeToString())
    message = str(caught.value)
    assert all(str(value) not in message for value in SECRET)
    assert not [path for path in opened if "secret" in path]


def test_external_data_pointing_at_a_fifo_does_not_block(tmp_path):
    """The named file is a FIFO nobody writes: opening it for reading would hang."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    model = convert.to_onnx(make_model(num_layers=2, bidirectional=True))
    make_external(next(t for t in model.graph.initializer if t.name == "merge_shape"), "pipe")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    code = textwrap.dedent(
        """
        from xlstm import convert
        try:
            convert.from_onnx("model.onnx")
        except ValueError as error:
            print(error)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "external data" in result.stdout


def test_string_squeeze_axes_are_refused():
    model = convert.to_onnx(make_model(num_layers=2))
    at = next(i for i, t in enumerate(model.graph.initializer) if t.name == "axis_1")
    model.graph.initializer[at].CopyFrom(
        helper.make_tensor("axis_1", TensorProto.STRING, [1], [b"1"])
    )
    with pytest.raises(ValueError, match=r"'axis_1' of the Squeeze node .* element type STRING"):
        convert.from_onnx(model)


def test_float_reshape_shape_is_refused():
    model = convert.to_onnx(make_model(num_layers=2, bidirectional=True))
    at = next(i for i, t in enumerate(model.graph.initializer) if t.name == "merge_shape")
    model.graph.initializer[at].CopyFrom(
        numpy_helper.from_array(np.array([0, 0, -1], np.float32), "merge_shape")
    )
    with pytest.raises(ValueError, match=r"element type FLOAT; expected INT64"):
        convert.from_onnx(model)


def test_huge_declared_constant_refused_before_allocation():
    model = convert.to_onnx(make_model(num_layers=2, bidirectional=True))
    tensor = next(t for t in model.graph.initializer if t.name == "merge_shape")
    del tensor.dims[:]
    tensor.dims.extend([1 << 40])
    with pytest.raises(ValueError, match=r"merge_shape|raw_data size"):
        convert.from_onnx(model)
    from xlstm.convert.onnx import _INT64, _tensor_array

    with pytest.raises(ValueError, match="more elements than this reader accepts"):
        _tensor_array(tensor, "shape", types=_INT64, max_elements=16)


# ------------------------------------------------------------------ ops it cannot represent


def gather_features(model, n_x):
    """A Gather permuting X's features before the first LSTM."""
    perm = numpy_helper.from_array(np.arange(n_x)[::-1].astype(np.int64), "perm")
    node = helper.make_node("Gather", ["", "perm"], ["X_permuted"], axis=2, name="permute")
    return insert_before(model, "lstm_l0", [node], [perm])


def slice_reversing_time(model):
    constants = [
        numpy_helper.from_array(np.array([v], np.int64), name)
        for name, v in (
            ("rev_start", -1),
            ("rev_end", -(1 << 62)),
            ("rev_axis", 0),
            ("rev_step", -1),
        )
    ]
    node = helper.make_node(
        "Slice", ["", "rev_start", "rev_end", "rev_axis", "rev_step"], ["X_reversed"],
        name="reverse_time",
    )  # fmt: skip
    return insert_before(model, "lstm_l0", [node], constants)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: gather_features(m, 2), r"Gather node 'permute'"),
        (slice_reversing_time, r"Slice node 'reverse_time'"),
    ],
    ids=["gather-features", "slice-reversing-time"],
)
def test_ops_before_the_first_lstm_are_refused(edit, match):
    model = make_model(num_layers=2, bidirectional=True)
    proto = edit(convert.to_onnx(model))
    # ONNX Runtime runs it, and it is not the model: importing it would be silently wrong.
    x = np.random.default_rng(0).standard_normal((5, 3, 2)).astype(np.float32)
    outputs, _ = model.forward(x.transpose(2, 1, 0))
    assert not np.allclose(run_ort(proto, {"X": x})[0], np.asarray(outputs).transpose(2, 1, 0))
    with pytest.raises(ValueError, match=match):
        convert.from_onnx(proto)


def test_transpose_before_the_first_lstm_is_a_layout():
    model = make_model(num_layers=2, bidirectional=True)
    node = helper.make_node("Transpose", [""], ["X_tm"], perm=[1, 0, 2], name="batch_first")
    proto = insert_before(convert.to_onnx(model), "lstm_l0", [node])
    back = convert.from_onnx(proto)
    assert all(np.array_equal(back.parameters[k], v) for k, v in model.parameters.items())


def test_op_after_the_last_lstm_is_refused():
    model = convert.to_onnx(make_model(num_layers=1, bidirectional=False))
    squeeze = next(n for n in model.graph.node if n.name == "squeeze_l0")
    squeeze.output[0] = "Y_squeezed"
    neg = helper.make_node("Neg", ["Y_squeezed"], ["Y"], name="negate")
    model.graph.node.append(neg)
    with pytest.raises(ValueError, match="Neg"):
        convert.from_onnx(model)
    # An allowed op used to reorder what the LSTM computed: a Gather on Y's features.
    model = convert.to_onnx(make_model(num_layers=1, bidirectional=False))
    squeeze = next(n for n in model.graph.node if n.name == "squeeze_l0")
    squeeze.output[0] = "Y_squeezed"
    model.graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "p"))
    model.graph.node.append(
        helper.make_node("Gather", ["Y_squeezed", "p"], ["Y"], axis=2, name="g")
    )
    onnx.checker.check_model(model, full_check=True)
    with pytest.raises(ValueError, match=r"Gather node 'g'"):
        convert.from_onnx(model)


def test_output_that_is_an_earlier_layers_state_alone_is_refused():
    model = convert.to_onnx(make_model(num_layers=2))
    concat = next(n for n in model.graph.node if n.name == "concat_Y_h")
    model.graph.node.remove(concat)
    model.graph.node.append(helper.make_node("Identity", ["Y_h_l0"], ["Y_h"], name="only_l0"))
    with pytest.raises(ValueError, match=r"graph output 'Y_h' is the Y_h of LSTM node 0 alone"):
        convert.from_onnx(model)


# ------------------------------------------------------------------ sequence_lens, states


def with_constant_lengths(model, lengths):
    proto = convert.to_onnx(model, sequence_lens=True)
    kept = [value for value in proto.graph.input if value.name != "sequence_lens"]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    proto.graph.initializer.append(numpy_helper.from_array(lengths, "sequence_lens"))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def test_constant_sequence_lens_is_refused():
    model = make_model(num_layers=2, bidirectional=True)
    lengths = np.array([2, 5, 3], np.int32)
    proto = with_constant_lengths(model, lengths)
    x = np.random.default_rng(1).standard_normal((5, 3, 2)).astype(np.float32)
    ours, _ = model.forward(x.transpose(2, 1, 0))
    # ONNX Runtime honours the baked-in lengths: the graph is not model.forward(x).
    assert not np.allclose(run_ort(proto, {"X": x})[0], np.asarray(ours).transpose(2, 1, 0))
    with pytest.raises(ValueError, match=r"`sequence_lens` .* is a constant stored in the graph"):
        convert.from_onnx(proto)


def test_sequence_lens_on_some_layers_only_is_refused():
    proto = convert.to_onnx(make_model(num_layers=2), sequence_lens=True)
    next(n for n in proto.graph.node if n.name == "lstm_l1").input[4] = ""
    with pytest.raises(ValueError, match=r"take `sequence_lens` \['sequence_lens', ''\]"):
        convert.from_onnx(proto)


def test_state_rows_given_to_the_wrong_layer_are_refused():
    proto = convert.to_onnx(make_model(num_layers=2), initial_state=True)
    start = next(t for t in proto.graph.initializer if t.name == "state_start_l1")
    start.CopyFrom(numpy_helper.from_array(np.array([0], np.int64), "state_start_l1"))
    end = next(t for t in proto.graph.initializer if t.name == "state_end_l1")
    end.CopyFrom(numpy_helper.from_array(np.array([1], np.int64), "state_end_l1"))
    with pytest.raises(
        ValueError, match=r"`initial_h` of the LSTM nodes .* rows \[\(0, 1\), \(0, 1\)\]"
    ):
        convert.from_onnx(proto)


def test_state_computed_from_another_lstm_is_refused():
    proto = convert.to_onnx(make_model(num_layers=2))
    lstm = next(n for n in proto.graph.node if n.name == "lstm_l1")
    while len(lstm.input) < 6:
        lstm.input.append("")
    lstm.input[5] = "Y_h_l0"
    with pytest.raises(ValueError, match=r"`initial_h` is computed by the LSTM node 'lstm_l0'"):
        convert.from_onnx(proto)


# ------------------------------------------------------------------ files


def test_special_files_are_refused_without_reading(tmp_path):
    """``/dev/zero`` would be read until memory runs out, a FIFO would block: both refused."""
    if not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"):
        pytest.skip("no FIFOs or /dev/zero here")
    os.mkfifo(tmp_path / "fifo.onnx")
    code = textwrap.dedent(
        """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        from xlstm import convert
        for path in sys.argv[1:]:
            try:
                convert.from_onnx(path)
            except ValueError as error:
                print(error)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", code, "/dev/zero", str(tmp_path / "fifo.onnx"), str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert all("is not a regular file" in line for line in lines)


def test_file_size_is_capped_from_fstat(tmp_path, monkeypatch):
    from xlstm.convert import onnx as onnx_module

    path = tmp_path / "m.onnx"
    path.write_bytes(convert.to_onnx(make_model()).SerializeToString())
    monkeypatch.setattr(onnx_module, "_MAX_FILE_BYTES", 64)
    read = []
    monkeypatch.setattr(onnx_module.os, "read", lambda *args: read.append(args) or b"")
    with pytest.raises(ValueError, match=r"m\.onnx'\) is \d+ bytes; more than an ONNX file can be"):
        convert.from_onnx(path)
    assert read == []  # refused from fstat, before a byte is read


def test_a_file_that_is_a_model_still_reads(tmp_path):
    model = make_model(num_layers=2, bidirectional=True)
    path = tmp_path / "m.onnx"
    path.write_bytes(convert.to_onnx(model).SerializeToString())
    back = convert.from_onnx(path)
    assert all(np.array_equal(back.parameters[k], v) for k, v in model.parameters.items())


# ------------------------------------------------------------------ options


def test_engine_and_fused_options_as_the_constructor():
    proto = convert.to_onnx(make_model())
    assert convert.from_onnx(proto, engine="generic").engine == "generic"
    with pytest.warns(DeprecationWarning, match="from_onnx"):
        assert convert.from_onnx(proto, fused=False).engine == "generic"
    with pytest.raises(TypeError, match="not both"):
        convert.from_onnx(proto, engine="numpy", fused=True)
