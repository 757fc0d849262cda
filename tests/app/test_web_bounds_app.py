"""AppTest: a torchvision name over the web app's parameter limit ends in a clear refusal with the numbers."""

from __future__ import annotations

import pytest

from gradviz.scoring import RunConfig
from image_bytes import class_folder


@pytest.mark.slow
def test_a_model_name_over_the_parameter_limit_is_refused_on_the_page(open_page, monkeypatch):
    monkeypatch.setenv("GRADVIZ_MAX_PARAMS_WEB", "1000000")
    at = open_page("pages/home.py", RunConfig(limit=30, ood=["letters"], methods=["msp"]))
    at.run()
    at.text_input(key="gv_arch").set_value("resnet152")
    at.run()
    assert not at.exception, at.exception
    text = " ".join(e.value for e in at.error)
    assert "torchvision:resnet152 has 60,192,808 parameters" in text and "at most 1,000,000" in text
    assert not at.dataframe  # nothing was scored


def test_the_page_plans_for_the_session_budget_and_says_when_one_image_does_not_fit(open_page, monkeypatch):
    monkeypatch.setenv("GRADVIZ_SESSION_MEMORY_MB", "100")  # below a gradient pass's fixed part on mnist-cnn
    monkeypatch.delenv("GRADVIZ_MEMORY_MB", raising=False)
    at = open_page("pages/home.py", RunConfig(limit=30, ood=["letters"], methods=["msp", "grad_l2"]))
    assert not at.exception, at.exception
    text = " ".join(e.value for e in at.error)
    assert "one image does not fit the memory budget for 'scoring'" in text
    assert "budget is 100 MB (this session's budget (GRADVIZ_SESSION_MEMORY_MB))" in text
    assert not at.dataframe


def _rgb_png(value: int, side: int = 64) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (value, 255 - value, 128)).save(buf, format="PNG")
    return buf.getvalue()


def test_an_own_id_set_is_bounded_by_the_session_budget(open_page, monkeypatch):
    from image_bytes import zip_bytes

    # 2 MB per session: its own ID sets may hold 1 MB, 21 RGB images of 64×64 (48 KiB each) of the 30
    monkeypatch.setenv("GRADVIZ_SESSION_MEMORY_MB", "2")
    at = open_page("pages/learn.py", RunConfig(limit=30, ood=["letters"], methods=["msp"]))
    at.run()  # (a plain rerun first: the sidebar's widgets exist in the tree from then on)
    at.toggle(key="gv_id_on").set_value(True).run()
    at.file_uploader(key="gv_id_zip").set_value(("big.zip", zip_bytes(
        {f"big/{c}/{i}.png": _rgb_png(8 * i + c) for c in range(2) for i in range(15)}), "application/zip"))
    at.run()
    at.button(key="gv_id_add_zip").click().run()
    assert not at.exception, at.exception
    held = at.session_state["gv_id_sets"]
    assert [len(d) for d in held.values()] == [21]
    note = " ".join(c.value for c in at.sidebar.caption)
    assert "only 21 of 30 image files loaded (random subset, seed 0)" in note
    assert "50% of this session's 2 MB (GRADVIZ_SESSION_MEMORY_MB) for its own ID sets" in note


def test_a_server_folder_as_the_id_set_is_bounded_and_held_like_a_zip(open_page, monkeypatch, tmp_path):
    from gradviz.data.session import folder_key

    root = tmp_path / "data"
    class_folder(root / "big", 15, lambda c, i: _rgb_png(8 * i + c))
    monkeypatch.setenv("GRADVIZ_ALLOWED_ROOTS", str(root))
    monkeypatch.setenv("GRADVIZ_SESSION_MEMORY_MB", "2")  # as above: room for 21 of the 30 images
    at = open_page("pages/learn.py", RunConfig(limit=30, ood=["letters"], methods=["msp"]))
    at.run()
    at.toggle(key="gv_id_on").set_value(True).run()
    at.radio(key="gv_id_source").set_value("a folder on the server").run()
    at.text_input(key="gv_id_folder").input("big").run()
    at.button(key="gv_id_add_folder").click().run()
    assert not at.exception, at.exception
    held = at.session_state["gv_id_sets"]
    assert list(held) == [folder_key((root / "big").resolve())] and [len(d) for d in held.values()] == [21]
    assert at.session_state["gv_config"].id == f"test:session:{next(iter(held))}"  # what the passes read
    note = " ".join(c.value for c in at.sidebar.caption)
    assert "only 21 of 30 image files loaded (random subset, seed 0)" in note
    assert "50% of this session's 2 MB (GRADVIZ_SESSION_MEMORY_MB) for its own ID sets" in note
    assert at.button(key="gv_id_forget").label == "Forget my own ID sets (1, 1 MB)"  # in the session's budget


def test_forgetting_the_own_id_sets_gives_their_memory_back(open_page):
    import numpy as np
    import torch

    from gradviz.data import ImageSet

    own = ImageSet("zip:own.zip", torch.zeros(64, 3, 64, 64), np.zeros(64, dtype=np.int64))  # 3 MiB
    at = open_page("pages/learn.py", RunConfig(limit=30, ood=["letters"], methods=["msp"]),
                   gv_id_sets={"own.zip#12345678": own}, gv_id_notes={"test:session:own.zip#12345678": "own"})
    at.run()  # (a plain rerun first: the sidebar's widgets keep their ids from then on)
    forget = at.button(key="gv_id_forget")
    assert forget.label == "Forget my own ID sets (1, 3 MB)"
    forget.click().run()
    assert not at.exception, at.exception
    assert not at.session_state["gv_id_sets"] and not at.session_state["gv_id_notes"]
    assert not [b for b in at.sidebar.button if b.key == "gv_id_forget"]


def test_a_session_is_gone_once_streamlits_runtime_no_longer_lists_it(monkeypatch):
    """How a closed tab is noticed: Streamlit takes a session whose websocket closed out of the runtime's active
    sessions at once (it may keep it a while for a reconnect); the check asks ``Runtime.is_active_session``."""
    from types import SimpleNamespace

    import streamlit.runtime as st_runtime
    import streamlit.runtime.scriptrunner as scriptrunner

    from gradviz.runtime.ledger import PassStopped, checkpoint
    from gradviz.ui.server import session_gone_check, session_work

    active = {"tab-1"}
    monkeypatch.setattr(st_runtime, "exists", lambda: True)
    monkeypatch.setattr(st_runtime, "get_instance",
                        lambda: SimpleNamespace(is_active_session=lambda session_id: session_id in active))
    monkeypatch.setattr(scriptrunner, "get_script_run_ctx",
                        lambda suppress_warning=False: SimpleNamespace(session_id="tab-1"))
    gone = session_gone_check()
    assert gone is not None and not gone()
    with session_work():
        checkpoint()  # the tab is open: the work goes on
        active.clear()  # the tab is closed
        assert gone()
        with pytest.raises(PassStopped):
            checkpoint()
    monkeypatch.setattr(st_runtime, "exists", lambda: False)
    assert session_gone_check() is None  # no server (the command line, AppTest): nothing to check
