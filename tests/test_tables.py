"""gradviz.reporting.tables: scores and layer tables are joined by sample key (never by position) and flattened one
way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradviz.errors import GradvizError
from gradviz.reporting.tables import column_name, flat_layer_table, flatten_columns, join_layers, join_samples


def _layers(specs: dict[str, int]) -> pd.DataFrame:
    """A layer table whose every value encodes its own sample: value = 1000·set number + index (+ column offset)."""
    cols = pd.MultiIndex.from_product([["conv", "fc"], ["l2", "max"]], names=["layer", "stat"])
    frames = []
    for k, (spec, n) in enumerate(specs.items()):
        values = (1000.0 * k + np.arange(n))[:, None] + np.arange(len(cols)) / 10
        frame = pd.DataFrame(values, columns=cols)
        frame.index = pd.MultiIndex.from_arrays([[spec] * n, np.arange(n)], names=["dataset", "index"])
        frames.append(frame)
    return pd.concat(frames)


def _scores(specs: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """A scores table of the same samples, rows shuffled; ``expect`` holds the conv/l2 value of each row's sample."""
    rows = [(spec, "id" if k == 0 else "ood", i, 1000.0 * k + i) for k, (spec, n) in enumerate(specs.items())
            for i in range(n)]
    table = pd.DataFrame(rows, columns=["dataset", "role", "index", "expect"])
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_join_matches_rows_by_sample_whatever_the_order():
    specs = {"mnist": 7, "letters": 5, "noise-uniform": 3}
    scores = _scores(specs)
    table = join_layers(scores, _layers(specs))
    assert len(table) == 15
    np.testing.assert_array_equal(table["conv/l2"].to_numpy(), table["expect"].to_numpy())
    np.testing.assert_array_equal(table["fc/max"].to_numpy(), table["expect"].to_numpy() + 0.3)
    assert table[["dataset", "role", "index"]].equals(scores[["dataset", "role", "index"]])  # the scores' order kept
    # What a positional join (concat(axis=1)) of the same two tables would have done: rows of other samples.
    positional = pd.concat([scores.reset_index(drop=True), flat_layer_table(_layers(specs))["conv/l2"]], axis=1)
    assert not np.array_equal(positional["conv/l2"].to_numpy(), positional["expect"].to_numpy())


def test_join_drops_unmatched_samples_or_keeps_them_as_nan():
    scores = _scores({"mnist": 4, "letters": 2})
    layers = _layers({"mnist": 4}).drop(index=("mnist", 2))
    inner = join_layers(scores, layers)
    assert sorted(zip(inner["dataset"], inner["index"])) == [("mnist", 0), ("mnist", 1), ("mnist", 3)]
    left = join_samples(scores, flat_layer_table(layers), how="left")
    assert len(left) == 6 and left["conv/l2"].isna().sum() == 3


def test_join_refuses_duplicates_clashes_and_missing_keys():
    scores = _scores({"mnist": 3})
    with pytest.raises(GradvizError, match="names a sample twice"):
        join_samples(pd.concat([scores, scores.head(1)]), flat_layer_table(_layers({"mnist": 3})))
    with pytest.raises(GradvizError, match="share column names .*expect"):
        join_samples(scores, scores[["dataset", "index", "expect"]])
    with pytest.raises(GradvizError, match="key columns 'dataset' and 'index'"):
        join_samples(scores.drop(columns="index"), flat_layer_table(_layers({"mnist": 3})))
    with pytest.raises(GradvizError, match="layer, stat"):
        join_layers(scores, flat_layer_table(_layers({"mnist": 3})))


def test_join_uses_role_where_both_tables_carry_it():
    left = pd.DataFrame({"dataset": ["a", "a"], "role": ["id", "ood"], "index": [0, 0], "x": [1.0, 2.0]})
    right = pd.DataFrame({"dataset": ["a", "a"], "role": ["ood", "id"], "index": [0, 0], "y": [20.0, 10.0]})
    joined = join_samples(left, right)
    assert joined["y"].tolist() == [10.0, 20.0]


def test_one_flattening_for_every_column_shape():
    assert column_name(("conv1", "l2")) == "conv1/l2"
    assert column_name(("entropy", "")) == "entropy" and column_name(("fc", "Unnamed: 3_level_1")) == "fc"
    assert column_name("already/flat") == "already/flat"
    flat = flat_layer_table(_layers({"mnist": 2}))
    assert list(flat.columns) == ["dataset", "index", "conv/l2", "conv/max", "fc/l2", "fc/max"]
    plain = pd.DataFrame({"a": [1]})
    assert flatten_columns(plain) is plain
