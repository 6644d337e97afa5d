"""The README and docs/ hold together: every relative link and #anchor resolves, every
docs page opens with a table of contents of its own sections, and every setting is
documented exactly once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.core.config import Settings
from tests.support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$", re.MULTILINE)


def prose(path: Path) -> str:
    """The page without its code blocks (a `# comment` in bash is not a heading)."""
    return FENCE.sub("", path.read_text())


def anchor(title: str) -> str:
    """The id a forge gives a heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for _, title in HEADING.findall(prose(path)):
        slug, n = anchor(title), 1
        while slug in found:  # repeated headings get -1, -2, ...
            slug, n = f"{anchor(title)}-{n}", n + 1
        found.add(slug)
    return found


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target}: no heading #{fragment} in {destination.name}")
    assert broken == [], f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda p: p.name)
def test_each_docs_page_starts_with_its_table_of_contents(page: Path) -> None:
    text = prose(page)
    headings = [anchor(t) for level, t in HEADING.findall(text) if level in ("##", "###")]
    assert headings[0] == "contents", f"{page.name}: the first section is not Contents"
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = {target.lstrip("#") for target in LINK.findall(contents)}
    assert listed == set(headings[1:]), f"{page.name}: the contents and the sections differ"


def test_the_readme_links_every_docs_page() -> None:
    linked = {target.partition("#")[0] for target in links(ROOT / "README.md")}
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= linked


def test_every_setting_is_documented_exactly_once() -> None:
    rows: dict[str, int] = {}
    for page in PAGES:
        for line in prose(page).splitlines():
            if line.startswith("| `"):
                for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]):
                    rows[name] = rows.get(name, 0) + 1
    counts = {name: rows.get(name, 0) for name in Settings.model_fields}
    assert {name: n for name, n in counts.items() if n != 1} == {}
