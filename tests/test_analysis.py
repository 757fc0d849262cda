"""gradviz.analysis.sweeps: severity sweeps, best-layer call-out, teaching text; gradviz.reporting.tables on layer
tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradviz.analysis import sweeps as analysis

from gradviz.reporting import tables
from gradviz.errors import GradvizError
from gradviz.runtime.store import ResultStore


def _layer_table(specs: dict[str, int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols = pd.MultiIndex.from_product([["conv", "fc"], ["l1", "l2", "min"]], names=["layer", "stat"])
    frames = []
    for spec, n in specs.items():
        f = pd.DataFrame(rng.normal(size=(n, len(cols))), columns=cols)
        f.index = pd.MultiIndex.from_arrays([[spec] * n, np.arange(n)], names=["dataset", "index"])
        frames.append(f)
    return pd.concat(frames)


def test_severity_metrics_matches_hand_computed_auroc():
    clean = pd.DataFrame({"severity": 0, "msp": [0.1, 0.2, 0.3, 0.4]})
    s1 = pd.DataFrame({"severity": 1, "msp": [0.15, 0.25, 0.35, 0.45]})  # interleaved: AUROC 10/16
    s2 = pd.DataFrame({"severity": 2, "msp": [0.5, 0.6, 0.7, 0.8]})  # all above clean: AUROC 1
    table = analysis.severity_metrics(pd.concat([clean, s1, s2], ignore_index=True), ["msp"])
    assert list(table["severity"]) == [1, 2]
    assert table["auroc"].tolist() == pytest.approx([10 / 16, 1.0])
    assert table.loc[1, "fpr95"] == 0.0


def test_severity_sweep_returns_five_severities_per_method(bundled_model, tmp_path):
    methods = ["msp", "gaia_z"]
    table = analysis.severity_sweep(bundled_model, "gaussian_noise", methods, limit=32, seed=0,
                                    store=ResultStore(tmp_path))
    assert sorted(table["method"].unique()) == sorted(methods)
    assert table.groupby("method")["severity"].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 2
    assert table["auroc"].between(0, 1).all()
    gaia = table[table["method"] == "gaia_z"].set_index("severity")["auroc"]
    # Heavy Gaussian noise is far from the digits for the feature-map gradients (GAIA-Z).
    assert gaia[5] >= gaia[1] and gaia[5] > 0.9


def test_severity_scores_reuse_the_store_and_keep_same_images(bundled_model, tmp_path):
    store = ResultStore(tmp_path)
    first = analysis.severity_scores(bundled_model, "inverse", ["msp"], limit=16, store=store)
    loaded = []

    def loader(spec):
        from gradviz.data import load_dataset

        loaded.append(spec)
        return load_dataset(spec, bundled_model.card, limit=16)

    again = analysis.severity_scores(bundled_model, "inverse", ["msp"], limit=16, store=store, loader=loader)
    assert loaded == ["mnist"] + [f"corrupt:inverse:{s}" for s in range(1, 6)]
    pd.testing.assert_frame_equal(first, again)
    # The corrupted sets are the same digits: labels agree row by row with the clean set.
    labels = first.pivot(index="index", columns="severity", values="label")
    assert (labels.nunique(axis=1) == 1).all()


def test_severity_scores_leave_an_unfittable_method_blank_with_its_reason(bundled_model):
    from gradviz.errors import MethodError

    # unlabelled noise as the fit set: GROOD (class prototypes of correctly classified images) cannot be fitted
    kw = dict(limit=16, fit_set="noise-uniform", severities=(1, 5))
    with pytest.raises(MethodError, match="grood"):
        analysis.severity_scores(bundled_model, "fog", ["msp", "grood"], **kw)
    unfitted: dict[str, str] = {}
    scores = analysis.severity_scores(bundled_model, "fog", ["msp", "grood"], unfitted=unfitted, **kw)
    assert list(unfitted) == ["grood"] and "grood" in unfitted["grood"]
    assert scores["grood"].isna().all() and scores["msp"].notna().all() and len(scores) == 3 * 16
    table = analysis.severity_metrics(scores, ["msp", "grood"]).set_index("method")
    assert table.loc["grood", "auroc"].isna().all() and table.loc["msp", "auroc"].notna().all()


def test_severity_scores_reject_bad_inputs(tiny_model):
    with pytest.raises(GradvizError, match="severity"):
        analysis.corruption_spec("fog", 6)
    with pytest.raises(GradvizError):
        analysis.severity_scores(tiny_model, "fog", ["no_such_method"], limit=4)


def test_meta_table_joins_scores_and_flattened_layers():
    layers = _layer_table({"mnist": 3, "letters": 2})
    scores = pd.DataFrame({"dataset": ["letters", "letters", "mnist", "mnist", "mnist", "noise"],
                           "index": [1, 0, 2, 0, 1, 0], "entropy": [5.0, 4.0, 3.0, 1.0, 2.0, 9.0]})
    table = tables.join_layers(scores, layers)
    assert len(table) == 5  # the noise row has no layer metrics
    assert {"conv/l1", "fc/min"} <= set(table.columns)
    row = table[(table["dataset"] == "mnist") & (table["index"] == 2)].iloc[0]
    assert row["conv/l2"] == layers.loc[("mnist", 2), ("conv", "l2")]
    assert row["entropy"] == 3.0


def test_meta_table_rejects_flat_columns():
    with pytest.raises(GradvizError, match="layer, stat"):
        tables.join_layers(pd.DataFrame({"dataset": [], "index": []}), pd.DataFrame({"a": []}))


def test_aligned_column_follows_layer_table_order():
    layers = _layer_table({"mnist": 2, "letters": 2})
    scores = pd.DataFrame({"dataset": ["letters", "mnist", "letters", "mnist"], "index": [1, 1, 0, 0],
                           "entropy": [4.0, 2.0, 3.0, 1.0]})
    assert tables.aligned_column(scores, layers.index, "entropy").tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(GradvizError, match="no 'gaia_z' column"):
        tables.aligned_column(scores, layers.index, "gaia_z")


def test_best_layer_stat_finds_cell_farthest_from_chance():
    table = _layer_table({"mnist": 200, "letters": 200}, seed=1)
    ood = table.index.get_level_values("dataset") == "letters"
    table.loc[ood, ("fc", "min")] -= 3.0  # OOD clearly *smaller* on one metric
    from gradviz.analysis.layers import layer_auroc

    best = analysis.best_layer_stat(layer_auroc(table, "mnist", "letters"))
    assert (best["layer"], best["stat"], best["direction"]) == ("fc", "min", "lower")
    assert best["auroc"] < 0.1 and best["separation"] == pytest.approx(1 - best["auroc"])
    with pytest.raises(GradvizError):
        analysis.best_layer_stat(pd.DataFrame([[np.nan]], index=["a"], columns=["l1"]))


def test_log_scale_ok_only_for_positive_bands():
    pos = pd.DataFrame({"q05": [0.1], "q50": [1.0], "q95": [2.0]})
    assert analysis.log_scale_ok(pos)
    assert not analysis.log_scale_ok(pos.assign(q05=[-0.1]))


def test_flat_layer_table_is_csv_ready():
    flat = tables.flat_layer_table(_layer_table({"mnist": 2}))
    assert list(flat.columns[:3]) == ["dataset", "index", "conv/l1"]


def test_severity_examples_orders_clean_first():
    from gradviz.data import ImageSet
    import torch

    sets = {s: ImageSet(f"s{s}", torch.full((2, 1, 4, 4), s / 5), np.zeros(2, dtype=np.int64)) for s in (3, 0, 1)}
    images, titles = analysis.severity_examples(sets)
    assert titles == ["clean", "severity 1", "severity 3"]
    assert float(images[-1].mean()) == pytest.approx(0.6)


def test_entropy_correlation_keeps_forward_layer_order():
    import numpy as np
    import pandas as pd

    from gradviz.analysis.layers import entropy_correlation

    rng = np.random.default_rng(0)
    cols = pd.MultiIndex.from_product([["stem.0", "layer1.conv1", "fc"], ["l2", "l1"]], names=["layer", "stat"])
    idx = pd.MultiIndex.from_arrays([["mnist"] * 20, range(20)], names=["dataset", "index"])
    ent = rng.random(20)
    table = pd.DataFrame(rng.random((20, 6)), columns=cols, index=idx)
    table[("fc", "l2")] = ent * 3  # perfectly rank-correlated with entropy
    corr = entropy_correlation(table, ent)
    assert list(corr.index) == ["stem.0", "layer1.conv1", "fc"] and list(corr.columns) == ["l2", "l1"]
    assert abs(corr.loc["fc", "l2"] - 1.0) < 1e-9
