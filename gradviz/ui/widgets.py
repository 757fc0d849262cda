"""Small reusable page pieces: styled metric tables, download buttons, image tiles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from gradviz import plots

# Higher is better for these columns, lower for the rest (fpr95, detection_error).
HIGHER_BETTER = {"auroc", "aupr_in", "aupr_out", "accuracy"}
METRIC_COLUMNS = ["auroc", "fpr95", "aupr_in", "aupr_out", "detection_error"]


def metrics_dataframe(metrics: pd.DataFrame, key: str | None = None) -> None:
    """Show a metrics table with the best method per OOD set and column highlighted."""
    if metrics is None or len(metrics) == 0:
        st.info("Choose at least one OOD set in the sidebar to see detection metrics.")
        return
    cols = [c for c in METRIC_COLUMNS if c in metrics.columns]

    def highlight(frame: pd.DataFrame) -> pd.DataFrame:
        styles = pd.DataFrame("", index=frame.index, columns=frame.columns)
        for _, part in frame.groupby("ood_dataset", sort=False):
            for c in cols:
                vals = part[c].astype(float)
                if vals.notna().any():
                    best = vals.idxmax() if c in HIGHER_BETTER else vals.idxmin()
                    styles.loc[best, c] = "background-color: #c7e9c0; font-weight: bold"
        return styles

    styled = metrics.style.apply(highlight, axis=None).format({c: "{:.3f}" for c in cols})
    st.dataframe(styled, hide_index=True, width="stretch", key=key)


def download_figure(fig: go.Figure, name: str, key: str) -> None:
    """A button downloading ``fig`` as self-contained HTML (plotly.js inlined)."""
    # deferred: the ~4 MB HTML is built only when clicked, not on every rerun
    st.download_button(f"⬇ {name}.html", lambda: plots.to_html(fig), file_name=f"{name}.html", mime="text/html", key=key,
                       on_click="ignore")


def download_results(result, key: str = "dl") -> None:
    """Download buttons: scores CSV, metrics CSV + JSON, and the CLI-replayable run config.

    The files are built when clicked (callables), not on every rerun: the scores CSV of a few
    thousand rows costs tens of milliseconds each time. Uploaded images cannot be replayed from a
    file: the config leaves them out, and its button says so."""
    c1, c2, c3, c4 = st.columns(4)
    c1.download_button("⬇ scores.csv", lambda: result.scores.to_csv(index=False), "scores.csv", "text/csv",
                       key=f"{key}_scores", on_click="ignore")
    c2.download_button("⬇ metrics.csv", lambda: result.metrics.to_csv(index=False), "metrics.csv", "text/csv",
                       key=f"{key}_mcsv", on_click="ignore")
    c3.download_button("⬇ metrics.json", lambda: result.metrics.to_json(orient="records", indent=2), "metrics.json",
                       "application/json", key=f"{key}_mjson", on_click="ignore")
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
            col.image(to_uint8(img), caption=cap, width=width)


def config_json(cfg) -> str:
    return json.dumps(json.loads(cfg.to_json()), indent=2)
