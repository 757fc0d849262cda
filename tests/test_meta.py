"""Meta classifiers (Oberdiek et al. 2018) on synthetic tables where the answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradviz.errors import GradvizError
from gradviz.analysis.meta import MetaClassifier, feature_sets, meta_report
from gradviz.reporting.tables import flatten_columns

NOISE_COLS = ["conv1/l1", "conv1/max", "fc/std"]


def make_table(n_id=240, error_rate=0.25, ood=None, seed=0, informative=True) -> pd.DataFrame:
    """ID rows (correct/incorrect) + OOD sets; 'fc/l2' separates incorrect and OOD from correct ID."""
    rng = np.random.default_rng(seed)
    ood = ood or {}
    n_err = int(round(n_id * error_rate))
    correct = np.ones(n_id, dtype=bool)
    correct[rng.choice(n_id, n_err, replace=False)] = False
    parts = [pd.DataFrame({"dataset": "mnist", "role": "id", "correct": correct})]
    for name, n in ood.items():
        parts.append(pd.DataFrame({"dataset": name, "role": "ood", "correct": pd.array([pd.NA] * n, dtype="boolean")}))
    t = pd.concat(parts, ignore_index=True)
    t["correct"] = t["correct"].astype("boolean")
    positive = (t["role"] == "ood").to_numpy() | ~t["correct"].fillna(False).to_numpy()
    n = len(t)
    for c in NOISE_COLS:
        t[c] = rng.normal(size=n)
    t["fc/l2"] = (positive * 3.0 + rng.uniform(0, 1, n)) if informative else rng.normal(size=n)
    t["entropy"] = rng.normal(size=n)
    t["msp"] = rng.normal(size=n)
    return t


def rows(report, **match) -> pd.DataFrame:
    r = report.results
    for k, v in match.items():
        r = r[r[k] == v]
    return r


def test_feature_sets_from_flat_and_multiindex_columns():
    t = make_table(n_id=20)
    sets = feature_sets(t.columns)
    assert sets["entropy"] == ["entropy"] and sets["msp"] == ["msp"]
    assert sorted(sets["gradient"]) == sorted(NOISE_COLS + ["fc/l2"])
    assert sets["gradient+entropy"] == sets["gradient"] + ["entropy"]
    assert set(sets["all"]) == set(sets["gradient"]) | {"entropy", "msp"}
    multi = pd.MultiIndex.from_tuples([("conv1", "l1"), ("fc", "l2"), ("entropy", ""), ("dataset", "")])
    assert feature_sets(multi)["gradient"] == ["conv1/l1", "fc/l2"]
    assert "correct" not in sum(feature_sets(t.columns).values(), [])


@pytest.mark.slow
def test_perfectly_separating_feature_gives_auroc_one():
    report = meta_report(make_table(), task="correct", cv=3)
    grad = rows(report, feature_set="gradient", model="logistic", evaluation="cv").iloc[0]
    assert grad.auroc > 0.99 and grad.accuracy > 0.95
    assert grad.n == 240 and grad.n_positive == 60
    # entropy is pure noise here: its meta classifier and its threshold baseline are at chance
    for m in ("logistic", "threshold"):
        ent = rows(report, feature_set="entropy", model=m).iloc[0]
        assert abs(ent.auroc - 0.5) < 0.1
    assert set(report.results["feature_set"]) == {"entropy", "msp", "gradient", "gradient+entropy", "all"}
    assert report.roc[grad.curve][["fpr", "tpr"]].iloc[-1].tolist() == [1.0, 1.0]


@pytest.mark.slow
def test_pure_noise_features_give_chance_auroc():
    t = make_table(n_id=400, informative=False, seed=3)
    for model in ("logistic", "boosting"):
        report = meta_report(t, task="correct", feature_set="gradient", model=model, cv=3, seed=0)
        auroc = rows(report, feature_set="gradient", model=model).auroc.iloc[0]
        assert abs(auroc - 0.5) < 0.1, (model, auroc)


@pytest.mark.slow
def test_ood_known_and_unknown_evaluation_rows_have_the_right_sizes():
    t = make_table(n_id=200, error_rate=0.05, ood={"letters": 90, "noise": 60, "cifar": 50})
    report = meta_report(t, task="ood", known_ood=["letters"], feature_set=["gradient", "entropy"], cv=3)
    r = rows(report, feature_set="gradient", model="logistic")
    got = {(s, e): (n, p) for s, e, n, p in r[["setting", "evaluation", "n", "n_positive"]].itertuples(index=False)}
    assert got == {
        ("unknown", "unseen:letters"): (290, 90),
        ("unknown", "unseen:noise"): (260, 60),
        ("unknown", "unseen:cifar"): (250, 50),
        ("unknown", "unseen:all"): (400, 200),
        ("known", "cv"): (290, 90),
        ("known", "seen:letters"): (290, 90),
        ("known", "unseen:noise"): (260, 60),
        ("known", "unseen:cifar"): (250, 50),
    }
    # the informative feature ranks OOD (and errors) above correct ID in both settings
    assert (r.auroc > 0.9).all()
    assert "letters" in report.importance_for and report.feature_importances.feature.iloc[0] == "fc/l2"


def test_ood_without_known_sets_reports_only_the_unknown_setting():
    t = make_table(n_id=120, ood={"noise": 40})
    report = meta_report(t, task="ood", feature_set="gradient", cv=3)
    assert set(report.results["setting"]) == {"unknown"}
    assert set(report.results["evaluation"]) == {"unseen:noise", "unseen:all"}


def test_too_few_errors_gives_a_clear_error():
    t = make_table(n_id=100, error_rate=0.01)  # one incorrect prediction
    with pytest.raises(GradvizError, match="too few samples .* 1 incorrect"):
        meta_report(t, task="correct")


def test_few_errors_reduce_the_number_of_folds():
    t = make_table(n_id=100, error_rate=0.03)  # three errors, cv=5 -> 3 folds
    report = meta_report(t, task="correct", feature_set="gradient", cv=5)
    assert any("3-fold" in n for n in report.notes)
    assert rows(report, model="logistic").auroc.iloc[0] > 0.9


def test_nan_and_constant_columns_are_dropped_or_imputed():
    t = make_table(seed=1)
    t["conv2/l1"] = np.nan  # all-NaN column
    t["conv2/mean"] = 0.0  # constant column (e.g. the last layer's mean, exactly 0)
    t.loc[::7, "fc/l2"] = np.nan  # some missing values
    t.loc[3, "conv1/max"] = np.inf
    clf = MetaClassifier("gradient", cv=3).fit(t[t.role == "id"], ~t["correct"][t.role == "id"].astype(bool))
    assert "conv2/l1" not in clf.columns_ and "conv2/mean" not in clf.columns_
    report = meta_report(t, task="correct", feature_set="gradient", cv=3)
    assert report.results.auroc.notna().all() and report.results.auroc.iloc[0] > 0.8


@pytest.mark.slow
def test_multiindex_columns_give_the_same_report():
    flat = make_table(n_id=120)
    multi = flat.copy()
    multi.columns = pd.MultiIndex.from_tuples([tuple(c.split("/")) if "/" in c else (c, "") for c in flat.columns])
    assert list(flatten_columns(multi).columns) == list(flat.columns)
    a = meta_report(flat, task="correct", cv=3).results
    b = meta_report(multi, task="correct", cv=3).results
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_reports_are_reproducible_with_a_seed():
    t = make_table(n_id=150, ood={"noise": 40})
    a = meta_report(t, task="ood", known_ood=["noise"], model="mlp", feature_set="gradient", cv=3, seed=7)
    b = meta_report(t, task="ood", known_ood=["noise"], model="mlp", feature_set="gradient", cv=3, seed=7)
    pd.testing.assert_frame_equal(a.results, b.results)


def test_importances_rank_the_informative_feature_first():
    t = make_table(n_id=200)
    id_rows = t[t.role == "id"]
    y = ~id_rows["correct"].astype(bool)
    for model in ("logistic", "boosting"):
        clf = MetaClassifier("all", model=model, cv=3).fit(id_rows, y)
        imp = clf.importances(id_rows, y)
        assert imp.feature.iloc[0] == "fc/l2", model
        assert imp.loc[0, "layer"] == "fc" and imp.loc[0, "stat"] == "l2"
        assert imp.importance.iloc[0] > 2 * imp.importance.iloc[1]


def test_meta_classifier_predicts_and_scores_like_sklearn():
    t = make_table(n_id=200)
    X, y = t.drop(columns=["dataset", "role", "correct"]), (~t["correct"].astype(bool)).astype(int)
    clf = MetaClassifier(["fc/l2"], cv=3).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (200, 2) and np.allclose(proba.sum(1), 1)
    assert clf.score(X, y) > 0.95
    oof = MetaClassifier(["fc/l2"], cv=3).cross_val_proba(X, y)
    assert oof.shape == (200,) and ((oof > 0.5) == y).mean() > 0.95


def test_bad_arguments_give_clear_errors():
    t = make_table(n_id=60, ood={"noise": 20})
    with pytest.raises(GradvizError, match="unknown task"):
        meta_report(t, task="both")
    with pytest.raises(GradvizError, match="known OOD set"):
        meta_report(t, task="ood", known_ood=["letters"])
    with pytest.raises(GradvizError, match="unknown meta classifier"):
        MetaClassifier(model="svm")
    with pytest.raises(GradvizError, match="not available"):
        meta_report(t.drop(columns=["entropy"]), feature_set="entropy")
    with pytest.raises(GradvizError, match="OOD rows"):
        meta_report(t[t.role == "id"], task="ood")
    with pytest.raises(GradvizError, match="not fitted"):
        MetaClassifier().predict_proba(t)


def test_density_twin_flags_gradients_too_small_and_too_large_without_labels():
    """The unsupervised density of per-layer log gradient norms: OOD rows whose norms are far too small
    (overconfident) or far too large both score above ID, where a one-sided threshold on the norm fails one."""
    rng = np.random.default_rng(3)
    n_id, n_ood = 200, 60
    t = pd.DataFrame({"dataset": ["mnist"] * n_id + ["noise"] * n_ood + ["letters"] * n_ood,
                      "role": ["id"] * n_id + ["ood"] * 2 * n_ood})
    t["correct"] = pd.array([True] * (n_id - 20) + [False] * 20 + [pd.NA] * 2 * n_ood, dtype="boolean")
    for layer in ("conv/l2", "fc/l2"):
        t[layer] = np.exp(np.concatenate([rng.normal(0, 0.3, n_id), rng.normal(-8, 0.3, n_ood),
                                          rng.normal(3, 0.3, n_ood)]))
    t["entropy"] = rng.normal(size=len(t))
    report = meta_report(t, task="ood", feature_set=["gradient"], cv=3)
    dens = rows(report, feature_set="gradient norms", model="density")
    assert set(dens["setting"]) == {"unknown"}
    got = dens.set_index("evaluation")
    assert got.loc["unseen:noise", "auroc"] > 0.99 and got.loc["unseen:letters", "auroc"] > 0.99
    assert got.loc["unseen:all", "n"] == n_id + 2 * n_ood
    assert any("unsupervised twin" in note for note in report.notes)
    # no l2 columns -> no density rows
    no_l2 = meta_report(t.drop(columns=["conv/l2", "fc/l2"]).assign(**{"fc/l1": 1.0}), task="ood", cv=3,
                        feature_set=["entropy"])
    assert not (no_l2.results["model"] == "density").any()
