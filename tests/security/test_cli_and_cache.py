"""Bad input: the CLI's bad input, and never a stale or silently wrong number.

Each test reproduces one case of the probe: a config ``limit`` of 1e18, ``--out`` naming a file,
NaN logits, a fitted method's on-disk key without the seed, a code-version hash that missed
most of the package — and two more inputs a cache key missed (an edited fit folder, the same
weights under another card). See tests/security/README.md for the whole catalogue.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

import gradviz.runtime.store as store_mod

# --------------------------------------------------------------------------- the code version covers every source


def _copy_package(tmp_path: Path) -> Path:
    root = tmp_path / "gradviz"
    shutil.copytree(store_mod.PACKAGE_DIR, root, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    return root


def test_code_version_lists_every_source_file_of_the_package_and_no_missing_one():
    files = store_mod.source_files()
    assert files and all(p.is_file() for p in files)  # derived from the tree: never a file that no longer exists
    want = {p for p in store_mod.PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    want |= set(store_mod.PACKAGE_DIR.rglob("*.c"))
    assert set(files) == want
    names = {p.relative_to(store_mod.PACKAGE_DIR).as_posix() for p in files}
    assert {"scoring.py", "models/__init__.py", "data/__init__.py", "data/letters.py", "runconfig.py",
            "engine/kernels/fused_stats.c"} <= names


@pytest.mark.parametrize("edit", ["models/zoo.py", "data/letters.py", "scoring.py", "models/new_model.py",
                                  "data/new_set.py", "engine/kernels/fused_stats.c"])
def test_code_version_changes_when_any_source_file_changes(tmp_path, monkeypatch, edit):
    monkeypatch.setattr(store_mod, "_RECHECK_S", 0.0)
    root = _copy_package(tmp_path)
    before = store_mod.code_version(root)
    assert before == store_mod.code_version()  # the same sources hash the same wherever they lie
    time.sleep(0.01)
    path = root / edit
    path.write_text((path.read_text() if path.exists() else "") + "\n# changed\n")
    assert store_mod.code_version(root) != before


# --------------------------------------------------------------------------- fitted methods are keyed by their seed


@pytest.mark.slow
def test_runs_differing_only_in_seed_with_a_fit_split_are_not_served_each_others_fitted_scores(tmp_path):
    import numpy as np

    from gradviz.models.zoo import random_model
    from gradviz.scoring import RunConfig, run
    from gradviz.runtime.store import ResultStore

    model = random_model("mnist-cnn")
    store = ResultStore(tmp_path)

    def scores(seed: int, store) -> np.ndarray:
        # The ID set (the first 24 held-out digits) is the same for every seed; only the fit split is drawn from it.
        cfg = RunConfig(id="mnist", ood=[], methods=["mahalanobis", "msp"], limit=24, seed=seed,
                        fit_set="fit:0.1:mnist:train")
        return run(cfg, store=store, model=model).scores

    first = scores(0, store)
    second = scores(1, store)  # old key: (model, images, method, params, fit spec) — the seed-0 column came back
    fresh = scores(1, None)
    assert np.array_equal(second["mahalanobis"], fresh["mahalanobis"])
    assert not np.array_equal(first["mahalanobis"], second["mahalanobis"])  # the fit split did change
    assert np.array_equal(first["msp"], second["msp"])  # unfitted scores are shared across seeds: a hit
    assert len(list(tmp_path.glob("*.npz"))) == 5  # base + logits + msp once, mahalanobis once per seed


def test_fitted_key_holds_every_input_of_the_fitted_state():
    from gradviz.scoring import FitSet, fit_inputs

    assert fit_inputs("fit:mnist:train", 0) != fit_inputs("fit:mnist:train", 1)
    assert fit_inputs("fit:0.3:mnist:train", 0) != fit_inputs("fit:mnist:train", 0)
    assert set(fit_inputs("mnist:train", 0)) == {"spec", "seed", "limit", "content"}
    assert FitSet.identify("mnist:train", 0).content is None  # fixed by spec, seed and code: nothing read


def _digits_folder(root: Path, n: int, start: int = 0) -> None:
    import numpy as np
    from PIL import Image

    from gradviz.data.mnist import mnist_split

    images, labels = mnist_split("train")
    for i in range(start, start + n):
        folder = root / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((images[i, 0].numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")


def test_a_fit_folder_edited_on_disk_is_fitted_again_not_served_from_the_cache(tmp_path):
    import numpy as np

    from gradviz.models.zoo import random_model
    from gradviz.scoring import RunConfig, run
    from gradviz.runtime.store import ResultStore

    model = random_model("mnist-cnn")
    store = ResultStore(tmp_path / "cache")
    fit_folder = tmp_path / "fit"
    _digits_folder(fit_folder, 60)
    cfg = dict(id="mnist", ood=[], methods=["mahalanobis"], limit=16, fit_set=f"folder:{fit_folder}")
    before = run(RunConfig(**cfg), store=store, model=model).scores["mahalanobis"].to_numpy()
    _digits_folder(fit_folder, 60, start=60)  # the same spec now names 120 images
    after = run(RunConfig(**cfg), store=store, model=model).scores["mahalanobis"].to_numpy()
    fresh = run(RunConfig(**cfg), store=None, model=model).scores["mahalanobis"].to_numpy()
    assert np.array_equal(after, fresh) and not np.array_equal(before, after)


@pytest.mark.slow
def test_the_same_weights_under_another_card_never_share_a_cached_result(tmp_path):
    import copy

    import numpy as np

    from gradviz.models import GradvizModel
    from gradviz.models.zoo import random_model
    from gradviz.scoring import RunConfig, run
    from gradviz.runtime.store import ResultStore

    first = random_model("mnist-cnn")
    card = copy.deepcopy(first.card)
    card.mean, card.std = (0.3,), (0.5,)  # another normalisation: every number changes, the parameters do not
    second = GradvizModel(copy.deepcopy(first.net), card)
    store = ResultStore(tmp_path)
    cfg = dict(id="mnist", ood=["noise-uniform"], methods=["msp", "mahalanobis"], limit=12)
    a = run(RunConfig(**cfg), store=store, model=first).scores
    b = run(RunConfig(**cfg), store=store, model=second).scores
    fresh = run(RunConfig(**cfg), store=None, model=second).scores
    for column in ("confidence", "msp", "mahalanobis"):
        assert np.array_equal(b[column], fresh[column]) and not np.array_equal(a[column], b[column])


# --------------------------------------------------------------------------- NaN logits are named as such


def _nan_logits_model():
    """A tiny classifier whose logits are NaN for images whose first pixel is above 0.5 (about half of uniform noise,
    no MNIST digit: their corners are black) — per sample, so the same in any batch."""
    import torch
    from torch import nn

    from gradviz.models import GradvizModel
    from gradviz.models.card import ModelCard

    class NanNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(784, 16)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            z = self.fc(torch.relu(self.body(x.flatten(1))))
            bad = (x.flatten(1)[:, :1] > 0.0)  # normalised: (pixel - 0.5) / 0.25 > 0
            return torch.where(bad, torch.full_like(z, float("nan")), z)

    torch.manual_seed(0)
    card = ModelCard(name="nan-logits", architecture="nan-logits", input_size=(1, 28, 28), mean=(0.5,), std=(0.25,),
                     class_names=[str(i) for i in range(10)])
    return GradvizModel(NanNet(), card)


def test_nan_logits_are_reported_as_the_models_logits_naming_the_samples():
    import numpy as np

    from gradviz.data import load_dataset
    from gradviz.scoring import RunConfig, run

    model = _nan_logits_model()
    noise = load_dataset("noise-uniform", model.card, limit=30)
    expected = np.flatnonzero(noise.images.flatten(1)[:, 0].numpy() > 0.5)
    assert 5 < len(expected) < 30
    result = run(RunConfig(id="mnist", ood=["noise-uniform"], methods=["msp", "energy", "gradnorm"], limit=30),
                 model=model)
    logits = [w for w in result.warnings if "logits" in w]
    assert len(logits) == 1, result.warnings
    shown = ", ".join(f"noise-uniform#{i}" for i in expected[:5])
    assert f"logits are NaN or infinite for {len(expected)} sample(s) ({shown}, … {len(expected)} in all)" in logits[0]
    # not once more per method, and never "0 samples"
    assert not any(w.startswith(("msp:", "energy:", "gradnorm:")) for w in result.warnings), result.warnings
    assert not any(" has 0" in w or "0 sample" in w for w in result.warnings), result.warnings
    noise_rows = result.scores[result.scores["dataset"] == "noise-uniform"]
    assert noise_rows["confidence"].isna().sum() == len(expected)
    id_rows = result.scores[result.scores["role"] == "id"]
    assert id_rows["correct"].notna().all()  # digits have finite logits: predicted and counted


def test_all_nan_logits_name_the_logits_not_zero_samples():
    from gradviz.scoring import RunConfig, run

    model = _nan_logits_model()
    model.net.fc.bias.data[0] = float("nan")  # every logit vector now holds a NaN
    result = run(RunConfig(id="mnist", ood=["noise-uniform"], methods=["msp"], limit=12), model=model)
    text = " | ".join(result.warnings)
    assert ("logits are NaN or infinite for 24 sample(s) (mnist#0, mnist#1, mnist#2, mnist#3, mnist#4, … 24 in all)"
            in text)
    assert "add images" not in text  # the sets are not empty: their scores are NaN
    assert result.scores["correct"].isna().all()  # no prediction is counted right or wrong


def test_cli_warns_that_the_logits_are_nan(tmp_path, monkeypatch, capsys):
    import gradviz.cli as cli

    monkeypatch.setattr(cli, "_load_model", lambda name, weights, device: _nan_logits_model())
    assert cli.main(["score", "--ood", "noise-uniform", "--methods", "msp,energy", "--limit", "20",
                     "--out", str(tmp_path / "o"), "--cache", "none"]) == 0
    err = capsys.readouterr().err
    assert "warning: the model's logits are NaN or infinite for" in err
    assert "noise-uniform#" in err


# ------------------------------------------------------------------------ the CLI: sizes and numbers are checked first


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def _no_work(monkeypatch) -> None:
    """Fail the test if a command starts working (loads a model, builds the report, trains) before its checks."""
    import gradviz.cli as cli
    import gradviz.models.train as train
    import gradviz.reporting.report as report

    def too_early(*args, **kwargs):
        pytest.fail("work started before the command line was checked")

    monkeypatch.setattr(cli, "_load_model", too_early)  # the first step of score, layers and meta
    monkeypatch.setattr(report, "build_report", too_early)
    monkeypatch.setattr(train, "train_model", too_early)


def _config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.json"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, phrase", [
    ('{"limit": 1e18, "ood": ["letters"]}', "limit: expected a positive whole number up to 1,000,000"),
    ('{"limit": 1000001}', "limit: expected a positive whole number up to 1,000,000"),
    ('{"limit": -1e18}', "limit: expected a positive whole number"),
    ('{"limit": 1e400}', "limit: expected a positive whole number"),  # JSON's 1e400 is inf in Python
    ('{"seed": 1e18}', "seed: expected a whole number from 0 to 4294967295"),
    ('{"batch_size": 1e18}', "batch_size: expected null or a whole number from 1 to 65,536"),
    ('{"id": "test:nan:mnist", "fit_set": "fit:nan:mnist"}', "must lie strictly between 0 and 1, got nan"),
    ('{"id": "test:1e400:mnist", "fit_set": "fit:0:mnist"}', "must lie strictly between 0 and 1, got inf"),
    ('{"fit_set": "fit:2:mnist"}', "must lie strictly between 0 and 1, got 2"),
    ('{"fit_set": "fit:fit:mnist"}', "cannot split a part of a set again"),
    ('{"ood": ["corrupt:fog:99999999999999999999"]}', "severity must be 1–5"),
])
def test_config_numbers_out_of_range_end_in_one_error_line(tmp_path, capsys, monkeypatch, text, phrase):
    from gradviz.cli import main

    _no_work(monkeypatch)
    assert main(["score", "--config", _config_file(tmp_path, text), "--out", str(tmp_path / "o"),
                 "--cache", "none"]) == 2
    assert phrase in _one_error_line(capsys)


@pytest.mark.parametrize("argv, phrase", [
    (["score", "--limit", str(10**18)], "limit: expected a positive whole number up to 1,000,000"),
    (["score", "--batch-size", str(10**18)], "batch_size"),
    (["score", "--seed", "-1"], "seed"),
    (["layers", "--limit", str(10**18)], "limit"),
    (["meta", "--limit", str(10**18)], "limit"),
    (["report", "--limit", str(10**18)], "--limit must be a whole number from 1 to 1,000,000"),
    (["report", "--limit", "0"], "--limit must be a whole number from 1 to 1,000,000"),
    (["report", "--seed", "-3"], "--seed must be a whole number from 0 to 4,294,967,295"),
    (["train", "--limit", "-5"], "--limit must be a whole number from 1 to 1,000,000"),
    (["train", "--seed", str(2**40)], "--seed must be a whole number from 0"),
    (["score", "--id", "mnist:train", "--id-split", "nan"], "--id-split must lie strictly between 0 and 1"),
    (["score", "--id", "mnist:train", "--id-split", "inf"], "--id-split must lie strictly between 0 and 1"),
])
def test_cli_numbers_out_of_range_end_in_one_error_line(tmp_path, capsys, monkeypatch, argv, phrase):
    from gradviz.cli import main

    _no_work(monkeypatch)
    assert main([*argv, "--out", str(tmp_path / "o")] + (["--cache", "none"] if argv[0] != "train" else [])) == 2
    assert phrase in _one_error_line(capsys)


def test_generated_sets_cap_their_size_before_drawing(monkeypatch):
    import gradviz.data as data_mod
    from gradviz.data import MAX_GENERATED, load_dataset
    from gradviz.data.letters import render_letters
    from gradviz.data.noise import gaussian_noise, uniform_noise
    from gradviz.errors import DatasetError
    from gradviz.runconfig import MAX_LIMIT

    for make in (render_letters, uniform_noise, gaussian_noise):  # asked directly: refused, nothing allocated
        with pytest.raises(DatasetError, match=f"at most {MAX_GENERATED:,}|1 to {MAX_GENERATED:,}"):
            make(10**18)
    monkeypatch.setattr(data_mod, "MAX_GENERATED", 40)  # (the real cap, 50,000, takes seconds to render)
    for spec in ("letters", "noise-uniform", "noise-gaussian"):
        assert len(load_dataset(spec, limit=MAX_LIMIT)) == 40  # a limit is "at most": the set holds what it can


# --------------------------------------------------------------------------- the CLI: --out naming a file


@pytest.mark.parametrize("argv", [
    ["score", "--ood", "noise-uniform", "--methods", "msp", "--limit", "5"],
    ["layers", "--limit", "5"],
    ["layers", "--coverage"],
    ["meta", "--limit", "5"],
    ["report", "--quick", "--limit", "5"],
    ["train", "--limit", "10"],
])
@pytest.mark.parametrize("where", ["file", "below a file"])
def test_out_naming_an_existing_file_ends_in_one_error_line_before_any_work(tmp_path, capsys, monkeypatch, argv, where):
    import gradviz.cli as cli

    _no_work(monkeypatch)
    target = tmp_path / "taken"
    target.write_text("not a folder")
    out = target if where == "file" else target / "sub"
    cache = ["--cache", "none"] if argv[0] != "train" else []
    assert cli.main([*argv, "--out", str(out), *cache]) == 2
    line = _one_error_line(capsys)
    assert f"--out {out}" in line and ("existing file" in line or "cannot make that folder" in line)
    assert target.read_text() == "not a folder"


def test_a_file_that_cannot_be_written_mid_run_is_one_error_line(tmp_path, capsys):
    from gradviz.cli import main

    out = tmp_path / "o"
    (out / "scores.csv").mkdir(parents=True)  # the folder is fine; the file inside cannot be written
    assert main(["score", "--ood", "noise-uniform", "--methods", "msp", "--limit", "4", "--out", str(out),
                 "--cache", "none"]) == 2
    err = capsys.readouterr().err  # (progress bars come first: the run did start)
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error" in line.lower()]
    assert "Traceback" not in err and len(errors) == 1, err
    assert "error: cannot read or write" in errors[0] and "scores.csv" in errors[0]
