"""Compare models (library): unsupported methods are left out per model with their reason; the tables are right."""

from __future__ import annotations

import pandas as pd
import pytest

from gradviz.analysis import model_compare

from gradviz.plots import figures as plots
from gradviz.data import load_dataset
from gradviz.errors import MethodError
from gradviz.analysis.model_compare import ModelComparison, compare_models, supported_methods
from gradviz.models import load_model
from gradviz.models.zoo import random_model
from gradviz.scoring import RunConfig, ScoreResult, run


def _result(rows: list[tuple[str, str, float, float]]) -> ScoreResult:
    metrics = pd.DataFrame(rows, columns=["ood_dataset", "method", "auroc", "fpr95"])
    return ScoreResult(pd.DataFrame({"dataset": ["mnist"], "role": ["id"]}), metrics, RunConfig())


def test_tables_pivot_per_model_and_pick_the_best():
    cmp = ModelComparison(RunConfig(), results={
        "cnn": _result([("letters", "msp", 0.9, 0.3), ("letters", "gradnorm", 0.6, 0.7)]),
        "vit": _result([("letters", "msp", 0.8, 0.2)]),
    })
    wide = cmp.table("auroc")
    assert list(wide.columns) == ["ood_dataset", "method", "cnn", "vit"]
    assert wide.set_index("method").loc["msp", "vit"] == 0.8
    assert pd.isna(wide.set_index("method").loc["gradnorm", "vit"])
    best = cmp.best_model("auroc").set_index("method")
    assert best.loc["msp", "best"] == "cnn" and best.loc["gradnorm", "best"] == "cnn"
    assert cmp.best_model("fpr95").set_index("method").loc["msp", "best"] == "vit"  # lower is better
    assert list(cmp.metrics.columns[:3]) == ["model", "ood_dataset", "method"] and len(cmp.metrics) == 3
    fig = plots.model_metric_bars(cmp.metrics, "auroc")
    assert {t.name for t in fig.data} == {"cnn", "vit"}
    with pytest.raises(Exception, match="unknown metric"):
        cmp.table("accuracy")


def test_a_method_a_model_cannot_run_is_left_out_with_its_reason(monkeypatch):
    real = model_compare.make_runner

    def picky(model, info, *args, **kwargs):
        if info.name == "energy" and model.card.name == "random:mnist-vit":
            raise MethodError("energy is not available for this test model")
        return real(model, info, *args, **kwargs)

    monkeypatch.setattr(model_compare, "make_runner", picky)
    models = {"cnn": random_model("mnist-cnn", seed=1), "vit": random_model("mnist-vit", seed=2)}
    cfg = RunConfig(id="mnist", ood=["noise-uniform"], methods=["msp", "energy"], limit=16)
    data = {spec: load_dataset(spec, models["cnn"].card, limit=16) for spec in ("mnist", "noise-uniform")}
    cmp = compare_models(cfg, ["cnn", "vit", "missing"], get_model=lambda m: models[m] if m in models else
                         load_model(m), probe_images=lambda m: data["mnist"].images,
                         run_config=lambda c: run(c, model=models[c.model], datasets=data))
    assert cmp.models == ["cnn", "vit"]
    assert cmp.unsupported == {"vit": {"energy": "energy is not available for this test model"}}
    assert "unknown model 'missing'" in cmp.errors["missing"]
    assert "energy" in cmp.results["cnn"].scores and "energy" not in cmp.results["vit"].scores
    wide = cmp.table("auroc").set_index("method")
    assert pd.isna(wide.loc["energy", "vit"]) and 0 <= wide.loc["msp", "vit"] <= 1
    assert set(cmp.scores["model"]) == {"cnn", "vit"}


def test_supported_methods_reports_user_errors_only():
    model = random_model("mnist-cnn")
    x = load_dataset("noise-uniform", model.card, limit=4).images
    ok, refused = supported_methods(model, x, ["msp", "gradnorm"])
    assert ok == ["msp", "gradnorm"] and refused == {}
    empty = compare_models(RunConfig(), [], get_model=load_model, probe_images=lambda m: x, run_config=run)
    assert empty.models == [] and len(empty.metrics) == 0 and empty.table().empty


def test_fits_made_while_probing_report_their_batches():
    from gradviz.scoring import _FITTED

    _FITTED.clear()  # a fit remembered from another test would report nothing
    model = random_model("mnist-cnn", seed=3)  # not a bundled model: nothing shipped, the fit runs
    x = load_dataset("noise-uniform", model.card, limit=4).images
    calls = []
    ok, refused = supported_methods(model, x, ["msp", "mahalanobis"], progress=lambda *c: calls.append(c))
    assert ok == ["msp", "mahalanobis"] and refused == {}
    assert calls and {label for _, _, label in calls} == {"fitting mahalanobis on mnist:train"}
    assert calls[-1][0] == calls[-1][1]  # the last batch reported as done
