"""AppTest: the home page renders the embedded default's metrics and a score histogram."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from gradviz.ui.pages import PAGES

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def _home(monkeypatch, tmp_path, **state) -> AppTest:
    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["gv_limit"] = 100
    at.session_state["gv_methods"] = ["msp", "energy"]
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    assert not at.error
    return at


def test_home_page_shows_metrics_and_histogram(monkeypatch, tmp_path):
    at = _home(monkeypatch, tmp_path)
    assert at.get("title")[0].value.startswith("gradviz")
    metrics = at.dataframe[0].value
    assert len(metrics) == 2 * 3  # 2 methods × the 3 default OOD sets
    assert set(metrics["method"]) == {"msp", "energy"}
    assert metrics["auroc"].between(0, 1).all()
    assert len(at.get("plotly_chart")) == 1
    assert len(at.get("page_link")) == len(PAGES) - 1  # every page but Home itself


def test_home_page_follows_sidebar_ood_choice(monkeypatch, tmp_path):
    # Sidebar choices are set before the first run: under st.navigation, AppTest reruns only the page script.
    at = _home(monkeypatch, tmp_path, gv_ood=["letters"])
    metrics = at.dataframe[0].value
    assert list(metrics["ood_dataset"].unique()) == ["letters"]
    assert "mnist (ID) vs letters" in at.subheader[0].value


def test_home_table_is_grouped_by_family_and_marks_the_best_of_each(monkeypatch, tmp_path):
    import pandas as pd

    from gradviz.ui.widgets import best_cells, by_family

    at = _home(monkeypatch, tmp_path, gv_methods=["gradnorm", "msp", "mahalanobis"], gv_ood=["letters"])
    metrics = at.dataframe[0].value
    assert list(metrics["method"]) == ["msp", "mahalanobis", "gradnorm"]  # output, feature, gradient
    assert list(metrics["family"]) == ["output", "feature", "gradient"]
    # the best of EACH family is marked (per OOD set), not only the overall best
    table = by_family(pd.DataFrame({"ood_dataset": ["a"] * 4, "method": ["energy", "msp", "knn", "gradnorm"],
                                    "auroc": [0.7, 0.9, 0.8, 0.6], "fpr95": [0.5, 0.3, 0.2, 0.9]}))
    per_family = best_cells(table, ["auroc", "fpr95"], per_family=True)
    marked = dict(zip(table["method"], zip(per_family["auroc"], per_family["fpr95"])))
    assert marked == {"msp": (True, True), "energy": (False, False), "knn": (True, True), "gradnorm": (True, True)}
    overall = best_cells(table, ["auroc", "fpr95"])
    assert list(table["method"][overall["auroc"]]) == ["msp"] and list(table["method"][overall["fpr95"]]) == ["knn"]


def test_home_links_and_navigation_come_from_the_page_registry(monkeypatch, tmp_path):
    at = _home(monkeypatch, tmp_path)
    links = [(link.proto.label, link.proto.icon, link.proto.help) for link in at.get("page_link")]
    expected = [(p.title, p.icon, p.description) for p in PAGES if not p.default]
    assert sorted(links) == sorted(expected)
    root = Path(APP).parent
    assert all((root / p.path).is_file() for p in PAGES) and sum(p.default for p in PAGES) == 1
    assert len({p.key for p in PAGES}) == len(PAGES)  # keys name pages in the browser tests
