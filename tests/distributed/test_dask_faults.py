"""Worker processes: exact results on two processes, and when one is killed.

One module-scoped cluster of two nanny-managed single-threaded workers (as ``python -m
xlstm predict --workers 2``).  A worker killed with SIGKILL is restarted by its nanny;
pure tasks rerun elsewhere, a carried state lost between steps is rebuilt from its host
copy, and a chunk that keeps killing workers ends in a RuntimeError naming it.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

pytest.importorskip("dask.distributed")

import dask.array as da
from _dask_helpers import relative_error, seed_problem

import xlstm
import xlstm.dask as xd
from xlstm.dask import _common
from xlstm.training import Adam, CharLSTM, loss_and_gradients

TOLERANCE = 1e-12
RESULT_TIMEOUT = 120


def _a_worker_pid(client) -> int:
    return min(client.run(os.getpid).values())


def _kill_and_wait(client) -> None:
    """Kill one worker and wait until its nanny's new process has joined."""
    pid = _a_worker_pid(client)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + RESULT_TIMEOUT
    while time.monotonic() < deadline:
        pids = set(client.run(os.getpid, on_error="ignore").values())
        if len(pids) == 2 and pid not in pids:
            return
        time.sleep(0.2)
    raise TimeoutError("the killed worker was not replaced")


def _problem(m=64, t_x=200):
    """Work that lasts long enough (about a second on two workers) to be interrupted."""
    return seed_problem(n_x=16, n_a=48, n_y=16, m=m, t_x=t_x, seed=7)


def test_two_processes_give_the_local_numbers(process_client):
    parameters, x, a0, c0, targets = seed_problem(m=12)
    chunked = da.from_array(x, chunks=(5, 3, 6))
    y = xd.lstm_forward(chunked, a0, parameters, c0=c0)[1].compute()
    assert relative_error(y, xlstm.lstm_forward(x, a0, parameters, c0)[1]) <= TOLERANCE
    loss, grads, _ = xd.loss_and_gradients(chunked, targets, parameters, a0=a0, c0=c0)
    ref_loss, ref_grads, _ = loss_and_gradients(x, targets, parameters, a0, c0)
    assert relative_error(loss, ref_loss) <= TOLERANCE
    for key, value in ref_grads.items():
        assert relative_error(grads[key], value) <= TOLERANCE, key


def test_new_weights_reach_every_worker(process_client):
    parameters, x, a0, _, _ = seed_problem(m=12)
    chunked = da.from_array(x, chunks=(5, 2, 6))
    for shift in (0.0, 0.5, 0.0, -0.5):
        weights = {key: value + shift for key, value in parameters.items()}
        y = xd.lstm_forward(chunked, a0, weights)[1].compute()
        assert relative_error(y, xlstm.lstm_forward(x, a0, weights)[1]) <= TOLERANCE


def test_a_worker_killed_during_inference(process_client):
    from distributed import as_completed

    parameters, x, a0, _, _ = _problem(t_x=400)
    # The generic engine keeps the workers busy long enough for the kill to land mid-run.
    chunked = da.from_array(x, chunks=(16, 2, 400))
    y = xd.lstm_forward(chunked, a0, parameters, engine="generic")[1]
    blocks = process_client.compute(list(y.to_delayed().ravel()))
    next(as_completed(blocks))  # the workers are busy: kill one of them now
    assert sum(block.done() for block in blocks) < len(blocks) // 2
    os.kill(_a_worker_pid(process_client), signal.SIGKILL)
    found = np.concatenate(process_client.gather(blocks), axis=1)
    assert relative_error(found, xlstm.lstm_forward(x, a0, parameters)[1]) <= TOLERANCE


def _steps(parameters, batches, step):
    optimizer, opt_state, state = Adam(lr=1e-2), None, None
    losses = []
    for index, (x, targets) in enumerate(batches):
        parameters, opt_state, loss, state = step(
            index, parameters, optimizer, opt_state, x, targets, state
        )
        losses.append(float(loss))
    return parameters, losses


def _local_step(index, parameters, optimizer, opt_state, x, targets, state):
    loss, grads, state = loss_and_gradients(x, targets, parameters, *(state or (None, None)))
    opt_state = opt_state or optimizer.init(parameters)
    parameters, opt_state = optimizer.update(parameters, grads, opt_state)
    return parameters, opt_state, loss, state


def _batches(count=3):
    parameters, _, _, _, _ = _problem()
    rng = np.random.default_rng(8)
    batches = [
        (rng.standard_normal((16, 64, 200)), rng.integers(0, 16, (64, 200))) for _ in range(count)
    ]
    return parameters, batches


class _KillOnFirstGradient:
    """Scheduler plugin: kill a worker when the first chunk's gradients are done.

    The step cannot have ended then (the sum needs every chunk), so the kill lands
    during it, whatever the speed of the machine.
    """

    name = "xlstm-test-kill-on-first-gradient"

    def __init__(self, pid):
        self.pid, self.fired = pid, False

    def transition(self, key, start, finish, *args, **kwargs):
        name = key[0] if isinstance(key, tuple) else key
        if not self.fired and finish == "memory" and name.startswith("xlstm-gradients-"):
            self.fired = True
            os.kill(self.pid, signal.SIGKILL)


@pytest.mark.parametrize("when", ["during", "between"])
def test_a_worker_killed_in_training_steps(process_cluster, process_client, when):
    parameters, batches = _batches()
    expected, expected_losses = _steps(parameters, batches, _local_step)
    scheduler = process_cluster.scheduler

    def spread_step(index, parameters, optimizer, opt_state, x, targets, state):
        chunked = da.from_array(x, chunks=(16, 8, 200))
        plugin = None
        if index == 1 and when == "between":
            # The carried state of step 0 is on both workers: one half is lost.
            _kill_and_wait(process_client)
        if index == 1 and when == "during":
            plugin = _KillOnFirstGradient(_a_worker_pid(process_client))
            scheduler.add_plugin(plugin)
        try:
            return xd.train_step(parameters, optimizer, opt_state, chunked, targets, state)
        finally:
            if plugin is not None:
                scheduler.remove_plugin(plugin.name)
                assert plugin.fired

    found, losses = _steps(parameters, batches, spread_step)
    assert np.allclose(losses, expected_losses, rtol=TOLERANCE, atol=0)
    for key, value in expected.items():
        assert relative_error(found[key], value) <= TOLERANCE, key


def _model_killing_its_worker_once(marker):
    """A character model whose first call in any worker process kills that process.

    ``marker`` (a path) is created by the first call: later calls, the rerun included,
    compute.  Defined in a function, so that it travels by value.
    """

    class KillsOnce(CharLSTM):
        def loss_and_gradients(self, x, targets, **options):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return super().loss_and_gradients(x, targets, **options)

    return KillsOnce


@pytest.mark.parametrize("when", ["during", "between"])
def test_a_worker_lost_with_its_gradient_server(process_client, tmp_path, when):
    marker = tmp_path / "killed"
    options = {"num_layers": 2, "dtype": "float64", "seed": 4}
    local = CharLSTM("abcdefg", 16, **options)
    spread = _model_killing_its_worker_once(str(marker))("abcdefg", 16, **options)
    if when == "between":
        marker.touch()
    trainer = xd.DataParallelTrainer(spread, pieces=2)
    rng = np.random.default_rng(3)
    state = local_state = None
    for index in range(3):
        ids, targets = rng.integers(0, 7, (12, 40)), rng.integers(0, 7, (12, 40))
        if index == 1 and when == "between":
            _kill_and_wait(process_client)  # the servers of step 0: one is gone
        local_loss, local_state = local.train_step(ids, targets, state=local_state)
        loss, state = trainer.step(ids, targets, state=state)
        assert relative_error(loss, local_loss) <= TOLERANCE
    assert marker.exists()
    for key, value in local.parameters.items():
        assert relative_error(spread.parameters[key], value) <= TOLERANCE, key
    process_client.wait_for_workers(2, timeout=RESULT_TIMEOUT)


SENTINEL = 12345.0
"""An input value that makes the model below kill the worker process running it."""


def _poisoned_model(parameters):
    """A model whose every call on the chunk holding SENTINEL kills its worker process.

    Defined in a function, so that it travels by value to worker processes that cannot
    import this test module.
    """

    def kill_if_poisoned(x):
        if float(np.max(x)) == SENTINEL:
            os.kill(os.getpid(), signal.SIGKILL)

    class Poisoned:
        n_x, n_a, n_y, num_layers, dtype = 5, 7, 4, 2, "float64"
        lstm = None  # a stacked model: runs whole in each task
        opt_state = None

        def __init__(self):
            # Not the seed's keys: the prediction runs this model's own forward.
            self.parameters = {f"{key}_stacked": value for key, value in parameters.items()}

        def forward(self, x, state=None):
            kill_if_poisoned(x)
            return xlstm.lstm_forward(x, np.zeros((7, x.shape[1])), parameters)[1], None

        def loss_and_gradients(self, x, targets, *, mask=None, state=None):
            kill_if_poisoned(x)
            return loss_and_gradients(x, targets, parameters)

        def apply_gradients(self, grads):
            raise AssertionError("no step may be taken")

    return Poisoned()


@pytest.mark.parametrize("kind", ["forward", "gradient", "servers"])
def test_a_chunk_that_keeps_killing_workers_is_named(process_cluster, process_client, kind):
    from xlstm.cli.predict import Predictor

    # Two chunks, one per worker: a worker that dies then holds no other chunk's task
    # that its death would count against too.
    parameters, x, _, _, targets = seed_problem(m=6)
    x[0, 4, 0] = SENTINEL  # chunk 1 of chunks of 3 sequences
    model = _poisoned_model(parameters)
    chunked = da.from_array(x, chunks=(5, 3, 6))
    scheduler = process_cluster.scheduler
    allowed, scheduler.allowed_failures = scheduler.allowed_failures, 1
    what = "gradient" if kind == "servers" else kind
    expected = rf"the {what} pass of batch chunk 1 killed 2 workers in a row"

    def run():
        if kind == "forward":
            return xd.compute(Predictor(model).outputs(chunked, "auto"))
        if kind == "servers":  # the batch in memory, cut in two pieces of 3
            return xd.DataParallelTrainer(model, pieces=2).step(x, targets)
        return xd.DataParallelTrainer(model).step(chunked, targets)

    try:
        with pytest.raises(RuntimeError, match=expected):
            run()
    finally:
        scheduler.allowed_failures = allowed
    process_client.wait_for_workers(2, timeout=RESULT_TIMEOUT)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (("xlstm-gradients-abc", 3), "the gradient pass of batch chunk 3"),
        (("a_T-xlstm-gradients-abc", 0, 5), "the gradient pass of batch chunk 5"),
        (("y-xlstm-forward-abc", 0, 4, 0), "the forward pass of batch chunk 4"),
        ("xlstm-sum-abc", "the sum of the gradients"),
        ("xlstm-mean-xlstm-gradients-abc", "the sum of the gradients"),
        (("other-abc", 1), "task ('other-abc', 1)"),
    ],
)
def test_killed_worker_errors_name_the_chunk(key, expected):
    from distributed import KilledWorker

    error = _common.chunk_error(KilledWorker(key, None, 3))
    assert isinstance(error, RuntimeError)
    assert str(error).startswith(expected)
    assert "killed 4 workers" in str(error)
    assert _common.chunk_error(ValueError("other")) is None
