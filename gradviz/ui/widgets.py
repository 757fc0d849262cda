"""Small reusable page pieces: styled metric tables, download buttons, image tiles."""

from __future__ import annotations

from hashlib import md5
from typing import cast

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from gradviz.plots import figures as plots
from gradviz.reporting.plaintext import md_code, md_text
from gradviz.reporting.tables import to_csv

# Higher is better for these columns, lower for the rest (fpr95, detection_error).
HIGHER_BETTER = {"auroc", "aupr_in", "aupr_out", "accuracy"}
METRIC_COLUMNS = ["auroc", "fpr95", "aupr_in", "aupr_out", "detection_error"]
# Short headers (a narrow column cut "detection_error" to "detection_e…"), the full meaning in the header's help.
COLUMN_LABELS = {
    "ood_dataset": ("OOD set", "The out-of-distribution set compared with the ID set"),
    "method": ("method", "The uncertainty method (higher score = more uncertain)"),
    "auroc": ("AUROC ↑", "Area under the ROC curve, ID vs this OOD set (0.5 = chance, < 0.5 = reversed)"),
    "fpr95": ("FPR95 ↓", "Fraction of the OOD set accepted at the threshold that accepts 95 % of ID"),
    "aupr_in": ("AUPR-in ↑", "Area under the precision-recall curve, ID as the positive class"),
    "aupr_out": ("AUPR-out ↑", "Area under the precision-recall curve, OOD as the positive class"),
    "detection_error": ("det. error ↓", "Detection error: min over thresholds of ½·(1 − TPR) + ½·FPR"),
    "n_id": ("n ID", "ID samples with a finite score"), "n_ood": ("n OOD", "OOD samples with a finite score"),
    "n_invalid": ("n invalid", "Samples left out: NaN or infinite score"),
    "auroc_feature_only": ("AUROC feature", "AUROC of the feature-norm factor alone"),
    "auroc_output_only": ("AUROC output", "AUROC of the output factor alone"),
    "spearman_with_feature": ("ρ feature", "Spearman correlation of the score with its feature-norm factor over all "
                                           "samples: ±1 = the score ranks samples like the feature norm"),
    "feature_factor": ("feature factor", None), "output_factor": ("output factor", None),
}


def column_config(columns, number_format: str | None = None) -> dict:
    """``st.dataframe`` column configs: short labels with the full meaning as help (see COLUMN_LABELS); numeric
    metric columns formatted with ``number_format`` when given."""
    config = {}
    for c in columns:
        if c not in COLUMN_LABELS:
            continue
        label, help_text = COLUMN_LABELS[c]
        numeric = number_format and (c in METRIC_COLUMNS or c.startswith(("auroc", "spearman")))
        config[c] = (st.column_config.NumberColumn(label, help=help_text, format=number_format) if numeric
                     else st.column_config.Column(label, help=help_text))
    return config


def by_family(metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics table with a ``family`` column after ``method``, rows ordered by OOD set, then family
    (output, feature, gradient), then the registry's order."""
    from gradviz.methods.registry import FAMILIES, REGISTRY, list_methods

    order = {m.name: i for i, m in enumerate(list_methods())}
    rank = {f: i for i, f in enumerate(FAMILIES)}
    out = metrics.copy()
    out.insert(out.columns.get_loc("method") + 1, "family",
               [REGISTRY[m].family if m in REGISTRY else "" for m in out["method"]])
    sets = {s: i for i, s in enumerate(dict.fromkeys(out["ood_dataset"]))}
    key = [(sets[s], rank.get(f, len(rank)), order.get(m, len(order)))
           for s, f, m in zip(out["ood_dataset"], out["family"], out["method"])]
    return out.iloc[sorted(range(len(out)), key=key.__getitem__)].reset_index(drop=True)


def best_cells(frame: pd.DataFrame, cols: list[str], per_family: bool = False) -> pd.DataFrame:
    """True at the best value of each column per OOD set (and per family with ``per_family``)."""
    mask = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    groups = ["ood_dataset", "family"] if per_family and "family" in frame.columns else ["ood_dataset"]
    for _, part in frame.groupby(groups, sort=False):
        for c in cols:
            vals = part[c].astype(float)
            if vals.notna().any():
                best = vals.max() if c in HIGHER_BETTER else vals.min()
                mask.loc[part.index[vals == best], c] = True
    return mask


def metrics_dataframe(metrics: pd.DataFrame, key: str | None = None, per_family: bool = False,
                      columns: list[str] | None = None) -> None:
    """Show a metrics table grouped by method family, with the best method per OOD set and column highlighted
    (per OOD set and family with ``per_family``); ``columns``: only these (a narrow column: the rest is cut off)."""
    if metrics is None or len(metrics) == 0:
        st.info("Choose at least one OOD set in the sidebar to see detection metrics.")
        return
    table = by_family(metrics)
    cols = [c for c in METRIC_COLUMNS if c in table.columns]
    mask = best_cells(table, cols, per_family)

    def highlight(frame: pd.DataFrame) -> pd.DataFrame:
        return mask.map(lambda best: "background-color: #c7e9c0; font-weight: bold" if best else "")

    styled = table.style.apply(highlight, axis=None).format({c: "{:.3f}" for c in cols})
    st.dataframe(styled, hide_index=True, width="stretch", key=key, column_config=column_config(table.columns),
                 column_order=[c for c in columns if c in table.columns] if columns else None)
    from gradviz.methods.registry import adaptation_notes

    cfg = st.session_state.get("gv_config")  # the sidebar's run configuration, which produced these metrics
    notes = adaptation_notes(list(dict.fromkeys(table["method"])), getattr(cfg, "params", None))
    if notes:
        st.caption("Settings that change these scores (method parameters in the sidebar; Learn explains each): "
                   + " · ".join(notes))


def method_label(name: str) -> str:
    """How a method reads in a picker: name — title · family."""
    from gradviz.methods.registry import get_method

    info = get_method(name)
    return f"{name} — {info.title} · {info.family}"


def line_picker(methods: list[str], ranking: dict[str, float] | None, key: str, what: str = "AUROC") -> list[str]:
    """A family filter and a method picker for a chart with one line per method; by default the two best of
    each family by ``ranking`` (:func:`gradviz.plots.palette.default_lines`), at most 8 lines. Returns the picks."""
    from gradviz.plots.palette import default_lines, family_of

    families = list(dict.fromkeys(family_of(m) for m in methods))
    # one row each: eight method chips need the full width (a narrower box clips them)
    shown = st.pills("Families", families, selection_mode="multi", default=families, key=f"{key}_fam") or families
    pool = [m for m in methods if family_of(m) in shown]
    best = default_lines(pool, ranking)
    # keyed by the families and the default: a new OOD set or filter starts again from its best lines
    picks = st.multiselect(f"Lines (default: the best of each family by {what})", pool, default=best,
                           key=f"{key}_{md5(repr((shown, best)).encode()).hexdigest()[:8]}",
                           placeholder="Choose methods",
                           help="Two per family by default; add or remove methods. Click a legend entry to hide a "
                                "line, double-click to show it alone.")
    return picks or best


def threshold_picker(scores: pd.DataFrame, method: str, key: str) -> tuple[float, float, str, float] | None:
    """A slider in ID-quantile space ("accept 95 % of ID") with the raw threshold beside it. Returns (threshold,
    default threshold at 95 %, the name the score is shown with, its display offset), or None (said why) when
    the method has no finite ID score."""
    from gradviz.errors import GradvizError
    from gradviz.analysis.samples import id_quantile_threshold

    try:
        default = id_quantile_threshold(scores, method, 95.0)
    except GradvizError:
        st.warning(f"**{method}** gave no finite score on the ID set, so it cannot be shown here. Check its parameters "
                   "(sidebar → Method parameters) or the model's weights, or pick another method.")
        return None
    s1, s2 = st.columns([3, 1], vertical_alignment="bottom")
    accept = s1.slider("Threshold: accept this share of the ID set (samples scoring at most its quantile count as ID)",
                       1.0, 100.0, 95.0, step=0.5, format="%.1f %%", key=key)
    threshold = id_quantile_threshold(scores, method, accept)
    label, offset = plots.shown_score(method)
    s2.metric(f"Threshold ({label})", f"{threshold + offset:.4g}", help="The score at that ID quantile; higher = more "
              "uncertain." + (f" {method} is shown as {label} (the score + {offset:g})." if offset else ""))
    return threshold, default, label, offset


def method_caption(metrics: pd.DataFrame, method: str) -> str:
    """One line: the method's AUROC / FPR95 per OOD set (and its two factors if it is a last-layer gradient)."""
    from gradviz.methods.exgrad import LAST_LAYER_SCORES

    rows = metrics[metrics["method"] == method]
    factors = LAST_LAYER_SCORES.get(method)
    return (f"**{method}** — AUROC ↑ / FPR95 ↓ per OOD set: "
            + " · ".join(f"{md_code(r.ood_dataset)} {r.auroc:.3f} / {r.fpr95:.3f}" for r in rows.itertuples())
            + (f" · a last-layer gradient = {factors.feature} × {factors.output} (how much of it is feature norm: "
               "metrics tab)" if factors else ""))


def decomposition(cfg, uploads: dict | None, key: str) -> None:
    """The feature-norm × output-factor table of the chosen last-layer gradient scores (nothing if none is chosen)."""
    from gradviz.methods.exgrad import LAST_LAYER_SCORES
    from gradviz.ui.cache import get_decomposition

    if not any(m in LAST_LAYER_SCORES for m in cfg.method_names()) or not cfg.ood:
        return
    st.markdown("**Last-layer gradient scores = feature norm × output factor** (Igoe et al. 2022): AUROC of the "
                "score and of each factor alone; where the feature factor alone does as well, the gradient adds "
                "nothing. ρ feature ±1: the score ranks samples like the feature norm.")
    table = get_decomposition(cfg, uploads)
    st.dataframe(table, hide_index=True, width="stretch", key=key, column_config=column_config(table.columns, "%.3f"))


# Why data files are prepared with the page. A file built on click (a callable ``data``) is stored by
# Streamlit referenced by no session, and every script run that finishes, in any session, sweeps
# unreferenced files (marked on the first sweep, deleted on the second). With other sessions busy,
# two sweeps often land between the click and the browser fetching the file: the download is
# cancelled (24 of 30 metrics.csv downloads under 4 busy sessions before this; 0 of 30 since, see
# tests/app/test_downloads.py). A file passed with the page stays referenced by its session until that
# session's next run, so other sessions never delete it. Tables up to EAGER_MAX_CELLS cells (a ~5 MB
# CSV: the Compare scores at 5,000 samples per set, the layer table at 1,000) go that way; larger ones
# and the ~4 MB figure HTML are still built on click (a cancelled download there is retried by clicking).
EAGER_MAX_CELLS = 500_000


def _serialise(frame: pd.DataFrame, fmt: str) -> str:
    # to_csv: spreadsheet-safe, the text itself when given no path
    return cast(str, to_csv(frame)) if fmt == "csv" else frame.to_json(orient="records", indent=2)


@st.cache_data(max_entries=16, show_spinner=False)
def _serialised(frame: pd.DataFrame, fmt: str) -> str:
    """The table's file text, built once per table content (not on every rerun)."""
    return _serialise(frame, fmt)


def download_table(label: str, frame: pd.DataFrame, file_name: str, key: str, fmt: str = "csv") -> None:
    """A button downloading ``frame`` as CSV or JSON (``fmt``), prepared with the page when small (see above)."""
    data = _serialised(frame, fmt) if frame.size <= EAGER_MAX_CELLS else (lambda: _serialise(frame, fmt))
    st.download_button(label, data, file_name, "text/csv" if fmt == "csv" else "application/json", key=key,
                       on_click="ignore")


def download_figure(fig: go.Figure, name: str, key: str) -> None:
    """A button downloading ``fig`` as self-contained HTML (plotly.js inlined)."""
    # deferred: the ~4 MB HTML is built only when clicked, not on every rerun
    st.download_button(f"⬇ {name}.html", lambda: plots.to_html(fig), file_name=f"{name}.html", mime="text/html",
                       key=key, on_click="ignore")


def download_results(result, key: str = "dl") -> None:
    """Download buttons: scores CSV, metrics CSV + JSON (:func:`download_table`), and the CLI-replayable run
    config. Uploaded images cannot be replayed from a file: the config leaves them out, and its button says so."""
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        download_table("⬇ scores.csv", result.scores, "scores.csv", key=f"{key}_scores")
    with c2:
        download_table("⬇ metrics.csv", result.metrics, "metrics.csv", key=f"{key}_mcsv")
    with c3:
        download_table("⬇ metrics.json", result.metrics, "metrics.json", key=f"{key}_mjson", fmt="json")
    config, uploads = result.config.replayable()
    replay = "Replay with: python -m gradviz score --config config.json --out results/"
    if uploads:
        replay = (f"Uploaded images are NOT part of the replay: the config leaves out {', '.join(uploads)} "
                  f"(save those images in a folder and add folder:PATH to its ood list). {replay}")
    c4.download_button("⬇ config.json" + (" (without uploads)" if uploads else ""), config.to_json(), "config.json",
                       "application/json", key=f"{key}_cfg", help=replay, on_click="ignore")
    if uploads:
        c4.caption("Uploaded images are not part of the replay.")


def to_uint8(image) -> np.ndarray:
    """(C, H, W) tensor/array in [0, 1] -> (H, W, 3) uint8 for display."""
    a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if a.ndim == 3:
        a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a[:3]
        a = a.transpose(1, 2, 0)
    elif a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


def image_tiles(images: list, captions: list[str], columns: int = 8, width: int = 84) -> None:
    """A grid of small images with captions."""
    for start in range(0, len(images), columns):
        cols = st.columns(columns)
        for col, img, cap in zip(cols, images[start:start + columns], captions[start:start + columns]):
            col.image(to_uint8(img), caption=md_text(cap), width=width)


def send_to_inspect(samples, key: str) -> None:
    """A picker of ``samples`` ((dataset, index) pairs, first ones first) and a button that opens that sample on
    the Inspect page (through ``st.session_state["gv_selected"]``). Keys: ``{key}_pick`` and ``{key}_inspect``."""
    picks = {f"{d} #{i}": (str(d), int(i)) for d, i in samples}
    pick_col, go_col = st.columns([3, 1])
    pick = pick_col.selectbox("Send a sample to the Inspect page", list(picks), key=f"{key}_pick", format_func=md_text)
    if go_col.button("Inspect", icon=":material/search:", key=f"{key}_inspect", disabled=pick is None):
        st.session_state["gv_selected"] = picks[pick]
        st.switch_page("pages/inspect.py")
