"""Timings and accuracy of xlstm on CuPy against torch.nn.LSTM (cuDNN), in one run.

Run by ``benchmarks/gpu_check.sh`` (which first runs the GPU tests); by hand::

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --out /tmp/xlstm_gpu_check [--quick]

Three runs (``mode``), each against its torch counterpart, TF32 off for both
libraries unless stated:

``float32``
    Padded batches, with TF32 off and on.  xlstm with the fused kernels
    (``fused=True``), the same with CUDA-graph replay, xlstm's generic array-API
    path on CuPy (``fused=False``), and ``torch.nn.LSTM`` (cuDNN).
``lengths``
    Variable-length batches, float32: lengths drawn uniformly in ``[T/4, T]``
    (seeded).  xlstm fused (sorted rows, a shrinking batch; eager: variable-length
    calls never replay graphs), xlstm generic, and torch on packed sequences
    (``pack_padded_sequence(..., enforce_sorted=False)``, packing timed).
``float16``
    Padded batches in float16: xlstm fused (float32 math in the kernels, float32
    accumulation in the products), with graph replay, and cuDNN in float16.

The driver starts one worker process per TF32 setting (CuPy reads ``CUPY_TF32``
once, at its first float32 product), the second run and the third share the
TF32-off worker's settings in a worker of their own.  Times are wall-clock
medians of synchronised calls (what a training loop sees, launch overhead
included).  Accuracy is the relative error ``||out - ref|| / ||ref||``
(Frobenius norms) against xlstm's NumPy path in float64 on the same inputs
(rounded to the run's dtype), for the forward outputs (``a``, each sequence's
final ``c``) and for every gradient (``dx``, ``da0``, ``dc0``, ``dW*``, ``db*``).

Shapes (hidden, batch, steps), input size = hidden, after DeepBench's LSTM
training problems, plus one small-batch inference shape (forward only).
Installs nothing; writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out``;
prints the full table, the verdicts, and a short summary table last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# name: (hidden = inputs, batch, steps, kind)
SHAPES = {
    "H256-B16-T150": (256, 16, 150, "train"),
    "H256-B64-T150": (256, 64, 150, "train"),
    "H512-B16-T25": (512, 16, 25, "train"),
    "H512-B128-T25": (512, 128, 25, "train"),
    "H1024-B16-T25": (1024, 16, 25, "train"),
    "H1024-B128-T25": (1024, 128, 25, "train"),
    "H512-B4-T50-infer": (512, 4, 50, "infer"),
}

# mode: dtype, variants, shapes (full), shapes (--quick)
RUNS = {
    "float32": (
        "float32",
        ("fused", "fused+graph", "generic", "cuDNN"),
        tuple(SHAPES),
        ("H256-B16-T150", "H1024-B128-T25", "H512-B4-T50-infer"),
    ),
    "lengths": (
        "float32",
        ("fused", "generic", "cuDNN"),
        ("H256-B64-T150", "H512-B128-T25"),
        ("H256-B64-T150",),
    ),
    "float16": (
        "float16",
        ("fused", "fused+graph", "cuDNN"),
        ("H256-B64-T150", "H1024-B128-T25"),
        ("H1024-B128-T25",),
    ),
}
N_Y = 2
REF_DIR = Path(os.environ.get("XLSTM_REF_DIR", "/tmp/xlstm_gpu_check_ref"))
FLOAT16_TOL = 8 * 2.0**-11
"""Fused float16 against float64 at the test shapes (tests/engines/test_cupy_cpu.py derives it)."""


# --------------------------------------------------------------------------- inputs, reference


def make_inputs(hidden: int, batch: int, steps: int, dtype: str = "float32") -> dict:
    """Seeded inputs representable in ``dtype`` (float64 arrays holding ``dtype`` values)."""
    rng = np.random.default_rng(hidden * 100_003 + batch * 101 + steps)
    n_x = n_a = hidden
    scale = 1.0 / np.sqrt(n_a + n_x)
    params = {}
    for gate in "fico":
        params[f"W{gate}"] = rng.standard_normal((n_a, n_a + n_x)) * scale
        params[f"b{gate}"] = np.full((n_a, 1), 1.0 if gate == "f" else 0.0)
    params["Wy"] = rng.standard_normal((N_Y, n_a)) / np.sqrt(n_a)
    params["by"] = np.zeros((N_Y, 1))
    arrays = {
        "x": rng.standard_normal((n_x, batch, steps)),
        "a0": np.tanh(rng.standard_normal((n_a, batch))),
        "c0": 0.5 * rng.standard_normal((n_a, batch)),
        "da": rng.standard_normal((n_a, batch, steps)),
    }

    def rounded(a):
        return a.astype(dtype).astype(np.float64)

    return {
        **{k: rounded(v) for k, v in arrays.items()},
        "params": {k: rounded(v) for k, v in params.items()},
    }


def make_lengths(batch: int, steps: int) -> np.ndarray:
    """Lengths uniform in ``[T/4, T]`` (seeded), at least one sequence of ``T`` steps."""
    rng = np.random.default_rng(batch * 7 + steps)
    lengths = rng.integers(max(1, steps // 4), steps + 1, size=batch)
    lengths[0] = steps
    return lengths.astype(np.int64)


GRAD_KEYS = ("dx", "da0", "dc0", "dWf", "dWi", "dWc", "dWo", "dbf", "dbi", "dbc", "dbo")


def reference(name: str, mode: str, inputs: dict, lengths) -> dict:
    """xlstm on NumPy in float64; cached on disk so that later workers reuse it."""
    import xlstm

    path = REF_DIR / f"{name}-{mode}.npz"
    if path.exists():
        with np.load(path) as data:
            return dict(data)
    a, _, _, caches = xlstm.lstm_forward(
        inputs["x"], inputs["a0"], inputs["params"], inputs["c0"], lengths=lengths
    )
    grads = xlstm.lstm_backward(inputs["da"], caches)
    _, c_n = xlstm.final_states(caches)
    ref = {"a": a, "c_last": c_n, **{k: grads[k] for k in GRAD_KEYS}}
    REF_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(path, **ref)
    return ref


def rel_err(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    norm = np.linalg.norm(expected)
    return float(np.linalg.norm(actual - expected) / norm) if norm else 0.0


# --------------------------------------------------------------------------- timing


def measure(fn, sync, *, budget_s: float, min_reps: int = 3, max_reps: int = 50) -> float:
    """Median wall time (s) of ``fn(); sync()`` after two warm-up calls."""
    for _ in range(2):  # compile, capture, allocate
        fn()
        sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_reps and (
        len(times) < min_reps or time.perf_counter() - started < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------- the variants


def xlstm_variant(cupy, inputs: dict, variant: str, dtype: str, lengths=None):
    """(forward, forward+backward, accuracy) callables for one xlstm variant."""
    import xlstm
    from xlstm._engines.cupy import engine as cupy_engine

    fused = variant != "generic"
    graph = variant == "fused+graph"
    dev = {k: cupy.asarray(v, dtype=dtype) for k, v in inputs.items() if k != "params"}
    params = {k: cupy.asarray(v, dtype=dtype) for k, v in inputs["params"].items()}

    def forward():
        cupy_engine.set_graph_replay(graph)
        return xlstm.lstm_forward(
            dev["x"], dev["a0"], params, dev["c0"], fused=fused, lengths=lengths
        )

    def forward_backward():
        a, _, _, caches = forward()
        return a, caches, xlstm.lstm_backward(dev["da"], caches, fused=fused)

    def outputs():
        a, caches, grads = forward_backward()
        _, c_n = xlstm.final_states(caches)
        result = {"a": a, "c_last": c_n, **{k: grads[k] for k in GRAD_KEYS}}
        return {k: cupy.asnumpy(v).astype(np.float64) for k, v in result.items()}

    return forward, forward_backward, outputs


def torch_variant(torch, inputs: dict, kind: str, dtype: str, lengths=None, device="cuda"):
    """The same three callables for torch.nn.LSTM on CUDA (cuDNN; packed with lengths)."""
    n_a = inputs["a0"].shape[0]
    n_x, _, steps = inputs["x"].shape
    device = torch.device(device)
    torch_dtype = getattr(torch, dtype)
    lstm = torch.nn.LSTM(n_x, n_a, device=device, dtype=torch_dtype)
    order = ("i", "f", "c", "o")  # torch's i, f, g, o
    W = np.concatenate([inputs["params"][f"W{g}"] for g in order], axis=0)
    b = np.concatenate([inputs["params"][f"b{g}"] for g in order], axis=0)[:, 0]
    with torch.no_grad():
        lstm.weight_hh_l0.copy_(torch.from_numpy(W[:, :n_a]))
        lstm.weight_ih_l0.copy_(torch.from_numpy(W[:, n_a:]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b))
        lstm.bias_hh_l0.zero_()

    def tensor(array, grad=True):
        t = torch.tensor(np.ascontiguousarray(array), dtype=torch_dtype, device=device)
        return t.requires_grad_(grad)

    x = tensor(inputs["x"].transpose(2, 1, 0))
    h0, c0 = tensor(inputs["a0"].T[None]), tensor(inputs["c0"].T[None])
    da = tensor(inputs["da"].transpose(2, 1, 0), grad=False)
    weights = [lstm.weight_hh_l0, lstm.weight_ih_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    rnn = torch.nn.utils.rnn
    host_lengths = None if lengths is None else torch.as_tensor(lengths, dtype=torch.int64)

    def run():
        if host_lengths is None:
            out, (_, c_last) = lstm(x, (h0, c0))
            return out, c_last
        packed = rnn.pack_padded_sequence(x, host_lengths, enforce_sorted=False)
        out, (_, c_last) = lstm(packed, (h0, c0))
        return rnn.pad_packed_sequence(out, total_length=steps)[0], c_last

    def forward():
        if kind == "infer":
            with torch.no_grad():
                return run()
        return run()

    def forward_backward():
        out, c_last = run()
        return out, c_last, torch.autograd.grad(out, [x, h0, c0, *weights], da)

    def outputs():
        out, c_last, grads = forward_backward()
        host = [g.detach().cpu().double().numpy() for g in grads]
        d_x, d_h0, d_c0, d_hh, d_ih, d_b, _ = host
        result = {
            "a": out.detach().cpu().double().numpy().transpose(2, 1, 0),
            "c_last": c_last.detach().cpu().double().numpy()[0].T,
            "dx": d_x.transpose(2, 1, 0),
            "da0": d_h0[0].T,
            "dc0": d_c0[0].T,
        }
        for k, gate in enumerate(order):
            rows = slice(k * n_a, (k + 1) * n_a)
            result[f"dW{gate}"] = np.concatenate([d_hh[rows], d_ih[rows]], axis=1)
            result[f"db{gate}"] = d_b[rows, None]
        return result

    return forward, forward_backward, outputs


def accuracy(outputs: dict, ref: dict) -> tuple[float, float]:
    forward = max(rel_err(outputs[k], ref[k]) for k in ("a", "c_last"))
    backward = max(rel_err(outputs[k], ref[k]) for k in GRAD_KEYS)
    return forward, backward


def worker(tf32: bool, json_path: Path, modes: list[str], quick: bool, budget_s: float) -> None:
    """Time every variant of every run; write the rows to ``json_path`` as they come."""
    import cupy
    import torch

    from xlstm._engines.cupy import engine as cupy_engine

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    assert os.environ.get("CUPY_TF32", "0") == ("1" if tf32 else "0")
    rows: list[dict] = []

    def sync():
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()

    for mode in modes:
        dtype, variants, full, short = RUNS[mode]
        for name in short if quick else full:
            hidden, batch, steps, kind = SHAPES[name]
            inputs = make_inputs(hidden, batch, steps, dtype)
            lengths = make_lengths(batch, steps) if mode == "lengths" else None
            t0 = time.perf_counter()
            ref = reference(name, mode, inputs, lengths)
            print(
                f"[{mode} tf32={int(tf32)}] {name}: reference in {time.perf_counter() - t0:.1f} s"
            )
            for variant in variants:
                row = {
                    "mode": mode,
                    "tf32": tf32,
                    "shape": name,
                    "variant": variant,
                    "kind": kind,
                    "batch": batch,
                    "steps": steps,
                    "hidden": hidden,
                }
                if lengths is not None:
                    row["mean_length"] = float(np.mean(lengths))
                try:
                    if variant == "cuDNN":
                        fns = torch_variant(torch, inputs, kind, dtype, lengths)
                    else:
                        fns = xlstm_variant(cupy, inputs, variant, dtype, lengths)
                    forward, forward_backward, outputs = fns
                    row["fwd_s"] = measure(forward, sync, budget_s=budget_s)
                    if kind == "train":
                        row["fwdbwd_s"] = measure(forward_backward, sync, budget_s=budget_s)
                    row["err_fwd"], row["err_bwd"] = accuracy(outputs(), ref)
                except Exception as error:  # a failing variant is a table entry, not the end
                    row["error"] = f"{type(error).__name__}: {error}"
                    traceback.print_exc()
                finally:
                    cupy_engine.set_graph_replay(None)
                rows.append(row)
                timing = ", ".join(
                    f"{k}={row[k] * 1e3:.3f} ms" for k in ("fwd_s", "fwdbwd_s") if k in row
                )
                print(
                    f"[{mode} tf32={int(tf32)}] {name} {variant}: {timing} {row.get('error', '')}"
                )
                json_path.write_text(json.dumps(rows, indent=1))
            cupy_engine.clear_graph_cache()
            cupy.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- reports


def environment() -> dict:
    import cupy
    import torch

    props = cupy.cuda.runtime.getDeviceProperties(0)
    return {
        "gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "cupy": cupy.__version__,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "driver": cupy.cuda.runtime.driverGetVersion(),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "python": sys.version.split()[0],
    }


def _fmt_ms(row: dict, key: str) -> str:
    return f"{row[key] * 1e3:8.3f}" if key in row else f"{'-':>8}"


def _time_key(row: dict) -> str:
    return "fwdbwd_s" if row["kind"] == "train" else "fwd_s"


def _peers(rows: list[dict]) -> dict:
    return {(r["mode"], r["tf32"], r["shape"], r["variant"]): r for r in rows}


def table(rows: list[dict]) -> list[str]:
    """Every row: times, throughput, ratio to cuDNN, errors."""
    lines = [
        "mode     TF32 shape              variant        fwd ms  f+b ms  f+b Msteps/s  "
        "vs cuDNN  err fwd   err f+b",
    ]
    by = _peers(rows)
    for r in rows:
        key = _time_key(r)
        ref = by.get((r["mode"], r["tf32"], r["shape"], "cuDNN"), {})
        ratio = f"{ref[key] / r[key]:8.2f}x" if key in r and key in ref else f"{'-':>9}"
        rate = f"{r['batch'] * r['steps'] / r[key] / 1e6:12.2f}" if key in r else f"{'-':>12}"
        errors = (
            f"{r['err_fwd']:9.2e} {r['err_bwd']:9.2e}" if "err_fwd" in r else f"{'-':>9} {'-':>9}"
        )
        line = (
            f"{r['mode']:<8} {'on ' if r['tf32'] else 'off'}  {r['shape']:<18} "
            f"{r['variant']:<12}{_fmt_ms(r, 'fwd_s')}{_fmt_ms(r, 'fwdbwd_s')} {rate}  "
            f"{ratio} {errors}"
        )
        if "error" in r:
            line += f"  ERROR {r['error'][:80]}"
        lines.append(line)
    return lines


def summary(rows: list[dict]) -> list[str]:
    """One line per (run, TF32, shape): xlstm's best variant against cuDNN (printed last)."""
    lines = ["run      TF32 shape              xlstm        xlstm ms  cuDNN ms  vs cuDNN  max err"]
    by = _peers(rows)
    seen = []
    for r in rows:
        group = (r["mode"], r["tf32"], r["shape"])
        if group in seen:
            continue
        seen.append(group)
        key = _time_key(r)
        ours = [
            by[(*group, v)]
            for v in ("fused+graph", "fused")
            if (*group, v) in by and key in by[(*group, v)]
        ]
        best = min(ours, key=lambda row: row[key]) if ours else {"variant": "-"}
        cudnn = by.get((*group, "cuDNN"), {})
        mine = f"{best[key] * 1e3:9.3f}" if key in best else f"{'-':>9}"
        theirs = f"{cudnn[key] * 1e3:9.3f}" if key in cudnn else f"{'-':>9}"
        ratio = f"{cudnn[key] / best[key]:8.2f}x" if key in best and key in cudnn else f"{'-':>9}"
        err = f"{max(best['err_fwd'], best['err_bwd']):8.1e}" if "err_fwd" in best else "       -"
        lines.append(
            f"{group[0]:<8} {'on ' if group[1] else 'off'}  {group[2]:<18} "
            f"{best['variant']:<12}{mine} {theirs} {ratio} {err}"
        )
    return lines


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, each PASS or FAIL (INFO: reported, no target), from the rows."""
    by = _peers(rows)
    out = []
    for (mode, tf32, shape, variant), r in by.items():
        key = _time_key(r)
        tag = f"{mode} TF32 {'on ' if tf32 else 'off'} {shape}"
        cudnn = by.get((mode, tf32, shape, "cuDNN"), {})
        generic = by.get((mode, tf32, shape, "generic"), {})
        if mode == "float32" and variant == "fused+graph":
            fused = by.get((mode, tf32, shape, "fused"), {})
            if key in r and key in cudnn:
                ratio = cudnn[key] / r[key]
                need = 1.0 if r["batch"] <= 16 else 0.5
                verdict = "PASS" if ratio >= need else "FAIL"
                out.append(f"{verdict} {tag}: graph/cuDNN throughput {ratio:.2f} (need >= {need})")
            if r["batch"] <= 64 and key in fused and key in generic:
                speedup = generic[key] / fused[key]
                verdict = "PASS" if speedup >= 5 else "FAIL"
                out.append(f"{verdict} {tag}: fused vs generic {speedup:.1f}x (need >= 5)")
            if "err_fwd" in r:
                limit = 1e-2 if tf32 else 1e-5
                err = max(r["err_fwd"], r["err_bwd"])
                verdict = "PASS" if err <= limit else "FAIL"
                out.append(f"{verdict} {tag}: rel err {err:.1e} (need <= {limit:g})")
        elif mode == "lengths" and variant == "fused":
            if "err_fwd" in r:
                err = max(r["err_fwd"], r["err_bwd"])
                verdict = "PASS" if err <= 1e-5 else "FAIL"
                out.append(f"{verdict} {tag}: rel err {err:.1e} (need <= 1e-05)")
            if key in r and key in cudnn:
                out.append(f"INFO {tag}: fused/cuDNN packed throughput {cudnn[key] / r[key]:.2f}")
            if key in r and key in generic:
                out.append(f"INFO {tag}: fused vs generic {generic[key] / r[key]:.1f}x")
        elif mode == "float16" and variant in ("fused", "fused+graph") and "err_fwd" in r:
            # float32 math in both; cuDNN's error says what the shape's length costs.
            err = max(r["err_fwd"], r["err_bwd"])
            theirs = max(cudnn["err_fwd"], cudnn["err_bwd"]) if "err_fwd" in cudnn else 0.0
            limit = max(FLOAT16_TOL, 2 * theirs)
            verdict = "PASS" if err <= limit else "FAIL"
            out.append(
                f"{verdict} {tag} {variant}: rel err {err:.1e} (need <= {limit:.1e}: "
                f"max({FLOAT16_TOL:.1e}, 2 x cuDNN's {theirs:.1e}))"
            )
            if variant == "fused+graph" and key in r and key in cudnn:
                out.append(f"INFO {tag}: graph/cuDNN throughput {cudnn[key] / r[key]:.2f}")
    return out


# --------------------------------------------------------------------------- driver


def _run_worker(
    out_dir: Path, tf32: bool, modes: list[str], quick: bool, budget_s: float, timeout: float
) -> list[dict]:
    part = out_dir / f"rows_{'-'.join(modes)}_tf32_{int(tf32)}.json"
    part.unlink(missing_ok=True)
    env = dict(os.environ, CUPY_TF32="1" if tf32 else "0", PYTHONUNBUFFERED="1")
    command = [
        sys.executable, __file__, "--worker", "--tf32", str(int(tf32)), "--json", str(part),
        "--budget", str(budget_s), "--modes", ",".join(modes), *(["--quick"] if quick else []),
    ]  # fmt: skip
    try:
        subprocess.run(command, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"worker {modes} tf32={int(tf32)} ran past {timeout:.0f} s; keeping its rows")
    rows = json.loads(part.read_text()) if part.exists() else []
    part.unlink(missing_ok=True)
    return rows


def driver(
    out_dir: Path, modes: list[str], quick: bool, budget_s: float, worker_timeout: float
) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    env_info = environment()
    print("environment:", json.dumps(env_info))
    rows: list[dict] = []
    # float32 with TF32 off, then on; the other runs (TF32 off) in a worker of their own.
    jobs = [(tf32, ["float32"]) for tf32 in (False, True) if "float32" in modes]
    others = [mode for mode in modes if mode != "float32"]
    if others:
        jobs.append((False, others))
    for tf32, job_modes in jobs:
        rows.extend(_run_worker(out_dir, tf32, job_modes, quick, budget_s, worker_timeout))
    lines, verdicts, short = table(rows), targets(rows), summary(rows)
    (out_dir / "gpu_check.json").write_text(
        json.dumps({"environment": env_info, "rows": rows, "targets": verdicts}, indent=1)
    )
    header = (
        f"xlstm GPU check: {env_info['gpu']}, CuPy {env_info['cupy']}, torch {env_info['torch']}"
        f" (cuDNN {env_info['cudnn']}); time = median wall ms of synchronised calls; "
        "f+b = forward + backward; vs cuDNN = cuDNN time / this time (> 1: faster); "
        "err = ||out - ref|| / ||ref|| vs NumPy float64; inference row: forward only; "
        "lengths: uniform in [T/4, T], torch on packed sequences"
    )
    (out_dir / "gpu_check.md").write_text(
        header + "\n\n```\n" + "\n".join([*lines, "", *verdicts, "", *short]) + "\n```\n"
    )
    print("\n".join(lines))
    print("\n".join(verdicts))
    print("\n" + header)
    print("\n".join(short))
    return 0 if rows else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/xlstm_gpu_check")
    )
    parser.add_argument("--quick", action="store_true", help="a few shapes per run")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds timed per measurement")
    parser.add_argument("--worker-timeout", type=float, default=150.0)
    parser.add_argument(
        "--modes", type=str, default=",".join(RUNS), help=f"comma-separated, of {list(RUNS)}"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tf32", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in RUNS]
    if unknown or not modes:
        parser.error(f"unknown runs {unknown}; known: {list(RUNS)}")
    if args.worker:
        worker(bool(args.tf32), args.json, modes, args.quick, args.budget)
        return 0
    return driver(args.out, modes, args.quick, args.budget, args.worker_timeout)


if __name__ == "__main__":
    sys.exit(main())
