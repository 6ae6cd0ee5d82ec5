"""The package's imports run one way (DESIGN.md section 4): a module may import only from
its own layer or the ones below, and nothing imports in a cycle, whether the import sits at
the top of a file or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "edgeseg"

# lowest first; a module belongs to the longest prefix listed
LAYERS = [
    ["edgeseg", "edgeseg.errors", "edgeseg.schema", "edgeseg.fileio", "edgeseg.layout", "edgeseg.runtime",
     "edgeseg.metrics"],
    ["edgeseg.data"],
    ["edgeseg.models"],
    ["edgeseg.evaluation", "edgeseg.predict", "edgeseg.benchmark", "edgeseg.plots"],
    ["edgeseg.compress"],
    ["edgeseg.training"],
    ["edgeseg.export"],
    ["edgeseg.pipeline"],
    ["edgeseg.cli", "edgeseg.cli_app", "edgeseg.cli_options", "edgeseg.cli_stages", "edgeseg.cli_seed_tools", "edgeseg.__main__", "edgeseg.demo", "edgeseg.reports", "edgeseg.init_config", "edgeseg.api",
     "edgeseg.serve"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> int:
    best, rank = "", None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, index
    if rank is None:
        raise AssertionError(f"{name}: not in any layer of tests/test_imports.py; place it there")
    return rank


def imports_of(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported edgeseg module, line, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = {id(node) for func in ast.walk(tree) if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(func)}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from edgeseg.models import architectures" imports the submodule, not just the package
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                       for alias in node.names]
        for target in targets:
            if target == "edgeseg" or target.startswith("edgeseg."):
                found.append((target, node.lineno, id(node) in nested))
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: {target for target, _, _ in imports_of(path, known) if target != name}
            for name, path in found.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_module_imports_from_a_layer_above_its_own():
    found = modules()
    upward = []
    for name, path in found.items():
        for target, line, inside in imports_of(path, set(found)):
            if layer_of(target) > layer_of(name):
                where = "inside a function" if inside else "at the top"
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} {where}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    graph = import_graph()
    # a package's __init__ importing its own submodules is how a package exposes them, not a cycle;
    # a submodule importing its package's __init__ back would be, and stays in the graph
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t.startswith(name + ".") and modules()[name].name == "__init__.py")}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_cycle_finder_finds_exactly_the_cycles(graph, expected):
    assert find_cycle(graph) == expected


def test_loading_a_model_directory_imports_no_compression_pass():
    import subprocess
    import sys

    code = ("import sys; import edgeseg.models.model_dir; "
            "print(sorted(m for m in sys.modules if m.startswith(('edgeseg.compress', 'edgeseg.training', "
            "'edgeseg.export', 'edgeseg.pipeline'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
