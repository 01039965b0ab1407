"""The documentation holds together: README.md stays short, every relative link of README.md and
docs/ reaches a file (and a heading, where it names one), and every page of docs/ is in the site's
navigation (mkdocs.yml) and reachable from README.md."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _links(page: Path) -> list[tuple[Path, str]]:
    """The relative links of ``page``: (target path, anchor or "")."""
    out = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        out.append(((page.parent / path).resolve(), anchor))
    return out


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 250


def test_every_relative_link_reaches_a_file_and_heading() -> None:
    broken = []
    for page in PAGES:
        for target, anchor in _links(page):
            if not target.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{page.relative_to(ROOT)} -> {target.name}#{anchor}")
    assert not broken, broken


def test_every_docs_page_is_in_the_site_navigation_and_reachable_from_the_readme() -> None:
    nav = set(re.findall(r":\s+(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), flags=re.MULTILINE))
    pages = {str(p.relative_to(ROOT / "docs").as_posix()) for p in (ROOT / "docs").rglob("*.md")}
    assert pages == nav, (sorted(pages - nav), sorted(nav - pages))
    reached, frontier = set(), [ROOT / "README.md"]
    while frontier:
        page = frontier.pop()
        for target, _ in _links(page):
            if target.suffix == ".md" and target.is_file() and target not in reached:
                reached.add(target)
                frontier.append(target)
            elif target.is_dir():  # a folder link (docs/decisions/): its pages
                for inner in target.glob("*.md"):
                    if inner not in reached:
                        reached.add(inner)
                        frontier.append(inner)
    unreached = [str(p.relative_to(ROOT)) for p in PAGES if p != ROOT / "README.md" and p.resolve() not in reached]
    assert not unreached, unreached
