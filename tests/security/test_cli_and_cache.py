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


# --------------------------------------------------------------------------- fitted methods are keyed by their seed


def test_runs_differing_only_in_seed_with_a_fit_split_are_not_served_each_others_fitted_scores(tmp_path):
    import numpy as np

    from gradviz.models.zoo import random_model
    from gradviz.scoring import RunConfig, run
    from gradviz.store import ResultStore

    model = random_model("mnist-cnn")
    store = ResultStore(tmp_path)

    def scores(seed: int, store) -> np.ndarray:
        # The ID set (the first 24 held-out digits) is the same for every seed; only the fit split is drawn from it.
        cfg = RunConfig(id="mnist", ood=[], methods=["mahalanobis", "msp"], limit=24, seed=seed,
                        fit_set="fit:0.1:mnist:train")
        return run(cfg, store=store, model=model).scores

    first = scores(0, store)
    second = scores(1, store)  # old key: (model, images, method, params, fit spec) — the seed-0 column came back
    fresh = scores(1, None)
    assert np.array_equal(second["mahalanobis"], fresh["mahalanobis"])
    assert not np.array_equal(first["mahalanobis"], second["mahalanobis"])  # the fit split did change
    assert np.array_equal(first["msp"], second["msp"])  # unfitted scores are shared across seeds: a hit
    assert len(list(tmp_path.glob("*.npz"))) == 4  # base + msp once, mahalanobis once per seed


def test_fitted_key_holds_every_input_of_the_fitted_state():
    from gradviz.scoring import fit_inputs

    assert fit_inputs("fit:mnist:train", 0) != fit_inputs("fit:mnist:train", 1)
    assert fit_inputs("fit:0.3:mnist:train", 0) != fit_inputs("fit:mnist:train", 0)
    assert set(fit_inputs("mnist:train", 0)) == {"spec", "seed", "limit"}
