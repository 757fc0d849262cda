"""The C compiler starts only where a program asks for it: app.py and the CLI, never on import or load_model."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each test starts a fresh interpreter that imports torch and the library

PROBE = """
import threading
import gradviz.ui, gradviz.ui.cache, gradviz.scoring
from gradviz.models import load_model
load_model("mnist-cnn")
from gradviz.engine.kernels import compiled_status
names = [t.name for t in threading.enumerate()]
print("build-thread" if "gradviz-kernel-build" in names else "no-thread", compiled_status())
"""


def _run(code: str) -> str:
    env = {**os.environ, "GRADVIZ_COMPILE": "auto"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_importing_the_library_and_loading_a_model_starts_no_build():
    assert _run(PROBE) == "no-thread not built"


def test_the_cli_starts_the_build_when_it_loads_a_model():
    code = ("from gradviz import cli\n"
            "from gradviz.engine.kernels import compiled_status\n"
            "cli._load_model('mnist-cnn', None, 'cpu')\n"
            "print(compiled_status())")
    assert _run(code) != "not built"
