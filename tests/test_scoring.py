"""Scoring pipeline: table layout, caching (no recomputation), config round trip, bad inputs."""

import numpy as np
import pytest

import gradviz.scoring as scoring
from gradviz.errors import GradvizError
from gradviz.models.zoo import random_model
from gradviz.scoring import RunConfig, run
from gradviz.runtime.store import ResultStore

METHODS = ["msp", "energy", "gradnorm"]


@pytest.fixture(scope="module")
def model():
    return random_model("mnist-cnn")


def test_scores_table_layout_and_metrics(model, tmp_path):
    cfg = RunConfig(id="mnist", ood=["noise-uniform"], methods=METHODS, limit=40)
    res = run(cfg, store=ResultStore(tmp_path), model=model)
    s = res.scores
    assert list(s.columns[:8]) == scoring.BASE_COLUMNS
    assert list(s.columns[8:]) == METHODS
    assert (s["role"] == "id").sum() == 40 and (s["role"] == "ood").sum() == 40
    assert s.loc[s.role == "ood", "correct"].isna().all()
    assert s.loc[s.role == "id", "correct"].notna().all()
    assert set(res.metrics["method"]) == set(METHODS)
    assert res.metrics[["auroc", "fpr95"]].notna().all().all()


def test_second_run_reads_the_store_without_recomputing(model, tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    cfg = RunConfig(id="mnist", ood=["noise-uniform"], methods=METHODS, limit=30)
    first = run(cfg, store=store, model=model)
    calls = []
    real = scoring.score_images
    monkeypatch.setattr(scoring, "score_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = run(cfg, store=store, model=model)
    assert calls == []
    np.testing.assert_array_equal(first.scores[METHODS].to_numpy(), second.scores[METHODS].to_numpy())
    # a new method computes only that method
    cfg.methods = METHODS + ["entropy"]
    run(cfg, store=store, model=model)
    assert calls == [1, 1]  # one call per dataset, for the missing method only


def test_scores_do_not_depend_on_batch_size(model):
    a = run(RunConfig(id="mnist", ood=[], methods=METHODS, limit=50, batch_size=50), model=model)
    b = run(RunConfig(id="mnist", ood=[], methods=METHODS, limit=50, batch_size=7), model=model)
    np.testing.assert_allclose(a.scores[METHODS].to_numpy(), b.scores[METHODS].to_numpy(), rtol=1e-5, atol=1e-6)


def test_config_json_round_trip_and_bad_keys():
    cfg = RunConfig(ood=["letters"], methods=["msp"], limit=10, params={"energy": {"temperature": 2.0}})
    assert RunConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(GradvizError, match="unknown field"):
        RunConfig.from_json('{"bogus": 1}')
    with pytest.raises(GradvizError, match="not valid JSON"):
        RunConfig.from_json("{")


@pytest.mark.parametrize("bad, match", [
    (dict(methods=["nope"]), "unknown method"),
    (dict(id="nope"), "unknown dataset"),
    (dict(limit=0), "limit"),
])
def test_bad_inputs_give_clear_errors(model, bad, match):
    with pytest.raises(GradvizError, match=match):
        run(RunConfig(**{"ood": [], "methods": ["msp"], "limit": 10, **bad}), model=model)


def test_nan_scores_are_reported_not_hidden(model, monkeypatch):
    from gradviz.methods import registry

    def nan_first(batch):
        out = -batch.probs.amax(-1)
        out[0] = float("nan")
        return out

    monkeypatch.setitem(registry.REGISTRY, "nan_method", registry.MethodInfo(
        "nan_method", nan_first, "t", "p", 2000, "f", "output"))
    res = run(RunConfig(id="mnist", ood=["noise-uniform"], methods=["nan_method"], limit=20), model=model)
    assert any("nan_method" in w and "NaN" in w for w in res.warnings)


def test_fitted_methods_fit_once_on_the_fit_set_and_say_so(model, tmp_path, monkeypatch):
    """A fitted method is fitted once per (model, parameters, fit set), the progress says which one is fitting,
    and a second dataset reuses the fit."""
    from gradviz.methods.knn import KNN

    scoring._FITTED.clear()
    fits, seen = [], []
    real_fit, real_load = KNN.fit, scoring.load_dataset
    monkeypatch.setattr(KNN, "fit", lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k))
    monkeypatch.setattr(scoring, "load_dataset", lambda spec, card, limit=None, seed=0, **kw: real_load(
        spec, card, limit=64 if spec == "mnist:train" else limit, seed=seed, **kw))  # a small fit set: fast
    cfg = RunConfig(id="mnist", ood=["noise-uniform", "letters"], methods=["knn", "msp"], limit=30,
                    fit_set="mnist:train", params={"knn": {"k": 5}})
    res = run(cfg, progress=lambda d, t, label: seen.append(label), model=model)
    assert fits == [1]
    assert any(label.startswith("fitting knn on mnist:train") for label in seen)
    assert res.metrics.query("method == 'knn'")["auroc"].between(0, 1).all()


def test_a_method_that_cannot_be_fitted_is_left_blank_with_its_reason(model, tmp_path, monkeypatch):
    """One fitted method failing to fit (e.g. a small own ID set) blanks its column with one warning; the other
    methods, their metrics and the stored results are unaffected, and a store hit does not hide the failure."""
    from gradviz.errors import MethodError
    from gradviz.methods.knn import KNN

    def refuse(self, *args, **kwargs):
        raise MethodError("knn: the reason")

    scoring._FITTED.clear()
    monkeypatch.setattr(KNN, "fit", refuse)
    store = ResultStore(tmp_path)
    cfg = RunConfig(id="mnist", ood=["noise-uniform"], methods=["msp", "knn"], limit=30, fit_set="mnist:train")
    for _ in range(2):  # the second run reads msp from the store
        res = run(cfg, model=model, store=store)
        assert res.scores["knn"].isna().all() and np.isfinite(res.scores["msp"]).all()
        assert res.warnings == ["knn is left blank: it could not be fitted on mnist:train (knn: the reason)"]
        assert res.metrics.query("method == 'msp'")["auroc"].between(0, 1).all()
    with pytest.raises(MethodError, match="the reason"):  # the library call without ``unfitted`` still raises
        scoring.score_dataset(model, scoring.load_dataset("noise-uniform", model.card, limit=4), "ood",
                              [scoring.resolve_methods(["knn"])[0]], fit_set="mnist:train")


def test_a_fit_that_cannot_work_is_remembered_not_retried(bundled_model, monkeypatch):
    """GROOD on an unlabelled fit set fails the same way every time: the second call does not fit again."""
    from gradviz import scoring
    from gradviz.errors import MethodError
    from gradviz.methods.registry import get_method

    loads = []
    real = scoring.load_dataset
    monkeypatch.setattr(scoring, "load_dataset", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    scoring._FITTED.clear()
    unfitted: dict[str, str] = {}
    for _ in range(2):
        with pytest.raises(MethodError, match="grood"):
            scoring.make_runner(bundled_model, get_method("grood"), None, "noise-uniform")
        runners = scoring.make_runners(bundled_model, [get_method("msp"), get_method("grood")], fit_set="noise-uniform",
                                       unfitted=unfitted)
        assert [r.info.name for r in runners] == ["msp"] and "grood" in unfitted["grood"]
        unfitted.clear()
    assert loads == ["noise-uniform"]  # fitted (and failed) once
