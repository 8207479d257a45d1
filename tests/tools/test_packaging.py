"""Packaging: one version source, py.typed in the wheel, install lines and extras in the docs."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import xlstm

tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_has_one_source():
    project = PYPROJECT["project"]
    assert "version" not in project, "the version is written in xlstm/__init__.py only"
    assert "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "xlstm.__version__"}
    # PEP 440 release (with optional pre/post/dev parts); setuptools reads it statically.
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", xlstm.__version__)
    source = (ROOT / "xlstm" / "__init__.py").read_text()
    assert source.count(f'__version__ = "{xlstm.__version__}"') == 1


def test_py_typed_is_package_data():
    assert (ROOT / "xlstm" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["xlstm"]


def test_wheel_has_the_version_and_py_typed(tmp_path):
    """Build the wheel from a copy of the sources (the tree is left alone) and read it."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is not installed (the `test` extra has it)")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "xlstm", source / "xlstm", ignore=shutil.ignore_patterns("__pycache__"))
    # No isolation: the build backend of this environment, nothing fetched from the network.
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if (
        done.returncode != 0
        and "setuptools" in done.stdout + done.stderr
        and (importlib.util.find_spec("setuptools") is None)
    ):
        pytest.skip("setuptools is not installed here")
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith(f"xlstm_arrayapi-{xlstm.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "xlstm/py.typed" in names
        metadata = archive.read(f"xlstm_arrayapi-{xlstm.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {xlstm.__version__}\n" in metadata
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", metadata, flags=re.MULTILINE))
    assert extras == set(PYPROJECT["project"]["optional-dependencies"])


def _docs():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_install_lines_work_from_a_clone():
    """No doc installs from the package index (xlstm is not there); every extra named exists."""
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for path in _docs():
        text = path.read_text()
        assert "xlstm-arrayapi[" not in text, f"{path.name}: installs from PyPI"
        for named in re.findall(r'pip install (?:-q )?(?:-e )?"\.\[([^\]]+)\]"', text):
            unknown = set(named.split(",")) - extras
            assert not unknown, f"{path.name}: unknown extras {unknown}"


def test_every_extra_is_in_the_table():
    text = (ROOT / "docs" / "maintainers.md").read_text()
    section = text.split("## Installing from a clone: the extras", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.MULTILINE)
    assert sorted(rows) == sorted(PYPROJECT["project"]["optional-dependencies"])
    assert "not on PyPI" in section
