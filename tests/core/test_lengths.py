"""Variable-length batches (``lengths``): semantics, engines, gradients, validation.

The oracle is the batch itself, one sequence at a time: sequence ``j`` run alone for its
``lengths[j]`` steps (no ``lengths``) must give the same states, outputs, final state and
gradients as the padded batch, whose entries past each end must be zero.  The gradient of
the final state ``(da_n, dc_n)`` alone is the same as adding it at the sequence's last step.
Then: central differences (float64 NumPy, both engines), the generic path against the NumPy
fast path (caches exchanged both ways) and every error of ``lengths``.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import (
    SEQ_GRAD_KEYS,
    asxp,
    backend_name,
    central_difference,
    random_problem,
    record_worst,
    rel_err,
)

import xlstm
from xlstm.sequence import final_states

# (n_x, m, T, n_a, n_y) and lengths: unsorted with ties, sorted, one sequence, all but one full,
# every sequence shorter than T.
CASES = [
    ((3, 5, 6, 4, 2), [3, 6, 1, 4, 4]),
    ((2, 4, 5, 3, 3), [5, 4, 2, 1]),
    ((3, 1, 4, 2, 2), [2]),
    ((2, 3, 4, 3, 2), [4, 1, 4]),
    ((2, 3, 7, 2, 2), [2, 5, 3]),
]
CASE_IDS = ["unsorted-ties", "sorted", "m1", "one-short", "all-short"]
ENGINES = [("auto", False), (False, False), ("auto", True), (False, True)]
ENGINE_IDS = ["fast", "generic", "fast-recompute", "generic-recompute"]


def _tol(xp) -> float:
    return 1e-12 if backend_name(xp) == "numpy" else 1e-10


def _upstream(seed, n_a, m, T):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n_a, m, T)),
        rng.standard_normal((n_a, m, T)),
        rng.standard_normal((n_a, m)),
        rng.standard_normal((n_a, m)),
    )


def _run(xp, prob, lengths, upstream, *, fused, recompute, lengths_as=np.asarray):
    d = prob.to(xp)
    da, dc, da_n, dc_n = (asxp(xp, g) for g in upstream)
    a, y, c, caches = xlstm.lstm_forward(
        d["x"],
        d["a0"],
        d["params"],
        d["c0"],
        fused=fused,
        recompute=recompute,
        lengths=lengths_as(lengths),
    )
    a_n, c_n = final_states(caches)
    grads = xlstm.lstm_backward(da, caches, dc, fused=fused, da_n=da_n, dc_n=dc_n)
    return (a, y, c, a_n, c_n), grads


@pytest.mark.parametrize(("engine", "recompute"), ENGINES, ids=ENGINE_IDS)
@pytest.mark.parametrize(("shape", "lengths"), CASES, ids=CASE_IDS)
def test_padded_batch_equals_each_sequence_alone(xp, shape, lengths, engine, recompute):
    n_x, m, T, n_a, n_y = shape
    prob = random_problem(7, n_x, m, T, n_a, n_y)
    upstream = _upstream(8, n_a, m, T)
    (a, y, c, a_n, c_n), grads = _run(
        xp, prob, lengths, upstream, fused=engine, recompute=recompute
    )
    a, y, c, a_n, c_n = (np.asarray(xlstm._backend.to_host(v)) for v in (a, y, c, a_n, c_n))
    grads = {k: np.asarray(xlstm._backend.to_host(v)) for k, v in grads.items()}
    da, dc, da_n, dc_n = upstream
    tol = _tol(xp)
    worst = 0.0
    weight_sums = {k: 0.0 for k in SEQ_GRAD_KEYS if k[1] in "Wb"}
    for j, length in enumerate(lengths):
        one = slice(j, j + 1)
        a_j, y_j, c_j, caches = xlstm.lstm_forward(
            prob.x[:, one, :length], prob.a0[:, one], prob.params, prob.c0[:, one]
        )
        da_j, dc_j = da[:, one, :length].copy(), dc[:, one, :length].copy()
        da_j[:, 0, -1] += da_n[:, j]
        dc_j[:, 0, -1] += dc_n[:, j]
        g_j = xlstm.lstm_backward(da_j, caches, dc_j)
        pairs = [
            (a[:, one, :length], a_j),
            (y[:, one, :length], y_j),
            (c[:, one, :length], c_j),
            (a_n[:, one], a_j[:, :, -1]),
            (c_n[:, one], c_j[:, :, -1]),
            (grads["dx"][:, one, :length], g_j["dx"]),
            (grads["da0"][:, one], g_j["da0"]),
            (grads["dc0"][:, one], g_j["dc0"]),
        ]
        for got, want in pairs:
            worst = max(worst, rel_err(got, want))
        for k in weight_sums:
            weight_sums[k] = weight_sums[k] + g_j[k]
        # Past the end: zero outputs and zero dx.
        for array in (a, y, c, grads["dx"]):
            assert np.all(array[:, j, length:] == 0)
    for k, total in weight_sums.items():
        worst = max(worst, rel_err(grads[k], total))
    record_worst("lengths-vs-alone", worst, f"{backend_name(xp)} {shape} {engine} {recompute}")
    assert worst < tol


def test_full_lengths_are_no_lengths():
    prob = random_problem(3, 3, 4, 5, 4, 2)
    upstream = _upstream(4, 4, 4, 5)
    with_lengths = _run(np, prob, [5, 5, 5, 5], upstream, fused="auto", recompute=False)
    without = _run(np, prob, None, upstream, fused="auto", recompute=False, lengths_as=lambda v: v)
    for got, want in zip(with_lengths[0], without[0], strict=True):
        np.testing.assert_array_equal(got, want)
    for key in SEQ_GRAD_KEYS:
        np.testing.assert_array_equal(with_lengths[1][key], without[1][key])


@pytest.mark.parametrize(
    "lengths_as",
    [np.asarray, list, tuple, lambda v: np.asarray(v, dtype=np.int32)],
    ids=["ndarray", "list", "tuple", "int32"],
)
def test_lengths_kinds(lengths_as):
    prob = random_problem(5, 3, 5, 6, 4, 2)
    upstream = _upstream(6, 4, 5, 6)
    ref = _run(np, prob, [3, 6, 1, 4, 4], upstream, fused="auto", recompute=False)
    got = _run(
        np, prob, [3, 6, 1, 4, 4], upstream, fused="auto", recompute=False, lengths_as=lengths_as
    )
    for g, r in zip(got[0], ref[0], strict=True):
        np.testing.assert_array_equal(g, r)


def test_lengths_on_the_backend(xp):
    """``lengths`` may be an integer array of the computation's own backend."""
    prob = random_problem(5, 3, 5, 6, 4, 2)
    upstream = _upstream(6, 4, 5, 6)
    ref = _run(xp, prob, [3, 6, 1, 4, 4], upstream, fused="auto", recompute=False)
    got = _run(
        xp, prob, [3, 6, 1, 4, 4], upstream, fused="auto", recompute=False,
        lengths_as=lambda v: xp.asarray(v),
    )  # fmt: skip
    for g, r in zip(got[0], ref[0], strict=True):
        assert rel_err(g, r) == 0.0


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize(("shape", "lengths"), CASES, ids=CASE_IDS)
def test_generic_equals_fast_path_and_caches_cross(shape, lengths, recompute):
    n_x, m, T, n_a, n_y = shape
    prob = random_problem(11, n_x, m, T, n_a, n_y)
    da, dc, da_n, dc_n = _upstream(12, n_a, m, T)
    results = {}
    for forward_engine in ("auto", False):
        _, _, _, caches = xlstm.lstm_forward(
            prob.x, prob.a0, prob.params, prob.c0, fused=forward_engine,
            recompute=recompute, lengths=lengths,
        )  # fmt: skip
        for backward_engine in ("auto", False):
            results[forward_engine, backward_engine] = xlstm.lstm_backward(
                da, caches, dc, fused=backward_engine, da_n=da_n, dc_n=dc_n
            )
    ref = results[False, False]
    worst = max(rel_err(r[k], ref[k]) for r in results.values() for k in SEQ_GRAD_KEYS)
    record_worst("lengths-generic-vs-fast", worst, f"{shape} recompute={recompute}")
    assert worst < 1e-12


def test_fast_path_is_sorted_and_still_reports_batch_order():
    prob = random_problem(1, 2, 4, 5, 3, 2)
    _, _, _, caches = xlstm.lstm_forward(prob.x, prob.a0, prob.params, lengths=[2, 5, 3, 5])
    cache = caches[0]
    assert cache.order is not None
    assert list(cache.lengths) == [5, 5, 3, 2]
    a_n, _ = final_states(caches)
    a, _, _, _ = xlstm.lstm_forward(prob.x, prob.a0, prob.params, lengths=[2, 5, 3, 5], fused=False)
    np.testing.assert_allclose(a_n, a[:, np.arange(4), np.array([1, 4, 2, 4])], rtol=1e-12)


# --------------------------------------------------------------------------- central differences

H = 1e-6


@pytest.mark.parametrize("fused", ["auto", False], ids=["fast", "generic"])
def test_central_differences_with_lengths(fused):
    """L = sum(a Ga) + sum(c Gc) + sum(a_n Gh) + sum(c_n Gcn), every input, float64."""
    n_x, m, T, n_a, n_y = 2, 3, 5, 3, 2
    lengths = [4, 2, 5]
    prob = random_problem(21, n_x, m, T, n_a, n_y)
    da, dc, da_n, dc_n = _upstream(22, n_a, m, T)

    def loss(arrays):
        params = {k: arrays[k] for k in prob.params}
        a, _, c, caches = xlstm.lstm_forward(
            arrays["x"], arrays["a0"], params, arrays["c0"], fused=fused, lengths=lengths
        )
        a_n, c_n = final_states(caches)
        return float(np.sum(a * da) + np.sum(c * dc) + np.sum(a_n * da_n) + np.sum(c_n * dc_n))

    arrays = dict(prob.arrays)
    _, _, _, caches = xlstm.lstm_forward(
        prob.x, prob.a0, prob.params, prob.c0, fused=fused, lengths=lengths
    )
    grads = xlstm.lstm_backward(da, caches, dc, fused=fused, da_n=da_n, dc_n=dc_n)
    worst = 0.0
    for key in SEQ_GRAD_KEYS:
        name = {"dx": "x", "da0": "a0", "dc0": "c0"}.get(key, key[1:])
        numeric = central_difference(loss, arrays, [name], step=H)[name]
        worst = max(worst, rel_err(grads[key], numeric))
        assert rel_err(grads[key], numeric) < 1e-7, key
    # The padded inputs do not matter at all: their numeric gradient is exactly zero.
    for j, length in enumerate(lengths):
        assert np.all(grads["dx"][:, j, length:] == 0)
    record_worst("lengths-central-differences", worst, f"fused={fused}")


def test_padding_values_do_not_matter():
    prob = random_problem(2, 2, 3, 4, 3, 2)
    lengths = [1, 4, 2]
    noisy = prob.x.copy()
    for j, length in enumerate(lengths):
        noisy[:, j, length:] = 1e3
    for fused in ("auto", False):
        ref = xlstm.lstm_forward(prob.x, prob.a0, prob.params, fused=fused, lengths=lengths)
        got = xlstm.lstm_forward(noisy, prob.a0, prob.params, fused=fused, lengths=lengths)
        for g, r in zip(got[:3], ref[:3], strict=True):
            np.testing.assert_array_equal(g, r)


def test_inputs_not_mutated():
    prob = random_problem(2, 2, 3, 4, 3, 2)
    lengths = np.array([1, 4, 2])
    da, dc, da_n, dc_n = _upstream(3, 3, 3, 4)
    copies = [v.copy() for v in (prob.x, prob.a0, prob.c0, lengths, da, dc, da_n, dc_n)]
    _, _, _, caches = xlstm.lstm_forward(prob.x, prob.a0, prob.params, prob.c0, lengths=lengths)
    xlstm.lstm_backward(da, caches, dc, da_n=da_n, dc_n=dc_n)
    for before, after in zip(
        copies, (prob.x, prob.a0, prob.c0, lengths, da, dc, da_n, dc_n), strict=True
    ):
        np.testing.assert_array_equal(before, after)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("lengths", "error", "match"),
    [
        ([1, 2], ValueError, r"`lengths` has shape \(2,\); expected \(m,\) = \(3,\)"),
        (np.ones((3, 1), dtype=np.int64), ValueError, r"`lengths` has shape \(3, 1\)"),
        (
            [1, 0, 2],
            ValueError,
            r"`lengths\[1\]` = 0; every length must be in \[1, T_x\] = \[1, 4\]",
        ),
        ([1, 5, 2], ValueError, r"`lengths\[1\]` = 5"),
        ([1, -1, 2], ValueError, r"`lengths\[1\]` = -1"),
        ([1.0, 2.0, 3.0], TypeError, r"`lengths` must be a sequence of ints"),
        ([True, 2, 3], TypeError, r"`lengths` must be a sequence of ints"),
        (np.array([1.0, 2.0, 3.0]), TypeError, r"`lengths` has dtype float64"),
        (np.array([True, True, False]), TypeError, r"`lengths` has dtype bool"),
        ("123", TypeError, r"`lengths` must be an integer array or a sequence of ints, got str"),
        (3, TypeError, r"`lengths` must be an integer array"),
    ],
)
def test_bad_lengths(lengths, error, match):
    prob = random_problem(2, 2, 3, 4, 3, 2)
    with pytest.raises(error, match=match):
        xlstm.lstm_forward(prob.x, prob.a0, prob.params, lengths=lengths)


def test_bad_final_state_gradient_shape():
    prob = random_problem(2, 2, 3, 4, 3, 2)
    _, _, _, caches = xlstm.lstm_forward(prob.x, prob.a0, prob.params, lengths=[1, 2, 3])
    da = np.zeros((3, 3, 4))
    with pytest.raises(ValueError, match=r"`da_n` has shape \(3, 2\); expected \(n_a, m\)"):
        xlstm.lstm_backward(da, caches, da_n=np.zeros((3, 2)))
    with pytest.raises(TypeError, match=r"`caches` must be the \(SequenceCache, x\) tuple"):
        final_states((1, 2))


def test_two_row_groups_in_two_threads(monkeypatch):
    """BLAS at two threads: the fast path deals the rows into two groups, one per thread."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from xlstm import _threads
    from xlstm._engines.numpy import masked

    monkeypatch.setattr(_threads, "MIN_WORK", 0)
    m = 2 * masked.MIN_GROUP_ROWS + 3
    n_x, T, n_a, n_y = 3, 7, 4, 2
    lengths = np.random.default_rng(0).integers(1, T + 1, size=m)
    prob = random_problem(31, n_x, m, T, n_a, n_y)
    da, dc, da_n, dc_n = _upstream(32, n_a, m, T)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if not _threads.pair_is_parallel(1):
            pytest.skip("this BLAS cannot be limited to two threads")
        _, _, _, caches = xlstm.lstm_forward(
            prob.x, prob.a0, prob.params, prob.c0, lengths=lengths, engine="numpy"
        )
        assert len(masked._groups(caches[0].lengths)) == 2
        fast = xlstm.lstm_backward(da, caches, dc, da_n=da_n, dc_n=dc_n, engine="numpy")
    # The same cache in one thread, and through the generic engine.
    in_turn = xlstm.lstm_backward(da, caches, dc, da_n=da_n, dc_n=dc_n, engine="numpy")
    generic_cache = xlstm.lstm_backward(da, caches, dc, da_n=da_n, dc_n=dc_n, fused=False)
    _, _, _, ref_caches = xlstm.lstm_forward(
        prob.x, prob.a0, prob.params, prob.c0, lengths=lengths, fused=False
    )
    ref = xlstm.lstm_backward(da, ref_caches, dc, da_n=da_n, dc_n=dc_n, fused=False)
    a_fast, c_fast = final_states(caches)
    a_ref, c_ref = final_states(ref_caches)
    worst = max(rel_err(a_fast, a_ref), rel_err(c_fast, c_ref))
    for got in (fast, in_turn, generic_cache):
        worst = max(worst, max(rel_err(got[k], ref[k]) for k in SEQ_GRAD_KEYS))
    record_worst("lengths-two-groups", worst, f"m={m}")
    assert worst < 1e-12
