"""Every node has a help page where the front end looks for it, and the page covers the node.

ComfyUI's front end (v1.27) asks custom nodes for ``/extensions/<pack>/docs/<NodeName>/<locale>.md``
and then ``/extensions/<pack>/docs/<NodeName>.md``; the server maps ``/extensions/<pack>/`` to the
pack's ``WEB_DIRECTORY`` (``./web``). tests/browser checks the server serves them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "web" / "docs"


@pytest.fixture(scope="module")
def pack(host):
    return host.pack_module


def _inputs(cls) -> dict[str, tuple]:
    types = cls.INPUT_TYPES()
    return {**types.get("required", {}), **types.get("optional", {})}


def _outputs(cls) -> list[str]:
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return [str(n) for n in names]


def test_web_directory_is_the_docs_root(pack):
    assert (REPO / pack.WEB_DIRECTORY).resolve() == DOCS.parent


def test_every_node_has_a_page_and_no_page_is_stale(pack):
    nodes = set(pack.nodes.node_classes())
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert nodes - pages == set(), f"nodes without a help page in web/docs: {sorted(nodes - pages)}"
    assert pages - nodes == set(), f"help pages for nodes that do not exist: {sorted(pages - nodes)}"


def test_each_page_covers_its_node(pack):
    problems = []
    for name, cls in sorted(pack.nodes.node_classes().items()):
        text = (DOCS / f"{name}.md").read_text(encoding="utf-8")
        title = pack.nodes.display_names()[name]
        if not text.startswith(f"# {title}\n"):
            problems.append(f"{name}: the page should start with '# {title}'")
        for section in ("## Inputs", "## Outputs", "## Example"):
            if section not in text:
                problems.append(f"{name}: no '{section}' section")
        inputs_part = text.split("## Inputs", 1)[-1].split("## Outputs", 1)[0]
        for inp in _inputs(cls):
            if f"`{inp}`" not in inputs_part:
                problems.append(f"{name}: input `{inp}` is not described under ## Inputs")
        outputs_part = text.split("## Outputs", 1)[-1]
        for out in _outputs(cls) if cls.RETURN_TYPES else []:
            if f"`{out}`" not in outputs_part:
                problems.append(f"{name}: output `{out}` is not described under ## Outputs")
    assert not problems, "\n".join(problems)


def test_widget_defaults_are_stated(pack):
    """A number or choice default in the node must appear in its row of the inputs table."""
    problems = []
    for name, cls in sorted(pack.nodes.node_classes().items()):
        text = (DOCS / f"{name}.md").read_text(encoding="utf-8")
        rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([^`]+)`[^\n]*$", text, re.M)}
        for inp, spec in _inputs(cls).items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" not in opts or isinstance(opts["default"], str):
                continue  # strings (templates, names) are described in words
            d = opts["default"]
            shown = {str(d).lower(), f"{d:g}" if isinstance(d, float) else str(d)}
            if isinstance(d, float):
                shown |= {f"{d:.4f}".rstrip("0"), f"{d:.3f}".rstrip("0")}
            row = rows.get(inp, "")
            cells = [c.strip().strip("`").lower() for c in row.split("|")[2:3]]
            if not cells or not any(s in cells[0] for s in shown):
                problems.append(f"{name}: `{inp}` default {d!r} not in its table row: {row[:80]!r}")
    assert not problems, "\n".join(problems)
