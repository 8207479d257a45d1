"""Data-parallel gradients and steps: the same numbers as one process."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dask.distributed")

import dask.array as da
from _dask_helpers import relative_error, seed_problem

import xlstm
import xlstm.dask as xd
from xlstm.training import Adam, CharLSTM, clip_by_global_norm, loss_and_gradients

TOLERANCE = 1e-12


def _assert_gradients_close(found, expected):
    loss, grads, (a_t, c_t) = found
    ref_loss, ref_grads, (ref_a, ref_c) = expected
    assert relative_error(loss, ref_loss) <= TOLERANCE
    assert set(grads) == set(ref_grads)
    for key, value in ref_grads.items():
        assert grads[key].shape == value.shape, key
        assert relative_error(grads[key], value) <= TOLERANCE, key
    assert relative_error(a_t.compute(), ref_a) <= TOLERANCE
    assert relative_error(c_t.compute(), ref_c) <= TOLERANCE


@pytest.mark.parametrize("mask_kind", [None, "bool", "weights"])
def test_gradients_equal_local_call(thread_client, mask_kind):
    parameters, x, a0, c0, targets = seed_problem(m=13)
    rng = np.random.default_rng(3)
    mask = {
        None: None,
        "bool": rng.random((13, 6)) > 0.3,
        "weights": rng.random((13, 6)),
    }[mask_kind]
    expected = loss_and_gradients(x, targets, parameters, a0, c0, mask)
    found = xd.loss_and_gradients(
        da.from_array(x, chunks=(5, 2, 6)), da.from_array(targets, chunks=(4, 6)),
        parameters, a0=a0, c0=da.from_array(c0, chunks=(7, 5)), mask=mask, split_every=2,
    )  # fmt: skip
    _assert_gradients_close(found, expected)
    a_t = found[2][0]
    assert a_t.chunks == ((7,), (2,) * 6 + (1,))


def test_gradients_of_integer_ids(thread_client):
    parameters = xlstm.init_parameters(6, 8, 6, dtype="float64", seed=2)
    rng = np.random.default_rng(2)
    ids, targets = rng.integers(0, 6, (9, 5)), rng.integers(0, 6, (9, 5))
    x = np.moveaxis(np.eye(6)[ids], -1, 0)
    expected = loss_and_gradients(x, targets, parameters)
    found = xd.loss_and_gradients(da.from_array(ids, chunks=(4, 5)), targets, parameters)
    _assert_gradients_close(found, expected)


def test_an_all_masked_batch_gives_zero_loss_and_gradients(thread_client):
    parameters, x, _, _, targets = seed_problem()
    mask = np.zeros((10, 6), dtype=bool)
    loss, grads, _ = xd.loss_and_gradients(
        da.from_array(x, chunks=(5, 5, 6)), targets, parameters, mask=mask
    )
    assert float(loss) == 0.0
    assert all(not np.any(value) for value in grads.values())


def test_adam_steps_equal_single_process_steps(thread_client):
    parameters, _, _, _, _ = seed_problem(m=12)
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((5, 12, 6)), rng.integers(0, 4, (12, 6))) for _ in range(4)]
    optimizer = Adam(lr=1e-2)

    local, local_state, carried = dict(parameters), None, (None, None)
    for x, targets in batches:
        _, grads, carried = loss_and_gradients(x, targets, local, *carried)
        grads, _ = clip_by_global_norm(grads, 1.0)
        local_state = local_state or optimizer.init(local)
        local, local_state = optimizer.update(local, grads, local_state)

    spread, spread_state, state = dict(parameters), None, None
    for x, targets in batches:
        spread, spread_state, _, state = xd.train_step(
            spread, optimizer, spread_state, da.from_array(x, chunks=(5, 5, 6)), targets,
            state, clip_norm=1.0,
        )  # fmt: skip
    assert spread_state["step"] == 4
    for key, value in local.items():
        assert relative_error(spread[key], value) <= TOLERANCE, key
    assert relative_error(state[0].compute(), carried[0]) <= TOLERANCE


@pytest.mark.parametrize("num_layers", [1, 2])
def test_trainer_steps_a_character_model_like_model_train_step(thread_client, num_layers):
    vocab = "abcdefg"
    options = {"num_layers": num_layers, "dtype": "float64", "seed": 5}
    local = CharLSTM(vocab, 8, **options)
    spread = CharLSTM(vocab, 8, **options)
    trainer = xd.DataParallelTrainer(spread)
    rng = np.random.default_rng(5)
    local_state = state = None
    for _ in range(3):
        ids, targets = rng.integers(0, 7, (10, 6)), rng.integers(0, 7, (10, 6))
        local_loss, local_state = local.train_step(ids, targets, state=local_state)
        loss, state = trainer.step(da.from_array(ids, chunks=(3, 6)), targets, state=state)
        assert relative_error(loss, local_loss) <= TOLERANCE
    assert spread.step == local.step == 3
    for key, value in local.parameters.items():
        assert relative_error(spread.parameters[key], value) <= TOLERANCE, key
    assert state[0].shape == local_state[0].shape
    assert relative_error(state[1].compute(), local_state[1]) <= TOLERANCE


def test_trainer_on_a_parameter_dict(thread_client):
    parameters, x, _, _, targets = seed_problem()
    trainer = xd.DataParallelTrainer(parameters=parameters, optimizer=Adam(lr=1e-2))
    loss, state = trainer.step(da.from_array(x, chunks=(5, 5, 6)), targets)
    _, grads, _ = loss_and_gradients(x, targets, parameters)
    expected, _ = Adam(lr=1e-2).update(parameters, grads, Adam(lr=1e-2).init(parameters))
    for key, value in expected.items():
        assert relative_error(trainer.parameters[key], value) <= TOLERANCE, key
    assert trainer.opt_state["step"] == 1


def test_updated_weights_are_used(thread_client):
    # Same keys, new values: each call must see its own weights, never the previous ones.
    parameters, x, a0, _, targets = seed_problem()
    shifted = {key: value + 0.25 for key, value in parameters.items()}
    chunked = da.from_array(x, chunks=(5, 5, 6))
    for weights in (parameters, shifted, parameters):
        y = xd.lstm_forward(chunked, a0, weights)[1].compute()
        assert relative_error(y, xlstm.lstm_forward(x, a0, weights)[1]) <= TOLERANCE
        loss, _, _ = xd.loss_and_gradients(chunked, targets, weights)
        assert relative_error(loss, loss_and_gradients(x, targets, weights)[0]) <= TOLERANCE


# --------------------------------------------------------------------------- errors


def test_bad_arguments_fail_before_anything_runs():
    parameters, x, a0, _, targets = seed_problem()
    chunked = da.from_array(x, chunks=(5, 5, 6))
    with pytest.raises(TypeError, match=r"`targets` has dtype float64"):
        xd.loss_and_gradients(chunked, targets.astype(float), parameters)
    with pytest.raises(ValueError, match=r"`targets` has shape \(10, 5\); expected \(m, T\)"):
        xd.loss_and_gradients(chunked, targets[:, :5], parameters)
    with pytest.raises(TypeError, match=r"`mask` has dtype int64"):
        xd.loss_and_gradients(chunked, targets, parameters, mask=np.ones((10, 6), dtype=int))
    with pytest.raises(ValueError, match=r"`split_every` = 1"):
        xd.loss_and_gradients(chunked, targets, parameters, split_every=1)
    with pytest.raises(TypeError, match=r"`optimizer` must be an xlstm.training Optimizer"):
        xd.train_step(parameters, "adam", None, chunked, targets)
    with pytest.raises(TypeError, match=r"`state` must be None or the \(a, c\) tuple"):
        xd.train_step(parameters, Adam(), None, chunked, targets, state=a0)
    with pytest.raises(TypeError, match=r"give a `model`, or both"):
        xd.DataParallelTrainer(parameters=parameters)
