"""Small reusable page pieces: styled metric tables, download buttons, image tiles."""

from __future__ import annotations

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
    return frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", indent=2)


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
    st.download_button(f"⬇ {name}.html", lambda: plots.to_html(fig), file_name=f"{name}.html", mime="text/html", key=key,
                       on_click="ignore")


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
            col.image(to_uint8(img), caption=cap, width=width)
