"""benchmarks/ shares one helper module (benchmarks/_common.py): no benchmark sets up sys.path,
first-order TI and the pack loader are written once, and no two benchmark modules import each
other (directly or round a longer circle)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def modules() -> dict[str, ast.Module]:
    out = {}
    for f in sorted(BENCH.rglob("*.py")):
        name = ".".join(("benchmarks", *f.relative_to(BENCH).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = ast.parse(f.read_text(), str(f))
    return out


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Benchmark modules `name` imports, at any depth of the file (lazy imports count)."""
    package = name if name.endswith(("benchmarks", "toymodel")) else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


def test_no_benchmark_sets_up_sys_path():
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                raise AssertionError(f"{name} touches sys.path; run it as python -m {name}")


def test_first_order_ti_and_the_pack_loader_are_written_once():
    defined: dict[str, list[str]] = {}
    for name, tree in modules().items():
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                defined.setdefault(node.name, []).append(name)
    assert defined["FirstOrderTI"] == ["benchmarks._common"]
    assert defined["pack"] == ["benchmarks._common"] and "_pack" not in defined
    assert defined["write_json"] == ["benchmarks._common"]


def test_no_import_circles():
    trees = modules()
    known = set(trees)
    graph = {name: imports(name, tree, known) for name, tree in trees.items()}
    assert "benchmarks.toymodel.workflow" in graph["benchmarks.toymodel.cli"]  # the scan sees imports

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph.get(m, ())
        return seen

    circles = sorted(n for n in graph if n in reach(n) and n not in ("benchmarks", "benchmarks.toymodel"))
    assert not circles, circles
    assert not graph["benchmarks._common"]  # the shared module depends on no benchmark
