"""The layout rules of ARCHITECTURE.md, checked on the code itself: layers, no import cycle, small files.

Layers, lowest first: losses < data < models < the commands (benchmarks/, train.py, evaluate.py, predict.py).
A module imports its own layer and lower ones. Imports inside functions count (they run too), and
`from package import name` counts as importing the package (its __init__ runs), so a module inside a
package must import its siblings directly or it forms a cycle through the package's __init__.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"losses": 0, "data": 1, "models": 2}
COMMAND_LAYER = 3  # benchmarks/ and the top-level scripts
MAX_LINES = 400


def _modules(repo=REPO):
    """{dotted module name: file path} of every project module outside tests/ (a package is its __init__)."""
    found = {}
    for top in sorted(os.listdir(repo)):
        path = os.path.join(repo, top)
        if top.endswith(".py"):
            found[top[:-3]] = path
        elif top in (*LAYERS, "benchmarks") and os.path.isdir(path):
            for folder, _, files in os.walk(path):
                for name in sorted(files):
                    if name.endswith(".py"):
                        parts = os.path.relpath(os.path.join(folder, name), repo)[:-3].split(os.sep)
                        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return found


def _imports(path, modules):
    """The project modules `path` imports: every import statement, those inside functions too."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    targets = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:  # "models.rpn.Proposals" -> the module "models.rpn"
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
    return targets


def _layer(module):
    return LAYERS.get(module.split(".")[0], COMMAND_LAYER)


def _cycles(graph):
    """Groups of modules that import each other, directly or not (strongly connected components > 1)."""
    order, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm; the project's graph is a few hundred nodes deep at most
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in order:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], order[other])
        if low[node] == order[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return groups


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _upward(graph):
    return [f"{name} imports {target}" for name, targets in sorted(graph.items()) for target in sorted(targets)
            if _layer(target) > _layer(name)]


def test_no_module_imports_a_higher_layer(graph):
    assert _upward(graph) == []


def test_no_import_cycle(graph):
    assert _cycles(graph) == []


def test_the_checks_see_what_they_must(tmp_path):
    # A cycle through a package's __init__, an upward import inside a function, and a sibling import.
    (tmp_path / "data" / "pkg").mkdir(parents=True)
    (tmp_path / "data" / "__init__.py").write_text("")
    (tmp_path / "data" / "pkg" / "__init__.py").write_text("from data.pkg.a import f\n")
    (tmp_path / "data" / "pkg" / "a.py").write_text("def f():\n    from data.pkg import b\n    import models.x\n")
    (tmp_path / "data" / "pkg" / "b.py").write_text("import numpy\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "x.py").write_text("from data.pkg.b import numpy\n")
    modules = _modules(str(tmp_path))
    found = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert found == {"data": set(), "data.pkg": {"data.pkg.a"}, "data.pkg.a": {"data.pkg", "data.pkg.b", "models.x"},
                     "data.pkg.b": set(), "models.x": {"data.pkg.b"}}
    assert _cycles(found) == [["data.pkg", "data.pkg.a"]]
    assert _upward(found) == ["data.pkg.a imports models.x"]


def test_no_module_is_longer_than_a_reader_takes_in_one_sitting():
    long = {os.path.relpath(path, REPO): n for path in _modules().values()
            if (n := sum(1 for _ in open(path))) > MAX_LINES}
    assert long == {}
