"""The layer rule (ARCHITECTURE.md): the engine, ``zoodip/``, imports nothing from ComfyUI or from the
pack's adapters (``nodes/``, the root ``cli.py``), at module level or inside functions, statically or
through ``importlib``. Checked by reading every import in every file of the package (no host needed).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "zoodip"
# The pinned host's top-level modules and packages (ComfyUI v0.3.64's root), and the pack's own
# adapter side and tools.
HOST = {
    "comfy", "comfy_api", "comfy_api_nodes", "comfy_config", "comfy_execution", "comfy_extras", "folder_paths",
    "nodes", "server", "execution", "main", "latent_preview", "node_helpers", "protocol", "cuda_malloc",
    "comfyui_version", "new_updater", "hook_breaker_ac10a0", "app", "api_server", "middleware", "utils",
    "alembic_db", "custom_nodes",
}
PACK = {"nodes", "cli", "devtools", "benchmarks", "tests"}
# What the engine may import besides the standard library: plain torch and the libraries it names.
THIRD_PARTY = {"torch", "numpy", "safetensors", "PIL", "bitsandbytes", "open_clip", "timm"}
DYNAMIC = {"import_module", "__import__", "find_spec", "run_module", "run_path", "exec", "eval", "compile"}
BUILTINS = {"__import__", "exec", "eval", "compile"}  # only as bare names: model.eval(), re.compile() are fine
# The one exception, stated in ARCHITECTURE.md: ``python -m zoodip`` runs the adapter-side runner by path.
LAUNCHER = ("__main__.py", "run_path")


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and node.attr not in BUILTINS:
        return node.attr
    return ""


def violations(source: str, filename: str = "<engine>") -> list[str]:
    """Every import in ``source`` that breaks the rule, as 'line: what'."""
    out = []

    def check(module: str, line: int, how: str) -> None:
        top = module.split(".")[0]
        if top in HOST or top in PACK:
            out.append(f"{line}: {how} {module} (the host or the pack's adapter side)")
        elif top not in THIRD_PARTY and top not in sys.stdlib_module_names:
            out.append(f"{line}: {how} {module} (not a library the engine uses)")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name, node.lineno, "import")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                check(node.module or "", node.lineno, "from")
            elif node.level > 1:  # from .. / from ..nodes: out of the package
                out.append(f"{node.lineno}: from {'.' * node.level}{node.module or ''} (outside zoodip/)")
        elif isinstance(node, ast.Call) and _name(node.func) in DYNAMIC:
            fn = _name(node.func)
            if (Path(filename).name, fn) == LAUNCHER:
                continue
            arg = node.args[0] if node.args else None
            if fn in ("import_module", "__import__", "find_spec") and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                check(arg.value, node.lineno, f"{fn}(...)")
            else:
                out.append(f"{node.lineno}: {fn}(...) (a dynamic import or code run the rule cannot check)")
        elif isinstance(node, ast.Attribute) and node.attr == "modules" and _name(node.value) == "sys":
            out.append(f"{node.lineno}: sys.modules (reaches modules without importing them)")
    return out


def engine_files() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


@pytest.mark.parametrize("path", engine_files(), ids=lambda p: p.name)
def test_engine_file_imports_nothing_of_the_host_or_the_adapters(path):
    assert violations(path.read_text(encoding="utf-8"), str(path)) == []


def test_every_engine_file_is_read():
    names = {p.name for p in engine_files()}
    assert {"__init__.py", "__main__.py", "cli.py", "quant.py", "trainer.py", "optim.py"} <= names
    assert len(names) >= 15


def test_the_launcher_only_runs_the_root_runner_by_path():
    src = (ENGINE / "__main__.py").read_text(encoding="utf-8")
    calls = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call) and _name(n.func) in DYNAMIC]
    assert [_name(c.func) for c in calls] == ["run_path"]
    assert '"cli.py"' in src and (ENGINE.parent / "cli.py").is_file()
    assert violations(src.replace("run_path", "run_module"), "__main__.py")  # any other call is caught


@pytest.mark.parametrize(
    "snippet",
    [
        "import comfy.ops",
        "import folder_paths as fp",
        "from comfy_api.latest import io",
        "def f():\n    import comfy.model_management\n",
        "def f():\n    from server import PromptServer\n",
        "class C:\n    def m(self):\n        import nodes\n",
        "from .. import nodes",
        "from ..nodes import host",
        "from ..nodes.host import detect_family",
        "import importlib\nimportlib.import_module('nodes.host')",
        "from importlib import import_module\nimport_module('comfy.sd')",
        "__import__('execution')",
        "import importlib\nname = 'comfy'\nimportlib.import_module(name)",
        "import runpy\nrunpy.run_path('nodes/cli.py')",
        "import sys\nops = sys.modules['comfy.ops']",
        "import cli",
        "import devtools.host",
        "try:\n    import comfy_extras.nodes_canny\nexcept ImportError:\n    pass\n",
        "import some_unlisted_package",
        "exec('import comfy')",
    ],
)
def test_the_checker_catches_every_way_in(snippet):
    assert violations(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    ["import torch", "import torch.nn.functional as F", "from .settings import TrainSettings", "from . import quant",
     "def f():\n    import bitsandbytes.nn\n", "from safetensors.torch import load", "import json, math",
     "from PIL import Image", "model.eval()", "import re\nre.compile('x')"],
)
def test_the_checker_lets_the_engine_s_own_imports_through(snippet):
    assert violations(snippet) == []


def test_architecture_md_states_the_rule_and_names_every_module():
    root = ENGINE.parent
    text = (root / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert "imports nothing from ComfyUI" in text and "tests/engine/test_layers.py" in text
    assert len(text) < 12_000  # one page
    modules = [p for d in ("zoodip", "nodes") for p in sorted((root / d).glob("*.py")) if p.name != "__init__.py"]
    missing = [f"{p.parent.name}/{p.name}" for p in modules if f"{p.name}`" not in text]
    assert not missing, f"ARCHITECTURE.md does not say what these are: {missing}"
