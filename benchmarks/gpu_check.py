"""Timings and accuracy of xlstm on CuPy against torch.nn.LSTM (cuDNN), in one run.

Run by ``benchmarks/gpu_check.sh`` (which first runs the GPU tests); by hand::

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --out /tmp/xlstm_gpu_check

The driver starts one worker process per TF32 setting, because CuPy reads
``CUPY_TF32`` once, at its first float32 product.  Each worker times, at each
shape, four variants: xlstm with the fused kernels (``fused=True``), the same
with CUDA-graph replay, xlstm's generic array-API path on CuPy
(``fused=False``), and ``torch.nn.LSTM`` on CUDA (cuDNN); TF32 is off for both
libraries or on for both.  Times are wall-clock medians of synchronised calls
(what a training loop sees, launch overhead included).  Accuracy is the
relative error ``||out - ref|| / ||ref||`` (Frobenius norms) against xlstm's
NumPy path in float64 on the same (float32-rounded) inputs, for the forward
outputs (``a``) and for every gradient (``dx``, ``da0``, ``dc0``, ``dW*``,
``db*``).

Shapes (hidden, batch, steps), input size = hidden, after DeepBench's LSTM
training problems, plus one small-batch inference shape (forward only).
Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out`` and prints the
table last.
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
QUICK_SHAPES = ("H256-B16-T150", "H1024-B128-T25", "H512-B4-T50-infer")
VARIANTS = ("fused", "fused+graph", "generic", "cuDNN")
N_Y = 2
REF_DIR = Path(os.environ.get("XLSTM_REF_DIR", "/tmp/xlstm_gpu_check_ref"))


# --------------------------------------------------------------------------- inputs, reference


def make_inputs(hidden: int, batch: int, steps: int) -> dict:
    """Seeded float32-representable inputs (float64 arrays holding float32 values)."""
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
        return a.astype(np.float32).astype(np.float64)

    return {
        **{k: rounded(v) for k, v in arrays.items()},
        "params": {k: rounded(v) for k, v in params.items()},
    }


GRAD_KEYS = ("dx", "da0", "dc0", "dWf", "dWi", "dWc", "dWo", "dbf", "dbi", "dbc", "dbo")


def reference(name: str, inputs: dict) -> dict:
    """xlstm on NumPy in float64; cached on disk so the second worker reuses it."""
    import xlstm

    path = REF_DIR / f"{name}.npz"
    if path.exists():
        with np.load(path) as data:
            return dict(data)
    a, _, c, caches = xlstm.lstm_forward(inputs["x"], inputs["a0"], inputs["params"], inputs["c0"])
    grads = xlstm.lstm_backward(inputs["da"], caches)
    ref = {"a": a, "c_last": c[:, :, -1], **{k: grads[k] for k in GRAD_KEYS}}
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


def xlstm_variant(cupy, inputs: dict, variant: str):
    """(forward, forward+backward, accuracy) callables for one xlstm variant."""
    import xlstm
    from xlstm._engines.cupy import engine as cupy_engine

    fused = variant != "generic"
    graph = variant == "fused+graph"
    dev = {k: cupy.asarray(v, dtype=cupy.float32) for k, v in inputs.items() if k != "params"}
    params = {k: cupy.asarray(v, dtype=cupy.float32) for k, v in inputs["params"].items()}

    def forward():
        cupy_engine.set_graph_replay(graph)
        return xlstm.lstm_forward(dev["x"], dev["a0"], params, dev["c0"], fused=fused)

    def forward_backward():
        a, _, c, caches = forward()
        return a, c, xlstm.lstm_backward(dev["da"], caches, fused=fused)

    def outputs():
        a, c, grads = forward_backward()
        result = {"a": a, "c_last": c[:, :, -1], **{k: grads[k] for k in GRAD_KEYS}}
        return {k: cupy.asnumpy(v) for k, v in result.items()}

    return forward, forward_backward, outputs


def torch_variant(torch, inputs: dict, kind: str, device: str = "cuda"):
    """The same three callables for torch.nn.LSTM on CUDA (float32, cuDNN)."""
    n_a = inputs["a0"].shape[0]
    n_x = inputs["x"].shape[0]
    device = torch.device(device)
    lstm = torch.nn.LSTM(n_x, n_a, device=device, dtype=torch.float32)
    order = ("i", "f", "c", "o")  # torch's i, f, g, o
    W = np.concatenate([inputs["params"][f"W{g}"] for g in order], axis=0)
    b = np.concatenate([inputs["params"][f"b{g}"] for g in order], axis=0)[:, 0]
    with torch.no_grad():
        lstm.weight_hh_l0.copy_(torch.from_numpy(W[:, :n_a]))
        lstm.weight_ih_l0.copy_(torch.from_numpy(W[:, n_a:]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b))
        lstm.bias_hh_l0.zero_()

    def tensor(array, grad=True):
        t = torch.tensor(np.ascontiguousarray(array), dtype=torch.float32, device=device)
        return t.requires_grad_(grad)

    x = tensor(inputs["x"].transpose(2, 1, 0))
    h0, c0 = tensor(inputs["a0"].T[None]), tensor(inputs["c0"].T[None])
    da = tensor(inputs["da"].transpose(2, 1, 0), grad=False)
    weights = [lstm.weight_hh_l0, lstm.weight_ih_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]

    def forward():
        if kind == "infer":
            with torch.no_grad():
                return lstm(x, (h0, c0))
        return lstm(x, (h0, c0))

    def forward_backward():
        out, (_, c_last) = lstm(x, (h0, c0))
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


def worker(tf32: bool, json_path: Path, shapes: list[str], budget_s: float) -> None:
    """Time every variant at every shape; append each row to ``json_path`` as it is done."""
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

    for name in shapes:
        hidden, batch, steps, kind = SHAPES[name]
        inputs = make_inputs(hidden, batch, steps)
        t0 = time.perf_counter()
        ref = reference(name, inputs)
        print(f"[tf32={int(tf32)}] {name}: reference in {time.perf_counter() - t0:.1f} s")
        for variant in VARIANTS:
            row = {
                "tf32": tf32,
                "shape": name,
                "variant": variant,
                "kind": kind,
                "batch": batch,
                "steps": steps,
                "hidden": hidden,
            }
            try:
                if variant == "cuDNN":
                    forward, forward_backward, outputs = torch_variant(torch, inputs, kind)
                else:
                    forward, forward_backward, outputs = xlstm_variant(cupy, inputs, variant)
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
            print(f"[tf32={int(tf32)}] {name} {variant}: {timing} {row.get('error', '')}")
            json_path.write_text(json.dumps(rows, indent=1))
        cupy_engine.clear_graph_cache()
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- driver


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


def table(rows: list[dict]) -> list[str]:
    lines = [
        "TF32 shape              variant        fwd ms  f+b ms  f+b Msteps/s  "
        "vs cuDNN  err fwd   err f+b",
    ]
    cudnn = {(r["tf32"], r["shape"]): r for r in rows if r["variant"] == "cuDNN"}
    for r in rows:
        key = "fwdbwd_s" if r["kind"] == "train" else "fwd_s"
        ref = cudnn.get((r["tf32"], r["shape"]), {})
        ratio = f"{ref[key] / r[key]:8.2f}x" if key in r and key in ref else f"{'-':>9}"
        rate = f"{r['batch'] * r['steps'] / r[key] / 1e6:12.2f}" if key in r else f"{'-':>12}"
        errors = (
            f"{r['err_fwd']:9.2e} {r['err_bwd']:9.2e}" if "err_fwd" in r else f"{'-':>9} {'-':>9}"
        )
        line = (
            f"{'on ' if r['tf32'] else 'off'}  {r['shape']:<18} {r['variant']:<12}"
            f"{_fmt_ms(r, 'fwd_s')}{_fmt_ms(r, 'fwdbwd_s')} {rate}  {ratio} {errors}"
        )
        if "error" in r:
            line += f"  ERROR {r['error'][:80]}"
        lines.append(line)
    return lines


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, each PASS or FAIL, from the measured rows."""
    by = {(r["tf32"], r["shape"], r["variant"]): r for r in rows}
    out = []
    for (tf32, shape, variant), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if variant != "fused+graph":
            continue
        key = "fwdbwd_s" if r["kind"] == "train" else "fwd_s"
        cudnn = by.get((tf32, shape, "cuDNN"), {})
        generic = by.get((tf32, shape, "generic"), {})
        fused = by.get((tf32, shape, "fused"), {})
        tag = f"TF32 {'on ' if tf32 else 'off'} {shape}"
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
    return out


def driver(out_dir: Path, shapes: list[str], budget_s: float, worker_timeout: float) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    env_info = environment()
    print("environment:", json.dumps(env_info))
    rows: list[dict] = []
    for tf32 in (False, True):
        part = out_dir / f"rows_tf32_{int(tf32)}.json"
        part.unlink(missing_ok=True)
        env = dict(os.environ, CUPY_TF32="1" if tf32 else "0", PYTHONUNBUFFERED="1")
        command = [
            sys.executable,
            __file__,
            "--worker",
            "--tf32",
            str(int(tf32)),
            "--json",
            str(part),
            "--budget",
            str(budget_s),
            "--shapes",
            ",".join(shapes),
        ]
        try:
            subprocess.run(command, env=env, timeout=worker_timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"worker tf32={int(tf32)} ran past {worker_timeout:.0f} s; keeping its rows")
        if part.exists():
            rows.extend(json.loads(part.read_text()))
            part.unlink()
    lines = table(rows)
    verdicts = targets(rows)
    (out_dir / "gpu_check.json").write_text(
        json.dumps({"environment": env_info, "rows": rows, "targets": verdicts}, indent=1)
    )
    header = (
        f"xlstm GPU check: {env_info['gpu']}, CuPy {env_info['cupy']}, torch {env_info['torch']}"
        f" (cuDNN {env_info['cudnn']}), float32; time = median wall ms of synchronised calls; "
        "f+b = forward + backward; vs cuDNN = cuDNN time / this time (> 1: faster); "
        "err = ||out - ref|| / ||ref|| vs NumPy float64; inference row: forward only"
    )
    (out_dir / "gpu_check.md").write_text(
        header + "\n\n```\n" + "\n".join([*lines, "", *verdicts]) + "\n```\n"
    )
    print("\n" + header)
    print("\n".join(verdicts))
    print("\n".join(lines))
    return 0 if rows else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/xlstm_gpu_check")
    )
    parser.add_argument("--quick", action="store_true", help="three shapes only")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds timed per measurement")
    parser.add_argument("--worker-timeout", type=float, default=150.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tf32", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shapes", type=str, default="", help="comma-separated shape names")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s] or list(
        QUICK_SHAPES if args.quick else SHAPES
    )
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {list(SHAPES)}")
    if args.worker:
        worker(bool(args.tf32), args.json, shapes, args.budget)
        return 0
    return driver(args.out, shapes, args.budget, args.worker_timeout)


if __name__ == "__main__":
    sys.exit(main())
