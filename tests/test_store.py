"""Results store: round trip, atomic writes, damaged entries detected, eviction."""

import os

import numpy as np
import pytest

from gradviz.store import ResultStore, cache_key


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
