"""Clear messages at the model's edges: character ids, sampling temperature, flags."""

from __future__ import annotations

import numpy as np
import pytest

import xlstm
from xlstm.layers import multilayer_forward
from xlstm.training import CharLSTM

VOCAB = "abcde"


@pytest.fixture(scope="module")
def model():
    return CharLSTM(VOCAB, 4, seed=0)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([-1], r"`ids` holds -1 \(at flat position 0\); character ids are in \[0, 5\)"),
        ([0, 4, 5], r"`ids` holds 5 \(at flat position 2\); character ids are in \[0, 5\)"),
        (np.array([[1, 2], [7, 0]]), r"`ids` holds 7 \(at flat position 2\)"),
    ],
)
def test_decode_refuses_ids_outside_the_vocabulary(model, ids, match):
    with pytest.raises(ValueError, match=match):
        model.decode(ids)


def test_decode_round_trips_and_refuses_floats(model):
    text = "abcdeedcba"
    assert model.decode(model.encode(text)) == text
    assert model.decode(model.encode(text).reshape(2, 5)) == text
    assert model.decode([]) == ""
    with pytest.raises(TypeError, match=r"`ids` must be integer character ids, got dtype float64"):
        model.decode([1.0, 2.0])


@pytest.mark.parametrize("temperature", ["x", None, [1.0], True])
def test_sample_temperature_of_the_wrong_type_is_a_clear_type_error(model, temperature):
    with pytest.raises(TypeError, match=r"`temperature` must be a positive number, got"):
        model.sample(3, temperature=temperature)


def test_sample_accepts_numpy_numbers_as_temperature(model):
    assert model.sample(5, temperature=np.float32(0.5), seed=1) == model.sample(
        5, temperature=0.5, seed=1
    )


def test_numpy_bools_are_bools_for_every_flag():
    parameters = xlstm.init_parameters(3, 4, 2, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((3, 2, 5))
    a0 = np.zeros((4, 2))
    plain = xlstm.lstm_forward(x, a0, parameters, recompute=True)
    numpy_flag = xlstm.lstm_forward(x, a0, parameters, recompute=np.True_, cache=np.bool_(True))
    np.testing.assert_array_equal(numpy_flag[0], plain[0])
    lstm = xlstm.LSTM(3, 4, num_layers=2, bidirectional=np.True_, dtype="float64", seed=0)
    assert lstm.bidirectional is True
    out, _, _ = multilayer_forward(
        x, lstm.layers, bidirectional=np.True_, recompute=np.False_, training=np.False_
    )
    np.testing.assert_array_equal(out, lstm(x)[0])


@pytest.mark.parametrize("value", [1, "yes", None, np.array([True])])
def test_flags_that_are_not_bools_name_the_type(value):
    parameters = xlstm.init_parameters(3, 4, 2, dtype="float64", seed=0)
    x = np.zeros((3, 2, 5))
    with pytest.raises(
        TypeError, match=r"`recompute` must be a bool \(True or False\), got"
    ) as error:
        xlstm.lstm_forward(x, np.zeros((4, 2)), parameters, recompute=value)
    assert "got bool" not in str(error.value)
