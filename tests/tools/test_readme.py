"""The README and docs/ stay consistent: CI runs the README's commands, every link resolves.

The README is the front page: two set-up commands, a quick start, links.  Reference
material lives in ``docs/``, one page per topic, so the README must stay short and
link every page, and no relative link may point at a file that is not there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def _root() -> Path:
    # This file may sit in tests/ or a folder below it: find the checkout by its files.
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyproject.toml").exists() and (folder / ".ci").is_dir():
            return folder
    pytest.skip(
        "not run from a source checkout (no pyproject.toml and .ci/ above the tests)",
        allow_module_level=True,
    )


ROOT = _root()
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 160

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _text(path: Path) -> str:
    if not path.exists():
        pytest.skip(f"{path.name} is not next to the tests (installed package)")
    return path.read_text(encoding="utf-8")


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _links(text: str) -> list[str]:
    """Link targets of a Markdown text, outside code blocks and inline code."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(prose) + REFERENCE.findall(prose)


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, count = slug, 0
        while candidate in anchors:
            count += 1
            candidate = f"{slug}-{count}"
        anchors.add(candidate)
    return anchors


def _readme_commands() -> list[str]:
    section = _text(README).split("## Set-up: the two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert "xlstm bench" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = _text(ROOT / ".ci" / "run")
    assert _readme_commands()[1] in ci.splitlines()


def test_readme_stays_short():
    lines = len(_text(README).splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move reference material "
        "to a page in docs/ and link it"
    )


def test_readme_links_every_docs_page():
    linked = {
        (README.parent / target.split("#", 1)[0]).resolve()
        for target in _links(_text(README))
        if not EXTERNAL.match(target) and not target.startswith("#")
    }
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    missing = [page.name for page in pages if page.resolve() not in linked]
    assert not missing, f"README.md does not link docs/{', docs/'.join(missing)}"


@pytest.mark.parametrize(
    "path", _markdown_files(), ids=lambda path: path.relative_to(ROOT).as_posix()
)
def test_relative_links_resolve(path):
    text = _text(path)
    broken = []
    for target in _links(text):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target} (no such file)")
            continue
        checkable = anchor and destination.suffix == ".md"
        if checkable and anchor.lower() not in _anchors(destination.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {'; '.join(broken)}"
