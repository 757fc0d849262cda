"""AppTest: hostile or odd input on the pages ends in one clear message, never a traceback.

Folder specs outside GRADVIZ_ALLOWED_ROOTS are refused with the same answer as missing folders;
parameters out of range, non-finite scores and too-small sets are explained; uploads show what the
decoder did and which budget refused a file; the exported config says uploads are not replayed.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from gradviz.data import short_spec
from gradviz.methods import registry
from gradviz.scoring import RunConfig


def _png(path=None, size=(28, 28), value=128, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _errors(at) -> list[str]:
    assert not at.exception, at.exception
    return [e.value for e in at.error]


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """An allowed root with one image folder (and a broken file); a secret folder beside it."""
    allowed = tmp_path / "allowed"
    _png(allowed / "cats" / "a.png", value=30)
    _png(allowed / "cats" / "b.png", value=60)
    (allowed / "cats" / "broken.png").write_bytes(b"not a png")
    _png(tmp_path / "secret" / "s.png", value=99)
    monkeypatch.setenv("GRADVIZ_ALLOWED_ROOTS", str(allowed))
    return tmp_path


@pytest.mark.slow
def test_folder_specs_outside_the_roots_get_one_answer_on_every_page(open_page, roots):
    secret = roots / "secret"
    answers = set()
    for spec in ["../secret", str(secret), "../../", "/etc", "/no/such/folder", "cats/../../secret"]:
        at = open_page("pages/home.py", RunConfig(limit=100, ood=[f"folder:{spec}"], methods=["msp"]))
        (message,) = _errors(at)
        assert "is not available" in message and "allowed data roots" in message
        answers.add(message.replace(repr(short_spec(spec)), "<spec>"))
        assert not at.dataframe  # nothing was scored or shown
    assert len(answers) == 1, answers  # "outside", "missing" and "exists elsewhere" read alike: no oracle
    # The Inspect page's "A dataset sample" goes through the same check.
    at = open_page("pages/inspect.py", RunConfig(limit=100, ood=[f"folder:{secret}"], methods=["msp"]),
                   ins_source="A dataset sample", ins_spec=f"folder:{secret}", ins_layers=False)
    (message,) = _errors(at)
    assert "is not available" in message
    assert not at.get("image")  # the secret image is never shown


def test_zip_and_split_specs_outside_the_roots_are_refused_on_the_page(open_page, roots, tmp_path):
    """The specs that read server paths beside folder: (zip:, and fit:/test: around any of them) meet the roots too."""
    import zipfile

    archive = tmp_path / "secret.zip"  # outside the allowed root
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tmp_path / "secret" / "s.png", "a/s.png")
    for spec in [f"zip:{archive}", "zip:/etc/passwd", f"test:zip:{archive}", f"fit:folder:{tmp_path / 'secret'}"]:
        at = open_page("pages/home.py", RunConfig(limit=100, ood=[spec], methods=["msp"]))
        (message,) = _errors(at)
        assert "is not available" in message and "allowed data roots" in message, (spec, message)
        assert not at.dataframe


def test_folder_inside_the_roots_loads_and_lists_its_skipped_file(open_page, roots):
    at = open_page("pages/compare.py", RunConfig(limit=100, ood=["folder:cats"], methods=["msp"]))
    assert not _errors(at)
    report = [e for e in at.expander if e.label.startswith("Loading report")]
    assert report and "1 file(s) skipped" in report[0].label
    table = report[0].dataframe[0].value
    assert table["file"].tolist() == ["broken.png"] and "not a supported image" in table["what happened"][0]


def test_a_5000_character_spec_is_one_short_message(open_page, roots):
    """(The sidebar's box stops at 4,096 characters; the library refuses folder paths over 1,024.)"""
    at = open_page("pages/home.py", RunConfig(limit=100, ood=["folder:" + "a/" * 2500], methods=["msp"]))
    (message,) = _errors(at)
    assert "is not a usable path" in message and "at most 1,024" in message and len(message) < 400
    assert str(roots) not in message


def test_parameters_out_of_range_are_refused_with_the_range(open_page):
    for method, params in (("msp", {"temperature": 0.0}), ("energy", {"temperature": 1e-300})):
        at = open_page("pages/compare.py", RunConfig(limit=100, ood=["letters"], methods=[method],
                                                     params={method: params}))
        (message,) = _errors(at)
        assert f"params.{method}" in message and "must be from 0.001 to 100000" in message


@pytest.fixture
def nan_method(monkeypatch):
    """A registered method whose every score is NaN (what broken weights or a bad formula give)."""
    def all_nan(batch):
        return torch.full((batch.x.shape[0],), float("nan"))

    monkeypatch.setitem(registry.REGISTRY, "all_nan", registry.MethodInfo("all_nan", all_nan, "All NaN", "test", 2000,
                                                                          "u = NaN", "output"))


def test_non_finite_scores_are_said_on_home_and_compare(open_page, nan_method):
    cfg = RunConfig(limit=100, ood=["noise-uniform"], methods=["all_nan", "msp"])
    at = open_page("pages/compare.py", cfg)
    assert not _errors(at)
    warnings = " ".join(w.value for w in at.warning)
    assert "all_nan: 200 sample(s) gave NaN/inf" in warnings
    assert "no finite score on the ID set" in warnings  # the method picker starts on all_nan: said, not raised
    at = open_page("pages/home.py", cfg)
    assert not _errors(at)
    assert any("NaN/inf" in w.value for w in at.warning)


def test_one_image_ood_folder_explains_blank_metrics(open_page, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADVIZ_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    _png(tmp_path / "allowed" / "one" / "x.png")
    cfg = RunConfig(limit=100, ood=["folder:one"], methods=["msp"])
    at = open_page("pages/layers.py", cfg)
    assert not _errors(at)
    assert any("too few samples" in w.value and "folder:one has 1" in w.value for w in at.warning)
    at = open_page("pages/compare.py", cfg)
    assert not _errors(at)
    assert any("too few samples for AUROC" in w.value for w in at.warning)


def _sixteen_bit_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_notes_are_shown_and_the_config_export_says_uploads_are_not_replayed(open_page):
    at = open_page("pages/compare.py", RunConfig(limit=100, ood=["letters"], methods=["msp"]))
    at.file_uploader(key="cmp_upload").set_value([("deep.png", _sixteen_bit_png(), "image/png"),
                                                  ("tiny.png", _png(size=(1, 1)), "image/png")]).run()
    assert not _errors(at)
    (report,) = [e for e in at.expander if e.label.startswith("Loading report")]
    assert "2 file(s) altered while decoding" in report.label
    notes = report.dataframe[0].value
    assert set(notes["file"]) == {"deep.png", "tiny.png"}
    assert any("16-bit image scaled" in t for t in notes["what happened"])
    assert any("tiny image (1×1)" in t for t in notes["what happened"])
    at.session_state["cmp_tab"] = "Detection metrics & exports"
    at.run()
    assert not _errors(at)
    (button,) = [b for b in at.get("download_button") if "config.json" in b.proto.label]
    assert "without uploads" in button.proto.label and "NOT part of the replay" in button.proto.help
    assert "upload:2 files" in button.proto.help


def test_session_pixel_budget_refuses_further_uploads_with_the_setting(open_page, monkeypatch):
    monkeypatch.setenv("GRADVIZ_MAX_SESSION_PIXELS", str(60 * 60 + 10))
    at = open_page("pages/inspect.py", RunConfig(limit=100, ood=["noise-uniform"], methods=["msp"]), ins_layers=False)
    at.file_uploader(key="ins_upload").set_value([("a.png", _png(size=(60, 60)), "image/png")]).run()
    assert not _errors(at) and len(at.dataframe[0].value) == 1  # decoded and scored
    at.file_uploader(key="ins_upload").set_value([("b.png", _png(size=(60, 60), value=7), "image/png")]).run()
    assert not _errors(at)
    assert any("b.png: not loaded" in w.value and "GRADVIZ_MAX_SESSION_PIXELS" in w.value for w in at.warning)


def test_a_bad_setting_is_shown_as_the_servers_configuration_error(monkeypatch, tmp_path):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GRADVIZ_MAX_SAMPLES_WEB", "lots")
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Server configuration: invalid setting: GRADVIZ_MAX_SAMPLES_WEB='lots': "
                                           "input should be a valid integer, unable to parse string as an integer"]
    assert not at.sidebar.selectbox  # nothing else ran
