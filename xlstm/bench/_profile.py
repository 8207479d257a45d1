"""Where xlstm's time goes (``python -m xlstm bench --profile``) and the inference-first process.

Shape legend: (n_x, n_a, m, T) = (input size, hidden size, batch, time steps).

Profile.  Per shape and pass (inference, forward keeping the cache, forward+backward) the
numba engine runs four ways, interleaved, each the median of ``repeat`` timed calls after
an untimed one (:data:`xlstm._engines.numba.loops.PRODUCTS`): whole; its matrix products
alone; its compiled element-wise kernels alone; neither.  Then::

    products    = t(products alone) - t(neither)   the engine's own BLAS calls, same shapes
    kernels     = t(kernels alone) - t(neither)     the fused step kernels
    engine rest = t(neither)                        layout copies, allocation, Python per segment
    outside     = t(public call) - t(whole engine)  checks, weight packing, output layer

(the split assumes the parts add up; ``sum`` is printed beside the public call's time so that
the assumption can be judged).  Beside them, ``products only``: the same FLOPs as the
fewest and largest products on NumPy's BLAS (the bench's ``products only`` row).  That is
what the products would cost at the rate of large products; the per-step products of a
small shape can run faster than that (their operands stay in cache), so it is a
reference, not a bound no LSTM can beat.

Inference first.  :func:`inference_first` runs a fresh Python process whose first xlstm
call is inference (``lstm_forward(..., cache=False)``), as a deployed service's is, and
times its later calls back to back, with their minor page faults: what the C allocator
does with a process's first large blocks decides the speed of every later call.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

PASSES = ("inference", "forward", "forward_backward")
VARIANTS = ("whole", "products", "kernels", "neither")


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def profile_shape(problem: Any, repeat: int) -> list[dict[str, Any]]:
    """The profile of one problem (:class:`~xlstm.bench._harness.Problem`), numba engine.

    Returns one row per pass: milliseconds of ``public`` (the public call), ``engine``
    (the whole engine), ``products``, ``kernels``, ``engine_rest``, ``outside`` and
    ``products_only``.
    """
    from xlstm import lstm_backward, lstm_forward
    from xlstm._engines.cache import time_major
    from xlstm._engines.numba import engine
    from xlstm._engines.numba.loops import ALL, KERNELS, PRODUCTS
    from xlstm.parameters import pack

    from ._harness import floor_contestant

    params, x, a0, da, dc = problem.parameters, problem.x, problem.a0, problem.da, problem.dc
    W, b = pack(params, np)
    xt, h0 = time_major(x, np), a0.T
    c0 = np.zeros_like(h0)
    da_t, dc_t = time_major(da, np), time_major(dc, np)
    cache = engine.forward(xt, h0, c0, W, b, recompute=False)
    parts = {"whole": ALL, "products": PRODUCTS, "kernels": KERNELS, "neither": 0}

    def engine_call(mode: str, bits: int):
        recompute = mode == "inference"

        def call():
            kept = engine._forward(
                xt, h0, c0, W, b, recompute=recompute, lengths=None, fused=None, parts=bits
            )
            if mode == "forward_backward":
                return kept, engine._backward(cache, xt, da_t, dc_t, parts=bits)
            return kept

        return call

    def public_call(mode: str):
        if mode == "inference":
            return lambda: lstm_forward(x, a0, params, engine="numba", cache=False)
        if mode == "forward":
            return lambda: lstm_forward(x, a0, params, engine="numba")

        def forward_backward():
            *_, caches = lstm_forward(x, a0, params, engine="numba")
            return lstm_backward(da, caches, dc, engine="numba")

        return forward_backward

    floor = floor_contestant(problem, _numpy_backend())
    rows = []
    for mode in PASSES:
        calls = {name: engine_call(mode, bits) for name, bits in parts.items()}
        calls["public"] = public_call(mode)
        calls["products_only"] = floor.calls[mode]
        times: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():
            call()  # untimed: one-off costs
        for _ in range(repeat):
            for name, call in calls.items():
                call()  # untimed warm call, then the timed one
                start = time.perf_counter()
                result = call()
                times[name].append(time.perf_counter() - start)
                del result
        ms = {name: _median_ms(values) for name, values in times.items()}
        rest = ms["neither"]
        rows.append(
            {
                "shape": problem.label,
                "mode": mode,
                "public_ms": ms["public"],
                "engine_ms": ms["whole"],
                "products_ms": ms["products"] - rest,
                "kernels_ms": ms["kernels"] - rest,
                "engine_rest_ms": rest,
                "outside_ms": ms["public"] - ms["whole"],
                "products_only_ms": ms["products_only"],
            }
        )
    return rows


def _numpy_backend() -> Any:
    from ._harness import make_backend

    return make_backend("numpy", None)


PROFILE_HEAD = (
    "profile (numba engine; median ms): products = the engine's own matrix products alone, "
    "kernels = its compiled element-wise steps alone, engine rest = layout copies, allocation "
    "and Python per segment, outside = checks, weight packing and the output layer; sum = "
    "their total beside the public call's time; products only = the same FLOPs as the "
    "fewest, largest products (a reference, beaten by small per-step products)"
)


def format_profile(rows: list[dict[str, Any]]) -> list[str]:
    """The profile table (see :data:`PROFILE_HEAD`)."""
    if not rows:
        return []
    heads = ("public", "products", "kernels", "engine rest", "outside", "sum", "products only")
    lines = ["", PROFILE_HEAD, f"{'shape':<8}{'pass':<9}" + "".join(f"{h:>14}" for h in heads)]
    names = {"inference": "infer", "forward": "fwd", "forward_backward": "fwd+bwd"}
    for row in rows:
        parts = [row[key] for key in ("products_ms", "kernels_ms", "engine_rest_ms", "outside_ms")]
        cells = [row["public_ms"], *parts, sum(parts), row["products_only_ms"]]
        lines.append(
            f"{row['shape']:<8}{names[row['mode']]:<9}" + "".join(f"{c:>14.3f}" for c in cells)
        )
    return lines


# --------------------------------------------------------------------------- inference first


def inference_first(
    shape: tuple[int, int, int, int], dtype: str, engine: str, threads: int, repeat: int
) -> dict[str, Any]:
    """Time inference in a fresh process whose first xlstm call is inference.

    Returns ``{"first_s", "times_s", "faults"}``: the first call (one-off costs), then
    ``repeat`` calls back to back and the minor page faults of each.
    """
    command = [
        sys.executable, "-m", "xlstm.bench._profile", json.dumps(
            {"shape": list(shape), "dtype": dtype, "engine": engine, "threads": threads,
             "repeat": repeat}
        ),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        msg = f"the inference-first process failed: {done.stderr.strip()[-400:]}"
        raise RuntimeError(msg)
    return json.loads(done.stdout)


def _inference_first_main(options: dict[str, Any]) -> dict[str, Any]:
    import resource

    import xlstm

    from ._harness import jit_compile_seconds

    n_x, n_a, m, t_x = options["shape"]
    dtype, engine = options["dtype"], options["engine"]
    rng = np.random.default_rng(0)
    params = xlstm.init_parameters(n_x, n_a, 2, dtype=dtype, seed=0)
    x = rng.standard_normal((n_x, m, t_x)).astype(dtype)
    a0 = np.tanh(rng.standard_normal((n_a, m))).astype(dtype)
    ran = xlstm.resolve_engine(np, dtype, engine)
    jit_compile_seconds(ran, dtype)  # compiles on a tiny problem: no large block freed
    from threadpoolctl import threadpool_limits

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    with threadpool_limits(limits=options["threads"], user_api="blas"):
        start = time.perf_counter()
        xlstm.lstm_forward(x, a0, params, engine=engine, cache=False)
        first = time.perf_counter() - start
        times, counts = [], []
        for _ in range(options["repeat"]):
            before = faults()
            start = time.perf_counter()
            result = xlstm.lstm_forward(x, a0, params, engine=engine, cache=False)
            times.append(time.perf_counter() - start)
            counts.append(faults() - before)
            del result
    return {"engine": ran, "first_s": first, "times_s": times, "faults": counts}


if __name__ == "__main__":
    print(json.dumps(_inference_first_main(json.loads(sys.argv[1]))))
