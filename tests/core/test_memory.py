"""Memory of forward+backward: the cache is what the docs say, and nothing else grows with T.

tracemalloc sees NumPy's array allocations, so it measures exactly the bytes
xlstm holds; these tests run on the NumPy backend (fast and generic paths).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import xlstm
from xlstm._engines import cache as cache_module

N_X, N_A, N_Y, M = 16, 32, 4, 8


def _cache_elements(t_x: int, recompute: bool) -> int:
    # Documented in SequenceCache: (7 T + 2) m n_a with gates, (2 T + 2) m n_a without.
    return ((2 if recompute else 7) * t_x + 2) * M * N_A


def _cache_array_bytes(cache) -> int:
    arrays = [cache.h, cache.c, cache.gates, cache.tanh_c]
    return sum(a.nbytes for a in arrays if a is not None)


def _run(t_x: int, *, recompute: bool, fused):
    rng = np.random.default_rng(t_x)
    parameters = xlstm.init_parameters(N_X, N_A, N_Y, dtype="float64", seed=0)
    x = rng.standard_normal((N_X, M, t_x))
    a0 = rng.standard_normal((N_A, M))
    da = rng.standard_normal((N_A, M, t_x))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        a, y, c, caches = xlstm.lstm_forward(x, a0, parameters, recompute=recompute, fused=fused)
        after_forward = tracemalloc.get_traced_memory()[0] - base
        grads = xlstm.lstm_backward(da, caches, fused=fused)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return caches[0], y, grads, after_forward, peak


@pytest.mark.parametrize("recompute", [False, True])
def test_cache_holds_the_documented_elements(recompute):
    for t_x in (1, 7, 50):
        cache, *_ = _run(t_x, recompute=recompute, fused="auto")
        assert _cache_array_bytes(cache) == _cache_elements(t_x, recompute) * 8


@pytest.mark.parametrize("recompute", [False, True])
def test_memory_growth_with_T_is_the_cache_and_the_outputs(recompute, monkeypatch):
    """Peak memory of forward+backward = cache + outputs + a part independent of T."""
    # Segments normally hold up to 4M gate elements (a constant, but one larger
    # than this whole test); shrink them so that "independent of T" shows here.
    monkeypatch.setattr(cache_module, "SEGMENT_ELEMENTS", 8 * M * 4 * N_A)
    short, long = 50, 200
    runs = {t: _run(t, recompute=recompute, fused="auto") for t in (short, long)}
    # What must grow with T: the cache, dx (n_x m T) and y (n_y m T) with the
    # temporaries of its softmax (logits, shifted logits, exponentials).
    per_step = (_cache_elements(1, recompute) - _cache_elements(0, recompute)) * 8
    per_step += (4 * N_Y + N_X) * M * 8
    growth = runs[long][4] - runs[short][4]
    allowed = per_step * (long - short)
    print(f"\npeak growth {growth} B for {long - short} steps; cache+outputs {allowed} B")
    assert growth <= 1.02 * allowed
    # And the T-independent part is small: segment buffers and weight copies.
    cache, y, grads, _, peak = runs[short]
    held = _cache_array_bytes(cache) + y.nbytes + grads["dx"].nbytes
    constant = peak - held
    weights = 4 * N_A * (N_A + N_X + 1) * 8
    print(f"peak {peak} B = cache+outputs {held} B + {constant} B ({constant / weights:.1f} W)")
    assert constant <= 12 * weights + 64 * M * N_A * 8


def test_memory_saving_mode_cuts_the_cache_3x_at_T200():
    full = _run(200, recompute=False, fused="auto")
    saving = _run(200, recompute=True, fused="auto")
    ratio = _cache_array_bytes(full[0]) / _cache_array_bytes(saving[0])
    peak_ratio = full[4] / saving[4]
    print(f"\ncache cut {ratio:.2f}x, peak forward+backward cut {peak_ratio:.2f}x")
    assert ratio >= 3.0
    assert peak_ratio >= 2.0
