"""What the registry, ComfyUI-Manager and the app read from the repository: pyproject.toml,
LICENSE, and the templates in workflows/ (checked as the host v0.3.64 serves them in
tests/browser)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
EXAMPLES = WORKFLOWS  # the host serves the pack's templates from here


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def test_project_metadata():
    project = _pyproject()["project"]
    assert project["name"] == "comfyui-zoodip"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "the registry wants X.Y.Z"
    assert project["version"] == "0.1.0"
    assert project["description"].strip()
    assert project["license"] == {"text": "GPL-3.0-or-later"}
    assert project["requires-python"] == ">=3.10"
    assert project["urls"]["Repository"].startswith("https://")


def test_dependencies_are_the_requirements_unpinned():
    deps = _pyproject()["project"]["dependencies"]
    assert deps == _requirements()
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+", d) for d in deps), f"pinned or marked: {deps}"


def test_comfy_registry_table():
    comfy = _pyproject()["tool"]["comfy"]
    assert comfy["PublisherId"] == "zoodip"
    assert comfy["DisplayName"] == "ZOODiP"
    assert comfy["Icon"] == ""


def test_ruff_config_stays_in_ruff_toml():
    assert "ruff" not in _pyproject().get("tool", {})
    assert (REPO / "ruff.toml").is_file()


def test_license_is_the_gpl3_text():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("GNU GENERAL PUBLIC LICENSE")
    assert "Version 3, 29 June 2007" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 30000


def test_host_reads_the_pyproject(host):
    """The host parses pyproject.toml when it loads the pack (comfy_config); it must not fail."""
    from comfy_config import config_parser

    cfg = config_parser.extract_node_configuration(str(REPO))
    assert cfg.project.name == "comfyui-zoodip"
    assert cfg.tool_comfy.publisher_id == "zoodip" and cfg.tool_comfy.display_name == "ZOODiP"
    assert cfg.tool_comfy.web is None  # WEB_DIRECTORY in __init__.py is the one web folder


def _ui_workflows() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def test_templates_folder_holds_only_ui_workflows():
    """The host lists every workflows/*.json as a template of the pack (it scans example_workflows,
    example, examples, workflow and workflows), so that folder holds the UI files only, and the
    API files live in workflows/api/, which it does not scan."""
    sources = _ui_workflows()
    assert sources, "no UI workflows in workflows/"
    for src in sources:
        assert {"nodes", "links"} <= set(json.loads(src.read_text())), f"{src.name} is not UI format"
        assert (WORKFLOWS / "api" / f"{src.stem}.api.json").is_file()
    assert not (REPO / "example_workflows").exists(), "a second template folder would list every template twice"


def test_every_template_has_a_jpeg_thumbnail():
    """The front end (v1.27) asks for <template>.jpg, whatever the file is."""
    for ex in sorted(EXAMPLES.glob("*.json")):
        thumb = ex.with_suffix(".jpg")
        assert thumb.is_file(), f"{thumb.name} missing"
        data = thumb.read_bytes()
        assert data[:3] == b"\xff\xd8\xff", f"{thumb.name} is not a JPEG"
        from PIL import Image

        with Image.open(thumb) as im:
            assert im.format == "JPEG" and min(im.size) >= 256
    assert not [p for p in EXAMPLES.iterdir() if p.is_file() and p.suffix not in (".json", ".jpg")]
