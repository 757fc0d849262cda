"""Results store: round trip, atomic writes, damaged entries detected, eviction."""

import os

import numpy as np
import pytest

from gradviz.runtime.store import ResultStore, cache_key


def test_round_trip_and_key_stability(tmp_path):
    store = ResultStore(tmp_path, max_mb=10)
    key = cache_key(model="abc", data="d1", method="msp", params={"t": 1})
    assert key == cache_key(params={"t": 1}, method="msp", data="d1", model="abc")
    assert key != cache_key(model="abc", data="d1", method="msp", params={"t": 2})
    assert store.get(key) is None
    store.put(key, {"msp": np.arange(5, dtype=np.float32)}, {"dataset": "mnist"})
    arrays, meta = store.get(key)
    np.testing.assert_array_equal(arrays["msp"], np.arange(5, dtype=np.float32))
    assert meta["dataset"] == "mnist"


def test_damaged_entry_is_detected_and_dropped(tmp_path):
    store = ResultStore(tmp_path)
    key = cache_key(x=1)
    path = store.put(key, {"a": np.random.default_rng(0).normal(size=1000)})
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip a byte inside the payload
    path.write_bytes(bytes(raw))
    assert store.get(key) is None
    assert not path.exists()


def test_truncated_entry_is_a_miss(tmp_path):
    store = ResultStore(tmp_path)
    key = cache_key(x=2)
    path = store.put(key, {"a": np.ones(100)})
    path.write_bytes(path.read_bytes()[:50])
    assert store.get(key) is None


def test_failed_write_leaves_no_partial_entry(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    key = cache_key(x=3)

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.put(key, {"a": np.ones(10)})
    assert list(tmp_path.iterdir()) == []
    assert store.get(key) is None


def test_eviction_keeps_folder_under_budget(tmp_path):
    store = ResultStore(tmp_path, max_mb=0.05)  # ~52 kB
    for i in range(10):
        store.put(cache_key(i=i), {"a": np.zeros(2000)})  # ~16 kB each
    total = sum(p.stat().st_size for p in tmp_path.glob("*.npz"))
    assert total <= 0.05 * 1024**2
    assert store.get(cache_key(i=9)) is not None  # newest kept


def test_invalid_key_rejected(tmp_path):
    with pytest.raises(ValueError):
        ResultStore(tmp_path).get("../etc/passwd")


# --------------------------------------------------------------------------- results are never stale


def test_code_version_follows_every_source_file(tmp_path, monkeypatch):
    import time

    import gradviz.runtime.store as store_mod

    monkeypatch.setattr(store_mod, "_RECHECK_S", 0.0)
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "msp.py").write_text("T = 1\n")
    (tmp_path / "gradients.py").write_text("engine\n")
    (tmp_path / "plots.py").write_text("figures\n")
    (tmp_path / "notes.txt").write_text("not a source\n")
    first = store_mod.code_version(tmp_path)
    assert first.startswith(store_mod.__version__ + "+")
    (tmp_path / "notes.txt").write_text("still not a source\n")
    assert store_mod.code_version(tmp_path) == first
    time.sleep(0.01)
    (tmp_path / "plots.py").write_text("other figures\n")  # every .py counts (no hand-written list)
    assert store_mod.code_version(tmp_path) != first
    first = store_mod.code_version(tmp_path)
    time.sleep(0.01)
    (tmp_path / "methods" / "msp.py").write_text("T = 20\n")  # a fix to a method's math
    second = store_mod.code_version(tmp_path)
    assert second != first
    (tmp_path / "engine" / "plans").mkdir(parents=True)  # the engine moving into a package is picked up by glob
    (tmp_path / "engine" / "plans" / "conv.py").write_text("plan\n")
    third = store_mod.code_version(tmp_path)
    assert third != second
    (tmp_path / "engine" / "kernels").mkdir()
    (tmp_path / "engine" / "kernels" / "fused.c").write_text("int f(void);\n")
    assert store_mod.code_version(tmp_path) != third
    assert len({store_mod.code_version(), store_mod.code_version(tmp_path)}) == 2


def test_changed_scoring_code_recomputes_instead_of_reading_stale_results(tmp_path, monkeypatch):
    import gradviz.scoring as scoring
    import gradviz.runtime.store as store_mod
    from gradviz.models.zoo import random_model
    from gradviz.scoring import RunConfig, run

    model = random_model("mnist-cnn")
    store = ResultStore(tmp_path)
    cfg = RunConfig(id="mnist", ood=["noise-uniform"], methods=["msp", "energy"], limit=12)
    calls = []
    real = scoring.score_images
    monkeypatch.setattr(scoring, "score_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    run(cfg, store=store, model=model)
    run(cfg, store=store, model=model)
    assert calls == [1, 1]  # second run: every set from the store
    monkeypatch.setattr(store_mod, "code_version", lambda root=None: "0.1.0+after-a-fix")
    run(cfg, store=store, model=model)
    assert calls == [1, 1, 1, 1]  # the same config under new code: computed again, not read stale
    entries = list(tmp_path.glob("*.npz"))
    assert len(entries) == 2 * 2 * 4  # (base + logits + 2 methods) per set, under each code version
