"""The choices table (every registered choice, gradviz's default and the other setting, AUROC of both) and the
per-model OOD table of docs/RESULTS.md, on synthetic metrics: structure, placement of the numbers, and that every
setting the report runs is a valid parameter value."""

from __future__ import annotations

import pandas as pd
import pytest

from gradviz.methods import get_method, list_methods
from gradviz.reporting.family_report import (OTHER_SETTINGS, adaptations, choices_section, choices_table,
                                             model_table)

OOD = ["letters", "noise-uniform"]


def _metrics(methods: list[str], auroc) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "ood_dataset": o, "auroc": auroc(m, o), "fpr95": 0.5}
                         for m in methods for o in OOD])


def test_adaptations_cover_every_registered_paper_setting_with_a_runnable_value():
    rows = adaptations()
    registered = {(i.name, k) for i in list_methods() for k in i.paper_settings}
    assert {(r["method"], r["parameter"]) for r in rows} == registered | set(OTHER_SETTINGS)
    assert {"exgrad", "grood", "knn", "vim", "mahalanobis"} <= {r["method"] for r in rows}
    for r in rows:
        info = get_method(r["method"])
        assert r["gradviz"] == info.defaults[r["parameter"]] and r["value"] != r["gradviz"]
        info.create(**{r["parameter"]: r["value"]})  # the value the report runs is accepted (type, range, choices)


def test_choices_table_puts_each_setting_s_auroc_in_its_own_column():
    rows = adaptations()
    names = sorted({r["method"] for r in rows})
    default = _metrics(names, lambda m, o: 0.25)
    other = {(r["method"], r["parameter"]): _metrics([r["method"]], lambda m, o, i=i: 0.5 + i / 100 + (o == "letters") / 10)
             for i, r in enumerate(rows)}
    table = choices_table(rows, default, other, OOD)
    assert list(table.columns) == ["method", "parameter", "default", "other setting", "letters AUROC default",
                                   "letters AUROC other", "noise-uniform AUROC default", "noise-uniform AUROC other"]
    assert len(table) == len(rows)
    for i, (r, got) in enumerate(zip(rows, table.itertuples(index=False))):
        assert (got.method, got.parameter) == (r["method"], r["parameter"])
        assert got[2].startswith(str(r["gradviz"]) if not isinstance(r["gradviz"], float) else f"{r['gradviz']:g}")
        assert got[4] == 0.25 and got[6] == 0.25
        assert got[5] == pytest.approx(0.6 + i / 100) and got[7] == pytest.approx(0.5 + i / 100)
    for r, other in zip(rows, table["other setting"]):  # the value run for the other setting is always shown
        assert str(r["value"]) in other
    by_choice = table.set_index(["method", "parameter"])
    knn = by_choice.loc[("knn", "k_fraction"), "other setting"]
    assert knn.endswith("i.e. 0.001 (paper)")  # already in the registry's words: no "(run: …)" added
    assert by_choice.loc[("knn", "k_fraction"), "default"] == "0 (off: k = 50 whatever the fit set)"  # not "0.0"
    # the paper's setting is marked on whichever side it is: an adaptation's other setting, GROOD's default
    assert by_choice.loc[("vim", "rule"), "other setting"] == "benchmark (paper)"
    assert by_choice.loc[("grood", "mixup_layer")].tolist()[:2] == ["auto (paper)", "input"]
    assert "(paper)" not in " ".join(by_choice.loc[("gradient_density", "covariance")].tolist()[:2])
    text = "\n".join(choices_section(table, "mnist-cnn"))
    assert text.count("\n| ") == len(rows) + 1 and "`mnist-cnn`" in text  # header row + one row per adaptation


def test_model_table_lists_every_method_by_family_with_the_best_in_bold():
    names = [i.name for i in list_methods()]
    metrics = _metrics(names, lambda m, o: 0.9 if m in ("vim", "grood", "energy") else 0.6)
    lines = model_table(metrics, OOD).splitlines()
    assert lines[0].startswith("| family | method | letters AUROC↑ | letters FPR95↓") and "declared" not in lines[0]
    body = [line.split(" | ")[:2] for line in lines[2:]]
    assert [b[1] for b in body] == [i.name for i in list_methods()]  # list_methods is already by family
    families = [b[0].strip("| ") for b in body]
    assert families == sorted(families, key=["output", "feature", "gradient"].index)
    assert "| feature | vim | **0.900** |" in model_table(metrics, OOD)
