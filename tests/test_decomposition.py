"""The last-layer decomposition table: each score's AUROC equals the method's own, factors are scored alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradviz.data import ImageSet
from gradviz.analysis.decomposition import decomposition_table
from gradviz.errors import GradvizError
from gradviz.methods import ModelOutputs, run_method
from gradviz.analysis.metrics import auroc


def _set(spec: str, seed: int, scale: float = 1.0) -> ImageSet:
    x = (torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * scale).clamp(0, 1)
    return ImageSet(spec, x, -np.ones(24, dtype=np.int64))


def test_decomposition_scores_match_the_methods_and_factors_are_alone(tiny_model):
    ident, bright = _set("id", 0, 0.3), _set("bright", 1)
    table = decomposition_table(tiny_model, ident, {"bright": bright}, batch_size=10)  # batches of 10: 3 per set
    assert list(table["method"]) == ["gradnorm", "exgrad", "grad_l1 (layer=last)", "grad_l2 (layer=last)"]
    for name, params in (("gradnorm", {}), ("exgrad", {}), ("grad_l2", {"layer": "last"})):
        row = table[table["method"].str.startswith(name)].iloc[0]
        a = run_method(name, ModelOutputs.from_model(tiny_model, ident.images), **params).numpy()
        b = run_method(name, ModelOutputs.from_model(tiny_model, bright.images), **params).numpy()
        assert row["auroc"] == pytest.approx(auroc(a, b), abs=1e-9)
    gradnorm = table.iloc[0]
    h_id = tiny_model.logits_and_features(ident.images)[1].abs().sum(-1).numpy()
    h_ood = tiny_model.logits_and_features(bright.images)[1].abs().sum(-1).numpy()
    assert gradnorm["auroc_feature_only"] == pytest.approx(auroc(-h_id, -h_ood), abs=1e-9)  # GradNorm's sign: −‖h‖₁
    assert -1 <= gradnorm["spearman_with_feature"] <= 1


def test_decomposition_needs_a_last_layer_score_and_an_ood_set(tiny_model):
    with pytest.raises(GradvizError, match="no last-layer gradient score"):
        decomposition_table(tiny_model, _set("id", 0), {"x": _set("x", 1)}, methods=["msp"])
    with pytest.raises(GradvizError, match="OOD set"):
        decomposition_table(tiny_model, _set("id", 0), {})
