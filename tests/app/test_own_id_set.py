"""AppTest: an own ID set (a zip) on the pages that fit methods on it outside the scoring run — the Playground and
the Corruption lab. A method that cannot be fitted there is left blank with its reason, as on Home and Compare."""

from __future__ import annotations

import pytest

from gradviz.scoring import RunConfig
from gradviz.testing.apptest import add_zip, chart_spec, gauges, texts
from gradviz.ui.canvas import canvas_state

from image_bytes import canvas_png, png_bytes, zip_bytes

METHODS = ["msp", "energy", "grood", "gradnorm"]


def grey_zip() -> bytes:
    """24 flat grey images in 3 classes: the bundled model classifies none of them correctly, so GROOD (which
    needs correctly classified images of each class) cannot be fitted on them."""
    return zip_bytes({f"digits/{c}/{i}.png": png_bytes(20 * c + i) for c in range(3) for i in range(8)})


@pytest.mark.slow
def test_playground_with_an_own_id_set_leaves_an_unfittable_method_blank(open_page):
    at = open_page("pages/playground.py", RunConfig(limit=100, ood=["noise-uniform"], methods=METHODS),
                   pg_canvas=canvas_state(canvas_png("three")), pg_path_live=True)
    add_zip(at, grey_zip(), "digits.zip")  # (AppTest cannot rerun after it: the ID picker's labels are formatted)
    assert at.session_state["gv_config"].id.startswith("test:session:digits.zip#")
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)
    warned = texts(at.warning)
    assert "grood is left blank: it could not be fitted on fit:session:digits.zip" in warned, warned
    assert set(gauges(at)) == set(METHODS) - {"grood"}
    assert {t.get("name") for t in chart_spec(at, "pg_path_chart")["data"]} == set(METHODS) - {"grood"} | {None}
    assert not at.get("progress")  # every progress bar finished and was removed


@pytest.mark.slow
def test_corruption_lab_with_an_own_id_set_leaves_an_unfittable_method_blank(open_page):
    at = open_page("pages/corruptions.py", RunConfig(limit=100, ood=["noise-uniform"], methods=METHODS))
    add_zip(at, grey_zip(), "digits.zip")
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)
    assert "grood is left blank: it could not be fitted on fit:session:digits.zip" in texts(at.warning)
    table = at.dataframe[0].value
    assert set(table["method"]) == set(METHODS)
    assert table.loc[table["method"] == "grood", "auroc"].isna().all()
    assert table.loc[table["method"] == "msp", "auroc"].notna().all()
    assert not at.get("progress")


@pytest.mark.slow
def test_inspect_with_an_own_id_set_leaves_an_unfittable_method_blank(open_page):
    at = open_page("pages/inspect.py", RunConfig(limit=100, ood=["noise-uniform"], methods=METHODS),
                   ins_source="A dataset sample", ins_layers=False)
    add_zip(at, grey_zip(), "digits.zip")
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)
    table = at.dataframe[0].value.set_index("method")
    assert set(table.index) == set(METHODS)
    assert table.loc["grood", ["score", "percentile"]].isna().all() and table.loc["grood", "verdict"] == "n/a"
    assert table.drop(index="grood")["score"].notna().all()
