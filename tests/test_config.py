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


def test_streamlit_config_polls_the_sources_and_skips_environments():
    """.streamlit/config.toml: every option is one this Streamlit knows; the watcher polls files (watchdog's recursive
    inotify watch of the project folder covered .venv and overflowed its queue); environments and caches are skipped."""
    import tomllib

    import streamlit.config as streamlit_config

    path = Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml"
    cfg = tomllib.loads(path.read_text())
    known = streamlit_config._config_options_template
    assert [f"{s}.{k}" for s, opts in cfg.items() for k in opts if f"{s}.{k}" not in known] == []
    assert cfg["server"]["fileWatcherType"] == "poll"
    assert {"**/.venv*", "**/.gradviz-cache"} <= set(cfg["server"]["folderWatchBlacklist"])


def test_server_uses_one_torch_thread_unless_the_user_chose(monkeypatch):
    import torch

    from gradviz.config import server_torch_threads
    from gradviz.ui.server import apply_torch_threads

    monkeypatch.delenv("GRADVIZ_TORCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert server_torch_threads() == 1  # the quick start: no variable set
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert server_torch_threads() is None  # torch follows the user's OMP_NUM_THREADS
    monkeypatch.setenv("GRADVIZ_TORCH_THREADS", "2")
    assert server_torch_threads() == 2  # gradviz's own setting wins
    monkeypatch.setenv("GRADVIZ_TORCH_THREADS", "zero")  # not a positive number: as if unset
    assert server_torch_threads() is None
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("GRADVIZ_TORCH_THREADS", "2")
        assert apply_torch_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.delenv("GRADVIZ_TORCH_THREADS")
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert apply_torch_threads() == 1
    finally:
        torch.set_num_threads(before)
