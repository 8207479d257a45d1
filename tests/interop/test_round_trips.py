"""Property-based round trips for every converter (hypothesis, small sizes, bounded examples).

For torch, Keras and ONNX: ``from_X(to_X(model))`` gives back the model's parameters bit for
bit, and the peer's own runtime on the exported model (``torch.nn.LSTM``, Keras 3 on JAX, ONNX
Runtime) equals xlstm's forward: outputs and final states, float32 within 1e-5 relative,
float64 within 1e-12 where the peer computes in float64 (torch; ONNX Runtime's LSTM is
float32 only; Keras 3.15 on JAX with x64 returns float64 but agrees to ~4e-8 only, where xlstm
and a float64 NumPy transcription of Keras's cell agree to 1e-16, so its float64 bound is
1e-6), over 1-2 layers, one or two directions, and variable
lengths where the peer takes them (torch packed sequences, ONNX ``sequence_lens``).

Shape legend: xlstm ``x (n_x, m, T)``, ``outputs (D n_a, m, T)``, states ``(L D, n_a, m)``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlstm

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is first imported

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
KERAS_TOLERANCE = {"float32": 1e-5, "float64": 1e-6}  # see the module docstring
EXAMPLES = settings(
    max_examples=15, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip


@st.composite
def cases(draw, dtypes=("float32", "float64"), lengths=True):
    """A model and an input batch: sizes, layers, direction, dtype, seed, optional lengths."""
    num_layers = draw(st.integers(1, 2))
    bidirectional = draw(st.booleans())
    n_x, n_a = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    m, t_x = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**16))
    model = xlstm.LSTM(
        n_x, n_a, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype, seed=seed
    )
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_x, m, t_x)).astype(dtype)
    sizes = None
    if lengths and draw(st.booleans()):
        sizes = np.array(draw(st.lists(st.integers(1, t_x), min_size=m, max_size=m)))
    return model, x, sizes


def rel_err(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def assert_same_parameters(back, model):
    assert (back.n_x, back.n_a, back.num_layers, back.bidirectional) == (
        model.n_x, model.n_a, model.num_layers, model.bidirectional,
    )  # fmt: skip
    assert back.parameters.keys() == model.parameters.keys()
    for key, value in model.parameters.items():
        got = np.asarray(back.parameters[key])
        assert got.dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(got, np.asarray(value), err_msg=key)


# --------------------------------------------------------------------------- torch


@EXAMPLES
@given(case=cases())
def test_torch_round_trip(case):
    torch = pytest.importorskip("torch")
    model, x, lengths = case
    back = xlstm.LSTM.from_torch(model.to_torch_state_dict(as_tensors=True))
    assert_same_parameters(back, model)
    module = torch.nn.LSTM(
        model.n_x, model.n_a, num_layers=model.num_layers, bidirectional=model.bidirectional,
        dtype=getattr(torch, str(x.dtype)),
    )  # fmt: skip
    module.load_state_dict(model.to_torch_state_dict(as_tensors=True))
    x_tm = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 1, 0)))  # (T, m, n_x)
    with torch.no_grad():
        if lengths is None:
            y, (h_n, c_n) = module(x_tm)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x_tm, torch.from_numpy(lengths), enforce_sorted=False
            )
            y, (h_n, c_n) = module(packed)
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=x.shape[2])
    outputs, (a_n, c_last) = model(x, lengths=lengths)
    tolerance = TOLERANCE[str(x.dtype)]
    assert rel_err(np.asarray(outputs).transpose(2, 1, 0), y.numpy()) <= tolerance
    assert rel_err(np.asarray(a_n).transpose(0, 2, 1), h_n.numpy()) <= tolerance
    assert rel_err(np.asarray(c_last).transpose(0, 2, 1), c_n.numpy()) <= tolerance


# --------------------------------------------------------------------------- ONNX


@EXAMPLES
@given(case=cases(), state=st.booleans())
def test_onnx_round_trip(case, state):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from xlstm.convert import from_onnx, to_onnx

    model, x, lengths = case
    proto = to_onnx(model, sequence_lens=lengths is not None, initial_state=state)
    assert_same_parameters(from_onnx(proto.SerializeToString()), model)
    # ONNX Runtime's LSTM is float32 only: run the float32 model (the export of a float64
    # one is checked exactly above).
    model32 = model.to("numpy") if x.dtype == np.float32 else xlstm.LSTM(
        model.n_x, model.n_a, num_layers=model.num_layers, bidirectional=model.bidirectional,
        parameters={k: np.asarray(v, np.float32) for k, v in model.parameters.items()},
    )  # fmt: skip
    x32 = x.astype(np.float32)
    proto32 = to_onnx(model32, sequence_lens=lengths is not None, initial_state=state)
    feeds = {"X": np.ascontiguousarray(x32.transpose(2, 1, 0))}
    kwargs = {"lengths": lengths}
    if lengths is not None:
        feeds["sequence_lens"] = lengths.astype(np.int32)
    if state:
        count = model.num_layers * model.directions
        rng = np.random.default_rng(int(x.size))
        a0, c0 = (
            rng.standard_normal((count, model.n_a, x.shape[1])).astype(np.float32) for _ in "ac"
        )
        kwargs["state"] = (a0, c0)
        feeds["initial_h"], feeds["initial_c"] = a0.transpose(0, 2, 1), c0.transpose(0, 2, 1)
    session = ort.InferenceSession(proto32.SerializeToString(), providers=["CPUExecutionProvider"])
    y, y_h, y_c = session.run(None, feeds)
    outputs, (a_n, c_n) = model32(x32, **kwargs)
    assert rel_err(np.asarray(outputs).transpose(2, 1, 0), y) <= TOLERANCE["float32"]
    assert rel_err(np.asarray(a_n).transpose(0, 2, 1), y_h) <= TOLERANCE["float32"]
    assert rel_err(np.asarray(c_n).transpose(0, 2, 1), y_c) <= TOLERANCE["float32"]


# --------------------------------------------------------------------------- Keras


@pytest.fixture(scope="module")
def keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(
            f"the Keras round trip runs on JAX; this process uses {keras.backend.backend()}"
        )
    import jax

    jax.config.update("jax_enable_x64", True)  # Keras float64 layers compute in float64
    return keras


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
@settings(EXAMPLES, max_examples=8)
@given(case=cases(lengths=False))
def test_keras_round_trip(keras, case):
    model, x, _ = case
    layer = model.to_keras(as_layer=True)
    assert_same_parameters(xlstm.LSTM.from_keras(layer), model)
    x_bt = np.ascontiguousarray(x.transpose(1, 2, 0))  # (m, T, n_x), Keras's batch-first
    got = np.asarray(layer(x_bt))
    assert got.dtype == x.dtype
    outputs, _ = model(x)
    tolerance = KERAS_TOLERANCE[str(x.dtype)]
    assert rel_err(np.asarray(outputs).transpose(1, 2, 0), got) <= tolerance
