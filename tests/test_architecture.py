"""The house rules of docs/architecture.md, checked on the source: imports point down the layers, no
import circle, no function over 100 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
MAX_FUNCTION_LINES = 100


def read_layers(text: str) -> dict[str, int]:
    """Module name -> layer number, from the numbered list of docs/architecture.md."""
    layers = {}
    for line in text.splitlines():
        match = re.match(r"^(\d+)\. (.*)$", line)
        if match:
            head = match.group(2).split(":")[0]  # the names come before the colon that explains them
            for name in re.findall(r"`(prlm[\w.]*)`", head):
                layers[name] = int(match.group(1))
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int:
    """The layer of the longest listed name `module` starts with."""
    owners = [name for name in layers if module == name or module.startswith(name + ".")]
    if not owners:
        raise AssertionError(f"{module} is in no layer of docs/architecture.md: add it to the list")
    return layers[max(owners, key=len)]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "prlm").rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """prlm modules `path` imports anywhere (module level or inside functions): `from a import b` counts
    a.b when that is a module, else a."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "prlm"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "prlm":
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found |= subs or {node.module}
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    # importing a package module runs its __init__: `prlm.data.lamp` depends on `prlm.data`, which we
    # leave out (a package's __init__ re-exporting its own modules is not an arrow between rooms)
    return {name: imported_modules(path, known) - {name} - _parents(name) for name, path in modules.items()}


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return [f"{a} (layer {layer_of(a, layers)}) imports {b} (layer {layer_of(b, layers)})"
            for a, deps in sorted(graph.items()) for b in sorted(deps)
            if b != "prlm" and layer_of(b, layers) > layer_of(a, layers)]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle between modules, as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep == "prlm":
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for name, path in source_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{name}.{node.name}: {length} lines")
    return found


@pytest.fixture(scope="module")
def layers():
    return read_layers((REPO / "docs" / "architecture.md").read_text(encoding="utf-8"))


def test_every_module_has_a_layer_and_imports_point_down(layers):
    assert upward_imports(import_graph(), layers) == []


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def test_no_function_longer_than_100_lines():
    assert long_functions() == []


def test_the_checks_catch_what_they_look_for(layers):
    """The checks themselves, on made-up graphs: an arrow up, a circle, a module in no layer."""
    graph = {"prlm.data.lamp": {"prlm.training.grpo"}, "prlm.training.grpo": {"prlm.data.lamp"}}
    assert upward_imports(graph, layers) == [
        "prlm.data.lamp (layer 1) imports prlm.training.grpo (layer 8)"]
    assert find_cycle(graph) == ["prlm.data.lamp", "prlm.training.grpo", "prlm.data.lamp"]
    assert find_cycle({"prlm.a": {"prlm.b"}, "prlm.b": set()}) is None
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("elsewhere.module", layers)
    assert layer_of("prlm.reward.cli", layers) > layer_of("prlm.reward.model", layers)
