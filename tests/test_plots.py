"""Figure builders: curves drawn with few points stay on the exact curve; legends use the run's metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradviz.plots import figures as plots
from gradviz.analysis.metrics import metrics_table, roc_curve_points


def _scores(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = [pd.DataFrame({"dataset": "mnist", "role": "id", "index": np.arange(n), "a": rng.normal(0, 1, n),
                            "b": rng.normal(0, 1, n)}),
              pd.DataFrame({"dataset": "letters", "role": "ood", "index": np.arange(n), "a": rng.normal(1, 1, n),
                            "b": rng.normal(0.2, 1, n)})]
    return pd.concat(frames, ignore_index=True)


def test_thin_curve_keeps_ends_and_points_of_the_curve():
    x = np.linspace(0, 1, 5000)
    y = np.sqrt(x)
    tx, ty = plots.thin_curve(x, y, n=200)
    assert len(tx) <= 202 and (tx[0], tx[-1]) == (0.0, 1.0)
    assert np.all(np.diff(tx) > 0) and np.allclose(ty, np.sqrt(tx))  # a subset of the original vertices
    short = np.arange(10.0)
    assert len(plots.thin_curve(short, short, n=200)[0]) == 10  # short curves are kept whole


def test_roc_figure_is_light_and_its_legend_matches_the_metrics():
    scores = _scores()
    metrics = metrics_table(scores, ["a", "b"])
    fig = plots.roc_figure(scores, ["a", "b"], "letters", metrics=metrics)
    curves = [t for t in fig.data if t.mode == "lines" and t.name and "AUROC" in t.name]
    assert len(curves) == 2 and all(len(t.x) <= plots.CURVE_POINTS + 2 for t in curves)
    assert len(roc_curve_points(scores[scores.role == "id"]["a"], scores[scores.role == "ood"]["a"])) > 1000
    want = metrics.set_index(["ood_dataset", "method"]).loc[("letters", "a"), "auroc"]
    assert f"{want:.3f}" in curves[0].name
    recomputed = plots.roc_figure(scores, ["a", "b"], "letters")  # without the table: the same legend
    assert [t.name for t in recomputed.data] == [t.name for t in fig.data]


@pytest.mark.parametrize("positive", ["id", "ood"])
def test_pr_figure_thins_curves(positive):
    scores = _scores()
    fig = plots.pr_figure(scores, ["a", "b"], "letters", positive=positive)
    assert all(len(t.x) <= plots.CURVE_POINTS + 2 for t in fig.data)


# --------------------------------------------------------------------------- palette and line selection


def test_palette_gives_every_registered_method_its_own_colour_and_dash():
    from gradviz.methods.registry import list_methods
    from gradviz.plots.palette import family_colors, method_styles

    infos = list_methods()
    styles = method_styles()
    assert set(styles) == {m.name for m in infos}
    assert len(set(styles.values())) == len(styles)  # no two methods share (colour, dash)
    for m in infos:  # the colour says the family
        assert styles[m.name][0] in family_colors(m.family)
    families = {m.family for m in infos}
    ramps = [set(family_colors(f)) for f in families]
    assert all(not (a & b) for i, a in enumerate(ramps) for b in ramps[i + 1:])  # families never share a colour
    # a method's style does not depend on which other methods a chart draws
    assert method_styles(["gradnorm", "msp"]) == {k: styles[k] for k in ("gradnorm", "msp")}


def test_default_lines_are_the_best_of_each_family_and_at_most_eight():
    from gradviz.methods.registry import list_methods
    from gradviz.plots.palette import MAX_DEFAULT_LINES, default_lines, family_of

    names = [m.name for m in list_methods()]
    ranking = {m: (i * 37 % 23) / 23 for i, m in enumerate(names)}
    picked = default_lines(names, ranking)
    assert 0 < len(picked) <= MAX_DEFAULT_LINES and len(picked) < len(names)
    for fam in {family_of(m) for m in names}:
        members = [m for m in names if family_of(m) == fam]
        best = max(members, key=ranking.get)
        assert best in picked  # the best of every family is drawn
        assert len([m for m in picked if family_of(m) == fam]) <= 2
    assert picked == [m for m in names if m in picked]  # in the given (registry) order
    nan_ranked = default_lines(names, {m: float("nan") for m in names})
    assert len(nan_ranked) <= MAX_DEFAULT_LINES
    assert default_lines(names, ranking, limit=3) and len(default_lines(names, ranking, limit=3)) == 3


def test_line_charts_keep_the_legend_right_of_the_plot_and_use_the_palette():
    from gradviz.plots.palette import method_styles

    scores = _scores()
    fig = plots.roc_figure(scores, ["a", "b"], "letters")
    assert fig.layout.legend.x >= 1.0 and fig.layout.legend.xanchor == "left"
    table = pd.DataFrame({"method": ["msp", "msp", "gradnorm", "gradnorm"], "severity": [1, 2, 1, 2],
                          "auroc": [0.5, 0.6, 0.7, 0.8]})
    curve = plots.severity_curve(table, "gaussian_noise", "auroc", ["gradnorm"])
    assert [t.name for t in curve.data] == ["gradnorm"]
    assert (curve.data[0].line.color, curve.data[0].line.dash) == method_styles(["gradnorm"])["gradnorm"]
    assert curve.layout.legend.x >= 1.0


# --------------------------------------------------------------------------- histograms


def _heavy(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Mahalanobis-like: ID around 20, letters around 60, noise around 15,000 (one linear bin would hold ID and
    letters)."""
    rng = np.random.default_rng(seed)
    parts = [("mnist", "id", 20), ("letters", "ood", 60), ("noise-uniform", "ood", 15000)]
    return pd.concat([pd.DataFrame({"dataset": d, "role": r, "index": np.arange(n), "label": 0, "prediction": 0,
                                    "mahalanobis": rng.lognormal(np.log(c), 0.2, n), "msp": -rng.uniform(0.5, 1.0, n)})
                      for d, r, c in parts], ignore_index=True)


def test_heavy_tailed_positive_scores_get_a_log_axis_and_others_stay_linear():
    scores = _heavy()
    assert plots.axis_type(scores["mahalanobis"]) == "log"
    assert plots.axis_type(np.r_[scores["mahalanobis"], -1.0]) == "linear"  # a value ≤ 0: no log axis
    assert plots.axis_type(np.random.default_rng(0).uniform(1, 2, 500)) == "linear"
    fig = plots.score_histogram(scores, "mahalanobis")
    assert fig.layout.xaxis.type == "log" and "log" in fig.layout.xaxis.title.text
    sets = [t for t in fig.data if t.name != "threshold"]
    # ID and letters fall into different bins: each set's density peaks at its own place
    peaks = {t.name.split(" ")[0]: t.x[int(np.argmax(t.y))] for t in sets}
    assert peaks["mnist"] < peaks["letters"] < peaks["noise-uniform"]
    assert plots.score_strip(scores, "mahalanobis").layout.xaxis.type == "log"


def test_every_set_of_a_histogram_stays_visible_as_an_outline():
    rng = np.random.default_rng(1)
    n = 300  # entropy-like: ID spikes at 0, noise a little wider: the noise set was hidden under the ID bars
    scores = pd.DataFrame({"dataset": ["mnist"] * n + ["noise-uniform"] * n, "role": ["id"] * n + ["ood"] * n,
                           "entropy": np.r_[np.zeros(n - 5), rng.uniform(0, 2, 5), rng.uniform(0, 0.05, n)]})
    fig = plots.score_histogram(scores, "entropy", threshold=0.5)
    sets = [t for t in fig.data if t.name != "threshold"]
    assert len(sets) == 2 and all(t.line.width >= 1.5 and t.line.shape == "hv" and max(t.y) > 0 for t in sets)
    assert all(t.fillcolor.startswith("rgba(") and float(t.fillcolor.rsplit(",", 1)[1].rstrip(")")) <= 0.2
               for t in sets)
    (line,) = [t for t in fig.data if t.name == "threshold"]
    assert tuple(line.x) == (0.5, 0.5)


def test_msp_is_shown_as_one_minus_msp_and_only_the_display_changes():
    scores = _heavy()
    fig = plots.score_histogram(scores, "msp", threshold=-0.9)
    assert fig.layout.xaxis.title.text.startswith("1 − MSP (higher = more uncertain)")
    xs = np.concatenate([np.asarray(t.x, dtype=float) for t in fig.data if t.name != "threshold"])
    assert xs.min() >= 0.0 and xs.max() <= 0.5 + 1e-9  # raw scores in [-1, -0.5] shown in [0, 0.5]
    (line,) = [t for t in fig.data if t.name == "threshold"]
    assert np.isclose(line.x[0], 0.1)
    assert scores["msp"].max() < 0  # the scores table keeps the raw, negated score


# --------------------------------------------------------------------------- threshold slider


@pytest.mark.parametrize("accept", [1.0, 37.5, 95.0, 99.5, 100.0])
def test_id_quantile_slider_maps_to_the_id_quantile_and_accepts_that_share(accept):
    from gradviz.analysis.metrics import threshold_at_tpr
    from gradviz.analysis.samples import id_quantile_threshold

    scores = _heavy()
    scores.loc[3, "mahalanobis"] = np.nan  # non-finite ID scores are left out of the quantile
    ids = scores.loc[scores.role == "id", "mahalanobis"].dropna().to_numpy()
    t = id_quantile_threshold(scores, "mahalanobis", accept)
    assert t == np.quantile(ids, accept / 100, method="inverted_cdf")
    # at least that share, and no more than needed
    assert (ids <= t).mean() >= accept / 100 > ((ids < t).mean() - 1e-12)
    if accept == 95.0:
        assert t == threshold_at_tpr(ids)  # the default is the ROC's FPR95 operating point


def test_id_quantile_threshold_refuses_a_share_out_of_range():
    from gradviz.errors import GradvizError
    from gradviz.analysis.samples import id_quantile_threshold

    for bad in (0.0, -5.0, 100.5):
        with pytest.raises(GradvizError, match="share of ID"):
            id_quantile_threshold(_heavy(), "msp", bad)


# --------------------------------------------------------------------------- values that read as missing or odd


def test_every_auroc_bar_is_labelled_with_its_value_even_at_zero():
    metrics = pd.DataFrame({"ood_dataset": ["noise-uniform"] * 3 + ["letters"] * 3, "model": "cnn",
                            "method": ["msp", "energy", "gradnorm"] * 2,
                            "auroc": [0.0, 0.0004, 0.91, 0.8, 0.75, np.nan]})
    for fig in (plots.metric_bars(metrics, "auroc"), plots.model_metric_bars(metrics, "auroc")):
        bars = [t for t in fig.data if t.type == "bar"]
        texts = [x for t in bars for x in t.text]
        assert len(texts) == len(metrics) and texts[:3] == ["0.000", "0.000", "0.910"] and "n/a" in texts
        assert all(t.textposition == "outside" and t.cliponaxis is False for t in bars)
        assert fig.layout.yaxis.range[1] > 1.0  # room above a bar at 1.0 for its label


def test_layer_profile_axis_has_a_full_title_and_one_exponent_format():
    bands = pd.DataFrame({"dataset": "mnist", "role": "id", "layer": ["conv1", "fc"], "q05": [1e-16, 1e-4],
                          "q50": [1e-12, 1e-2], "q95": [1e-8, 1.0]})
    fig = plots.layer_profile(bands, "l2", log=True)
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.exponentformat == "power"
    assert "L2 norm" in fig.layout.yaxis.title.text and fig.layout.yaxis.title.text != "l2"


@pytest.mark.parametrize("mode", ["signed", "absolute", "positive"])
def test_attribution_panels_come_with_a_colour_bar(mode):
    import torch

    from gradviz.analysis import samples as gi
    from gradviz.explain.attributions import colorbar_rgb

    att = type("A", (), {"maps": torch.rand(1, 8, 8) - 0.5, "layer": None, "note": ""})()
    (panel,) = gi.attribution_panels(torch.rand(1, 8, 8), {"saliency": att}, mode=mode, size=56)
    assert panel.scale.dtype == np.uint8 and panel.scale.shape[1] == panel.heat.shape[1] and panel.scale.shape[2] == 3
    assert ("−1" in panel.scale_caption) == (mode == "signed") and "99th percentile" in panel.scale_caption
    bar = colorbar_rgb(mode, width=50)
    assert not np.array_equal(bar[0, 0], bar[0, -1])  # low and high ends differ
    if mode == "signed":  # zero in the middle of a diverging map: near white
        assert bar[0, 25].min() > 200
