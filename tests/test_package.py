"""The package's shape: no import cycles (lazy imports included), config on the ground floor,
and every module dvc.yaml runs exists and is a stage CLI."""

from __future__ import annotations

import ast
import importlib.util
import re

import yaml
from conftest import REPO

SRC = REPO / "src"


def import_graph() -> dict[str, set[str]]:
    """Module -> the darkmatter modules it imports anywhere in its body."""
    graph = {}
    for path in (SRC / "darkmatter").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("darkmatter"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("darkmatter")}
        graph[".".join(parts)] = deps
    return graph


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module, stack):
        state[module] = "open"
        for dep in graph.get(module, ()):
            if state.get(dep) == "open":
                raise AssertionError(f"import cycle: {' -> '.join([*stack, module, dep])}")
            if dep not in state:
                visit(dep, [*stack, module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])


def test_config_is_the_ground_floor():
    graph = import_graph()
    assert graph["darkmatter.config"] == {"darkmatter.errors"}
    assert graph["darkmatter.errors"] == set()


def test_every_stage_module_exists_and_has_a_cli():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    modules = {re.search(r"python -m ([\w.]+)", s.get("do", s)["cmd"]).group(1) for s in stages.values()}
    assert len(modules) >= 15
    for module in modules:
        spec = importlib.util.find_spec(module if not module.endswith("corpus") else module + ".__main__")
        assert spec is not None, module
        source = spec.loader.get_source(spec.name)
        assert "@cli\ndef main(" in source and 'if __name__ == "__main__":' in source, module
