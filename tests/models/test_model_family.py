"""The model family: xlstm.LSTM (save/load, conversion) and the training models built on it.

Oracles: central differences in float64 for the stacked training model's gradients,
``torch.nn.LSTM`` for imported weights, exact round trips through files and converters.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from _helpers import central_difference, rel_err, to_numpy

import xlstm
from xlstm import checkpoint
from xlstm._layout import GATE_KEYS, PARAMETER_KEYS, layer_key
from xlstm.training import SGD, CharLSTM, LSTMModel, load_model

RNG = np.random.default_rng(7)


def _model(**options) -> xlstm.LSTM:
    options = {"num_layers": 2, "bidirectional": True, "dtype": "float64", "seed": 3, **options}
    return xlstm.LSTM(3, 4, **options)


@pytest.mark.parametrize("load_on", ["numpy", "torch"])
def test_lstm_save_load_round_trip_is_exact(tmp_path, load_on):
    pytest.importorskip(load_on)
    model = _model(dropout=0.25)
    path = model.save(tmp_path / "lstm")
    assert path.suffix == ".npz"
    loaded = xlstm.LSTM.load(path, backend=load_on)
    assert (loaded.num_layers, loaded.bidirectional, loaded.dropout) == (2, True, 0.25)
    assert loaded.backend == load_on
    for key, value in model.parameters.items():
        np.testing.assert_array_equal(to_numpy(loaded.parameters[key]), value, err_msg=key)
    x = RNG.standard_normal((3, 5, 6))
    lengths = [6, 2, 5, 1, 3]
    out, (a_n, c_n) = model(x, lengths=lengths)
    out_l, (a_l, c_l) = loaded(x, lengths=lengths)
    assert rel_err(to_numpy(out_l), out) < 1e-12
    assert rel_err(to_numpy(a_l), a_n) < 1e-12


def test_lstm_load_refuses_a_training_checkpoint_and_vice_versa(tmp_path):
    char = CharLSTM("abc", 4, seed=0)
    with pytest.raises(checkpoint.CheckpointError, match=r"training model .*load_model"):
        xlstm.LSTM.load(char.save(tmp_path / "char"))
    with pytest.raises(checkpoint.CheckpointError, match="not a training model"):
        load_model(_model().save(tmp_path / "plain"))


def test_inference_equals_training_pass_without_dropout():
    model = _model()
    x = RNG.standard_normal((3, 4, 5))
    inference, final = model(x)
    training, final_t, cache = model.forward_train(x)
    np.testing.assert_array_equal(inference, training)
    np.testing.assert_array_equal(final[0], final_t[0])
    assert cache is not None


def test_torch_round_trip_and_forward_equals_torch():
    torch = pytest.importorskip("torch")
    module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    model = xlstm.LSTM.from_torch(module)
    state = model.to_torch_state_dict(as_tensors=True)
    twin = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    twin.load_state_dict(state)
    x = RNG.standard_normal((3, 2, 6))
    with torch.no_grad():
        ref, _ = module(torch.from_numpy(x.transpose(2, 1, 0).copy()))
        again, _ = twin(torch.from_numpy(x.transpose(2, 1, 0).copy()))
    out, _ = model(x)
    assert rel_err(out, ref.numpy().transpose(2, 1, 0)) < 1e-12
    assert rel_err(again.numpy(), ref.numpy()) < 1e-12


def test_keras_round_trip_and_use_bias():
    model = xlstm.LSTM(3, 4, dtype="float64", seed=1)
    weights = model.to_keras()
    assert [w.shape for w in weights] == [(3, 16), (4, 16), (16,)]
    back = xlstm.LSTM.from_keras(weights)
    for key, value in model.parameters.items():
        np.testing.assert_array_equal(back.parameters[key], value, err_msg=key)
    with pytest.raises(ValueError, match="bias is not zero"):
        model.to_keras(use_bias=False)
    no_bias = {
        k: (np.zeros_like(v) if k.startswith("b") else v) for k, v in model.parameters.items()
    }
    model.load_parameters(no_bias)
    assert len(model.to_keras(use_bias=False)) == 2
    with pytest.raises(ValueError, match="one layer, one direction"):
        _model().to_keras()


def test_load_parameters_keeps_the_dtype_and_checks_keys():
    model = _model()
    as_float32 = {k: v.astype(np.float32) for k, v in model.parameters.items()}
    with pytest.raises(TypeError, match="has dtype float32; the model is float64"):
        model.load_parameters(as_float32)
    broken = model.parameters
    broken.pop("Wf_l1_reverse")
    with pytest.raises(ValueError, match="missing 'Wf_l1_reverse'"):
        model.load_parameters(broken)


def test_backward_moves_numpy_gradients_like_inputs():
    torch = pytest.importorskip("torch")
    model = _model().to("torch")
    x = RNG.standard_normal((3, 2, 4))
    outputs, _, cache = model.forward_train(x)
    grads = model.backward(np.ones(tuple(outputs.shape)), cache)
    assert isinstance(grads["dWf_l0"], torch.Tensor)
    reference = _model().backward(np.ones(tuple(outputs.shape)), _model().forward_train(x)[2])
    assert rel_err(grads["dWf_l0"].numpy(), reference["dWf_l0"]) < 1e-12


def test_stacked_training_model_gradients_central_differences():
    """Two layers + output layer + cross-entropy, float64, against central differences."""
    model = LSTMModel(3, 4, 3, num_layers=2, dtype="float64", seed=2, clip_norm=None)
    x = RNG.standard_normal((3, 2, 4))
    targets = RNG.integers(0, 3, (2, 4))
    _, grads, _ = model.loss_and_gradients(x, targets)

    def loss(arrays):
        probe = LSTMModel(3, 4, 3, num_layers=2, parameters=arrays)
        return float(probe.loss(x, targets)[0])

    numeric = central_difference(loss, model.parameters, model.parameter_keys(), step=1e-6)
    for key, value in numeric.items():
        assert rel_err(grads["d" + key], value) < 1e-6, key


def test_one_layer_model_gives_the_seed_functions_numbers():
    model = LSTMModel(3, 4, 2, dtype="float64", seed=0)
    seed_parameters = xlstm.init_parameters(3, 4, 2, dtype="float64", seed=0)
    for key in PARAMETER_KEYS:
        name = layer_key(key, 0) if key in GATE_KEYS else key
        np.testing.assert_array_equal(model.parameters[name], seed_parameters[key])
    x = RNG.standard_normal((3, 2, 5))
    y, _ = model.forward(x)
    _, y_seed, _, _ = xlstm.lstm_forward(x, np.zeros((4, 2)), seed_parameters)
    np.testing.assert_array_equal(y, y_seed)
    # The seed's keys are still accepted for a one-layer model.
    assert (
        LSTMModel(3, 4, 2, parameters=seed_parameters).parameters.keys() == model.parameters.keys()
    )


def test_two_layer_char_model_trains_saves_and_resumes_exactly(tmp_path):
    vocab = "abcdefgh"
    ids = RNG.integers(0, len(vocab), (4, 13))
    reference = CharLSTM(vocab, 8, num_layers=2, dropout=0.2, dtype="float64", seed=5,
                         optimizer=SGD(lr=0.3))  # fmt: skip
    losses = [float(reference.train_step(ids[:, :-1], ids[:, 1:])[0]) for _ in range(3)]
    assert losses[-1] < losses[0]
    loaded = load_model(reference.save(tmp_path / "two"))
    assert (loaded.num_layers, loaded.dropout, loaded.step) == (2, 0.2, 3)
    for key, value in reference.parameters.items():
        np.testing.assert_array_equal(loaded.parameters[key], value, err_msg=key)
    # Dropout draws differ between the two from here on; evaluation does not.
    assert float(loaded.loss(ids[:, :-1], ids[:, 1:])[0]) == float(
        reference.loss(ids[:, :-1], ids[:, 1:])[0]
    )
    text = loaded.sample(30, prime="abc", seed=4)
    assert text.startswith("abc")
    assert len(text) == 33
    assert text == reference.sample(30, prime="abc", seed=4)


def test_ids_outside_the_vocabulary_are_an_error():
    model = CharLSTM("abc", 4, seed=0)
    with pytest.raises(ValueError, match=r"ids outside \[0, n_x\) = \[0, 3\)"):
        model.train_step(np.array([[0, 3, 1]]), np.array([[1, 1, 1]]))
    with pytest.raises(ValueError, match=r"ids outside"):
        model.forward(np.array([[-1, 0]]))


def test_version_1_checkpoints_still_load(tmp_path):
    """A file in the format before layers (seed keys, version 1) loads as a one-layer model."""
    model = CharLSTM("abcd", 5, dtype="float64", seed=1)
    ids = RNG.integers(0, 4, (2, 6))
    model.train_step(ids[:, :-1], ids[:, 1:])
    path = model.save(tmp_path / "v2.npz")
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    for name in ("num_layers", "bidirectional", "dropout"):
        del meta[name]
    meta["version"] = 1
    old = {}
    for name, value in arrays.items():
        prefix, _, key = name.rpartition("/")
        old[f"{prefix}/{key.removesuffix('_l0')}"] = value
    old["meta"] = np.asarray(json.dumps(meta))
    v1 = tmp_path / "v1.npz"
    np.savez(v1, **old)
    with zipfile.ZipFile(v1) as archive:
        assert "param/Wf.npy" in archive.namelist()
    loaded = load_model(v1)
    assert loaded.step == 1
    assert loaded.num_layers == 1
    for key, value in model.parameters.items():
        np.testing.assert_array_equal(loaded.parameters[key], value, err_msg=key)


def test_model_engine_names_the_engine():
    model = xlstm.LSTM(3, 4, engine="generic")
    assert model.engine == "generic"
    with pytest.raises(ValueError, match="`engine` = 'fastest'"):
        xlstm.LSTM(3, 4, engine="fastest")
    x = RNG.standard_normal((3, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(
        xlstm.LSTM(3, 4, seed=0, engine="generic")(x)[0],
        xlstm.LSTM(3, 4, seed=0, engine="numpy")(x)[0],
        rtol=1e-5,
        atol=1e-6,
    )
    assert xlstm.StackedLSTM is xlstm.LSTM
