"""tests/conftest.py keeps torch out of the test modules that do not use it, and torchvision safe after TensorFlow."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules_after_pytest(*args):
    """Runs pytest on `args` in a fresh interpreter (this session has other modules loaded); returns which of
    torch, torchvision and tensorflow that interpreter then holds."""
    code = ("import sys, pytest\n"
            f"code = pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'no:xdist', *{list(args)!r}])\n"
            "print('MODULES', sorted(m for m in ('torch', 'torchvision', 'tensorflow') if m in sys.modules))\n"
            "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("MODULES")]
    return line


@pytest.mark.slow
def test_a_module_without_torch_runs_without_importing_it():
    assert _modules_after_pytest("tests/losses/test_basic_losses.py") == "MODULES ['tensorflow']"


@pytest.mark.slow
def test_a_module_with_torchvision_imports_it_after_tensorflow_without_crashing():
    # The control for the test above (the check sees torch when it is there), and the triton guard at work:
    # without it this interpreter dies with SIGSEGV while collecting.
    line = _modules_after_pytest("tests/models/mask_rcnn/test_box_coder.py", "--collect-only")
    assert line == "MODULES ['tensorflow', 'torch', 'torchvision']"
