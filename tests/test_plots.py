"""Figure builders: curves drawn with few points stay on the exact curve; legends use the run's metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradviz import plots
from gradviz.metrics import metrics_table, roc_curve_points


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
