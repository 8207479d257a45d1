"""DataParallelTrainer on batches in memory: the gradient servers (one actor per worker).

Oracles: the one-process ``model.train_step`` (to 1e-12 in float64), the same trainer on
the same cut sent as dask arrays (bitwise: the same per-piece functions, added in the same
order), and the steps without a client.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dask.distributed")

import dask.array as da
from _dask_helpers import relative_error, seed_problem

import xlstm.dask as xd
from xlstm.dask import _sums
from xlstm.training import SGD, Adam, CharLSTM, LSTMModel, loss_and_gradients

TOLERANCE = 1e-12


def _batches(count, m=10, t_x=6, vocab=7, seed=5):
    rng = np.random.default_rng(seed)
    shape = (m, t_x)
    return [(rng.integers(0, vocab, shape), rng.integers(0, vocab, shape)) for _ in range(count)]


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("pieces", [None, 3])
def test_steps_equal_one_process_train_steps(thread_client, num_layers, pieces):
    options = {"num_layers": num_layers, "dtype": "float64", "seed": 5}
    local, spread = CharLSTM("abcdefg", 8, **options), CharLSTM("abcdefg", 8, **options)
    trainer = xd.DataParallelTrainer(spread, client=thread_client, pieces=pieces)
    local_state = state = None
    for ids, targets in _batches(3):
        local_loss, local_state = local.train_step(ids, targets, state=local_state)
        loss, state = trainer.step(ids, targets, state=state)
        assert isinstance(state[0], np.ndarray)  # in memory, as train_step returns it
        assert relative_error(loss, local_loss) <= TOLERANCE
    assert trainer.pieces == (pieces or 2)  # the two workers at the first step
    assert spread.step == local.step == 3
    for key, value in local.parameters.items():
        assert relative_error(spread.parameters[key], value) <= TOLERANCE, key
    for found, expected in zip(state, local_state, strict=True):
        assert found.shape == expected.shape
        assert relative_error(found, expected) <= TOLERANCE


def test_in_memory_and_dask_batches_of_one_cut_agree_bitwise(thread_client):
    options = {"num_layers": 2, "dtype": "float64", "seed": 3}
    by_servers, by_graph = CharLSTM("abcdefg", 8, **options), CharLSTM("abcdefg", 8, **options)
    servers = xd.DataParallelTrainer(by_servers, client=thread_client, pieces=4)
    graph = xd.DataParallelTrainer(by_graph, client=thread_client)
    state = graph_state = None
    for ids, targets in _batches(2, m=10):
        loss, state = servers.step(ids, targets, state=state)
        # The same cut as pieces=4 of 10 sequences: 3, 3, 2, 2.
        chunked = da.from_array(ids, chunks=((3, 3, 2, 2), (6,)))
        graph_loss, graph_state = graph.step(chunked, targets, state=graph_state)
        assert loss == graph_loss
    for key, value in by_graph.parameters.items():
        assert np.array_equal(by_servers.parameters[key], value), key
    assert np.array_equal(state[1], graph_state[1].compute())


def test_without_a_client_the_pieces_run_here():
    local = CharLSTM("abcdefg", 8, dtype="float64", seed=2)
    spread = CharLSTM("abcdefg", 8, dtype="float64", seed=2)
    trainer = xd.DataParallelTrainer(spread, pieces=3)
    for ids, targets in _batches(2):
        local_loss, _ = local.train_step(ids, targets)
        loss, _ = trainer.step(ids, targets)
        assert relative_error(loss, local_loss) <= TOLERANCE
    for key, value in local.parameters.items():
        assert relative_error(spread.parameters[key], value) <= TOLERANCE, key


@pytest.mark.parametrize("head", ["last", "mean", "per_step"])
def test_a_bidirectional_variable_length_model_of_every_head(thread_client, head):
    options = {"num_layers": 2, "bidirectional": True, "head": head, "dtype": "float64"}
    local, spread = LSTMModel(3, 5, 4, seed=1, **options), LSTMModel(3, 5, 4, seed=1, **options)
    trainer = xd.DataParallelTrainer(spread, client=thread_client, pieces=3)
    rng = np.random.default_rng(0)
    m, t_x = 7, 6
    x = rng.standard_normal((3, m, t_x))
    lengths = rng.integers(1, t_x + 1, m)
    targets = rng.integers(0, 4, (m, t_x) if head == "per_step" else (m,))
    mask = rng.random(targets.shape) < 0.8
    mask[0] = True  # some positions count in every piece
    for _ in range(2):
        local_loss, _ = local.train_step(x, targets, mask=mask, lengths=lengths)
        loss, _ = trainer.step(x, targets, mask=mask, lengths=lengths)
        assert relative_error(loss, local_loss) <= TOLERANCE
    for key, value in local.parameters.items():
        assert relative_error(spread.parameters[key], value) <= TOLERANCE, key


def test_a_parameter_dict_on_the_servers(thread_client):
    parameters, x, _, _, targets = seed_problem()
    trainer = xd.DataParallelTrainer(
        parameters=parameters, optimizer=Adam(lr=1e-2), client=thread_client, pieces=3
    )
    loss, (a, c) = trainer.step(x, targets)
    ref_loss, grads, (ref_a, _) = loss_and_gradients(x, targets, parameters)
    expected, _ = Adam(lr=1e-2).update(parameters, grads, Adam(lr=1e-2).init(parameters))
    assert relative_error(loss, ref_loss) <= TOLERANCE
    assert relative_error(a, ref_a) <= TOLERANCE
    for key, value in expected.items():
        assert relative_error(trainer.parameters[key], value) <= TOLERANCE, key


def _dropout_losses(trainer, ids, targets, steps=3):
    return [float(trainer.step(ids, targets)[0]) for _ in range(steps)]


@pytest.mark.parametrize("kind", ["memory", "dask"])
def test_dropout_masks_are_new_every_step_and_reproducible(thread_client, kind):
    ids, targets = _batches(1, m=8, t_x=12)[0]
    batch = ids if kind == "memory" else da.from_array(ids, chunks=(4, 12))

    def losses():
        # lr = 0: the weights never change, so equal losses would mean equal masks.
        model = CharLSTM("abcdefg", 16, dropout=0.5, num_layers=2, seed=9, dtype="float64")
        model.optimizer = SGD(lr=0.0)
        trainer = xd.DataParallelTrainer(model, client=thread_client, pieces=2)
        return [float(trainer.step(batch, targets)[0]) for _ in range(3)]

    first = losses()
    assert len(set(first)) == 3  # before: one set of masks, shipped anew every step
    assert first == losses()  # the model's seed decides them


def test_pieces_draw_different_masks(thread_client):
    # Two pieces holding the same sequences: equal masks would give each the same loss.
    ids, targets = _batches(1, m=4, t_x=12)[0]
    ids, targets = np.concatenate([ids, ids]), np.concatenate([targets, targets])
    # Dropout acts between layers (as torch.nn.LSTM's): two of them.
    light = CharLSTM("abcdefg", 16, dropout=0.5, num_layers=2, seed=9, dtype="float64")
    seed = light.dropout_seed()
    parts = [
        _sums.model_piece(light, ids[:4], targets[:4], None, None, None, seed, index, None)
        for index in (0, 1)
    ]
    assert float(parts[0][0]) != float(parts[1][0])


def test_bad_batches_are_refused_before_anything_runs(thread_client):
    model = CharLSTM("abcdefg", 8, seed=0)
    trainer = xd.DataParallelTrainer(model, client=thread_client)
    ids, targets = _batches(1)[0]
    with pytest.raises(ValueError, match=r"`targets` has shape \(9, 6\); expected 10 rows"):
        trainer.step(ids, targets[:9])
    with pytest.raises(TypeError, match="`targets` has dtype float64"):
        trainer.step(ids, targets.astype(float))
    with pytest.raises(ValueError, match=r"`state` a has shape \(8, 3\)"):
        trainer.step(ids, targets, state=(np.zeros((8, 3)), np.zeros((8, 3))))
    with pytest.raises(ValueError, match=r"`x` has shape \(4, 10, 6\)"):
        trainer.step(np.zeros((4, 10, 6)), targets)
    with pytest.raises(TypeError, match="`lengths` takes a batch in memory"):
        trainer.step(da.from_array(ids), targets, lengths=np.full(10, 6))
    with pytest.raises(ValueError, match=r"`pieces` = 0"):
        xd.DataParallelTrainer(model, pieces=0)
    assert model.step == 0
    assert trainer._servers is None


def test_fit_with_the_trainer_gives_the_one_process_run(thread_client):
    from xlstm.training import Batch, fit, majority_symbol_task

    ids, lengths, labels = majority_symbol_task(48, seed=1)
    batches = [
        Batch(ids[k : k + 16], labels[k : k + 16], lengths=lengths[k : k + 16]) for k in (0, 16, 32)
    ]
    options = {"bidirectional": True, "head": "last", "dtype": "float64", "seed": 2}
    alone, spread = LSTMModel(3, 6, 3, **options), LSTMModel(3, 6, 3, **options)
    expected = fit(alone, batches, epochs=2, validation=batches[:1])
    trainer = xd.DataParallelTrainer(spread, client=thread_client, pieces=3)
    found = fit(spread, batches, epochs=2, validation=batches[:1], trainer=trainer)
    assert spread.step == alone.step == 6
    np.testing.assert_allclose(found["val_loss"], expected["val_loss"], rtol=1e-12)
    for key, value in alone.parameters.items():
        assert relative_error(spread.parameters[key], value) <= TOLERANCE, key
