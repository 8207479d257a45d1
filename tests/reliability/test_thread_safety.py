"""Bidirectional calls from several user threads at once give the serial results, bit for bit.

``xlstm._threads.run_pair`` runs a layer's two directions side by side with BLAS limited to
one thread, a process-wide setting.  Two user threads must not toggle it under each other:
every call computes exactly as it does alone (same BLAS thread count in every product).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from xlstm import _threads
from xlstm.layers import multilayer_backward, multilayer_forward
from xlstm.model import LSTM

threadpoolctl = pytest.importorskip("threadpoolctl")

ROUNDS = 6


def _problem(seed, n_x=24, n_a=48, m=32, t_x=24):
    rng = np.random.default_rng(seed)
    model = LSTM(n_x, n_a, num_layers=2, bidirectional=True, dtype="float64", seed=seed)
    return {
        "layers": model.layers,
        "x": rng.standard_normal((n_x, m, t_x)),
        "G": rng.standard_normal((2 * n_a, m, t_x)),
        "lengths": rng.integers(1, t_x + 1, m),
    }


def _run(problem):
    out, (a_n, c_n), cache = multilayer_forward(
        problem["x"], problem["layers"], bidirectional=True, lengths=problem["lengths"],
        engine="numpy",
    )  # fmt: skip
    grads = multilayer_backward(problem["G"], cache)
    return [out, a_n, c_n, grads["dx"], *(g[k] for g in grads["layers"] for k in sorted(g))]


def _concurrently(problems, rounds=ROUNDS):
    results = [[] for _ in problems]
    errors = []
    barrier = threading.Barrier(len(problems))

    def body(index):
        try:
            barrier.wait(timeout=30)
            for _ in range(rounds):
                results[index].append(_run(problems[index]))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(len(problems))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "deadlocked"
    assert errors == []
    return results


def _assert_bitwise(results, serial):
    for runs, expected in zip(results, serial, strict=True):
        for run in runs:
            for got, want in zip(run, expected, strict=True):
                np.testing.assert_array_equal(got, want)


@pytest.fixture
def two_blas_threads(monkeypatch):
    """BLAS at two threads, the budget with which run_pair runs the directions in threads."""
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        info = threadpoolctl.threadpool_info()
        if not any(item["user_api"] == "blas" and item["num_threads"] == 2 for item in info):
            pytest.skip("this BLAS cannot be limited to two threads")
        yield


def test_two_threads_of_bidirectional_calls_equal_the_serial_results(two_blas_threads, monkeypatch):
    monkeypatch.setattr(_threads, "MIN_WORK", 0)  # every pair runs side by side
    problems = [_problem(1), _problem(2)]
    serial = [_run(problem) for problem in problems]
    _assert_bitwise(_concurrently(problems), serial)
    # The limit is lifted when the last call ends.
    info = threadpoolctl.threadpool_info()
    assert max(item["num_threads"] for item in info if item["user_api"] == "blas") == 2


def test_a_call_in_turn_beside_calls_side_by_side_equals_its_serial_result(
    two_blas_threads, monkeypatch
):
    """One thread's pairs are below MIN_WORK (directions in turn, two BLAS threads), the
    other's above (side by side, one BLAS thread each): neither changes the other's BLAS."""
    small, large = _problem(3, n_a=8, m=4, t_x=6), _problem(4)
    n_small = 4 * 8 * (8 + 24) * 4 * 6
    monkeypatch.setattr(_threads, "MIN_WORK", 2 * n_small + 1)
    assert not _threads.pair_is_parallel(2 * n_small)
    assert _threads.pair_is_parallel(32 * 24 * 4 * 48 * (48 + 24))
    serial = [_run(small), _run(large)]
    _assert_bitwise(_concurrently([small, large], rounds=ROUNDS), serial)
