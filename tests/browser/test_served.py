"""What the running app serves for the pack, at the URLs the front end (v1.27.10) requests:
the templates (``GET /workflow_templates``, ``/api/workflow_templates/<pack>/<name>.json`` and
``.jpg``) and the node help pages (``/extensions/<pack>/docs/<NodeName>.md``). HTTP only: no
browser needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "workflows").glob("*.json"))
DOCS = REPO / "web" / "docs"
PACK_NAME = "comfyui-zoodip"  # the folder name in custom_nodes (tests/browser/conftest.py)


def _pack_nodes(comfy_server) -> dict[str, dict]:
    info = comfy_server.json("/object_info")
    return {k: v for k, v in info.items() if v.get("python_module") == f"custom_nodes.{PACK_NAME}"}


def test_every_node_of_the_pack_is_registered(comfy_server):
    nodes = _pack_nodes(comfy_server)
    assert set(nodes) == {p.stem for p in DOCS.glob("*.md")}
    assert all(v["category"] == "ZOODiP" for v in nodes.values())


def test_templates_are_listed_for_the_pack(comfy_server):
    listed = comfy_server.json("/workflow_templates").get(PACK_NAME, [])
    for ex in EXAMPLES:
        assert ex.stem in listed


def test_templates_are_exactly_the_shipped_ui_workflows(comfy_server):
    listed = comfy_server.json("/workflow_templates").get(PACK_NAME, [])
    assert sorted(listed) == sorted(ex.stem for ex in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_template_json_and_thumbnail_are_served(comfy_server, example):
    status, _, body = comfy_server.get(f"/api/workflow_templates/{PACK_NAME}/{example.name}")
    assert status == 200
    assert json.loads(body) == json.loads(example.read_text())
    status, ctype, body = comfy_server.get(f"/api/workflow_templates/{PACK_NAME}/{example.stem}.jpg")
    assert status == 200, "the front end shows <template>.jpg as the card's picture"
    assert ctype.startswith("image/jpeg") and body[:3] == b"\xff\xd8\xff"


def test_help_pages_are_served_where_the_front_end_looks(comfy_server):
    for name, info in sorted(_pack_nodes(comfy_server).items()):
        # NodeHelpService.fetchCustomNodeHelp: /extensions/<python_module part 2, before any @>/docs/<name>.md
        pack_id = info["python_module"].split(".")[1].split("@")[0]
        status, _, body = comfy_server.get(f"/extensions/{pack_id}/docs/{name}.md")
        assert status == 200, f"{name}: help page not served"
        assert body == (DOCS / f"{name}.md").read_bytes()


def test_the_pack_adds_no_front_end_scripts(comfy_server):
    """web/ holds only docs: the app loads every .js under a pack's WEB_DIRECTORY as an extension."""
    extensions = comfy_server.json("/extensions")
    assert not [e for e in extensions if e.startswith(f"/extensions/{PACK_NAME}/")]
