"""UI-format workflow JSON -> API-format prompt, using the host's own node definitions.

The UI JSON in workflows/ is the single source (the host also lists it as the pack's templates);
the API files in workflows/api/ (a subfolder, so the host does not list them as templates) are
derived from it with this converter (``python -m devtools.workflows``) and a test checks they agree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SEED_NAMES = {"seed", "noise_seed"}  # the front end adds a control_after_generate value after these
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _is_widget(spec: tuple) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control(name: str, spec: tuple) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in SEED_NAMES


def ui_to_api(ui: dict[str, Any], node_defs: dict[str, Any]) -> dict[str, Any]:
    """Convert a UI workflow. ``node_defs`` maps class_type -> node class (with INPUT_TYPES)."""
    links = {link[0]: link for link in ui["links"]}
    prompt: dict[str, Any] = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted / bypassed nodes are not queued
            continue
        ctype = node["type"]
        if ctype not in node_defs:
            raise KeyError(f"node {node['id']}: unknown node type {ctype}")
        types = node_defs[ctype].INPUT_TYPES()
        specs = {**types.get("required", {}), **types.get("optional", {})}
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs: dict[str, Any] = {}
        for name, spec in specs.items():
            if _is_widget(spec) and values:
                v = values.pop(0)
                if name not in linked:
                    inputs[name] = v
                if _has_control(name, spec) and values:
                    values.pop(0)
        for name, link_id in linked.items():
            link = links[link_id]
            inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": ctype, "inputs": inputs, "_meta": {"title": node.get("title", ctype)}}
    return prompt


def main(argv: list[str] | None = None) -> int:
    """Regenerate workflows/api/*.api.json from the UI files (needs the host importable)."""
    import asyncio

    from devtools.host import HeadlessHost

    root = Path(__file__).resolve().parent.parent
    with HeadlessHost() as h:
        import nodes

        del h
        for ui_path in sorted((root / "workflows").glob("*.json")):
            if ui_path.name.endswith(".api.json"):
                continue
            api = ui_to_api(json.loads(ui_path.read_text()), nodes.NODE_CLASS_MAPPINGS)
            out = ui_path.parent / "api" / (ui_path.name[: -len(".json")] + ".api.json")
            out.write_text(json.dumps(api, indent=2) + "\n")
            print(f"wrote {out.relative_to(root)}", file=sys.stderr)
    del asyncio
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
