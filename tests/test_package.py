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
                # `from package import submodule` depends on the submodule, not on the package's __init__
                subs = {f"{node.module}.{a.name}" for a in node.names}
                subs = {m for m in subs if (SRC / m.replace(".", "/")).with_suffix(".py").exists()
                        or (SRC / m.replace(".", "/") / "__init__.py").exists()}
                deps |= subs or {node.module}
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
    config = {m: deps for m, deps in graph.items() if m == "darkmatter.config" or m.startswith("darkmatter.config.")}
    assert len(config) > 1
    for module, deps in config.items():
        assert all(d == "darkmatter.errors" or d.startswith("darkmatter.config.") for d in deps), (module, deps)
    assert graph["darkmatter.errors"] == set()


def test_no_module_is_over_600_lines():
    """Beyond ~600 lines a file stops being one idea."""
    long = {str(p.relative_to(REPO)): n for p in (SRC / "darkmatter").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def _string_literals(path):
    """The string constants of a module that are neither docstrings nor parts of a raised error."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node, clean=False):
            skip.add(id(node.body[0].value))
        if isinstance(node, ast.Raise):
            skip |= {id(n) for n in ast.walk(node)}
        if isinstance(node, ast.keyword) and node.arg in ("description", "help"):  # a CLI's own text
            skip |= {id(n) for n in ast.walk(node)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def test_the_paper_has_no_sentence_in_python():
    """The paper's words live in paper/sections (templates); its Python builds numbers and verdict keys.
    Three words in a row in a string literal is prose (or a table label) that belongs in a template."""
    modules = [*(SRC / "darkmatter/paper/context").glob("*.py"), SRC / "darkmatter/paper/generate.py",
               SRC / "darkmatter/paper/format.py"]
    placeholders = {"(too few values for an interval)",  # format.fmt_ci's cell where an interval is missing
                    "replay of local"}  # a backend's name in autointerp.json
    prose = {f"{p.name}: {text!r}" for p in modules for text in _string_literals(p)
             if re.search(r"[A-Za-z]{2,} [a-z]{2,} [a-z]{2,}", text) and text not in placeholders}
    assert not prose, sorted(prose)


def test_every_stage_module_exists_and_has_a_cli():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    modules = {re.search(r"python -m ([\w.]+)", s.get("do", s)["cmd"]).group(1) for s in stages.values()}
    assert len(modules) >= 15
    for module in modules:
        spec = importlib.util.find_spec(module if not module.endswith("corpus") else module + ".__main__")
        assert spec is not None, module
        source = spec.loader.get_source(spec.name)
        assert "@cli\ndef main(" in source and 'if __name__ == "__main__":' in source, module
