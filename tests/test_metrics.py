"""gradviz.analysis.metrics: known answers, the ID-positive convention, and NaN/inf handling."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gradviz.analysis import metrics

# Hand-computed example: ID uncertainties 0..19, OOD 10.5, 18.5, 30, 40.
HAND_ID = np.arange(20, dtype=float)
HAND_OOD = np.array([18.5, 10.5, 30.0, 40.0])


def test_perfect_separation_gives_auroc_one_fpr_zero():
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.uniform(0, 1, 200), rng.uniform(2, 3, 100)
    s = metrics.summary(id_s, ood_s)
    assert s["auroc"] == 1.0
    assert s["fpr95"] == 0.0
    assert s["aupr_in"] == pytest.approx(1.0)
    assert s["aupr_out"] == pytest.approx(1.0)
    assert s["detection_error"] == 0.0
    assert (s["n_id"], s["n_ood"], s["n_invalid"]) == (200, 100, 0)


def test_reversed_scores_give_auroc_zero_fpr_one():
    id_s, ood_s = np.linspace(2, 3, 50), np.linspace(0, 1, 50)
    assert metrics.auroc(id_s, ood_s) == 0.0
    assert metrics.fpr_at_tpr(id_s, ood_s) == 1.0


def test_identical_distributions_give_auroc_near_half():
    rng = np.random.default_rng(1)
    id_s, ood_s = rng.normal(size=4000), rng.normal(size=4000)
    assert metrics.auroc(id_s, ood_s) == pytest.approx(0.5, abs=0.02)
    assert metrics.fpr_at_tpr(id_s, ood_s) == pytest.approx(0.95, abs=0.02)
    assert metrics.aupr_in(id_s, ood_s) == pytest.approx(0.5, abs=0.03)


def test_hand_computed_fpr95_detection_error_and_auroc():
    # 95 % of ID accepted = uncertainty <= 18 -> of OOD only 10.5 is accepted: FPR = 1/4.
    assert metrics.fpr_at_tpr(HAND_ID, HAND_OOD, 0.95) == pytest.approx(0.25)
    # best threshold accepts <= 18: 0.5 * (1 - 19/20) + 0.5 * 1/4 = 0.15
    assert metrics.detection_error(HAND_ID, HAND_OOD) == pytest.approx(0.15)
    # pairs with OOD > ID: 19 + 11 + 20 + 20 = 70 of 80
    assert metrics.auroc(HAND_ID, HAND_OOD) == pytest.approx(70 / 80)
    # at TPR 1.0 every ID is accepted (<= 19): 10.5 and 18.5 accepted -> FPR 0.5
    assert metrics.fpr_at_tpr(HAND_ID, HAND_OOD, 1.0) == pytest.approx(0.5)


def test_fpr95_and_its_threshold_are_the_first_roc_point_with_tpr_95():
    """One operating point: threshold_at_tpr (ID scores alone) is roc_curve's first threshold with TPR ≥ 95 %,
    and fpr_at_tpr is the FPR there — checked against scikit-learn's curve, with ties and several sizes."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(7)
    for n_id, n_ood in [(20, 4), (37, 50), (100, 9), (401, 300)]:
        for decimals in (0, 1, 6):  # heavy ties, some ties, none
            id_s = np.round(rng.normal(0, 1, n_id), decimals)
            ood_s = np.round(rng.normal(0.8, 1, n_ood), decimals)
            y = np.r_[np.ones(n_id), np.zeros(n_ood)]
            fpr, tpr, thr = roc_curve(y, -np.r_[id_s, ood_s], drop_intermediate=False)
            first = np.argmax(tpr >= 0.95)
            assert metrics.threshold_at_tpr(id_s) == -thr[first]
            assert metrics.fpr_at_tpr(id_s, ood_s) == fpr[first]


def test_aupr_in_and_out_use_opposite_positive_classes():
    # one OOD sample hidden among ID: it hurts AUPR-Out far more than AUPR-In.
    id_s = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    ood_s = np.array([-1.0, 8.0])
    a_in, a_out = metrics.aupr_in(id_s, ood_s), metrics.aupr_out(id_s, ood_s)
    # AUPR-Out: OOD at rank 1 (precision 1) and rank 10 (precision 2/10) -> (1 + 0.2) / 2
    assert a_out == pytest.approx(0.6)
    # AUPR-In: ID ranked first by low uncertainty after the OOD at -1: precisions k/(k+1)
    assert a_in == pytest.approx(np.mean([k / (k + 1) for k in range(1, 9)]))


def test_nan_and_inf_scores_are_dropped_and_counted():
    id_s = np.array([0.0, 0.1, np.nan, 0.2, np.inf])
    ood_s = np.array([1.0, -np.inf, 2.0, 3.0])
    s = metrics.summary(id_s, ood_s)
    assert s["n_invalid"] == 3
    assert (s["n_id"], s["n_ood"]) == (3, 3)
    assert s["auroc"] == 1.0 and s["fpr95"] == 0.0


def test_too_few_valid_scores_give_nan_metrics_with_count():
    s = metrics.summary(np.array([0.1, np.nan, np.nan]), np.array([1.0, 2.0]))
    assert s["n_invalid"] == 2 and s["n_id"] == 1
    assert all(math.isnan(s[k]) for k in metrics.METRIC_KEYS)
    assert metrics.roc_curve_points([np.nan], [1.0, 2.0]).empty


def test_roc_curve_points_thresholds_are_uncertainties():
    df = metrics.roc_curve_points(HAND_ID, HAND_OOD)
    assert list(df.columns) == ["fpr", "tpr", "threshold"]
    assert df["fpr"].is_monotonic_increasing and df["tpr"].is_monotonic_increasing
    row = df[df["threshold"] == 18.0].iloc[0]  # accept uncertainty <= 18
    assert row["tpr"] == pytest.approx(0.95) and row["fpr"] == pytest.approx(0.25)


def test_pr_curve_points_for_both_positive_classes():
    for positive in ("id", "ood"):
        df = metrics.pr_curve_points(HAND_ID, HAND_OOD, positive=positive)
        assert list(df.columns) == ["precision", "recall", "threshold"]
        assert df["recall"].iloc[-1] == 0.0 and df["recall"].max() == 1.0
    df = metrics.pr_curve_points(HAND_ID, HAND_OOD, positive="ood")
    top = df[df["threshold"] == 30.0].iloc[0]  # flag uncertainty >= 30 as OOD: 2 OOD, 0 ID
    assert top["precision"] == 1.0 and top["recall"] == 0.5
    with pytest.raises(ValueError):
        metrics.pr_curve_points(HAND_ID, HAND_OOD, positive="both")


def test_misclassification_summary_treats_errors_as_positive():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, np.nan])
    correct = np.array([True, True, True, False, False, True])
    s = metrics.misclassification_summary(scores, correct)
    assert s["auroc"] == 1.0
    assert (s["n_correct"], s["n_incorrect"], s["n_invalid"]) == (3, 2, 1)
    with pytest.raises(ValueError):
        metrics.misclassification_summary(scores, correct[:3])


def test_metrics_table_one_row_per_ood_set_and_method_with_invalid_counts():
    rng = np.random.default_rng(0)
    n = 50
    frames = []
    for dataset, role, shift in [("mnist", "id", 0.0), ("noise", "ood", 5.0), ("letters", "ood", 0.0)]:
        frames.append(pd.DataFrame({
            "dataset": dataset, "role": role, "index": np.arange(n), "label": 0, "prediction": 0, "correct": True,
            "good": rng.normal(size=n) + shift, "bad": -(rng.normal(size=n) + shift),
        }))
    df = pd.concat(frames, ignore_index=True)
    df.loc[df["dataset"] == "noise", "bad"] = df.loc[df["dataset"] == "noise", "bad"].where(
        df.loc[df["dataset"] == "noise", "index"] >= 5, np.nan)
    table = metrics.metrics_table(df, ["good", "bad"])
    assert len(table) == 4
    assert list(table.columns[:2]) == ["ood_dataset", "method"]
    row = table[(table.ood_dataset == "noise") & (table.method == "good")].iloc[0]
    assert row["auroc"] > 0.99 and row["n_invalid"] == 0 and row["n_id"] == n
    bad = table[(table.ood_dataset == "noise") & (table.method == "bad")].iloc[0]
    assert bad["n_invalid"] == 5 and bad["n_ood"] == n - 5 and bad["auroc"] < 0.01
    with pytest.raises(ValueError):
        metrics.metrics_table(df, ["missing"])
