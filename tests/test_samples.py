"""gradviz.analysis.samples: percentiles, thresholds, galleries, selections, uploads and per-sample reports."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gradviz.analysis import samples as gi
from gradviz.errors import GradvizError
from gradviz.data.images import uploads_to_imageset
from gradviz.methods.registry import ModelOutputs, get_method
from gradviz.analysis.metrics import fpr_at_tpr, threshold_at_tpr
from gradviz.scoring import make_runner


def _scores() -> pd.DataFrame:
    """ID scores 1..20, OOD 'a' scores 15..24 plus one NaN."""
    id_part = pd.DataFrame({"dataset": "mnist", "role": "id", "index": range(20), "u": np.arange(1.0, 21.0)})
    ood = pd.DataFrame({"dataset": "a", "role": "ood", "index": range(11), "u": [*np.arange(15.0, 25.0), np.nan]})
    return pd.concat([id_part, ood], ignore_index=True)


def _png(value: int = 128, size: tuple[int, int] = (20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format="PNG")
    return buf.getvalue()


def test_percentile_within_known_values():
    ref = [1.0, 2.0, 3.0, 4.0, np.nan]
    out = gi.percentile_within(ref, [0.0, 2.5, 3.0, 9.0, np.nan])
    np.testing.assert_allclose(out[:4], [0.0, 50.0, 50.0, 100.0])  # strictly below: 3.0 beats 1 and 2
    assert np.isnan(out[4])
    assert np.isnan(gi.percentile_within([], [1.0])).all()


def test_threshold_at_tpr_accepts_95_percent_of_id():
    assert threshold_at_tpr(np.arange(1.0, 21.0)) == 19.0  # 19/20 = 95 % accepted at score ≤ 19
    assert threshold_at_tpr(np.arange(1.0, 101.0), 0.5) == 50.0
    assert threshold_at_tpr([3.0, np.nan, 1.0, 2.0], 1.0) == 3.0
    with pytest.raises(GradvizError):
        threshold_at_tpr([np.nan])


def test_threshold_matches_fpr95_operating_point():
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.normal(0, 1, 500), rng.normal(1.5, 1, 300)
    t = threshold_at_tpr(id_s)
    assert np.mean(ood_s <= t) == pytest.approx(fpr_at_tpr(id_s, ood_s))


def test_threshold_summary_counts_and_flips():
    s = gi.threshold_summary(_scores(), "u", threshold=16.0)
    assert s.default == 19.0
    c = s.counts.set_index("dataset")
    assert (c.loc["mnist", "accepted"], c.loc["mnist", "rejected"], c.loc["mnist", "invalid"]) == (16, 4, 0)
    assert (c.loc["a", "accepted"], c.loc["a", "rejected"], c.loc["a", "invalid"]) == (2, 8, 1)
    assert c.loc["a", "accepted_pct"] == pytest.approx(20.0)
    assert c.loc["a", "accepted_pct_default"] == pytest.approx(50.0)  # 15..19 accepted at 19
    # scores in (16, 19] flip from accepted to rejected: ID 17, 18, 19 and OOD 17, 18, 19
    assert sorted(s.flips["u"].tolist()) == [17.0, 17.0, 18.0, 18.0, 19.0, 19.0]
    assert set(s.flips["change"]) == {"now rejected"}
    up = gi.threshold_summary(_scores(), "u", threshold=22.0)
    assert set(up.flips["change"]) == {"now accepted"} and len(up.flips) == 4  # ID 20, OOD 20..22


def test_threshold_summary_rejects_unknown_method():
    with pytest.raises(GradvizError, match="no scores"):
        gi.threshold_summary(_scores(), "nope", 1.0)


def test_extremes_most_and_least_uncertain_per_set():
    e = gi.extremes(_scores(), "u", k=2)
    most = e[(e["dataset"] == "a") & (e["which"] == "most")]
    least = e[(e["dataset"] == "mnist") & (e["which"] == "least")]
    assert most["u"].tolist() == [24.0, 23.0] and most["rank"].tolist() == [1, 2]  # NaN skipped
    assert least["u"].tolist() == [1.0, 2.0]
    assert len(e) == 8
    with pytest.raises(GradvizError):
        gi.extremes(_scores(), "u", k=0)


def test_rows_from_selection_maps_customdata_to_rows():
    scores = _scores()
    points = [{"customdata": [3, "mnist", 3, 0, 0]}, {"customdata": [25, "a", 5, -1, 1]}, {"x": 1.0},
              {"customdata": [3, "mnist", 3, 0, 0]}]
    rows = gi.rows_from_selection(scores, points)
    assert rows.index.tolist() == [3, 25]
    assert rows["u"].tolist() == [4.0, 20.0]


def test_uploads_to_imageset_decodes_good_files_and_reports_bad(tiny_model):
    data, errors = uploads_to_imageset([("a.png", _png()), ("x.png", b"hello, not an image"), ("b.png", _png(0))],
                                       tiny_model.card)
    assert data is not None and data.spec == "upload:2 files"
    assert tuple(data.images.shape) == (2, 1, 28, 28)
    assert data.paths == ["a.png", "b.png"] and (data.labels == -1).all()
    assert float(data.images[0].mean()) == pytest.approx(128 / 255, abs=1e-3)
    assert [n for n, _ in errors] == ["x.png"] and "not a supported image" in errors[0][1]
    none, errs = uploads_to_imageset([("x.png", b"text")], tiny_model.card)
    assert none is None and len(errs) == 1


def test_inspect_images_scores_match_batch_scoring_and_percentiles(tiny_model):
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    runners = [make_runner(tiny_model, get_method(n)) for n in ("msp", "energy", "gradnorm")]
    id_table = pd.DataFrame({"role": "id", "msp": np.linspace(-1, 0, 11), "energy": np.linspace(-50, 50, 11),
                             "gradnorm": np.linspace(0, 1, 11)})
    rep = gi.inspect_images(tiny_model, x, runners, id_table)
    batch = ModelOutputs.from_model(tiny_model, x)
    np.testing.assert_allclose(rep.probs, batch.probs.numpy(), rtol=1e-6)
    assert rep.prediction.tolist() == batch.prediction.tolist()
    for r in runners:
        got = rep.scores[rep.scores["method"] == r.info.name].sort_values("sample")
        np.testing.assert_allclose(got["score"], r.score(batch).numpy(), rtol=1e-5, atol=1e-7)
        ref = id_table[r.info.name].to_numpy()
        np.testing.assert_allclose(got["percentile"], 100 * (ref[None, :] < got["score"].to_numpy()[:, None]).mean(1))
        assert got["id_median"].iloc[0] == pytest.approx(np.median(ref))
    assert rep.scores["percentile"].notna().all() and len(rep.scores) == 9


def test_attribution_panels_and_display_image_shapes(tiny_model):
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    atts = gi.compute_attributions(tiny_model, x, ["saliency", "gradcam"])
    panels = gi.attribution_panels(x[0], atts, mode="signed", alpha=0.4, size=112)
    assert [p.method for p in panels] == ["saliency", "gradcam"]
    for p in panels:
        assert p.original.shape == p.heat.shape == p.overlay.shape == (112, 112, 3)
        assert p.overlay.dtype == np.uint8
    assert "layer" in panels[1].caption
    img = gi.display_image(torch.tensor([[[0.0, 1.0]]]), size=4)  # (1, 1, 2) -> nearest 4×8
    assert img.shape == (4, 8, 3) and (img[:, :4] == 0).all() and (img[:, 4:] == 255).all()
    with pytest.raises(GradvizError):
        gi.display_image(torch.zeros(2, 4, 4))


def test_gaia_table_and_layer_profile_match_library(tiny_model):
    from gradviz.engine import layer_gradient_stats
    from gradviz.methods.gaia import gaia_abnormality_map

    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    table = gi.gaia_channel_table(tiny_model, x)
    maps = gaia_abnormality_map(tiny_model, x)
    assert list(table.columns) == list(maps)
    for name, v in maps.items():
        np.testing.assert_allclose(table[name].dropna().to_numpy(), v[0].numpy(), rtol=1e-6)
    prof = gi.sample_layer_profile(tiny_model, x, "l2")
    ls = layer_gradient_stats(tiny_model, x)
    assert list(prof.index) == ls.layers
    np.testing.assert_allclose(prof.to_numpy(), ls.get("l2")[0].numpy(), rtol=1e-6)


def test_score_range_and_captions():
    scores = pd.DataFrame({"dataset": ["a", "b", "b"], "index": [0, 3, 4], "m": [2.0, np.nan, -1.0]})
    assert gi.score_range(scores, "m") == (-1.0, 2.0)
    assert gi.score_range(scores.assign(m=5.0), "m") == (5.0, 6.0)  # constant: still a usable slider
    assert gi.score_range(scores.assign(m=np.nan), "m") == (0.0, 1.0)
    assert gi.sample_captions(scores.iloc[[0, 2]], "m") == ["a #0 · 2", "b #4 · -1"]
