"""The README is an entry point: short, the quick start near the top, and every relative link it (or a
docs/ page) makes points to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

#: ``[text](target)`` with a relative target: no scheme (``https:``, ``mailto:``), not a bare ``#anchor``.
LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:)([^)#\s]+)(?:#[^)\s]*)?\)")


def _links(path: Path) -> list[str]:
    return LINK.findall(path.read_text(encoding="utf-8"))


def test_readme_is_at_most_15000_characters():
    n = len(README.read_text(encoding="utf-8"))
    assert n <= 15_000, f"README.md has {n} characters; move detail into docs/"


def test_readme_quick_start_is_within_the_first_40_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    for command in ("make install", "make demo", "make test"):
        at = [i for i, line in enumerate(lines, 1) if line.lstrip().startswith(command)]
        assert at, f"no line of README.md starts with {command!r}"
        assert at[0] <= 40, f"{command!r} first starts a line at line {at[0]} of README.md, not within 40"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(page):
    links = _links(page)
    broken = [t for t in links if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(REPO)} links to missing files: {broken}"


def test_readme_links_every_docs_page():
    linked = {(REPO / t).resolve() for t in _links(README)}
    orphans = [p.name for p in DOCS if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_link_pattern_finds_relative_links_only():
    text = "[a](docs/x.md) [b](y.md#part) [c](https://example.org/z.md) [d](#anchor) [e](../README.md)"
    assert LINK.findall(text) == ["docs/x.md", "y.md", "../README.md"]
