"""``python -m xlstm train --workers N``: data-parallel steps give the one-process parameters."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("dask.distributed")

from xlstm.cli import train as cli
from xlstm.training import load_model

ARGS = [
    "--dtype", "float64", "--hidden", "16", "--layers", "2", "--batch", "8", "--seq-len", "16",
    "--steps", "3", "--eval-every", "3", "--sample-every", "3", "--sample-length", "10",
    "--checkpoint-every", "3", "--no-progress", "--seed", "4",
]  # fmt: skip


def _train(out, *extra):
    stdout, stderr = io.StringIO(), io.StringIO()
    status = cli.main([*ARGS, "--out", str(out), *extra], stdout=stdout, stderr=stderr)
    assert status == 0, stderr.getvalue()
    return load_model(out / "checkpoint.npz"), stdout.getvalue() + stderr.getvalue()


def test_two_workers_train_the_same_model_as_one_process(tmp_path):
    alone, _ = _train(tmp_path / "one")
    parallel, report = _train(tmp_path / "two", "--workers", "2", "--batch-chunk", "3")
    assert '"steps": 3' in report
    assert parallel.step == alone.step == 3
    for key, value in alone.parameters.items():
        np.testing.assert_allclose(parallel.parameters[key], value, rtol=1e-10, atol=1e-12)


def test_scheduler_that_cannot_be_reached_is_one_line(tmp_path):
    stderr = io.StringIO()
    argv = [*ARGS, "--out", str(tmp_path), "--scheduler", "tcp://127.0.0.1:9"]
    assert cli.main(argv, stdout=io.StringIO(), stderr=stderr) == 2
    lines = stderr.getvalue().strip().splitlines()
    assert "cannot connect" in lines[-1]
    assert "Traceback" not in stderr.getvalue()
