"""How much of a last-layer gradient score is the feature norm (Igoe et al. 2022).

Every last-layer gradient score is exactly feature factor × output factor
(:data:`gradviz.methods.exgrad.LAST_LAYER_SCORES`). :func:`decomposition_table` scores the ID
set and every OOD set with each score and with each of its two factors alone (same direction),
so a reader sees per OOD set whether the "gradient" separates better than ‖h‖ alone, or than the
softmax term alone. Forward passes only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from gradviz.data import ImageSet
from gradviz.errors import GradvizError
from gradviz.methods.exgrad import LAST_LAYER_SCORES, last_layer_factors
from gradviz.methods.registry import ModelOutputs
from gradviz.analysis.metrics import auroc
from gradviz.models import GradvizModel

__all__ = ["factor_frame", "decomposition_table"]


def factor_frame(model: GradvizModel, data: ImageSet, batch_size: int | None = None) -> pd.DataFrame:
    """Every feature and output factor per sample of ``data`` (one row per sample, one column per factor)."""
    from gradviz.runtime.budget import batch_size_for

    parts: dict[str, list[np.ndarray]] = {}
    batch_size = batch_size_for(model, "forward", "decomposition", upper=batch_size, n=len(data))
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = ModelOutputs.from_model(model, data.images[start:start + batch_size])
            for name, values in last_layer_factors(batch).items():
                parts.setdefault(name, []).append(values.double().numpy())
    return pd.DataFrame({k: np.concatenate(v) for k, v in parts.items()})


def decomposition_table(model: GradvizModel, id_data: ImageSet, ood: dict[str, ImageSet],
                        methods: list[str] | None = None, batch_size: int | None = None) -> pd.DataFrame:
    """One row per (last-layer gradient score, OOD set): AUROC of the score, of its feature factor alone and of
    its output factor alone (each as an uncertainty in the score's direction), and the Spearman correlation of
    the score with its feature factor over all samples (1 = the score ranks samples exactly like ‖h‖)."""
    chosen = [m for m in (methods or list(LAST_LAYER_SCORES)) if m in LAST_LAYER_SCORES]
    if not chosen:
        raise GradvizError(f"no last-layer gradient score among {methods}; known: {', '.join(LAST_LAYER_SCORES)}")
    if not ood:
        raise GradvizError("the decomposition needs at least one OOD set")
    frames = {spec: factor_frame(model, data, batch_size) for spec, data in {id_data.spec: id_data, **ood}.items()}
    base = frames[id_data.spec]
    rows = []
    for name in chosen:
        f = LAST_LAYER_SCORES[name]
        label = name if not f.params.get("layer") else f"{name} (layer=last)"

        def score(frame: pd.DataFrame, which: str) -> np.ndarray:
            if which == "score":
                return f.sign * frame[f.feature].to_numpy() * frame[f.output].to_numpy()
            return f.sign * frame[getattr(f, which)].to_numpy()

        every = pd.concat(frames.values(), ignore_index=True)
        rho = spearmanr(score(every, "score"), score(every, "feature")).statistic
        for spec in ood:
            part = frames[spec]
            rows.append({
                "method": label, "ood_dataset": spec, "feature_factor": f.feature, "output_factor": f.output,
                "auroc": auroc(score(base, "score"), score(part, "score")),
                "auroc_feature_only": auroc(score(base, "feature"), score(part, "feature")),
                "auroc_output_only": auroc(score(base, "output"), score(part, "output")),
                "spearman_with_feature": float(rho),
            })
    return pd.DataFrame(rows)
