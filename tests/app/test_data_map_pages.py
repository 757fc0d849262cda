"""AppTest: the map of the data as a Compare tab (coloured by set or a score) and in Inspect (this image's star)."""

from __future__ import annotations

from gradviz.scoring import RunConfig
from gradviz.testing.apptest import chart_spec

from image_bytes import canvas_png


def test_compare_map_tab_renders_and_recolours(open_page):
    app = open_page("pages/compare.py", RunConfig(limit=60, ood=["letters", "noise-uniform"], methods=["msp", "energy"]))
    app.session_state["cmp_tab"] = "Map of the data"
    app.run()
    assert not app.exception, app.exception
    assert app.radio(key="map_proj").value == "pca"
    spec = chart_spec(app, "map_chart")
    assert [t["name"] for t in spec["data"]] == ["mnist (ID)", "letters (OOD)", "noise-uniform (OOD)"]
    assert spec["layout"]["xaxis"]["title"]["text"].startswith("PC 1 (")
    assert spec["layout"]["dragmode"] == "lasso"
    assert any("Lasso" in c.value for c in app.caption)
    app.selectbox(key="map_colour").set_value("energy").run()
    assert not app.exception, app.exception
    spec = chart_spec(app, "map_chart")
    assert "energy=" in spec["data"][0]["hovertemplate"] and "coloraxis" in spec["layout"]
    assert not app.error


def test_inspect_places_the_sample_on_the_map(open_page):
    app = open_page("pages/inspect.py", RunConfig(limit=60, ood=["noise-uniform"], methods=["msp"]),
                    ins_layers=False, ins_source="A dataset sample")
    spec = chart_spec(app, "ins_map_chart")
    star = spec["data"][-1]
    assert star["marker"]["symbol"] == "star" and star["name"].startswith("mnist #0")
    assert len(star["x"]) == 1
    app.toggle(key="ins_map").set_value(False).run()
    assert not app.exception, app.exception
    assert not any("ins_map_chart" in c.proto.id for c in app.get("plotly_chart"))


def test_playground_places_the_drawing_on_the_map(open_page):
    from gradviz.ui.canvas import canvas_state

    app = open_page("pages/playground.py", RunConfig(limit=60, ood=["noise-uniform"], methods=["energy"]))
    app.session_state["pg_canvas"] = canvas_state(canvas_png("three"))
    app.run()
    assert not app.exception, app.exception
    # off at first: a stroke would redraw every scored sample of the map
    assert not any("pg_map_chart" in c.proto.id for c in app.get("plotly_chart"))
    app.toggle(key="pg_map").set_value(True).run()
    assert not app.exception, app.exception
    first = chart_spec(app, "pg_map_chart")["data"][-1]
    assert first["marker"]["symbol"] == "star" and first["name"] == "this image"
    app.session_state["pg_canvas"] = canvas_state(canvas_png("scribble"))
    app.run()
    second = chart_spec(app, "pg_map_chart")["data"][-1]
    assert (second["x"], second["y"]) != (first["x"], first["y"])  # the new drawing lands elsewhere
