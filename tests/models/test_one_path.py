"""The parameter schema, the one path to the engines, and the deprecated ``fused=`` alias."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import xlstm
from xlstm import _direction
from xlstm._schema import Schema
from xlstm.layers import multilayer_backward, multilayer_forward
from xlstm.training import LSTMModel, loss_and_gradients


def test_schema_keys_and_shapes_in_torch_order():
    schema = Schema(3, 4, num_layers=2, bidirectional=True, n_y=5)
    shapes = schema.shapes()
    keys = list(shapes)
    assert keys[:8] == ["Wf_l0", "bf_l0", "Wi_l0", "bi_l0", "Wc_l0", "bc_l0", "Wo_l0", "bo_l0"]
    assert keys[8] == "Wf_l0_reverse"
    assert keys[16] == "Wf_l1"
    assert keys[-2:] == ["Wy", "by"]
    assert shapes["Wf_l0"] == (4, 4 + 3)
    assert shapes["Wf_l1_reverse"] == (4, 4 + 2 * 4)
    assert shapes["bo_l1"] == (4, 1)
    assert shapes["Wy"] == (5, 2 * 4)
    assert list(schema.units()) == [(0, False), (0, True), (1, False), (1, True)]
    # The model, the checkpoints and the schema agree.
    model = xlstm.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    assert model.parameter_keys() == Schema(3, 4, 2, True).keys()
    assert xlstm.checkpoint.parameter_shapes(3, 4, 2, True, 5) == shapes


def test_schema_flat_and_layers_round_trip():
    schema = Schema(2, 3, num_layers=2, bidirectional=True)
    flat = {key: np.full(shape, i, float) for i, (key, shape) in enumerate(schema.shapes().items())}
    layers = schema.to_layers(flat)
    assert len(layers) == 4
    assert layers[1]["Wf"] is flat["Wf_l0_reverse"]
    assert schema.to_flat(layers) == flat
    grads = [{"d" + k: v for k, v in unit.items()} for unit in layers]
    assert schema.to_flat(grads, prefix="d") == {"d" + k: v for k, v in flat.items()}


def test_schema_check_names_what_is_wrong():
    schema = Schema(2, 3)
    good = {key: np.zeros(shape) for key, shape in schema.shapes().items()}
    assert list(schema.check(good)) == schema.keys()
    with pytest.raises(TypeError, match="`parameters` must be a dict"):
        schema.check([1])
    with pytest.raises(ValueError, match=r"missing 'Wf_l0'$"):
        schema.check({k: v for k, v in good.items() if k != "Wf_l0"})
    with pytest.raises(ValueError, match="unexpected key 'Wy'"):
        schema.check({**good, "Wy": np.zeros((1, 3))})
    with pytest.raises(ValueError, match=r"`parameters\['bf_l0'\]` has shape \(3,\); expected"):
        schema.check({**good, "bf_l0": np.zeros(3)})


@pytest.fixture
def spy(monkeypatch):
    """Count the calls into the one path to the engines."""
    calls = {"forward": 0, "backward": 0}
    real_forward, real_backward = _direction.forward, _direction.backward

    def forward(*args, **kwargs):
        calls["forward"] += 1
        return real_forward(*args, **kwargs)

    def backward(*args, **kwargs):
        calls["backward"] += 1
        return real_backward(*args, **kwargs)

    monkeypatch.setattr(_direction, "forward", forward)
    monkeypatch.setattr(_direction, "backward", backward)
    return calls


def test_every_public_function_runs_through_the_one_path(spy):
    rng = np.random.default_rng(0)
    n_x, n_a, m, t_x = 3, 4, 2, 5
    params = xlstm.init_parameters(n_x, n_a, 2, dtype="float64", seed=0)
    x = rng.standard_normal((n_x, m, t_x))
    a0 = np.zeros((n_a, m))
    _, _, _, caches = xlstm.lstm_forward(x, a0, params)
    xlstm.lstm_backward(np.ones((n_a, m, t_x)), caches)
    assert spy == {"forward": 1, "backward": 1}

    targets = rng.integers(0, 2, (m, t_x))
    loss_and_gradients(x, targets, params)
    assert spy == {"forward": 2, "backward": 2}

    model = xlstm.LSTM(n_x, n_a, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    outputs, _, cache = multilayer_forward(x, model.layers, bidirectional=True)
    multilayer_backward(np.ones_like(outputs), cache)
    assert spy == {"forward": 6, "backward": 6}

    trainer = LSTMModel(n_x, n_a, 2, dtype="float64", seed=0)
    trainer.loss_and_gradients(x, targets)
    assert spy == {"forward": 7, "backward": 7}


def test_one_layer_training_model_matches_the_seed_functions():
    """A one-layer model is a stack of one: the same loss and gradients as the seed path."""
    rng = np.random.default_rng(1)
    model = LSTMModel(3, 4, 3, dtype="float64", seed=2)
    x = rng.standard_normal((3, 2, 6))
    targets = rng.integers(0, 3, (2, 6))
    a0, c0 = rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    seed_dict = {key.removesuffix("_l0"): value for key, value in model.parameters.items()}
    expected_loss, expected, (a_n, c_n) = loss_and_gradients(
        x, targets, seed_dict, a0, c0, engine="generic"
    )
    loss, grads, (got_a, got_c) = model.loss_and_gradients(x, targets, state=(a0, c0))
    assert abs(float(loss) - float(expected_loss)) <= 1e-13
    for key, value in expected.items():
        name = key if key in ("dWy", "dby") else key + "_l0"
        np.testing.assert_allclose(grads[name], value, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(got_a, a_n, rtol=1e-12)
    np.testing.assert_allclose(got_c, c_n, rtol=1e-12)


def test_fused_alias_is_deprecated_outside_the_seed_functions():
    params = xlstm.init_parameters(2, 3, 2, seed=0)
    x = np.ones((2, 1, 3), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xlstm.lstm_forward(x, np.zeros((3, 1), np.float32), params, fused=False)
    with pytest.warns(DeprecationWarning, match=r"`fused=` is deprecated for xlstm.LSTM"):
        model = xlstm.LSTM(2, 3, fused=False)
    assert model.engine == "generic"
    with pytest.warns(DeprecationWarning, match="LSTMModel"):
        trainer = LSTMModel(2, 3, 2, fused=True)
    assert trainer.engine == "fast"
    with pytest.warns(DeprecationWarning, match="multilayer_forward"):
        multilayer_forward(x, model.layers, fused="auto")


def test_a_copy_of_a_training_model_owns_its_recurrent_part():
    import copy

    model = LSTMModel(2, 3, 2, seed=0)
    light = copy.copy(model)
    light.engine = "generic"
    light._replace_parameters({k: v * 0 for k, v in model.parameters.items()})
    assert model.engine == "auto"
    assert float(np.abs(model.parameters["Wf_l0"]).sum()) > 0
    with pytest.raises(ValueError, match="`engine` = 'fastest'"):
        light.engine = "fastest"
