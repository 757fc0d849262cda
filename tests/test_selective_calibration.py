"""Selective prediction (gradviz.trust.selective) and calibration (gradviz.trust.calibration) against direct
computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, roc_auc_score

from gradviz.trust.calibration import (brier_score, calibration_summary, crossfit_temperatures, ece, fit_temperature,
                                       mce, nll, reliability_diagram, softmax)
from gradviz.errors import GradvizError
from gradviz.trust.selective import (aurc, e_aurc, labelled_sets, misclassification_auroc, misclassification_fpr95,
                               misclassification_table, oracle_aurc, risk_coverage_curve, selective_at_coverage)


def _data(n: int = 60, seed: int = 0, error_rate: float = 0.3):
    rng = np.random.default_rng(seed)
    correct = rng.random(n) > error_rate
    score = rng.normal(size=n) + 1.0 * ~correct  # errors somewhat more uncertain
    return correct, score


def _brute_risks(correct, score):
    """Risk at each k by averaging over every tie order: brute force via many random tie-breaks is slow, so use the
    definition directly: for k, the accepted set is the k smallest with a tied group at the cut taken fractionally."""
    n = len(score)
    risks = []
    for k in range(1, n + 1):
        t = np.sort(score)[k - 1]
        below = score < t
        at = score == t
        need = k - below.sum()  # how many of the tied group at t are accepted
        errors = (~correct[below]).sum() + need * (~correct[at]).mean()
        risks.append(errors / k)
    return np.array(risks)


def test_risk_coverage_matches_a_loop_without_ties():
    correct, score = _data()
    cov, risk, thr = risk_coverage_curve(correct, score)
    order = np.argsort(score)
    expected = [np.mean(~correct[order[:k]]) for k in range(1, len(score) + 1)]
    np.testing.assert_allclose(risk, expected)
    np.testing.assert_allclose(cov, np.arange(1, 61) / 60)
    np.testing.assert_allclose(thr, np.sort(score))
    assert aurc(correct, score) == pytest.approx(np.mean(expected))


def test_risk_coverage_spreads_errors_within_ties():
    correct, score = _data(n=80, seed=3)
    score = np.round(score)  # a handful of tied groups
    _, risk, _ = risk_coverage_curve(correct, score)
    np.testing.assert_allclose(risk, _brute_risks(correct, score))
    # the spread equals the mean over random tie-breaks (by permutation)
    rng = np.random.default_rng(0)
    sampled = []
    for _ in range(3000):
        jitter = score + rng.random(len(score)) * 1e-3
        sampled.append(aurc(correct, jitter))
    assert aurc(correct, score) == pytest.approx(np.mean(sampled), abs=3e-3)


def test_constant_score_gives_the_error_rate_and_oracle_the_minimum():
    correct, _ = _data(n=200, seed=1)
    r = float(np.mean(~correct))
    assert aurc(correct, np.zeros(200)) == pytest.approx(r)
    # oracle: every correct one first
    n_ok = correct.sum()
    brute = np.mean([max(0, k - n_ok) / k for k in range(1, 201)])
    assert oracle_aurc(correct) == pytest.approx(brute)
    assert oracle_aurc(correct) == pytest.approx(r + (1 - r) * math.log(1 - r), abs=0.01)  # Geifman's closed form
    assert e_aurc(correct, (~correct).astype(float)) == pytest.approx(0.0)


def test_random_score_e_aurc_is_about_r_minus_oracle():
    correct, _ = _data(n=500, seed=2)
    rng = np.random.default_rng(5)
    values = [e_aurc(correct, rng.random(500)) for _ in range(200)]
    r = float(np.mean(~correct))
    assert np.mean(values) == pytest.approx(r - oracle_aurc(correct), abs=0.005)
    good = e_aurc(*_data(n=500, seed=2))
    assert good < np.mean(values)  # an informative score beats random


def test_non_finite_scores_are_left_out():
    correct, score = _data()
    score[:3] = [np.nan, np.inf, -np.inf]
    assert aurc(correct, score) == pytest.approx(aurc(correct[3:], score[3:]))
    assert len(risk_coverage_curve(correct, score)[0]) == 57
    assert math.isnan(aurc([True], [0.1]))
    with pytest.raises(GradvizError, match="correctness flags"):
        aurc([True, False], [0.1])


def test_misclassification_auroc_and_fpr95_match_direct_computations():
    correct, score = _data(n=300, seed=4)
    assert misclassification_auroc(correct, score) == pytest.approx(roc_auc_score(~correct, score))
    ok = np.sort(score[correct])
    t = ok[int(np.ceil(0.95 * len(ok))) - 1]  # the smallest threshold accepting ≥ 95 % of correct ones
    assert misclassification_fpr95(correct, score) == pytest.approx(np.mean(score[~correct] <= t))


def test_selective_at_coverage_states_kept_share_and_risk():
    correct = np.array([True, True, False, True, False, True, True, True, False, True])
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    out = selective_at_coverage(correct, score, 0.5)
    assert out["threshold"] == 0.5 and out["n_kept"] == 5 and out["kept_share"] == 0.5
    assert out["n_wrong_kept"] == 2 and out["risk"] == pytest.approx(0.4) and out["n_rejected"] == 5
    tied = selective_at_coverage(correct, np.r_[0.1, 0.2, 0.2, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], 0.2)
    assert tied["n_kept"] == 4  # the tie at the threshold is kept whole
    assert selective_at_coverage(correct, score, 0.0)["n_kept"] == 0
    with pytest.raises(GradvizError, match="coverage"):
        selective_at_coverage(correct, score, 1.5)


def _scores_table():
    rng = np.random.default_rng(0)
    rows = []
    for spec, role, labelled in [("mnist", "id", True), ("corrupt:fog:3", "ood", True), ("letters", "ood", False)]:
        n = 40
        correct = pd.array(rng.random(n) > 0.3, dtype="boolean") if labelled else pd.array([pd.NA] * n, dtype="boolean")
        rows.append(pd.DataFrame({"dataset": spec, "role": role, "correct": correct,
                                  "msp": rng.random(n), "energy": rng.random(n)}))
    return pd.concat(rows, ignore_index=True)


def test_misclassification_table_uses_id_and_labelled_shifted_sets_only():
    scores = _scores_table()
    assert labelled_sets(scores) == ["corrupt:fog:3"]
    table = misclassification_table(scores, ["msp", "energy"])
    assert list(table["shifted"]) == ["", "", "corrupt:fog:3", "corrupt:fog:3"]
    assert (table["task"] == "misclassification").all() and (table["id_dataset"] == "mnist").all()
    ids = scores[scores["role"] == "id"]
    assert table.loc[0, "aurc"] == pytest.approx(aurc(ids["correct"].astype(bool), ids["msp"]))
    both = scores[scores["dataset"] != "letters"]
    assert table.loc[2, "n"] == 80 and table.loc[2, "e_aurc"] == pytest.approx(e_aurc(both["correct"].astype(bool),
                                                                                         both["msp"]))


# ---------- calibration ----------

def _probs(n=400, k=5, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    labels = np.array([rng.choice(k, p=p) for p in softmax(logits)])
    return logits, labels


def test_reliability_diagram_matches_sklearn_calibration_curve():
    logits, labels = _probs()
    p = softmax(logits)
    conf, correct = p.max(1), p.argmax(1) == labels
    for strategy in ("uniform", "quantile"):
        bins = reliability_diagram(p, correct, n_bins=10, strategy=strategy)
        prob_true, prob_pred = calibration_curve(correct, conf, n_bins=10, strategy=strategy)
        used = bins[bins["count"] > 0]
        np.testing.assert_allclose(used["accuracy"], prob_true)
        np.testing.assert_allclose(used["confidence"], prob_pred)
        assert bins["count"].sum() == len(conf)
        # ECE = Σ count/n |acc − conf| from sklearn's curve and a hand loop over the bins
        hand = sum(len(b) / len(conf) * abs(correct[b].mean() - conf[b].mean())
                   for b in [np.flatnonzero((conf > lo) & (conf <= hi) | ((conf == lo) & (i == 0)))
                             for i, (lo, hi) in enumerate(zip(bins["lower"], bins["upper"]))] if len(b))
        assert ece(p, correct, 10, strategy) == pytest.approx(hand)
        assert mce(p, correct, 10, strategy) == pytest.approx(np.max(np.abs(prob_true - prob_pred)))


def test_ece_on_hand_made_bins():
    conf = np.array([0.15, 0.15, 0.55, 0.55, 0.55, 0.95])
    correct = np.array([False, False, True, False, True, True])
    bins = reliability_diagram(conf, correct, n_bins=10)
    assert list(bins["count"]) == [0, 2, 0, 0, 0, 3, 0, 0, 0, 1]
    # bin 2: conf .15 acc 0 -> .15; bin 6: conf .55 acc 2/3 -> .11667; bin 10: conf .95 acc 1 -> .05
    assert ece(conf, correct, 10) == pytest.approx(2 / 6 * 0.15 + 3 / 6 * (2 / 3 - 0.55) + 1 / 6 * 0.05)
    assert mce(conf, correct, 10) == pytest.approx(0.15)
    assert reliability_diagram([0.1, 0.2], [True, False], 10)["count"].iloc[0] == 1  # 0.1 is in (0, 0.1]
    with pytest.raises(GradvizError, match="strategy"):
        ece(conf, correct, strategy="kmeans")
    with pytest.raises(GradvizError, match="probabilities"):
        ece([1.5], [True])


def test_brier_and_nll_match_direct_computations():
    logits, labels = _probs(k=4, seed=1)
    p = softmax(logits)
    brute = np.mean([sum((p[i, k] - (labels[i] == k)) ** 2 for k in range(4)) for i in range(len(labels))])
    assert brier_score(p, labels) == pytest.approx(brute)
    assert nll(logits, labels) == pytest.approx(log_loss(labels, p, labels=range(4)))
    assert nll(logits, labels, temperature=2.0) == pytest.approx(log_loss(labels, softmax(logits, 2.0),
                                                                          labels=range(4)))
    # log_softmax: finite where log(softmax) underflows
    big = np.array([[0.0, 800.0]])
    assert math.isfinite(nll(big, [0])) and nll(big, [0]) == pytest.approx(800.0)
    with pytest.raises(GradvizError, match="unlabelled"):
        brier_score(p, np.full(len(labels), -1))


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(t_true):
    rng = np.random.default_rng(7)
    clean = rng.normal(scale=3.0, size=(4000, 10))
    labels = np.array([rng.choice(10, p=p) for p in softmax(clean)])  # calibrated at T = 1 on clean logits
    t = fit_temperature(t_true * clean, labels)
    assert t == pytest.approx(t_true, rel=0.08)
    before = calibration_summary(t_true * clean, labels)
    after = calibration_summary(t_true * clean, labels, temperature=t)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert after["accuracy"] == before["accuracy"]  # scaling never changes a prediction


def test_fit_temperature_stays_bounded_when_every_prediction_is_right():
    logits = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
    t = fit_temperature(logits, [0, 1, 2])  # the NLL keeps falling as T -> 0
    assert 0.01 <= t < 0.2  # sharpened, finite, never below the bound


def test_fit_temperature_refuses_no_labels():
    with pytest.raises(GradvizError, match="labelled"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0))


def test_crossfit_scales_each_half_by_the_other_halfs_temperature():
    rng = np.random.default_rng(3)
    clean = rng.normal(scale=3.0, size=(400, 6))
    labels = np.array([rng.choice(6, p=p) for p in softmax(clean)])
    logits = 2.0 * clean
    t = crossfit_temperatures(logits, labels, seed=1)
    order = np.random.default_rng(1).permutation(400)
    half, other = order[:200], order[200:]
    np.testing.assert_allclose(t[half], fit_temperature(logits[other], labels[other]))
    np.testing.assert_allclose(t[other], fit_temperature(logits[half], labels[half]))
    assert t[half[0]] != pytest.approx(t[other[0]])
    per_row = np.mean([-np.log(softmax(logits[i:i + 1], t[i])[0, labels[i]]) for i in range(400)])
    assert nll(logits, labels, t) == pytest.approx(per_row)
    with pytest.raises(GradvizError, match="temperatures"):
        nll(logits, labels, t[:5])
    with pytest.raises(GradvizError, match="at least 4"):
        crossfit_temperatures(logits[:3], labels[:3])
