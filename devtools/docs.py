"""The node reference, written from the nodes' schemas (which the settings table declares).

``web/docs/<NodeId>.md`` (the help page the front end shows) and ``docs/nodes.md`` (the node
reference) keep their prose; only the inputs tables, between the markers below, are generated.
tests/docs/test_reference.py fails when a file differs from what this writes, so a default, a
range or a help text cannot drift from the node.

    python -m devtools.docs            # rewrite the files (starts a headless host)
    python -m devtools.docs --check    # exit 1 if a file is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WEB_DOCS = REPO / "web" / "docs"
REFERENCE = REPO / "docs" / "nodes.md"
BEGIN = "<!-- inputs: written by python -m devtools.docs from the node's schema (zoodip/settings.py); edit those -->"
END = "<!-- /inputs -->"
HEADER = "| input | default | what it does, and why this default |\n|---|---|---|"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(inp: Any, setting: Any) -> str:
    if setting is not None and setting.extra.get("doc_default"):
        return setting.extra["doc_default"]
    default = getattr(inp, "default", None)
    if default is None:
        return "the first in the list" if getattr(inp, "options", None) is not None else ""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, str):
        return f"`{default}`" if default else "empty"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def input_rows(cls: Any) -> list[str]:
    """One table row per input of the node, in the schema's order."""
    rows = []
    for inp in cls.GET_SCHEMA().inputs:
        setting = getattr(inp, "zoodip_setting", None)
        name = f"`{inp.id}`" + (" (optional)" if inp.optional else "")
        text = inp.tooltip or ""
        if setting is not None:
            if setting.doc:
                text += " " + setting.doc
            if setting.kind in (int, float) and setting.range_text():
                text += f" Allowed: {setting.range_text()}."
        rows.append(f"| {name} | {_cell(_default(inp, setting))} | {_cell(text)} |")
    return rows


def inputs_table(cls: Any) -> str:
    return "\n".join([HEADER, *input_rows(cls)])


def begin(node_id: str | None = None) -> str:
    """The opening marker; in docs/nodes.md it names the node (one block per node)."""
    return BEGIN.replace("<!-- inputs", f"<!-- inputs {node_id}", 1) if node_id else BEGIN


def fill(text: str, cls: Any, node_id: str | None = None, where: str = "") -> str:
    """``text`` with the generated inputs table of ``cls`` between its markers brought up to date."""
    b = begin(node_id)
    if b not in text or END not in text.split(b, 1)[1]:
        raise ValueError(f"{where}: no {b!r} ... {END!r} block for {cls.GET_SCHEMA().node_id}")
    head, rest = text.split(b, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{b}\n{inputs_table(cls)}\n{END}{tail}"


def expected_files(classes: list[Any]) -> dict[Path, str]:
    """Every file with generated tables and the text it should have: each node's help page, and
    docs/nodes.md (one block per node, its marker naming the node)."""
    out = {}
    reference = REFERENCE.read_text(encoding="utf-8")
    for cls in classes:
        node_id = cls.GET_SCHEMA().node_id
        page = WEB_DOCS / f"{node_id}.md"
        out[page] = fill(page.read_text(encoding="utf-8"), cls, where=str(page))
        reference = fill(reference, cls, node_id, where=str(REFERENCE))
    out[REFERENCE] = reference
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report the files that are out of date")
    args = ap.parse_args(argv)
    from devtools.host import HeadlessHost

    with HeadlessHost() as host:
        classes = host.pack_module.nodes.NODES
        stale = []
        for path, text in expected_files(classes).items():
            if path.is_file() and path.read_text(encoding="utf-8") == text:
                continue
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        for path in stale:
            print(("out of date: " if args.check else "wrote ") + str(path.relative_to(REPO)), file=sys.stderr)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
