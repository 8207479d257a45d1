"""The NumPy fast path's scratch buffers (xlstm._engines.numpy.workspace), kept between calls.

No result may alias a kept buffer: results of one call must survive later calls
unchanged; the buffers are per thread, freed by ``xlstm.release_workspace()``, and
buffers over the size limit are not kept.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _helpers import random_problem, rel_err

import xlstm
from xlstm._engines.numpy import workspace


def _forward_backward(prob, *, recompute=False, lengths=None):
    a, y, c, caches = xlstm.lstm_forward(
        prob.x, prob.a0, prob.params, prob.c0, recompute=recompute, lengths=lengths
    )
    grads = xlstm.lstm_backward(prob.Ga, caches, prob.Gc)
    return {"a": a, "y": y, "c": c, **grads}, caches


def _snapshot(results):
    return {k: np.array(v, copy=True) for k, v in results.items()}


@pytest.mark.parametrize("lengths", [None, [6, 3, 5]], ids=["padded", "lengths"])
@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
def test_results_survive_later_calls(recompute, lengths):
    """Results and caches of one call are untouched by later calls of the same shapes."""
    first = random_problem(900, 4, 3, 6, 5, 2)
    second = random_problem(901, 4, 3, 6, 5, 2)
    results, caches = _forward_backward(first, recompute=recompute, lengths=lengths)
    kept = _snapshot(results)
    cache = caches[0]
    kept_cache = [np.array(a, copy=True) for a in (cache.h, cache.c, cache.gates) if a is not None]

    _forward_backward(second, recompute=recompute, lengths=lengths)

    for k, v in kept.items():
        np.testing.assert_array_equal(results[k], v, err_msg=k)
    for array, copy in zip(
        [a for a in (cache.h, cache.c, cache.gates) if a is not None], kept_cache, strict=True
    ):
        np.testing.assert_array_equal(array, copy)
    # The first cache still gives the first gradients after the second call.
    again = xlstm.lstm_backward(first.Ga, caches, first.Gc)
    for k, v in again.items():
        np.testing.assert_array_equal(v, kept[k], err_msg=k)


def test_release_frees_and_calls_still_agree_with_the_generic_path():
    prob = random_problem(902, 5, 4, 7, 6, 3)
    xlstm.release_workspace()
    assert workspace.kept_bytes() == 0
    fast, _ = _forward_backward(prob)
    assert workspace.kept_bytes() > 0
    xlstm.release_workspace()
    assert workspace.kept_bytes() == 0
    a, y, c, caches = xlstm.lstm_forward(prob.x, prob.a0, prob.params, prob.c0, fused=False)
    generic = {"a": a, "y": y, "c": c, **xlstm.lstm_backward(prob.Ga, caches, prob.Gc, fused=False)}
    for k in generic:
        assert rel_err(fast[k], generic[k]) <= 1e-12, k


@pytest.mark.parametrize("limit", [0, 4096])
def test_a_thread_keeps_at_most_the_limit(monkeypatch, limit):
    prob = random_problem(903, 4, 3, 5, 4, 2)
    reference, _ = _forward_backward(prob)
    xlstm.release_workspace()
    monkeypatch.setattr(workspace, "MAX_KEPT_BYTES", limit)
    results, _ = _forward_backward(prob)
    assert workspace.kept_bytes() <= limit
    if limit:
        assert workspace.kept_bytes() > 0  # the small buffers still fit
    for k in reference:
        np.testing.assert_array_equal(results[k], reference[k], err_msg=k)


def test_threads_have_their_own_buffers():
    """Calls running at the same time in several threads give the single-thread results."""
    problems = [random_problem(910 + i, 6, 8, 12, 16, 3) for i in range(4)]
    expected = [_snapshot(_forward_backward(p)[0]) for p in problems]

    def run(index):
        results = []
        for _ in range(5):
            results.append(_snapshot(_forward_backward(problems[index])[0]))
        return results

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(run, range(4)))
    for index, runs in enumerate(outcomes):
        for results in runs:
            for k, v in expected[index].items():
                np.testing.assert_array_equal(results[k], v, err_msg=f"problem {index} {k}")


def test_release_reaches_other_threads():
    """Buffers kept by a worker thread (e.g. the second direction of a bidirectional layer)
    are freed by a release called from the main thread."""
    prob = random_problem(904, 4, 3, 5, 4, 2)
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(lambda: (_forward_backward(prob), workspace.kept_bytes())[1]).result()
        xlstm.release_workspace()
        assert pool.submit(workspace.kept_bytes).result() == 0


@pytest.mark.parametrize("lengths", [None, [6, 2, 5, 6]], ids=["padded", "lengths"])
@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
def test_stale_buffer_contents_never_reach_results(recompute, lengths):
    """Kept buffers hold the previous call's values; poisoned with NaN, the next call still
    equals the generic path (every element the engines read was written first)."""
    prob = random_problem(905, 5, 4, 7, 6, 3)
    _forward_backward(prob, recompute=recompute, lengths=lengths)
    for flat in workspace._buffers().values():
        flat.fill(np.nan)
    fast, _ = _forward_backward(prob, recompute=recompute, lengths=lengths)
    a, y, c, caches = xlstm.lstm_forward(
        prob.x, prob.a0, prob.params, prob.c0, fused=False, lengths=lengths
    )
    generic = {"a": a, "y": y, "c": c, **xlstm.lstm_backward(prob.Ga, caches, prob.Gc, fused=False)}
    for k in generic:
        assert np.all(np.isfinite(fast[k])), k
        assert rel_err(fast[k], generic[k]) <= 1e-12, k


# A process whose first call is inference: the page faults of its second call.  Run in a
# fresh interpreter (the C allocator's state is per process and is what is measured).
_FIRST_CALL_SCRIPT = """
import resource, sys
import numpy as np
import xlstm
engine = sys.argv[1]
n_x, n_a, m, t_x = 64, 128, 32, 100  # each result 1.6 MB: above glibc's mmap threshold
params = xlstm.init_parameters(n_x, n_a, 2, dtype="float32", seed=0)
rng = np.random.default_rng(0)
x = rng.standard_normal((n_x, m, t_x)).astype(np.float32)
a0 = np.zeros((n_a, m), np.float32)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(3):
    before = faults()
    a, y, c, _ = xlstm.lstm_forward(x, a0, params, engine=engine, cache=False)
    counts.append(faults() - before)
    del a, y, c
print(*counts)
"""


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_inference_first_process_takes_no_page_fault_per_page_of_its_results(engine):
    """From the second call on, an inference-first process reuses its results' memory.

    Before: glibc served each result by mmap and handed it back when freed, so every
    call took about one minor page fault per 4 KiB of its results (808 at this size).
    """
    import resource
    import subprocess
    import sys

    if engine == "numba":
        pytest.importorskip("numba")
    if not hasattr(resource, "getrusage"):
        pytest.skip("no getrusage on this platform")
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL_SCRIPT, engine],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    counts = [int(word) for word in done.stdout.split()]
    result_pages = 2 * 64 * 128 * 100 * 4 // 4096  # a and c, float32
    assert len(counts) == 3
    assert max(counts[1:]) < result_pages // 20, (counts, result_pages)
