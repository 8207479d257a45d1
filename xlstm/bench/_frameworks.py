"""``python -m xlstm bench --backend torch|jax --framework``: xlstm inside the frameworks.

Shape legend: (n_x, n_a, m, T) = (input size, hidden size, batch, time steps).

* ``--backend torch``: :class:`xlstm.torch.LSTM` against ``torch.nn.LSTM`` with the same
  weights, on the same input ``(T, m, n_x)``: inference under ``no_grad``, forward with
  autograd recording, forward+backward (``output.backward(d_output)``).
* ``--backend jax``: :func:`xlstm.jax.lstm` (``impl="scan"`` and ``impl="callback"``) against
  a jitted ``jax.lax.scan`` LSTM differentiated by JAX (written here: one fused product per
  step on the hidden state, the input projection hoisted out of the loop; Flax's
  ``nn.RNN(nn.OptimizedLSTMCell)`` is used instead when Flax is installed).  Every
  contestant is jitted; forward and forward+backward (``jax.grad`` of a weighted sum of the
  outputs, gradients of the weights and the input).  Also the compile time of
  forward+backward at T = 10 and T = 1000.

Contestants run interleaved round-robin, ``--repeat`` timed calls each after one untimed
call; outputs and gradients are checked against the peer's before timing.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

MODES = {
    "torch": ("inference", "forward", "forward_backward"),
    "jax": ("forward", "forward_backward"),
}
CHECK_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def _relative(got: np.ndarray, expected: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    return float(np.max(np.abs(np.asarray(got) - np.asarray(expected)))) / scale


def _interleaved(contestants: dict[str, dict[str, Callable]], repeat: int) -> dict:
    """Median and range of ``repeat`` timed calls per contestant and mode, round-robin."""
    times: dict[tuple[str, str], list[float]] = {}
    for calls in contestants.values():  # one untimed call each: warm-up, JIT compile
        for call in calls.values():
            call()
    for _ in range(repeat):
        for name, calls in contestants.items():
            for mode, call in calls.items():
                start = time.perf_counter()
                call()
                times.setdefault((name, mode), []).append(time.perf_counter() - start)
    return {key: (statistics.median(v), min(v), max(v)) for key, v in times.items()}


# --------------------------------------------------------------------------- torch


def torch_shape(shape, dtype: str, engine: str, repeat: int):
    """Rows and checks of one shape for ``--backend torch``."""
    import torch

    import xlstm.torch as xt

    n_x, n_a, m, t_x = shape
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    peer = torch.nn.LSTM(n_x, n_a, dtype=torch_dtype)
    mine = xt.LSTM(n_x, n_a, dtype=torch_dtype, engine=engine)
    mine.load_state_dict(peer.state_dict())
    x = torch.randn(t_x, m, n_x, dtype=torch_dtype)
    d_output = torch.randn(t_x, m, n_a, dtype=torch_dtype)

    def calls(module):
        def inference():
            with torch.no_grad():
                return module(x)[0]

        def forward():
            return module(x)[0]

        def forward_backward():
            for p in module.parameters():
                p.grad = None
            module(x)[0].backward(d_output)
            return [p.grad for p in module.parameters()]

        return {"inference": inference, "forward": forward, "forward_backward": forward_backward}

    contestants = {"xlstm.torch.LSTM": calls(mine), "torch.nn.LSTM": calls(peer)}
    checks = []
    for mode in ("forward", "forward_backward"):
        got = contestants["xlstm.torch.LSTM"][mode]()
        expected = contestants["torch.nn.LSTM"][mode]()
        pairs = zip(got, expected, strict=True) if mode == "forward_backward" else [(got, expected)]
        error = max(_relative(a.detach().numpy(), b.detach().numpy()) for a, b in pairs)
        checks.append({"mode": mode, "max_rel_diff": error, "ok": error <= CHECK_TOLERANCE[dtype]})
    return _interleaved(contestants, repeat), checks, "torch.nn.LSTM"


# --------------------------------------------------------------------------- jax


def _peer_lstm(use_flax: bool):
    """The JAX peer: ``(params, x (n_x, m, T)) -> outputs (n_a, m, T)``, and its params maker."""
    import jax
    import jax.numpy as jnp

    if use_flax:
        import flax.linen as nn

        def make(rng, n_x, n_a, dtype):
            module = nn.RNN(nn.OptimizedLSTMCell(n_a, param_dtype=dtype, dtype=dtype))
            params = module.init(jax.random.key(0), jnp.zeros((1, 2, n_x), dtype))
            return module, params

        def run(module_params, x):
            module, params = module_params
            return jnp.transpose(module.apply(params, jnp.transpose(x, (1, 2, 0))), (2, 0, 1))

        return make, run

    def make(rng, n_x, n_a, dtype):
        scale = 1.0 / np.sqrt(n_a)
        w_x = rng.uniform(-scale, scale, (n_x, 4 * n_a)).astype(dtype)
        w_h = rng.uniform(-scale, scale, (n_a, 4 * n_a)).astype(dtype)
        b = rng.uniform(-scale, scale, (4 * n_a,)).astype(dtype)
        return {"w_x": jnp.asarray(w_x), "w_h": jnp.asarray(w_h), "b": jnp.asarray(b)}

    def run(params, x):
        x_tm = jnp.transpose(x, (2, 1, 0))
        n_a = params["w_h"].shape[0]
        z_input = x_tm @ params["w_x"] + params["b"]

        def step(carry, z_t):
            h, c = carry
            z = z_t + h @ params["w_h"]
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((x_tm.shape[1], n_a), x.dtype)
        _, hs = jax.lax.scan(step, (zeros, zeros), z_input)
        return jnp.transpose(hs, (2, 1, 0))

    return make, run


def _jax_layers(rng, n_x: int, n_a: int, dtype: str):
    import jax.numpy as jnp

    from xlstm._layout import GATE_KEYS

    scale = 1.0 / np.sqrt(n_a)
    shapes = {key: (n_a, n_a + n_x) if key[0] == "W" else (n_a, 1) for key in GATE_KEYS}
    return [
        {k: jnp.asarray(rng.uniform(-scale, scale, s).astype(dtype)) for k, s in shapes.items()}
    ]


def _jax_functions(run: Callable):
    import jax
    import jax.numpy as jnp

    # d_output is an argument, not a closure constant: a constant of T steps would be
    # embedded in the program and make compile time grow with T.
    forward = jax.jit(run)
    gradient = jax.jit(jax.grad(lambda p, x, d: jnp.sum(run(p, x) * d), argnums=(0, 1)))
    return forward, gradient


def _jax_contestants(shape, dtype: str, use_flax: bool):
    import jax
    import jax.numpy as jnp

    import xlstm.jax as xj

    n_x, n_a, m, t_x = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n_x, m, t_x)).astype(dtype))
    d_output = jnp.asarray(rng.standard_normal((n_a, m, t_x)).astype(dtype))
    layers = _jax_layers(rng, n_x, n_a, dtype)
    make, peer_run = _peer_lstm(use_flax)
    peer_params = make(rng, n_x, n_a, dtype)
    contestants = {}
    for impl in ("scan", "callback"):

        def run(p, x, impl=impl):
            return xj.lstm(p, x, impl=impl)[0]

        contestants[f"xlstm.jax ({impl})"] = (_jax_functions(run), layers)
    peer_name = "flax nn.RNN(OptimizedLSTMCell)" if use_flax else "jax.lax.scan LSTM"
    contestants[peer_name] = (_jax_functions(peer_run), peer_params)

    def block(value):
        return jax.block_until_ready(value)

    return contestants, (x, d_output), peer_name, block


def jax_shape(shape, dtype: str, repeat: int, use_flax: bool):
    """Rows and checks of one shape for ``--backend jax``."""
    import jax

    contestants, (x, d_output), peer_name, block = _jax_contestants(shape, dtype, use_flax)
    calls = {}
    for name, ((forward, gradient), params) in contestants.items():
        calls[name] = {
            "forward": lambda f=forward, p=params: block(f(p, x)),
            "forward_backward": lambda g=gradient, p=params: block(g(p, x, d_output)),
        }
    # Check: both impls against each other and the reference scan of xlstm's own equations
    # (the peer has other weights, so it is timed, not compared).
    (scan_fwd, scan_grad), layers = contestants["xlstm.jax (scan)"]
    (cb_fwd, cb_grad), _ = contestants["xlstm.jax (callback)"]
    checks = []
    out_scan, out_cb = scan_fwd(layers, x), cb_fwd(layers, x)
    error = _relative(out_cb, out_scan)
    checks.append({"mode": "forward", "max_rel_diff": error, "ok": error <= CHECK_TOLERANCE[dtype]})
    g_scan = jax.tree.leaves(scan_grad(layers, x, d_output))
    g_cb = jax.tree.leaves(cb_grad(layers, x, d_output))
    error = max(_relative(a, b) for a, b in zip(g_cb, g_scan, strict=True))
    checks.append(
        {"mode": "forward_backward", "max_rel_diff": error, "ok": error <= CHECK_TOLERANCE[dtype]}
    )
    return _interleaved(calls, repeat), checks, peer_name


def jax_compile_times(shape, dtype: str, use_flax: bool) -> list[dict[str, Any]]:
    """Compile time of forward+backward at T = 10 and T = 1000 (shape's other sizes)."""
    rows = []
    for t_x in (10, 1000):
        contestants, (x, d_output), _, _ = _jax_contestants((*shape[:3], t_x), dtype, use_flax)
        for name, ((_, gradient), params) in contestants.items():
            start = time.perf_counter()
            gradient.lower(params, x, d_output).compile()
            rows.append({"contestant": name, "T": t_x, "compile_s": time.perf_counter() - start})
    return rows


# --------------------------------------------------------------------------- report


def main(args, sizes, *, thread_limits, cpu_model: str) -> int:
    """Run the framework comparison for parsed and checked ``python -m xlstm bench`` arguments.

    ``sizes`` are the parsed shapes, ``thread_limits`` the bench's thread-limit context
    manager and ``cpu_model`` the machine's name (passed in by :mod:`.cli`, which checks the
    arguments first).
    """
    use_flax = False
    if args.backend == "jax":
        if args.dtype == "float64":
            import jax

            jax.config.update("jax_enable_x64", True)
        try:
            import flax.linen  # noqa: F401

            use_flax = True
        except ImportError:
            use_flax = False

    rows, checks, compile_rows, peer = [], [], [], None
    with thread_limits(args.threads, args.backend == "torch") as threads:
        for label, shape in sizes:
            if not args.quiet:
                print(f"bench --framework: {label} {shape}", file=sys.stderr)
            if args.backend == "torch":
                timings, shape_checks, peer = torch_shape(
                    shape, args.dtype, args.engine, args.repeat
                )
            else:
                timings, shape_checks, peer = jax_shape(shape, args.dtype, args.repeat, use_flax)
            checks += [{**c, "shape": label} for c in shape_checks]
            for (name, mode), (median, low, high) in timings.items():
                rows.append(
                    {
                        "shape": label,
                        "contestant": name,
                        "mode": mode,
                        "median_s": median,
                        "min_s": low,
                        "max_s": high,
                        "peer_over_this": timings[peer, mode][0] / median,
                    }
                )
        if args.backend == "jax":
            compile_rows = jax_compile_times(sizes[0][1], args.dtype, use_flax)

    lines = [
        f"xlstm bench --framework: backend={args.backend} dtype={args.dtype} repeat={args.repeat} "
        "(median, contestants interleaved)",
        f"threads: {args.threads} ({'; '.join(threads['libraries']) or 'none limited'})"
        + ("; XLA's CPU threads are not limited" if args.backend == "jax" else ""),
        f"machine: {cpu_model}; peer: {peer}; vs peer = peer time / this time",
        f"{'shape':<8} {'contestant':<32} {'mode':<17} {'median ms':>10} {'range ms':>17} "
        f"{'vs peer':>8}",
    ]
    for row in rows:
        span = f"{row['min_s'] * 1e3:.3g}-{row['max_s'] * 1e3:.3g}"
        lines.append(
            f"{row['shape']:<8} {row['contestant']:<32} {row['mode']:<17} "
            f"{row['median_s'] * 1e3:>10.3g} {span:>17} {row['peer_over_this']:>7.2f}x"
        )
    if compile_rows:
        lines.append(f"compile time of forward+backward (jit, {sizes[0][0]} sizes, T = 10 / 1000):")
        for name in dict.fromkeys(r["contestant"] for r in compile_rows):
            t10, t1000 = (r["compile_s"] for r in compile_rows if r["contestant"] == name)
            lines.append(f"  {name:<32} {t10:.3g} s / {t1000:.3g} s ({t1000 / t10:.2f}x)")
    for check in checks:
        state = "ok" if check["ok"] else "MISMATCH"
        lines.append(
            f"check {check['shape']} {check['mode']}: max rel diff {check['max_rel_diff']:.2e} "
            f"({state})"
        )
    print("\n".join(lines))
    if args.json is not None:
        report = {
            "backend": args.backend,
            "framework": True,
            "dtype": args.dtype,
            "repeat": args.repeat,
            "peer": peer,
            "threads": threads,
            "machine": cpu_model,
            "results": rows,
            "compile": compile_rows,
            "checks": checks,
        }
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)
    return 1 if any(not c["ok"] for c in checks) else 0
