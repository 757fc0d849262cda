"""The library is usable without Streamlit: no module of gradviz outside gradviz/ui/ imports it, directly
(checked in the source, lazy imports inside functions included) or through anything it imports (checked by
importing every such module in a fresh interpreter)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gradviz"


def _library_modules() -> dict[str, Path]:
    """Every module of gradviz outside gradviz/ui/ (``__main__`` too: it is read, never imported)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if rel.parts[:2] == ("gradviz", "ui"):
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def test_no_library_source_mentions_a_streamlit_import():
    modules = _library_modules()
    assert len(modules) > 20 and "gradviz.scoring" in modules and "gradviz.ui.cache" not in modules
    offenders = {name: sorted(n for n in _imported_names(ast.parse(path.read_text())) if n.split(".")[0] == "streamlit")
                 for name, path in modules.items()}
    assert not {k: v for k, v in offenders.items() if v}, offenders


@pytest.mark.slow
def test_importing_every_library_module_loads_no_streamlit():
    names = [n for n in _library_modules() if n != "gradviz.__main__"]  # __main__ runs the CLI when imported
    code = ("import importlib, json, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "    if 'streamlit' in sys.modules:\n"
            "        print(json.dumps(name)); break\n"
            "else:\n"
            "    print(json.dumps(None))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first is None, f"importing {first} loaded streamlit"
