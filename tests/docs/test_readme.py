"""The README is a short page for a newcomer; reference material lives in docs/, and every link
between them resolves. (Which nodes exist is tested against web/docs by test_help_pages.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
HELP_PAGES = sorted((REPO / "web" / "docs").glob("*.md"))
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)}


def test_readme_is_short():
    assert len(README.read_bytes()) <= 12 * 1024, "README.md is for a newcomer: move reference text to docs/"


def test_the_two_commands_are_near_the_top_and_ci_runs_the_test_one():
    lines = README.read_text(encoding="utf-8").splitlines()
    for command in ("bash scripts/demo.sh", "bash scripts/test.sh"):
        at = next((i for i, ln in enumerate(lines) if ln.startswith(command)), None)
        assert at is not None and at < 50, f"{command!r} should be a line in the README's first 50"
        assert (REPO / command.split()[1]).is_file()
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", HELP_PAGES, ids=lambda p: p.stem)
def test_every_node_has_a_readme_line_and_a_reference_section(page):
    node = page.stem
    readme = README.read_text(encoding="utf-8")
    assert re.search(rf"^- \[[^\]]+\]\(web/docs/{node}\.md\): \S", readme, re.M), (
        f"README's node list needs a line linking web/docs/{node}.md"
    )
    reference = (REPO / "docs" / "nodes.md").read_text(encoding="utf-8")
    assert re.search(rf"^## .*\(`{node}`", reference, re.M), f"docs/nodes.md has no section for {node}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"
