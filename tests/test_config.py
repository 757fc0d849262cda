from pathlib import Path

from gradviz.config import settings


def test_settings_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADVIZ_CHUNK_MIB", "3")
    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    first = settings()
    assert first.chunk_mib == 3 and first.cache_dir == Path(tmp_path)
    assert settings() is first  # resolved once for an unchanged environment
    monkeypatch.setenv("GRADVIZ_CHUNK_MIB", "5")
    assert settings().chunk_mib == 5
    monkeypatch.setenv("GRADVIZ_CHUNK_MIB", "-1")  # not a positive number: the default
    assert settings().chunk_mib == 16
    monkeypatch.delenv("GRADVIZ_CACHE_DIR")
    assert settings().cache_dir != Path(tmp_path)
