"""``python -m xlstm``: a command whose optional dependency is missing is one line, status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs the runner in a fresh interpreter where `import dask` fails, as without the extra.
_WITHOUT_DASK = """
import sys
sys.modules["dask"] = None
from xlstm.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["predict", "--model", "m.npz", "--input", "x.npy", "--output", "y.npy"], "predict: "),
        (["train", "--steps", "1", "--workers", "2"], "--scheduler/--workers: "),
    ],
)
def test_a_missing_extra_is_one_line_and_status_2(tmp_path, argv, expected):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "run")]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DASK, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert expected in result.stderr
    assert "dask" in result.stderr
