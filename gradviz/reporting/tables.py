"""The two tables gradviz passes around, and the one way each is flattened and joined.

- **Scores table** (:func:`gradviz.scoring.run`): one row per sample — the key columns
  ``dataset``, ``role``, ``index``, then label, prediction, … and one column per method.
- **Layer table** (:func:`gradviz.scoring.layer_table`): one row per sample, index
  ``(dataset, index)``, columns ``(layer, stat)``.

Rows of two tables are matched by key (:data:`SAMPLE_KEY`), never by position: a table
sorted, filtered or built in another order still joins sample to sample. Layer columns
become ``"<layer>/<stat>"`` strings (CSV files, the meta classifier's features) through
:func:`flatten_columns` only.

Every CSV gradviz writes (CLI files, download buttons) goes through :func:`to_csv`, which
neutralises text that a spreadsheet would run as a formula (:func:`csv_safe`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradviz.errors import GradvizError

__all__ = ["SAMPLE_KEY", "column_name", "flatten_columns", "flat_layer_table", "join_samples", "join_layers",
           "aligned_column", "csv_safe", "to_csv"]

SAMPLE_KEY = ("dataset", "role", "index")  # what names one sample in every table; ``role`` where a table has it
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula


def column_name(column) -> str:
    """``("conv1", "l2")`` -> ``"conv1/l2"``; empty levels (and pandas' ``Unnamed: …`` from CSV headers) dropped."""
    if isinstance(column, str):
        return column
    parts = [str(p) for p in column if p is not None and str(p) != "" and not str(p).startswith("Unnamed")]
    return "/".join(parts)


def flatten_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The same table with MultiIndex ``(layer, stat)`` columns named ``"layer/stat"`` (a flat table is returned as is)."""
    if not isinstance(table.columns, pd.MultiIndex):
        return table
    out = table.copy()
    out.columns = [column_name(c) for c in table.columns]
    return out


def flat_layer_table(layers: pd.DataFrame) -> pd.DataFrame:
    """A layer table with ``"layer/stat"`` columns and its key (dataset, index) as ordinary columns (CSV-ready)."""
    if not isinstance(layers.columns, pd.MultiIndex):
        raise GradvizError("layer table must have (layer, stat) columns, as gradviz.scoring.layer_table returns")
    return flatten_columns(layers).reset_index()


def _key(left: pd.DataFrame, right: pd.DataFrame) -> list[str]:
    key = [k for k in SAMPLE_KEY if k in left.columns and k in right.columns]
    if "dataset" not in key or "index" not in key:
        raise GradvizError(f"both tables need the key columns 'dataset' and 'index' to be joined sample by sample; "
                           f"have {sorted(set(left.columns) & set(SAMPLE_KEY))} and {sorted(set(right.columns) & set(SAMPLE_KEY))}")
    return key


def join_samples(left: pd.DataFrame, right: pd.DataFrame, how: str = "inner") -> pd.DataFrame:
    """``left`` and ``right`` joined row to row on the sample key (:data:`SAMPLE_KEY` columns both carry).

    Each sample must appear at most once on each side, and no other column may appear on both
    (one value per cell, never a silent ``_x``/``_y`` pair). ``how="inner"`` drops samples
    missing from either side; ``"left"`` keeps every row of ``left`` (NaN where ``right`` has none).
    """
    key = _key(left, right)
    clash = (set(left.columns) & set(right.columns)) - set(key)
    if clash:
        raise GradvizError(f"the two tables share column names {sorted(map(str, clash))} besides the sample key")
    for side, table in (("first", left), ("second", right)):
        if table.duplicated(key).any():
            raise GradvizError(f"the {side} table names a sample twice (same {', '.join(key)}); cannot join by sample")
    return left.merge(right, on=key, how=how, validate="one_to_one")


def join_layers(scores: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """A scores table joined with a layer table: one row per sample in both, layer columns as ``"layer/stat"``
    (the meta classifier's input). Samples missing from either table are dropped."""
    return join_samples(scores, flat_layer_table(layers))


def aligned_column(scores: pd.DataFrame, index: pd.MultiIndex, column: str) -> np.ndarray:
    """``scores[column]`` in the row order of a (dataset, index) MultiIndex (e.g. a layer table's); NaN where absent."""
    if column not in scores.columns:
        raise GradvizError(f"the scores table has no {column!r} column")
    series = scores.set_index(["dataset", "index"])[column]
    series = series[~series.index.duplicated()]
    return series.reindex(index).to_numpy(dtype=float)


def _neutralise(value):
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell (and column name) that starts with ``= + - @``, a tab or a carriage
    return prefixed by a single quote, so a spreadsheet shows it as text instead of running it (OWASP, CSV
    injection). Numeric, boolean and date columns are returned untouched: -1.5 stays a number."""
    out = frame.copy()
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if isinstance(col.dtype, pd.CategoricalDtype):
            col = col.astype(object)
        elif not (pd.api.types.is_object_dtype(col.dtype) or pd.api.types.is_string_dtype(col.dtype)):
            continue
        out.isetitem(i, col.map(_neutralise))
    if not isinstance(out.columns, pd.MultiIndex):
        out.columns = [_neutralise(c) for c in out.columns]
    return out


def to_csv(frame: pd.DataFrame, path=None) -> str | None:
    """``frame`` as CSV without its index, made safe for spreadsheets (:func:`csv_safe`): the text when
    ``path`` is None, else written to ``path``. The one way gradviz writes a CSV.

    Rows end in CRLF (RFC 4180, Python's csv default): with a bare LF the writer would not quote a cell
    holding a carriage return (a file name may), and a reader would split the row there."""
    return csv_safe(frame).to_csv(path, index=False, lineterminator="\r\n")
