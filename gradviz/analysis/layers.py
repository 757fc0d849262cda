"""Analyses of the layerwise gradient table (Oberdiek et al. 2018): bands, AUROC map, correlations.

Input everywhere: the wide table of :func:`gradviz.scoring.layer_table` — one row per sample
(index (dataset, index)), columns (layer, stat).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradviz.analysis.metrics import auroc


def layer_bands(table: pd.DataFrame, stat: str, roles: dict[str, str] | None = None) -> pd.DataFrame:
    """Per dataset and layer: 5 %, 50 % and 95 % quantiles of ``stat`` -> rows (dataset, role, layer, q05, q50, q95)."""
    part = table.xs(stat, axis=1, level="stat")
    rows = []
    for spec, sub in part.groupby(level="dataset", sort=False):
        q = sub.quantile([0.05, 0.5, 0.95])
        for layer in part.columns:
            rows.append((spec, (roles or {}).get(spec, "ood"), layer, *q[layer].to_numpy()))
    return pd.DataFrame(rows, columns=["dataset", "role", "layer", "q05", "q50", "q95"])


def layer_auroc(table: pd.DataFrame, id_spec: str, ood_spec: str) -> pd.DataFrame:
    """AUROC of every (layer, stat) column as a score separating ``id_spec`` from ``ood_spec``.

    Rows: layers (forward order); columns: statistics. 0.5 = no separation. Large *or*
    small values may separate (a statistic can be smaller for OOD); AUROC below 0.5 says so.
    """
    id_part = table.xs(id_spec, level="dataset")
    ood_part = table.xs(ood_spec, level="dataset")
    layers = list(dict.fromkeys(table.columns.get_level_values("layer")))
    stats = list(dict.fromkeys(table.columns.get_level_values("stat")))
    out = pd.DataFrame(index=layers, columns=stats, dtype=float)
    for layer in layers:
        for stat in stats:
            out.loc[layer, stat] = auroc(id_part[(layer, stat)].to_numpy(), ood_part[(layer, stat)].to_numpy())
    out.index.name = "layer"
    return out


def entropy_correlation(table: pd.DataFrame, entropy: np.ndarray) -> pd.DataFrame:
    """Spearman rank correlation of every (layer, stat) column with the softmax entropy."""
    ranks = table.rank()
    e = pd.Series(np.asarray(entropy, dtype=float), index=table.index).rank()
    corr = ranks.apply(lambda col: col.corr(e))
    layers = list(dict.fromkeys(table.columns.get_level_values("layer")))
    stats = list(dict.fromkeys(table.columns.get_level_values("stat")))
    return corr.unstack("stat").reindex(index=layers, columns=stats)  # forward order, like layer_auroc
