"""The layout rule (ARCHITECTURE.md): the CLIs import the packages, never the other way, and no CLI imports another.
Also: importing a CLI sets TensorFlow's environment before TensorFlow is imported."""
import ast
import os
import subprocess
import sys

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


def _onednn_after_importing(module):
    """(TensorFlow's oneDNN on?, CPU has AVX-512?) in a fresh process that imports `module`, then TensorFlow,
    as a user starts a CLI (TF_ENABLE_ONEDNN_OPTS unset). `module` must not import TensorFlow itself."""
    probe = (f"import sys, {module}\n"
             "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported before its environment was set'\n"
             "from data.cli import cpu_feature_flags\n"
             "from tensorflow.python.util import _pywrap_util_port\n"
             "print(_pywrap_util_port.IsMklEnabled(), 'avx512f' in cpu_feature_flags())\n")
    environ = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    onednn, avx512 = done.stdout.split()[-2:]
    return onednn == "True", avx512 == "True"


@pytest.fixture(scope="module")
def tensorflow_default_onednn():
    """Whether TensorFlow turns oneDNN on by itself on this CPU (a process importing no CLI)."""
    return _onednn_after_importing("os")[0]


@pytest.mark.parametrize("module", CLIS + ("benchmarks.__main__",))
def test_a_cli_chooses_onednn_by_the_cpu_before_tensorflow_loads(module, tensorflow_default_onednn):
    # oneDNN on where the CPU has AVX-512; elsewhere TensorFlow's own default (off on AVX2-only CPUs, where it
    # measured slower and larger: BENCHMARKS.md section 3).
    onednn, avx512 = _onednn_after_importing(module)
    assert onednn == (avx512 or tensorflow_default_onednn)
