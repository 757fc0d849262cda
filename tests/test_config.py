import re
from pathlib import Path

import pytest

from gradviz.config import Settings, SettingsError, settings
from gradviz.errors import GradvizError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_settings_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADVIZ_CHUNK_MIB", "3")
    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    first = settings()
    assert first.chunk_mib == 3 and first.cache_dir == Path(tmp_path)
    assert settings() is first  # resolved once for an unchanged environment
    monkeypatch.setenv("GRADVIZ_CHUNK_MIB", "5")
    assert settings().chunk_mib == 5
    monkeypatch.setenv("GRADVIZ_CHUNK_MIB", "")  # empty: as if unset
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
    monkeypatch.setenv("GRADVIZ_TORCH_THREADS", "zero")  # not a number: an error naming the variable
    with pytest.raises(GradvizError, match="GRADVIZ_TORCH_THREADS='zero'"):
        server_torch_threads()
    monkeypatch.delenv("GRADVIZ_TORCH_THREADS")
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


def _clean_environment(monkeypatch):
    import os

    for name in [k for k in os.environ if k.upper().startswith("GRADVIZ_")]:
        monkeypatch.delenv(name)


def test_defaults_without_any_variable(monkeypatch, tmp_path):
    _clean_environment(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    s = settings()
    assert s.cache_dir == tmp_path / ".cache" / "gradviz" and s.data_root == s.cache_dir / "data"
    assert s.allowed_roots == (s.data_root,)
    assert (s.max_upload_mb, s.max_upload_files, s.max_weights_mb, s.max_zip_mb) == (20, 64, 200, 100)
    assert (s.max_pixels, s.max_upload_pixels, s.max_session_pixels) == (16_000_000, 256_000_000, 1_024_000_000)
    assert (s.max_samples_web, s.chunk_mib, s.cache_max_mb, s.session_memory_mb) == (5000, 16, 512, 2048)
    assert (s.max_params_web, s.max_side_web, s.torch_threads, s.memory_mb) == (100_000_000, 384, 0, None)
    assert s.server_memory_mb is None
    assert (s.compile, s.fold_bn) == ("auto", True)


def test_locations_and_switches_are_parsed(monkeypatch, tmp_path):
    import os

    _clean_environment(monkeypatch)
    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("GRADVIZ_ALLOWED_ROOTS", f"{tmp_path / 'a'}{os.pathsep} {os.pathsep}~/b")
    monkeypatch.setenv("GRADVIZ_FOLD_BN", "off")
    monkeypatch.setenv("GRADVIZ_COMPILE", " OFF ")
    s = settings()
    assert s.data_root == tmp_path / "c" / "data"
    assert s.allowed_roots == (tmp_path / "a", Path("~/b").expanduser())
    assert s.fold_bn is False and s.compile == "off"
    monkeypatch.setenv("GRADVIZ_COMPILE", "1")  # the spellings the engine's c_kernel= takes
    assert settings().compile == "on"


@pytest.mark.parametrize("variable, value, message", [
    ("GRADVIZ_CHUNK_MIB", "abc", "valid integer"),
    ("GRADVIZ_MAX_ZIP_MB", "-1", "greater than 0"),
    ("GRADVIZ_MEMORY_MB", "0", "greater than 0"),
    ("GRADVIZ_FOLD_BN", "maybe", "valid boolean"),
    ("GRADVIZ_COMPILE", "fast", "'auto', 'on' or 'off'"),
    ("GRADVIZ_MAX_SIDE_WEB", "3.5", "valid integer"),
])
def test_a_bad_value_is_an_error_naming_the_variable(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"{variable}='{re.escape(value)}': .*{re.escape(message)}"):
        settings()


def test_a_bad_value_is_one_error_line_on_the_command_line(monkeypatch, capsys):
    from gradviz.cli import main

    monkeypatch.setenv("GRADVIZ_CHUNK_MIB", "abc")
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid setting: GRADVIZ_CHUNK_MIB='abc'") and len(err.strip().splitlines()) == 1


def _readme_settings() -> dict[str, str]:
    """The README's table of settings: variable -> default cell."""
    text = README.read_text()
    table = text[text.index("## Limits and settings"):]
    return dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", table, flags=re.M))


# Defaults the table describes in words (computed from other settings or at run time), not as a value.
DESCRIBED = {"cache_dir", "data_root", "allowed_roots", "memory_mb", "server_memory_mb", "torch_threads", "warm_models"}
NOT_SETTINGS = {"GRADVIZ_MODELS"}  # server configuration read by gradviz.models.plugins.server_model_specs


def test_every_setting_is_in_the_readme_with_its_default():
    rows = _readme_settings()
    for name, info in Settings.model_fields.items():
        variable = Settings.env_var(name)
        assert variable in rows, f"{variable} is not documented in the README's table of settings"
        if name in DESCRIBED:
            continue
        cell, default = rows[variable].strip(), info.default
        shown = {True: "on", False: "off"}.get(default, default) if isinstance(default, bool) else default
        assert cell.replace(",", "") == str(shown), f"{variable}: README says {cell}, the default is {default}"
    documented = {v for v in rows if v.startswith("GRADVIZ_")}
    assert documented - {Settings.env_var(n) for n in Settings.model_fields} == NOT_SETTINGS
