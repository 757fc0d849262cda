"""CLI end to end on small N, bad inputs (one clear line, exit 2), and torchrun sharding."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gradviz.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_score_writes_tables_and_prints_metrics(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["score", "--id", "mnist", "--ood", "letters", "--ood", "noise-uniform",
               "--methods", "msp,energy,gradnorm,confounding", "--limit", "60", "--out", str(out), "--cache", "none"])
    assert rc == 0
    scores = pd.read_csv(out / "scores.csv")
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(scores) == 180
    assert {"dataset", "role", "index", "path", "label", "prediction", "correct", "msp", "confounding"} <= set(scores.columns)
    assert len(metrics) == 2 * 4 and {"auroc", "fpr95", "aupr_in", "aupr_out"} <= set(metrics.columns)
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


def test_compile_flag_reaches_the_engine(tmp_path, monkeypatch):
    """--compile off is the eager path (same scores as the default path, within float32 round-off)."""
    import pandas as pd

    monkeypatch.setenv("GRADVIZ_COMPILE", "auto")  # restored after the test (the flag sets it)
    common = ["--id", "mnist", "--ood", "letters", "--methods", "grad_l2,grad_max", "--limit", "16", "--cache", "none"]
    assert main(["score", *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["score", *common, "--compile", "off", "--out", str(tmp_path / "b")]) == 0
    assert os.environ["GRADVIZ_COMPILE"] == "off"
    a, b = pd.read_csv(tmp_path / "a" / "scores.csv"), pd.read_csv(tmp_path / "b" / "scores.csv")
    assert ((a["grad_l2"] - b["grad_l2"]).abs() <= 1e-5 * a["grad_l2"].abs() + 1e-9).all()
    with pytest.raises(SystemExit):  # argparse refuses an unknown mode
        main(["score", *common, "--compile", "fast", "--out", str(tmp_path / "c")])


def test_torchrun_two_processes_match_single_process(tmp_path):
    common = ["--id", "mnist", "--ood", "noise-uniform", "--methods", "msp,gradnorm,gaia_z", "--limit", "37", "--cache", "none"]
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
