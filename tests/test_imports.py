"""Floors run one way: no module of aos_bench imports, directly or through others, a module that imports it back."""

import ast
from pathlib import Path

from conftest import ROOT


def module_name(path: Path, root: Path) -> str:
    """`aos_bench/report/runs.py` -> 'aos_bench.report.runs'; a package's __init__.py is the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Each module of `package` -> the modules of it that its source imports, at the top or inside a function."""
    files = {module_name(path, package.parent): path for path in sorted(package.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]  # the package a relative import starts from
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module
                if node.level:  # relative: `from .runs import x`, `from .. import x`
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*parts, node.module] if node.module else parts)
                # `from package import name`: the module package.name where there is one, else the package itself
                targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names}
        graph[name] = (targets & set(files)) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import path back to itself for each module that reaches itself through `graph`, e.g. [a, b, a]."""
    found = []
    for start in sorted(graph):
        came_from = {target: start for target in graph[start]}
        todo = sorted(graph[start])
        while todo and start not in todo:
            module = todo.pop(0)
            for target in sorted(graph[module] - came_from.keys()):
                came_from[target] = module
                todo.append(target)
        if start in came_from:
            path = [start]
            while path[-1] != start or len(path) == 1:
                path.append(came_from[path[-1]])
            found.append(path[::-1])
    return found


def test_no_module_imports_a_module_that_imports_it_back():
    graph = import_graph(ROOT / "aos_bench")
    assert "aos_bench.train" in graph["aos_bench.job"] and "aos_bench.report" in graph["aos_bench.sweep"]  # the graph sees imports
    assert not [" -> ".join(path) for path in cycles(graph)]
