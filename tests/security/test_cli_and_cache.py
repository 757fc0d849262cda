"""Issue 23 (bad input, round 3): the CLI's bad input, and never a stale or silently wrong number.

Each test reproduces one case of the probe: a config ``limit`` of 1e18, ``--out`` naming a file,
NaN logits, a fitted method's on-disk key without the seed, a code-version hash that missed
most of the package. See tests/security/README.md for the whole catalogue.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

import gradviz.store as store_mod

# --------------------------------------------------------------------------- the code version covers every source


def _copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "gradviz"
    shutil.copytree(store_mod.PACKAGE_DIR, root, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    return root


def test_code_version_lists_every_source_file_of_the_package_and_no_missing_one():
    files = store_mod.source_files()
    assert files and all(p.is_file() for p in files)  # derived from the tree: never a file that no longer exists
    want = {p for p in store_mod.PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    want |= set(store_mod.PACKAGE_DIR.rglob("*.c"))
    assert set(files) == want
    names = {p.relative_to(store_mod.PACKAGE_DIR).as_posix() for p in files}
    assert {"scoring.py", "models/__init__.py", "data/__init__.py", "data/letters.py", "runconfig.py",
            "engine/kernels/fused_stats.c"} <= names


@pytest.mark.parametrize("edit", ["models/zoo.py", "data/letters.py", "scoring.py", "models/new_model.py",
                                  "data/new_set.py", "engine/kernels/fused_stats.c"])
def test_code_version_changes_when_any_source_file_changes(tmp_path, monkeypatch, edit):
    monkeypatch.setattr(store_mod, "_RECHECK_S", 0.0)
    root = _copy_package(tmp_path)
    before = store_mod.code_version(root)
    assert before == store_mod.code_version()  # the same sources hash the same wherever they lie
    time.sleep(0.01)
    path = root / edit
    path.write_text((path.read_text() if path.exists() else "") + "\n# changed\n")
    assert store_mod.code_version(root) != before
