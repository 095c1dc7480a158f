"""The package's import graph: no cycle, and no module imports a layer above its own.

Every ``edgeseg`` import of every module is read with ``ast`` (top-level and function-level alike,
``TYPE_CHECKING`` blocks included), so a cycle cannot hide inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "edgeseg"

# Layers from the bottom: a module may import its own layer and those below it, never above.
LAYERS = {
    "model": ("config", "paths", "files", "secrets", "data", "backbone", "models", "losses", "metrics", "complexity",
              "engine", "export", "coco_eval", "evaluation", "visualize", "catalog"),
    "service": ("search",),
    "analysis": ("report",),
    "cli": ("cli",),
}  # fmt: skip
ORDER = ["model", "service", "analysis", "cli"]
NO_HEAVY = {"model": ("ray", "mlflow", "optuna"), "analysis": ("torch", "ray")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _layer(module: str) -> str | None:
    top = module.split(".")[1] if "." in module else ""
    return next((layer for layer, tops in LAYERS.items() if top in tops), None)


def test_every_module_has_a_layer():
    assert [m for m in _graph() if m != "edgeseg" and _layer(m) is None] == []


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in _graph().items()
        for target in targets
        if _layer(module) and _layer(target) and ORDER.index(_layer(target)) > ORDER.index(_layer(module))
    ]
    assert upward == []


@pytest.mark.parametrize("layer", sorted(NO_HEAVY))
def test_layers_do_not_import_what_they_must_not(layer):
    banned = NO_HEAVY[layer]
    offenders = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in PACKAGE.rglob("*.py")
        if _layer(_module_name(path)) == layer
        for name in _imports(path)
        if name.split(".")[0] in banned
    ]
    assert offenders == []
