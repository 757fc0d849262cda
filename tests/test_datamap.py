"""The map of the data: PCA of the penultimate features, checked against scikit-learn directly; new images placed
with the same projection; the figure's hover and selection payload."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA

from gradviz.analysis.datamap import (available_projections, build_data_map, data_map_figure, penultimate_features,
                                      project)
from gradviz.errors import GradvizError
from gradviz.analysis.samples import rows_from_selection


@pytest.fixture(scope="module")
def sets():
    g = torch.Generator().manual_seed(0)
    return {"mnist": torch.rand(30, 1, 28, 28, generator=g) * 0.3,
            "noise-uniform": torch.rand(20, 1, 28, 28, generator=g)}


def _scores(sets) -> pd.DataFrame:
    rows = [dict(dataset=s, role="id" if s == "mnist" else "ood", index=i, label=i % 10, prediction=(i * 3) % 10,
                 energy=float(i) + (100 if s != "mnist" else 0)) for s, x in sets.items() for i in range(len(x))]
    return pd.DataFrame(rows)


def test_pca_projection_matches_sklearn():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))
    coords, projector, explained = project(f, "pca")
    ref = PCA(n_components=2).fit(f)
    assert coords.shape == (200, 2)
    np.testing.assert_allclose(explained, ref.explained_variance_ratio_, rtol=1e-10)
    expected = ref.transform(f)
    signs = np.sign((coords * expected).sum(0))  # an axis may be flipped
    np.testing.assert_allclose(coords, expected * signs, atol=1e-8)
    assert explained[0] >= explained[1] > 0


def test_map_of_sets_places_its_own_images_where_they_are(tiny_model, sets):
    scores = _scores(sets)
    m = build_data_map(tiny_model, scores, sets)
    assert len(m.points) == 50 and {"x", "y"} <= set(m.points.columns)
    feats = np.concatenate([penultimate_features(tiny_model, sets[s]) for s in sets])
    got, expected = m.points[["x", "y"]].to_numpy(), PCA(2).fit(feats).transform(feats)
    np.testing.assert_allclose(got, expected * np.sign((got * expected).sum(0)), atol=1e-6)
    placed = m.place(tiny_model, sets["noise-uniform"][:3])
    np.testing.assert_allclose(placed, m.points[m.points["dataset"] == "noise-uniform"][["x", "y"]].to_numpy()[:3],
                               atol=1e-6)
    assert m.axis_titles()[0].startswith("PC 1 (")


def test_map_is_capped_at_max_points(tiny_model, sets):
    m = build_data_map(tiny_model, _scores(sets), sets, max_points=12, seed=3)
    assert len(m.points) == 12


def test_figure_hover_and_selection_map_back_to_rows(tiny_model, sets):
    scores = _scores(sets)
    m = build_data_map(tiny_model, scores, sets)
    fig = data_map_figure(m, "set", current=(0.0, 1.0), current_name="<b>my</b> drawing")
    assert [t.name for t in fig.data] == ["mnist (ID)", "noise-uniform (OOD)", "&lt;b&gt;my&lt;/b&gt; drawing"]
    assert "predicted" in fig.data[0].hovertemplate
    noise = fig.data[1]
    picked = rows_from_selection(scores, [{"customdata": list(noise.customdata[k])} for k in (0, 4)])
    assert list(picked["dataset"]) == ["noise-uniform"] * 2 and list(picked["index"]) == [0, 4]
    by_score = data_map_figure(m, "energy")
    assert "energy=" in by_score.data[0].hovertemplate and by_score.layout.coloraxis.colorscale
    np.testing.assert_allclose(by_score.data[1].customdata[:, 4], np.arange(20) + 100.0)
    with pytest.raises(GradvizError, match="no score column 'nope'"):
        data_map_figure(m, "nope")


def test_unknown_or_missing_projection_is_a_clear_error():
    f = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(GradvizError, match="unknown projection 'tsne'"):
        project(f, "tsne")
    if "umap" not in available_projections():
        with pytest.raises(GradvizError, match="UMAP needs the umap-learn package"):
            project(f, "umap")
    with pytest.raises(GradvizError, match="at least 3 samples"):
        project(f[:2], "pca")
