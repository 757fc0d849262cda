"""Downloads survive other sessions (the load test's open note: "the metrics CSV download read back empty under
concurrent sessions").

Why it happened: a download built on click (a callable ``data``) is stored by Streamlit referenced by no session,
and every script run that finishes, in any session, sweeps unreferenced files (marked first, deleted on the next
sweep). Two other sessions' runs between the click and the browser's request were enough to delete the file: the
browser's download was cancelled. A file handed over with the page stays referenced by its session, and other
sessions' sweeps leave it alone. The first test shows both with Streamlit's own media file manager (if a Streamlit
release stops deleting the on-click file, its second half fails: the pages could go back to building on click);
the second that every data download on the pages is the kind that survives. benchmarks/load_test.py
--download-race measures it in Chromium (before: 24 of 30 downloads cancelled under 4 busy sessions; after: 0).
"""

from __future__ import annotations

import pytest
from streamlit.runtime import media_file_manager as mfm
from streamlit.runtime.media_file_storage import MediaFileStorageError
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from gradviz.scoring import RunConfig

CSV = "ood_dataset,method,auroc\nletters,msp,0.9\n"


def test_a_file_handed_over_with_the_page_survives_other_sessions_but_one_built_on_click_does_not(monkeypatch):
    storage = MemoryMediaFileStorage("/media")
    manager = mfm.MediaFileManager(storage)
    session = {"id": "A"}
    monkeypatch.setattr(mfm, "_get_session_id", lambda: session["id"])

    eager = manager.add(CSV.encode(), "text/csv", "1.2.0", file_name="metrics.csv", is_for_static_download=True)
    placeholder = manager.add_deferred(lambda: CSV, "text/csv", "1.2.1", file_name="metrics_on_click.csv")
    on_click = manager.execute_deferred(placeholder)  # the click: the file exists, its URL goes to the browser

    def other_session_finishes_a_run():
        session["id"] = "B"
        manager.clear_session_refs("B")
        manager.add(b"x", "text/plain", "1.0.0")
        manager.remove_orphaned_files()
        session["id"] = "A"

    other_session_finishes_a_run()
    other_session_finishes_a_run()  # ... before the browser fetched the URL
    file_id = lambda url: url.rsplit("/", 1)[1].split(".")[0]  # noqa: E731
    assert storage.get_file(file_id(eager)).content == CSV.encode()
    with pytest.raises(MediaFileStorageError):
        storage.get_file(file_id(on_click))


def _data_buttons(at) -> dict[str, object]:
    return {b.proto.label: b.proto for b in at.get("download_button")
            if b.proto.label.endswith((".csv", ".json"))}


@pytest.mark.slow
@pytest.mark.parametrize("page, state, labels", [
    ("pages/compare.py", {"cmp_tab": "Detection metrics & exports"},
     {"⬇ scores.csv", "⬇ metrics.csv", "⬇ metrics.json", "⬇ config.json"}),
    ("pages/layers.py", {}, {"⬇ layers.csv"}),
    ("pages/corruptions.py", {}, {"⬇ severity_metrics.csv", "⬇ severity_scores.csv",
                                     "⬇ severity_calibration.csv"}),
    ("pages/meta.py", {}, {"⬇ meta_results.csv", "⬇ importances.csv"}),
    ("pages/trust.py", {}, {"⬇ risk_coverage.csv", "⬇ misclassification.csv", "⬇ calibration.csv", "⬇ config.json"}),
])
def test_every_data_download_is_handed_over_with_the_page(open_page, page, state, labels):
    id_spec = "corrupt:rotate:5" if page == "pages/meta.py" else "mnist"  # rotated digits: errors to learn from
    at = open_page(page, RunConfig(limit=100, id=id_spec, ood=["letters", "noise-uniform"], methods=["msp", "energy"]),
                   **state)
    buttons = _data_buttons(at)
    assert set(buttons) == labels
    for label, proto in buttons.items():
        assert proto.url.endswith((".csv", ".json")) and not proto.deferred_file_id, label
    figures = [b.proto for b in at.get("download_button") if b.proto.label.endswith(".html")]
    assert all(p.deferred_file_id and not p.url for p in figures)  # ~4 MB each: still built on click


def test_a_very_large_table_is_built_on_click(monkeypatch, open_page):
    from gradviz.ui import widgets

    monkeypatch.setattr(widgets, "EAGER_MAX_CELLS", 10)
    at = open_page("pages/compare.py", RunConfig(limit=100, ood=["letters"], methods=["msp"]),
                   cmp_tab="Detection metrics & exports")
    buttons = _data_buttons(at)
    assert buttons["⬇ scores.csv"].deferred_file_id and not buttons["⬇ scores.csv"].url
    assert buttons["⬇ config.json"].url  # always small: handed over with the page
