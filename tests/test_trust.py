"""gradviz.trust.report: a run's misclassification metrics per method and the model's calibration, on the bundled
model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradviz.trust.calibration import calibration_summary, fit_temperature
from gradviz.data import load_dataset
from gradviz.runconfig import RunConfig
from gradviz.scoring import images_digest, model_inputs, run
from gradviz.trust.selective import aurc
from gradviz.runtime.store import ResultStore, cache_key
from gradviz.trust.report import (calibration_by_severity, fit_split, metrics_with_task, risk_coverage_frame,
                                  select_at_coverage, set_logits, trust_report)

METHODS = ["msp", "energy"]
SHIFT = "corrupt:gaussian_noise:4"


@pytest.fixture(scope="module")
def setup(bundled_model):
    cfg = RunConfig(id="mnist", ood=["letters", SHIFT], methods=METHODS, limit=150)
    result = run(cfg, model=bundled_model)
    datasets = {s: load_dataset(s, bundled_model.card, limit=150) for s in ["mnist", SHIFT]}
    return result, datasets


@pytest.mark.slow
def test_trust_report_covers_id_and_labelled_shifted_sets(setup, bundled_model, tmp_path):
    result, datasets = setup
    fit = fit_split("mnist:train", bundled_model)
    store = ResultStore(tmp_path)
    report = trust_report(result.scores, METHODS, bundled_model, datasets, fit, store=store)
    misc = report.misclassification
    assert list(misc["shifted"]) == ["", "", SHIFT, SHIFT]  # letters have no labels: left out
    ids = result.scores[result.scores["role"] == "id"]
    assert misc.loc[0, "aurc"] == pytest.approx(aurc(ids["correct"].astype(bool), ids["msp"]))
    assert misc.loc[2, "n"] == 300 and misc.loc[2, "error_rate"] > misc.loc[0, "error_rate"]  # noise adds errors
    # the logits agree with the scores table's predictions, and the temperature is the fit split's
    z, y = report.evaluation(SHIFT)
    assert z.shape == (300, 10) and (z.argmax(1) == result.scores.loc[result.scores["dataset"] != "letters",
                                                                       "prediction"].to_numpy()).all()
    fit_z = set_logits(bundled_model, fit)
    assert report.temperature == pytest.approx(fit_temperature(fit_z, fit.labels))
    assert "4,000 labelled images of the fit split mnist:train" in report.temperature_source
    cal = report.calibration
    fits = ["none", "fit", "crossfit"]
    assert list(zip(cal["shifted"], cal["temperature_fit"])) == [("", f) for f in fits] + [(SHIFT, f) for f in fits]
    expected = calibration_summary(*report.evaluation(""), temperature=report.temperature)
    assert cal.loc[1, "ece"] == pytest.approx(expected["ece"]) and cal.loc[1, "nll"] == pytest.approx(expected["nll"])
    # cross-fitted: ID rows scaled by the other half's T, the shifted rows by the T of the whole ID set
    t = report.temperatures(SHIFT, "crossfit")
    assert len(t) == 300 and len(np.unique(t[:150])) == 2 and (t[150:] == report.crossfit_all).all()
    assert report.crossfit_all == pytest.approx(fit_temperature(*report.evaluation("")))
    assert cal.loc[5, "nll"] == pytest.approx(calibration_summary(z, y, t)["nll"])
    key = cache_key(model=model_inputs(bundled_model), data=images_digest(datasets["mnist"].images), kind="logits")
    np.testing.assert_array_equal(store.get(key)[0]["logits"], report.logits["mnist"])  # cached for the page


def test_without_a_labelled_fit_split_the_id_set_is_used_and_said(setup, bundled_model):
    result, datasets = setup
    assert fit_split("letters", bundled_model) is None  # no digit labels
    report = trust_report(result.scores, METHODS, bundled_model, datasets, None)
    assert "ID test set itself" in report.temperature_source
    assert report.temperature == pytest.approx(fit_temperature(*report.evaluation("")))


def test_metrics_with_task_puts_both_tasks_in_one_table(setup, bundled_model):
    result, datasets = setup
    report = trust_report(result.scores, METHODS, bundled_model, datasets, None)
    table = metrics_with_task(result.metrics, report.misclassification)
    assert table.columns[0] == "task"
    assert list(table["task"].value_counts().sort_index().items()) == [("misclassification", 4), ("ood", 4)]
    assert table.loc[table["task"] == "ood", "aurc"].isna().all()
    assert metrics_with_task(pd.DataFrame(), report.misclassification)["task"].eq("misclassification").all()
    assert np.isfinite(table.loc[table["task"] == "misclassification", "e_aurc"]).all()


def _rows():
    return pd.DataFrame({"dataset": "mnist", "role": "id", "index": np.arange(10),
                         "correct": pd.array([True] * 7 + [False] * 3, dtype="boolean"),
                         "msp": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.15, 0.8, 0.9]})


def test_selection_splits_rejected_and_accepted_wrong_and_states_the_outcome():
    sel = select_at_coverage(_rows(), "msp", 0.8)
    assert list(sel.rejected["index"]) == [9, 8]  # most uncertain first
    assert list(sel.accepted_wrong["index"]) == [7]
    assert sel.sentence() == ("Accept predictions whose score is at most t = 0.7: 80.0 % of images kept (8 of 10), "
                              "12.5 % of them wrong (1)")
    assert "none kept" in select_at_coverage(_rows(), "msp", 0.0).sentence()


def test_risk_coverage_frame_and_figures():
    from gradviz.plots.trust import reliability_figure, risk_coverage_figure
    from gradviz.trust.calibration import reliability_diagram

    curve = risk_coverage_frame(_rows(), "msp")
    assert list(curve.columns) == ["coverage", "risk", "threshold", "oracle", "random"]
    assert curve["oracle"].iloc[6] == 0 and curve["oracle"].iloc[-1] == pytest.approx(0.3)
    assert (curve["random"] == 0.3).all() and curve["risk"].iloc[-1] == pytest.approx(0.3)
    fig = risk_coverage_figure(curve, "msp", 0.1, 0.05, coverage=0.8)
    assert [t.name for t in fig.data][0] == "msp (AURC 0.1000, E-AURC 0.0500)" and len(fig.data) == 3
    bins = reliability_diagram(np.linspace(0.05, 1, 10), np.ones(10, bool), n_bins=5)
    summary = {"ece": 0.1, "mce": 0.2, "brier": 0.3, "nll": 0.4}
    fig = reliability_figure(bins, bins, summary, summary, 1.5)
    counts = [t for t in fig.data if t.name == "images per bin"]
    assert len(counts) == 2 and sum(counts[0].y) == 10 and "T = 1.500" in fig.layout.annotations[1].text


def test_calibration_by_severity_matches_ece_per_severity():
    from gradviz.trust.calibration import ece

    rng = np.random.default_rng(0)
    frames = []
    for severity, acc in ((0, 0.95), (3, 0.7), (5, 0.3)):
        correct = rng.random(200) < acc
        frames.append(pd.DataFrame({"severity": severity, "confidence": rng.uniform(0.8, 1.0, 200),
                                    "correct": pd.array(correct, dtype="boolean")}))
    frames.append(pd.DataFrame({"severity": 5, "confidence": [0.9], "correct": pd.array([pd.NA], dtype="boolean")}))
    scores = pd.concat(frames, ignore_index=True)
    table = calibration_by_severity(scores)
    assert list(table["severity"]) == [0, 3, 5] and list(table["n"]) == [200, 200, 200]  # the unlabelled row left out
    part = scores[(scores["severity"] == 3)]
    assert table.loc[1, "ece"] == pytest.approx(ece(part["confidence"], part["correct"].astype(bool)))
    assert table["ece"].is_monotonic_increasing  # confidence stays ~0.9 while accuracy falls


def test_scored_and_fitted_sets_are_not_run_again_for_their_logits(tmp_path, monkeypatch):
    """The scoring pass stores each set's logits in the run's store, and the fit split's are remembered from the
    fitting forward: calibration then needs no forward of its own. (Random weights: no shipped fit, so mahalanobis
    is fitted here.)"""
    import torch

    from gradviz.models.zoo import random_model

    model = random_model("mnist-cnn")
    store = ResultStore(tmp_path)
    cfg = RunConfig(id="mnist", ood=["letters"], methods=["msp", "mahalanobis"], limit=40)
    result = run(cfg, model=model, store=store)
    fit = fit_split("mnist:train", model)
    test = load_dataset("mnist", model.card, limit=40)
    scored = result.scores.loc[result.scores["dataset"] == "mnist", "prediction"].to_numpy()

    def no_forward(*_args, **_kwargs):
        raise AssertionError("a forward ran for logits the run already had")

    monkeypatch.setattr(model, "forward", no_forward)
    z = set_logits(model, test, store=store)
    assert z.shape == (40, 10) and (z.argmax(1) == scored).all()
    assert set_logits(model, fit, store=store).shape == (len(fit), 10)  # mahalanobis was fitted on it
    monkeypatch.undo()
    with torch.no_grad():
        np.testing.assert_allclose(z, model(test.images).numpy(), rtol=1e-5, atol=1e-5)
