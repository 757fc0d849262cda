"""CLI end to end on small N, bad inputs (one clear line, exit 2), and torchrun sharding."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from gradviz.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_score_writes_tables_and_prints_metrics(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["score", "--id", "mnist", "--ood", "letters", "--ood", "noise-uniform",
               "--methods", "msp,energy,gradnorm,confounding", "--limit", "60", "--out", str(out), "--cache", "none"])
    assert rc == 0
    scores = pd.read_csv(out / "scores.csv")
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(scores) == 180
    assert {"dataset", "role", "index", "path", "label", "prediction", "correct", "msp",
            "confounding"} <= set(scores.columns)
    ood = metrics[metrics["task"] == "ood"]
    assert len(ood) == 2 * 4 and {"auroc", "fpr95", "aupr_in", "aupr_out"} <= set(metrics.columns)
    misc = metrics[metrics["task"] == "misclassification"]  # letters and noise have no labels: the ID set alone
    assert len(metrics) == 3 * 4 and list(misc["method"]) == ["msp", "energy", "gradnorm", "confounding"]
    assert misc["shifted"].isna().all() and misc["aurc"].between(0, 1).all() and misc["n"].eq(60).all()
    calibration = pd.read_csv(out / "calibration.csv")
    assert list(calibration["temperature_fit"]) == ["none", "fit", "crossfit"]
    assert calibration["ece"].between(0, 1).all()
    printed = capsys.readouterr().out
    assert "auroc" in printed and "noise-uniform" in printed
    # the saved config replays to the same numbers
    rc = main(["score", "--config", str(out / "config.json"), "--out", str(tmp_path / "replay"), "--cache", "none"])
    assert rc == 0
    replay = pd.read_csv(tmp_path / "replay" / "scores.csv")
    pd.testing.assert_frame_equal(scores, replay)


@pytest.mark.parametrize("argv, message", [
    (["score", "--id", "nope", "--out", "x"], "unknown dataset"),
    (["score", "--methods", "bogus", "--out", "x"], "unknown method"),
    (["score", "--model", "nope", "--out", "x"], "unknown model"),
    (["score", "--limit", "0", "--out", "x"], "limit"),
    (["score", "--weights", "/nonexistent.safetensors", "--out", "x"], "not found"),
    (["score", "--ood", "corrupt:fog:9", "--out", "x", "--limit", "5"], "severity"),
    (["score", "--device", "cuda", "--out", "x"], "cuda"),
])
def test_bad_input_one_clear_line_exit_2(argv, message, capsys, tmp_path):
    argv = [a if a != "x" else str(tmp_path / "o") for a in argv]
    if "cuda" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0].lower()


def test_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["score", "--ood", f"folder:{tmp_path / 'empty'}", "--methods", "msp", "--limit", "5",
                 "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err


def test_list_shows_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["mnist-cnn", "letters", "gaia_z", "confounding", "corrupt", "statistics kernel:", "BatchNorm folding",
                 "knn ", "[feature]", "grood ", "[gradient]", "[output]"]:
        assert name in out


@pytest.mark.slow
def test_compile_flag_reaches_the_engine(tmp_path, monkeypatch):
    """--compile off is the eager path (same scores as the default path, within float32 round-off)."""
    import pandas as pd

    from gradviz.engine import api
    from gradviz.engine.plans import base

    modes: list[str] = []
    for module in (api, base):
        original = module.fused_kernel
        monkeypatch.setattr(module, "fused_kernel", lambda mode, *a, _f=original: modes.append(mode) or _f(mode, *a))
    monkeypatch.setenv("GRADVIZ_COMPILE", "auto")
    common = ["--id", "mnist", "--ood", "letters", "--methods", "grad_l2,grad_max", "--limit", "16", "--cache", "none"]
    assert main(["score", *common, "--out", str(tmp_path / "a")]) == 0
    assert modes and set(modes) == {"auto"}
    modes.clear()
    assert main(["score", *common, "--compile", "off", "--out", str(tmp_path / "b")]) == 0
    assert modes and set(modes) == {"off"}  # the engine saw the flag
    assert os.environ["GRADVIZ_COMPILE"] == "auto"  # passed as settings, not through the environment
    a, b = pd.read_csv(tmp_path / "a" / "scores.csv"), pd.read_csv(tmp_path / "b" / "scores.csv")
    assert ((a["grad_l2"] - b["grad_l2"]).abs() <= 1e-5 * a["grad_l2"].abs() + 1e-9).all()
    with pytest.raises(SystemExit):  # argparse refuses an unknown mode
        main(["score", *common, "--compile", "fast", "--out", str(tmp_path / "c")])


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(tmp_path):
    common = ["--id", "mnist", "--ood", "noise-uniform", "--methods", "msp,gradnorm,gaia_z", "--limit", "37",
              "--cache", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADVIZ_DIST_BACKEND": "gloo"}
    single = tmp_path / "single"
    assert main(["score", *common, "--out", str(single)]) == 0
    sharded = tmp_path / "sharded"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "gradviz", "score", "--shard", *common, "--out", str(sharded)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = pd.read_csv(single / "scores.csv")
    b = pd.read_csv(sharded / "scores.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)


# --------------------------------------------------------------------------- score --config


def _write(tmp_path, text: str, name: str = "c.json") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, field", [
    ('{"limit": "fifty"}', "limit"), ('{"limit": NaN}', "limit"), ("42", "JSON object"), ("null", "JSON object"),
    ('{"methods": 5}', "methods"), ('{"seed": "x"}', "seed"), ('{"model": 123}', "model"),
    ('{"params": {"odin": 5}}', "params.odin"), ('{"params": {"odin": {"temperature": "abc"}}}', "params.odin"),
    ('{"batch_size": 0}', "batch_size"), ('{"batch_size": -3}', "batch_size"), ('{"limit": 12.7}', "limit"),
    ('{"params": {"odni": {"temperature": 2}}}', "params"), ('{"ood": "letterz"}', "unknown dataset 'letterz'"),
    ('{"ood": ["upload:3 files"]}', "uploaded in the dashboard"),
])
def test_bad_config_is_one_error_line_and_exit_2(text, field, tmp_path, capsys):
    assert main(["score", "--config", _write(tmp_path, text), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and field in err[0]
    assert not (tmp_path / "o").exists()


def test_unreadable_config_files_are_one_error_line(tmp_path, capsys):
    binary = tmp_path / "c.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for path in (str(binary), str(tmp_path / "missing.json"), str(tmp_path)):
        assert main(["score", "--config", path, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: config file")


def test_a_method_named_twice_is_scored_once(tmp_path):
    out = tmp_path / "o"
    assert main(["score", "--ood", "noise-uniform", "--methods", "msp,energy,msp", "--limit", "5", "--out", str(out),
                 "--cache", "none"]) == 0
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 10 and [c for c in scores.columns if c in ("msp", "energy")] == ["msp", "energy"]


@pytest.mark.slow
def test_flags_beside_a_config_override_it(tmp_path, capsys):
    cfg = _write(tmp_path, '{"id": "mnist", "ood": ["letters"], "methods": ["energy", "gradnorm"], "limit": 20}')
    out = tmp_path / "o"
    assert main(["score", "--config", cfg, "--limit", "5", "--methods", "msp", "--ood", "noise-uniform",
                 "--out", str(out), "--cache", "none"]) == 0
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 10 and list(scores["dataset"].unique()) == ["mnist", "noise-uniform"]
    assert "msp" in scores and "energy" not in scores
    written = json.loads((out / "config.json").read_text())
    assert written["limit"] == 5 and written["ood"] == ["noise-uniform"] and written["methods"] == "msp"
    help_text = build_parser()._subparsers._group_actions[0].choices["score"].format_help()
    assert "flags given beside it override its fields" in " ".join(help_text.split())


@pytest.mark.slow
def test_config_is_validated_before_the_cache_is_read(tmp_path, capsys):
    """A cached result must not let a bad field through (batch size is not part of the cache key)."""
    cache = str(tmp_path / "cache")
    good = {"id": "mnist", "ood": ["noise-uniform"], "methods": ["msp"], "limit": 8}
    assert main(["score", "--config", _write(tmp_path, json.dumps(good)), "--out", str(tmp_path / "a"),
                 "--cache", cache]) == 0
    bad = _write(tmp_path, json.dumps({**good, "batch_size": 0}), "bad.json")
    capsys.readouterr()
    assert main(["score", "--config", bad, "--out", str(tmp_path / "b"), "--cache", cache]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert main(["score", "--config", _write(tmp_path, json.dumps(good)), "--batch-size", "0", "--out",
                 str(tmp_path / "b"), "--cache", cache]) == 2


def test_layers_reads_the_config_too(tmp_path):
    cfg = _write(tmp_path, '{"id": "mnist", "ood": ["noise-uniform"], "limit": 6}')
    assert main(["layers", "--config", cfg, "--out", str(tmp_path / "o"), "--cache", "none"]) == 0
    table = pd.read_csv(tmp_path / "o" / "layers.csv")
    assert len(table) == 12 and set(table["dataset"]) == {"mnist", "noise-uniform"}


def test_absurd_folder_spec_is_one_error_line(tmp_path, capsys):
    assert main(["score", "--ood", "folder:" + "a" * 5000, "--methods", "msp", "--limit", "5",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a usable path" in err[0] and len(err[0]) < 300


@pytest.mark.slow
def test_skipped_files_notes_and_too_small_sets_are_reported(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (1, 1), 200).save(folder / "tiny.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "o"
    assert main(["score", "--ood", f"folder:{folder}", "--methods", "msp", "--limit", "10", "--out", str(out),
                 "--cache", "none"]) == 0
    err = capsys.readouterr().err
    assert f"folder:{folder}: 1 file(s) skipped (first: broken.png: " in err
    assert f"folder:{folder}: 1 file(s) altered while decoding (first: tiny.png: tiny image (1×1)" in err
    assert "too few samples for AUROC" in err and f"folder:{folder} has 1" in err  # why the metrics are NaN
    files = pd.read_csv(out / "files.csv")
    assert sorted(files["kind"]) == ["note", "skipped"]
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics.loc[metrics["task"] == "ood", "auroc"].isna().all()


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=10)
_FIELD = st.sampled_from(["model", "weights", "id", "ood", "methods", "limit", "seed", "device", "batch_size",
                          "fit_set", "params", "other"])


@pytest.mark.slow
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(_JSON,
                      st.dictionaries(_FIELD, _JSON | st.sampled_from(["letters", "msp", 5, -1, 2.5]), max_size=5)))
def test_fuzzed_config_files_exit_0_or_2_with_one_error_line(data, tmp_path_factory, monkeypatch):
    """Any JSON in --config: scoring starts on a valid config (stubbed here), else one error line and exit 2."""
    import gradviz.scoring

    seen = []

    def fake_run(cfg, **kwargs):
        seen.append(cfg)
        raise SystemExit(0)  # valid: stop before loading anything

    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "c.json"
    path.write_text(json.dumps(data))
    err = io.StringIO()
    with monkeypatch.context() as m:
        m.setattr(gradviz.scoring, "run", fake_run)
        m.setattr(sys, "stderr", err)
        try:
            rc = main(["score", "--config", str(path), "--out", str(tmp / "o")])
        except SystemExit as exc:
            rc = exc.code
    if seen:
        assert rc == 0
    else:
        lines = err.getvalue().strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()


# --------------------------------------------------------------------------- layers, meta, report end to end


def test_layers_writes_every_sample_with_the_library_values(tmp_path, capsys, bundled_model):
    from gradviz.data import load_dataset
    from gradviz.scoring import layer_table

    out = tmp_path / "o"
    assert main(["layers", "--id", "mnist", "--ood", "letters", "--limit", "12", "--loss", "confounding_softmax",
                 "--out", str(out), "--cache", "none"]) == 0
    table = pd.read_csv(out / "layers.csv")
    assert len(table) == 24 and list(table.columns[:2]) == ["dataset", "index"]
    assert all("/" in c for c in table.columns[2:]) and "fc/l2" in table.columns
    assert "24 samples" in capsys.readouterr().out
    # the letters rows hold the library's layer statistics of the same images, sample for sample
    want = layer_table(bundled_model, load_dataset("letters", bundled_model.card, limit=12), loss="confounding_softmax")
    got = table[table["dataset"] == "letters"].set_index("index")
    np.testing.assert_allclose(got["fc/l2"].to_numpy(), want[("fc", "l2")].to_numpy(), rtol=1e-4)
    assert main(["layers", "--loss", "nope", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown loss 'nope'")


@pytest.mark.slow
def test_meta_cross_validates_on_the_joined_tables(tmp_path, capsys):
    """Rotated digits (severity 5) give the bundled model errors to learn from; n and n_positive are the run's
    own ID samples and errors (scores.csv of the same configuration), so every row met its layer metrics."""
    cache = str(tmp_path / "cache")
    common = ["--id", "corrupt:rotate:5", "--ood", "noise-uniform", "--ood", "letters", "--limit", "40",
              "--cache", cache]
    assert main(["score", *common, "--methods", "entropy,msp", "--out", str(tmp_path / "s")]) == 0
    scores = pd.read_csv(tmp_path / "s" / "scores.csv")
    errors = int((~scores.loc[scores["role"] == "id", "correct"].astype(bool)).sum())
    assert errors >= 4
    assert main(["meta", *common, "--task", "correct", "--out", str(tmp_path / "c")]) == 0
    correct = pd.read_csv(tmp_path / "c" / "meta.csv")
    assert {"entropy", "msp", "gradient", "gradient+entropy", "all"} <= set(correct["feature_set"])
    assert (correct["n"] == 40).all() and (correct["n_positive"] == errors).all()
    assert correct["auroc"].between(0, 1).all()
    assert main(["meta", *common, "--task", "ood", "--known", "noise-uniform", "--classifier", "boosting",
                 "--out", str(tmp_path / "d")]) == 0
    ood = pd.read_csv(tmp_path / "d" / "meta.csv")
    assert {"unseen:letters", "unseen:noise-uniform", "unseen:all", "cv",
            "seen:noise-uniform"} <= set(ood["evaluation"])
    seen = ood[(ood["evaluation"] == "seen:noise-uniform") & (ood["feature_set"] == "gradient")].iloc[0]
    assert (seen["n"], seen["n_positive"]) == (80, 40)
    capsys.readouterr()
    assert main(["meta", "--id", "mnist", "--limit", "10", "--out", str(tmp_path / "e"), "--cache", cache]) == 2
    assert "too few samples" in capsys.readouterr().err  # the bundled model makes no error on 10 digits


@pytest.mark.slow
def test_score_with_a_three_channel_28px_card_loads_the_grey_sets(tmp_path, capsys):
    """A torchvision ResNet-18 with a 3×28×28 card: 1-channel digits are expanded to 3 channels without a resize."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "r18.safetensors"
    save_file(torchvision.models.resnet18(num_classes=10).state_dict(), str(weights))
    weights.with_suffix(".json").write_text(json.dumps({"input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.25] * 3,
                                                        "class_names": [str(i) for i in range(10)]}))
    out = tmp_path / "res"
    rc = main(["score", "--model", "torchvision:resnet18", "--weights", str(weights), "--id", "mnist",
               "--ood", "letters", "--ood", "corrupt:fog:3", "--methods", "msp,gradnorm", "--limit", "12",
               "--out", str(out), "--cache", "none"])
    assert rc == 0, capsys.readouterr().err
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 36 and scores[["msp", "gradnorm"]].notna().all().all()
