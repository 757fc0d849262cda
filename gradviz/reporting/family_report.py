"""The RESULTS.md section on every method by family (output / feature / gradient): tables from one run's
metrics, one measured sentence per method added beyond the three papers, the near-OOD (letters)
headline, the check of every method's declared behaviour, and the last-layer decomposition.

Pure pandas: :mod:`gradviz.reporting.report` runs the experiments and passes the numbers in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradviz.methods.registry import FAMILIES, get_method, list_methods, meets_expectation

NEAR_OOD = "letters"
# Reaching another method's AUROC = within this much (the sampling error of an AUROC at 500 vs 500 is ~0.01).
REACH = 0.01
# The methods the three papers' experiments already had, per family (what a new method must beat to help).
EARLIER = {
    "feature": ["mahalanobis"],
    "gradient": ["grad_l1", "grad_l2", "grad_max", "grad_min", "grad_std", "confounding", "gradnorm", "gaia_z",
                 "gaia_a"],
    "output": ["msp", "maxlogit", "energy", "entropy", "odin"],
}
# The earlier method each new one is closest to (same quantity or same idea), compared in its sentence.
RELATIVE = {"gsc": "energy", "pro": "msp", "exgrad": "gradnorm", "gradorth": "gradnorm", "lowdim_grad": "mahalanobis", "grood": "knn",
            "gradient_density": "grad_l2", "knn": "mahalanobis", "vim": "mahalanobis", "rmds": "mahalanobis",
            "react": "energy"}
# Why a method behaves as it does here (what the numbers alone do not say), for the sentence per new method.
WHY = {
    "exgrad": "the same last-layer gradient as GradNorm with labels drawn from the prediction: its output term "
              "2(1 − Σp²) carries the letters signal that GradNorm's feature norm drowns",
    "gradorth": "its output factor is GradNorm's, and the bundled model's noise has large features inside the ID "
                "subspace",
    "lowdim_grad": "a Mahalanobis distance of the head's energy gradient in 16 principal directions",
    "grood": "nearest neighbours of a gradient w.r.t. a synthetic OOD prototype (an intermediate layer mixed, no OOD "
             "data)",
    "gradient_density": "a Gaussian on the per-layer log gradient norms: too-small gradients (overconfident noise) "
                        "count as atypical, so it does not reverse on noise",
    "knn": "distance to the 50th nearest normalised training feature",
    "vim": "the residual outside the principal subspace plus energy",
    "rmds": "Mahalanobis minus a background Gaussian",
    "gsc": "energy after zeroing the 10 % of features with the largest gradient of the predicted logit (the head's "
           "row W_ŷ, so the zeroed features depend on the predicted class only)",
    "pro": "the lowest MSP after one signed-gradient step of 0.003 that lowers it: where the softmax is saturated "
           "the step barely moves it, so it ranks like MSP",
    "react": "energy after clipping the features at their 90th ID percentile: it softens, but does not remove, the "
             "overconfidence on noise",
}


# The paper's setting as a value the embedded default (mnist-cnn) runs, where the registry states it in words.
PAPER_VALUES = {("knn", "k_fraction"): 0.001}
# A default whose value means "another parameter decides" (a bare "0.0" reads as a share of nothing).
DEFAULT_WORDS = {("knn", "k_fraction"): "0 (off: k = 50 whatever the fit set)"}
# Choices measured both ways where the default is not an adaptation (no registered paper setting, or the default
# is the paper's): (method, parameter) -> the other value.
OTHER_SETTINGS = {("gradient_density", "covariance"): "empirical", ("grood", "mixup_layer"): "input"}


def _fmt_cell(v) -> str:
    return f"{v:.3f}" if isinstance(v, (float, np.floating)) and np.isfinite(v) else str(v)


def markdown(frame: pd.DataFrame, bold: pd.DataFrame | None = None) -> str:
    """A DataFrame as a GitHub table; cells where ``bold`` is True are bold."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = []
        for j, v in enumerate(row):
            text = _fmt_cell(v)
            cells.append(f"**{text}**" if bold is not None and bool(bold.iat[i, j]) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _family_order(methods: list[str]) -> list[str]:
    rank = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(methods, key=lambda m: rank[get_method(m).family])  # stable: registry order inside a family


def _best_per_family(table: pd.DataFrame, higher_better: dict[str, bool]) -> pd.DataFrame:
    """True where a cell is the best of its family in its column (for the numeric columns in ``higher_better``)."""
    bold = pd.DataFrame(False, index=table.index, columns=table.columns)
    for _, part in table.groupby("family", sort=False):
        for col, higher in higher_better.items():
            vals = part[col].astype(float)
            if vals.notna().any() and vals.nunique() > 1:  # a tie across the whole family marks nothing
                best = vals.max() if higher else vals.min()
                bold.loc[part.index[np.isclose(vals, best)], col] = True
    return bold


def overview_table(metrics: pd.DataFrame, corruption: pd.DataFrame, ood_sets: list[str]) -> pd.DataFrame:
    """Rows: every method, grouped by family. Columns: AUROC and FPR95 per OOD set, mean over every corruption
    and severity, and whether the declared behaviour on the bundled model holds."""
    methods = _family_order(list(dict.fromkeys(metrics["method"])))
    m = metrics.set_index(["method", "ood_dataset"])
    corr = corruption.groupby("method")[["auroc", "fpr95"]].mean()
    rows = []
    for name in methods:
        info = get_method(name)
        row = {"family": info.family, "method": name}
        for ood in ood_sets:
            row[f"{ood} AUROC↑"] = float(m.loc[(name, ood), "auroc"])
            row[f"{ood} FPR95↓"] = float(m.loc[(name, ood), "fpr95"])
        if name in corr.index:
            row["corruptions AUROC↑"] = float(corr.loc[name, "auroc"])
            row["corruptions FPR95↓"] = float(corr.loc[name, "fpr95"])
        checks = [meets_expectation(d, float(m.loc[(name, s), "auroc"])) for s, d in info.expected.items()
                  if (name, s) in m.index]
        row["as declared"] = ("yes" if all(checks) else "NO") if checks else "—"
        rows.append(row)
    return pd.DataFrame(rows)


def corruption_tables(corruption: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(AUROC, FPR95): rows every method by family, columns every corruption (mean over its severities)."""
    out = []
    for metric in ("auroc", "fpr95"):
        wide = corruption.groupby(["method", "corruption"], sort=False)[metric].mean().unstack("corruption")
        wide = wide.loc[_family_order(list(wide.index))]
        wide = wide.reset_index()
        wide.insert(0, "family", [get_method(n).family for n in wide["method"]])
        out.append(wide)
    return out[0], out[1]


def letters_headline(overview: pd.DataFrame) -> str:
    """Whether a gradient method reaches the best feature method on the near-OOD set."""
    col = f"{NEAR_OOD} AUROC↑"
    feat = overview[overview["family"] == "feature"].set_index("method")[col]
    grad = overview[overview["family"] == "gradient"].set_index("method")[col]
    best_f, best_g = feat.idxmax(), grad.idxmax()
    reached = grad[grad >= feat.max() - REACH]
    if len(reached):
        who = ", ".join(f"`{n}` ({a:.3f})" for n, a in reached.sort_values(ascending=False).items())
        return (f"**On letters (near-OOD) a gradient method reaches the best feature method**: {who} against "
                f"`{best_f}` {feat.max():.3f} (within {REACH} AUROC).")
    return (f"**On letters (near-OOD) no gradient method reaches the best feature method**: the best gradient "
            f"method is `{best_g}` ({grad.max():.3f}), the best feature method `{best_f}` ({feat.max():.3f}).")


def _compare(value: float, earlier: pd.Series, higher: bool = True) -> tuple[bool, str]:
    best = earlier.idxmax() if higher else earlier.idxmin()
    ref = float(earlier[best])
    better = value > ref + REACH if higher else value < ref - REACH
    return better, f"{value:.3f} vs `{best}` {ref:.3f}"


def _with_summaries(overview: pd.DataFrame) -> pd.DataFrame:
    """Indexed by method, plus ``noise`` (mean AUROC of the noise sets) and ``worst`` (the lowest of the letters,
    noise and corruption AUROCs: a method that fails nowhere has a high worst case)."""
    t = overview.set_index("method")
    noise_cols = [c for c in t.columns if c.startswith("noise") and c.endswith("AUROC↑")]
    t = t.assign(noise=t[noise_cols].mean(axis=1)) if noise_cols else t.assign(noise=np.nan)
    parts = [c for c in (f"{NEAR_OOD} AUROC↑", "noise", "corruptions AUROC↑") if c in t.columns]
    return t.assign(worst=t[parts].min(axis=1))


def worst_case_headline(overview: pd.DataFrame) -> str:
    """The best worst case (over letters, noise, corruptions) of each family."""
    t = _with_summaries(overview)
    best = {f: part["worst"].astype(float).idxmax() for f, part in t.groupby("family", sort=False)}
    return ("Worst case over letters, noise and corruptions (high = the method fails nowhere), best of each family: "
            + "; ".join(f"{f} `{m}` {t.loc[m, 'worst']:.3f}" for f, m in best.items()) + ".")


def method_sentences(overview: pd.DataFrame, new: list[str]) -> list[str]:
    """One measured sentence per new method: does it beat its family's earlier methods on letters, on noise
    (mean of the noise sets), on corruptions (mean AUROC), or all-round (the worst of the three)?"""
    t = _with_summaries(overview)
    out = []
    for name in new:
        if name not in t.index:
            continue
        family = t.loc[name, "family"]
        earlier = [m for m in EARLIER.get(family, []) if m in t.index]
        if not earlier:
            continue
        parts, helped = [], []
        for col, label in ((f"{NEAR_OOD} AUROC↑", "letters"), ("noise", "noise"), ("corruptions AUROC↑", "corruptions"),
                           ("worst", "all-round")):
            if col not in t.columns:
                continue
            better, text = _compare(float(t.loc[name, col]), t.loc[earlier, col].astype(float))
            parts.append(f"{label} {text}")
            if better:
                helped.append(label)
        listed = ", ".join(helped[:-1]) + (" and " if len(helped) > 1 else "") + helped[-1] if helped else ""
        verdict = (f"helps here ({listed})" if helped
                   else f"does not help here (no AUROC above the earlier {family} methods by more than {REACH})")
        rel = RELATIVE.get(name)
        if rel in t.index:
            parts.append(f"its closest relative `{rel}`: letters {t.loc[rel, f'{NEAR_OOD} AUROC↑']:.3f}, noise "
                         f"{t.loc[rel, 'noise']:.3f}" + (f", corruptions {t.loc[rel, 'corruptions AUROC↑']:.3f}"
                                                       if "corruptions AUROC↑" in t.columns else ""))
        why = f" — {WHY[name]}" if name in WHY else ""
        out.append(f"- `{name}` {verdict}: {'; '.join(parts)}{why}.")
    return out


def section(metrics: pd.DataFrame, corruption: pd.DataFrame, decomposition: pd.DataFrame, ood_sets: list[str],
            new: list[str]) -> list[str]:
    """The markdown lines of the section."""
    overview = overview_table(metrics, corruption, ood_sets)
    numeric = {c: "AUROC" in c for c in overview.columns if "AUROC" in c or "FPR95" in c}
    corr_auroc, corr_fpr = corruption_tables(corruption)
    cols = [c for c in corr_auroc.columns if c not in ("method", "family")]
    bad = overview[overview["as declared"] == "NO"]["method"].tolist()
    dec = decomposition.copy()
    return [
        "Every registered method on every bundled OOD set and every corruption (clean held-out digits vs the same "
        "digits corrupted, mean over severities), grouped by family: **output** scores read the logits/softmax, "
        "**feature** scores the penultimate features, **gradient** scores a gradient. Fitted methods fit on the "
        "ID training split (`mnist:train`, 4,000 digits) only — no OOD data. Bold = best of its family in the "
        "column. *as declared*: the direction each method's registration declares for the bundled model (noise "
        "and letters; asserted by the contract tests) holds in this run.",
        "",
        markdown(overview, _best_per_family(overview, numeric)),
        "",
        letters_headline(overview),
        "",
        worst_case_headline(overview),
        "",
        ("Every method behaves as its registration declares." if not bad else
         f"**Declared behaviour does not hold for: {', '.join(bad)}** — update the registration or investigate."),
        "",
        "Each method added beyond the three papers, against the earlier methods of its family (AUROC; noise = mean of "
        "the two noise sets; corruptions = mean over every corruption and severity; all-round = the worst of those "
        "three, high when a method fails nowhere):",
        "",
        *method_sentences(overview, new),
        "",
        "AUROC per corruption (mean over severities):",
        "",
        markdown(corr_auroc, _best_per_family(corr_auroc, {c: True for c in cols})),
        "",
        "FPR95 per corruption (mean over severities; lower is better):",
        "",
        markdown(corr_fpr, _best_per_family(corr_fpr, {c: False for c in cols})),
        "",
        "### How much of a last-layer gradient score is the feature norm (Igoe et al. 2022)",
        "",
        "Each last-layer gradient score is exactly *feature factor × output factor*. AUROC of the score and of each "
        "factor alone (in the score's direction), and the rank correlation of the score with its feature factor "
        "over all samples (±1 = it ranks samples like the feature norm):",
        "",
        markdown(dec),
        "",
    ]


def adaptations() -> list[dict]:
    """Every registered choice measured both ways: the paper settings in the registry (an adaptation where the
    default differs from the paper's) and :data:`OTHER_SETTINGS`. Per row: method, parameter, gradviz's default
    (``gradviz``), the other setting in words (``other``), whether each is the paper's, and the value run for the
    other setting (``value``)."""
    rows = []
    for info in list_methods():
        for key, paper in info.paper_settings.items():
            default = info.defaults[key]
            if default == paper:  # the default is the paper's: measured against OTHER_SETTINGS' value below
                continue
            rows.append({"method": info.name, "parameter": key, "gradviz": default, "other": paper,
                         "paper": "other", "value": PAPER_VALUES.get((info.name, key), paper)})
    for (name, key), value in OTHER_SETTINGS.items():
        info = get_method(name)
        default = info.defaults[key]
        rows.append({"method": name, "parameter": key, "gradviz": default, "other": value,
                     "paper": "gradviz" if info.paper_settings.get(key) == default else "none stated",
                     "value": value})
    return rows


def _setting_label(row: dict, which: str) -> str:
    """The words of one setting of a choices row, marked "(paper)" where it is the paper's."""
    if which == "gradviz":
        text = DEFAULT_WORDS.get((row["method"], row["parameter"]), str(row["gradviz"]))
        return f"{text} (paper)" if row["paper"] == "gradviz" else text
    text = str(row["other"])
    if str(row["value"]) not in text:
        text = f"{text} (run: {row['value']})"
    return f"{text} (paper)" if row["paper"] == "other" else text


def choices_table(rows: list[dict], default: pd.DataFrame, other: dict[tuple[str, str], pd.DataFrame],
                  ood_sets: list[str]) -> pd.DataFrame:
    """One row per choice: the default and the other setting, and the AUROC of each per OOD set.

    ``default``: metrics (method, ood_dataset, auroc) of a run with every default; ``other``: {(method, parameter):
    metrics of the run with ``value``}."""
    d = default.set_index(["method", "ood_dataset"])["auroc"]
    out = []
    for row in rows:
        o = other[(row["method"], row["parameter"])].set_index(["method", "ood_dataset"])["auroc"]
        cells = {"method": row["method"], "parameter": row["parameter"],
                 "default": _setting_label(row, "gradviz"), "other setting": _setting_label(row, "other")}
        for ood in ood_sets:
            cells[f"{ood} AUROC default"] = float(d.loc[(row["method"], ood)])
            cells[f"{ood} AUROC other"] = float(o.loc[(row["method"], ood)])
        out.append(cells)
    return pd.DataFrame(out)


def choices_section(table: pd.DataFrame, model: str) -> list[str]:
    """The markdown lines of the choices subsection."""
    return [
        "### Choices that change results: the default and the other setting",
        "",
        f"Each choice in the method registry that changes scores (the Learn page, the sidebar and the footnote under "
        f"every metrics table say which setting produced a score), run both ways on `{model}` with the same samples: "
        "gradviz's default and the other setting. *(paper)* marks the setting the paper or its authors' code uses "
        "(a default without it is an adaptation); where the registry states it in words, *run* gives the value used "
        "for the bundled model.",
        "",
        markdown(table),
        "",
    ]


def model_table(metrics: pd.DataFrame, ood_sets: list[str]) -> str:
    """A bundled model's OOD table by family (AUROC and FPR95 per set, best of each family in bold)."""
    overview = overview_table(metrics, pd.DataFrame(columns=["method", "auroc", "fpr95"]), ood_sets)
    overview = overview.drop(columns="as declared")
    numeric = {c: "AUROC" in c for c in overview.columns if "AUROC" in c or "FPR95" in c}
    return markdown(overview, _best_per_family(overview, numeric))
