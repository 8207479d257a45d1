"""Small validation gaps and interop edges: each a clear error naming the argument, or a
documented acceptance (NumPy integers wherever Python ints are taken)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import require_backend, to_numpy

import xlstm
from xlstm import convert
from xlstm.training import SGD, Adam, AdamW, CharLSTM, tbptt_batches
from xlstm.training.data import split_text
from xlstm.training.optim import optimizer_from_config

RNG = np.random.default_rng(0)

# --------------------------------------------------------------------------- silent wrong answers


def test_backward_refuses_caches_whose_x_has_another_shape():
    params = xlstm.init_parameters(3, 4, 2, seed=0, dtype="float64")
    x = RNG.standard_normal((3, 2, 5))
    a, _, _, (cache, x_cached) = xlstm.lstm_forward(x, np.zeros((4, 2)), params)
    with pytest.raises(ValueError, match=r"`caches\[1\]` \(x\) has shape \(3, 2, 4\)"):
        xlstm.lstm_backward(np.ones_like(a), (cache, x_cached[:, :, :4]))


def test_load_parameters_refuses_another_dtype():
    model = xlstm.LSTM(3, 4, seed=0, dtype="float64")
    float32 = {k: np.asarray(v, dtype=np.float32) for k, v in model.parameters.items()}
    with pytest.raises(TypeError, match=r"has dtype float32; the model is float64"):
        model.load_parameters(float32)


def test_train_step_refuses_ids_outside_the_vocabulary():
    model = CharLSTM("abc", 4, seed=0)
    with pytest.raises(ValueError, match=r"ids outside \[0, n_x\) = \[0, 3\)"):
        model.train_step(np.array([[0, 1, 3]]), np.array([[1, 2, 0]]))
    with pytest.raises(ValueError, match=r"ids outside"):
        model.train_step(np.array([[0, -1, 2]]), np.array([[1, 2, 0]]))


# --------------------------------------------------------------------------- interop


@pytest.mark.parametrize("backend", ["torch", "array_api_strict", "numpy"])
def test_to_backend_takes_views_with_negative_strides(backend):
    require_backend(backend)
    x = RNG.standard_normal((4, 6))
    views = {"reversed": x[::-1], "both": x[::-1, ::-2], "transposed": x.T, "scalar": x[0, 0, ...]}
    moved = xlstm.to_backend(views, backend)
    for key, view in views.items():
        np.testing.assert_array_equal(to_numpy(moved[key]), view, err_msg=key)
        assert tuple(moved[key].shape) == view.shape
    assert x[0, 0] == views["reversed"][-1, 0]  # the source is untouched


def test_from_torch_reads_numpy_views_with_negative_strides():
    torch = pytest.importorskip("torch")
    state = torch.nn.LSTM(3, 4).state_dict()
    flipped = {k: v.numpy()[::-1] for k, v in state.items()}
    weights = convert.from_torch(flipped, xp="torch")
    expected = convert.from_torch({k: np.ascontiguousarray(v) for k, v in flipped.items()})
    for key, value in expected.layers[0].items():
        np.testing.assert_array_equal(weights.layers[0][key].numpy(), value)


@pytest.mark.parametrize("dtype", [np.int32, "int32", "int64", np.bool_, "complex128"])
def test_from_torch_refuses_a_non_floating_dtype(dtype):
    state = {
        "weight_ih_l0": np.zeros((8, 3)),
        "weight_hh_l0": np.zeros((8, 2)),
        "bias_ih_l0": np.zeros(8),
        "bias_hh_l0": np.zeros(8),
    }
    with pytest.raises(TypeError, match=r"`dtype` = .*; expected a real floating dtype"):
        convert.from_torch(state, dtype=dtype)
    assert convert.from_torch(state, dtype="float32").layers[0]["Wf"].dtype == np.float32


def test_to_torch_refuses_layers_that_do_not_chain():
    def gates(n_in, n_a, seed=0):
        params = xlstm.init_parameters(n_in, n_a, 1, seed=seed)
        return {k: v for k, v in params.items() if k not in ("Wy", "by")}

    with pytest.raises(ValueError, match=r"`layers\[1\]\['Wf'\]` has shape \(4, 9\); layer 1"):
        convert.to_torch([gates(3, 4), gates(5, 4)], bidirectional=False)
    with pytest.raises(ValueError, match=r"`layers\[1\]\['Wf'\]` has shape \(5, 10\)"):
        convert.to_torch([gates(3, 4), gates(5, 5)], bidirectional=False)
    with pytest.raises(ValueError, match=r"`layers\[1\]\['Wf'\]` .*the layers do not chain"):
        convert.to_torch([gates(3, 4), gates(2, 4)], bidirectional=True)  # reverse: other n_x
    with pytest.raises(ValueError, match=r"`layers\[2\]\['Wf'\]` .*\(n_a, n_a \+ 2 n_a\)"):
        convert.to_torch([gates(3, 4), gates(3, 4), gates(4, 4), gates(4, 4)], bidirectional=True)
    state = convert.to_torch([gates(3, 4), gates(4, 4)], bidirectional=False)
    assert state["weight_ih_l1"].shape == (16, 4)


# --------------------------------------------------------------------------- optimisers


@pytest.mark.parametrize("optimizer", [SGD, Adam, AdamW])
@pytest.mark.parametrize("lr", [math.inf, math.nan, -1.0])
def test_learning_rate_must_be_finite_and_not_negative(optimizer, lr):
    with pytest.raises(ValueError, match=r"`lr` = .*; expected a finite value in \[0.0, inf\)"):
        optimizer(lr=lr)


def test_other_optimiser_fields():
    with pytest.raises(
        ValueError, match=r"`momentum` = 1.0; expected a finite value in \[0.0, 1.0\)"
    ):
        SGD(momentum=1.0)
    with pytest.raises(ValueError, match=r"`weight_decay` = inf"):
        AdamW(weight_decay=math.inf)
    with pytest.raises(ValueError, match=r"`eps` = nan"):
        Adam(eps=math.nan)
    with pytest.raises(TypeError, match=r"`lr` must be a real number, got str"):
        Adam(lr="0.1")
    with pytest.raises(ValueError, match=r"not a valid optimiser configuration|`lr` = inf"):
        optimizer_from_config({"name": "Adam", "lr": math.inf})
    assert Adam(lr=np.float32(0.5)).lr == 0.5  # NumPy scalars are numbers too
    assert SGD(lr=np.int64(1), momentum=np.float64(0.5)).momentum == 0.5


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("forget_bias", [math.nan, math.inf, -math.inf])
def test_forget_bias_must_be_finite(forget_bias):
    with pytest.raises(ValueError, match=r"`forget_bias` = .*; expected a finite number"):
        xlstm.init_parameters(3, 4, 2, forget_bias=forget_bias)


def test_forget_bias_type():
    with pytest.raises(TypeError, match=r"`forget_bias` must be a real number, got str"):
        xlstm.init_parameters(3, 4, 2, forget_bias="1")


BAD_SEEDS = [(-1, ValueError), (np.int64(-5), ValueError), (1.5, TypeError), ("0", TypeError)]


@pytest.mark.parametrize(("seed", "error"), [*BAD_SEEDS, (True, TypeError)])
def test_seed_must_be_a_non_negative_int(seed, error):
    with pytest.raises(error, match=r"`seed`"):
        xlstm.init_parameters(3, 4, 2, seed=seed)


def test_numpy_integers_are_sizes_and_seeds():
    sizes = [np.int64(3), np.int32(4), np.uint8(2)]
    numpy_sized = xlstm.init_parameters(*sizes, seed=np.int64(7))
    python_sized = xlstm.init_parameters(3, 4, 2, seed=7)
    for key, value in python_sized.items():
        np.testing.assert_array_equal(numpy_sized[key], value)
    assert xlstm.init_parameters(3, 4, 2, seed=np.random.SeedSequence(1))["Wf"].shape == (4, 7)


# --------------------------------------------------------------------------- lengths, softmax


@pytest.mark.parametrize("huge", [2**70, -(2**70), np.uint64(2**64 - 1)])
def test_lengths_beyond_int64_are_a_clear_error(huge):
    params = xlstm.init_parameters(3, 4, 2, seed=0, dtype="float64")
    x = RNG.standard_normal((3, 2, 5))
    with pytest.raises(
        ValueError, match=r"`lengths\[0\]` = .*; every length must be in \[1, T_x\]"
    ):
        xlstm.lstm_forward(x, np.zeros((4, 2)), params, lengths=[huge, 5])


def test_lengths_of_the_wrong_count_are_refused_without_walking_them():
    params = xlstm.init_parameters(3, 4, 2, seed=0, dtype="float64")
    x = RNG.standard_normal((3, 2, 5))
    with pytest.raises(ValueError, match=r"`lengths` has shape \(1000000000000,\)"):
        xlstm.lstm_forward(x, np.zeros((4, 2)), params, lengths=range(10**12))


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 4)])
def test_softmax_of_an_empty_array_is_empty(shape):
    x = np.zeros(shape, dtype=np.float32)
    out = xlstm.softmax(x, axis=0)
    assert out.shape == shape
    assert out.dtype == np.float32
    assert out is not x


def test_softmax_of_an_empty_array_other_backends():
    xp = require_backend("array_api_strict")
    out = xlstm.softmax(xp.zeros((0, 3)), axis=0)
    assert tuple(out.shape) == (0, 3)


# --------------------------------------------------------------------------- data


def test_tbptt_batches_checks_at_the_call_and_takes_numpy_integers():
    ids = np.arange(200)
    with pytest.raises(ValueError, match=r"`offset` = -1; expected an int >= 0"):
        tbptt_batches(ids, 4, 10, offset=-1)  # no next(): the error comes at the call
    with pytest.raises(TypeError, match=r"`batch_size` must be an int, got float"):
        tbptt_batches(ids, 4.0, 10)
    with pytest.raises(TypeError, match=r"`seq_len` must be an int, got bool"):
        tbptt_batches(ids, 4, True)
    with pytest.raises(ValueError, match=r"`ids` has 41 ids; offset \+ batch_size \* seq_len"):
        tbptt_batches(ids[:41], 4, 10, offset=np.int64(1))
    numpy_sized = list(tbptt_batches(ids, np.int64(4), np.int32(10), offset=np.uint8(3)))
    python_sized = list(tbptt_batches(ids, 4, 10, offset=3))
    assert len(numpy_sized) == len(python_sized) > 0
    for (a, b), (c, d) in zip(numpy_sized, python_sized, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_split_text_checks_its_arguments():
    with pytest.raises(TypeError, match=r"`validation_fraction` must be a number"):
        split_text("hello", "0.1")
    with pytest.raises(TypeError, match=r"`text` must be a str"):
        split_text(b"hello", 0.1)
    assert split_text("0123456789", np.float32(0.2)) == ("01234567", "89")


def test_sample_length_takes_numpy_integers():
    model = CharLSTM("abc", 4, seed=0)
    assert model.sample(np.int64(5), seed=0) == model.sample(5, seed=0)
    assert len(model.sample(np.int64(5), seed=0)) == 5


def test_softmax_axis_may_be_a_numpy_integer():
    x = RNG.standard_normal((3, 4))
    np.testing.assert_array_equal(xlstm.softmax(x, axis=np.int64(1)), xlstm.softmax(x, axis=1))
    with pytest.raises(TypeError, match=r"`axis` must be an int, got float"):
        xlstm.softmax(x, axis=1.0)
