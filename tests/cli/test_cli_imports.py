"""The layout rule DESIGN.md states: the CLIs import the packages, never the other way, and no CLI imports another."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIS = ("train", "evaluate", "predict")
PACKAGES = ("benchmarks", "data", "losses", "models")


def _imported_modules(path):
    """The top-level names of every module `path` imports, wherever the import statement is (functions too)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def _package_files():
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            yield from (os.path.join(folder, f) for f in sorted(files) if f.endswith(".py"))


def test_the_checker_sees_imports_inside_functions(tmp_path):
    # Where the demos used to import the CLIs: inside a function, under another import.
    (tmp_path / "demo.py").write_text("import os\n\ndef run():\n    import evaluate\n    from predict import main\n"
                                      "    from . import train\n")
    assert set(_imported_modules(str(tmp_path / "demo.py"))) == {"os", "evaluate", "predict"}
    files = list(_package_files())
    assert os.path.join(REPO, "models", "pspnet", "recipe.py") in files and len(files) > 40


def test_no_package_imports_a_cli():
    offenders = [f"{os.path.relpath(path, REPO)} imports {name}"
                 for path in _package_files() for name in set(_imported_modules(path)) if name in CLIS]
    assert not offenders, offenders


@pytest.mark.parametrize("cli", CLIS)
def test_no_cli_imports_another(cli):
    others = set(_imported_modules(os.path.join(REPO, f"{cli}.py"))) & (set(CLIS) - {cli})
    assert not others, f"{cli}.py imports {sorted(others)}"
