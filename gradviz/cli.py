"""Command line: ``python -m gradviz {train,score,layers,meta,report,list}``.

Every user error ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gradviz.config import use_settings
from gradviz.errors import GradvizError

if TYPE_CHECKING:  # imported inside the commands, so `gradviz --help` does not load torch
    from gradviz.config import Settings
    from gradviz.reporting.report import ReportConfig
    from gradviz.runconfig import RunConfig


def _tqdm_progress():
    from tqdm.auto import tqdm

    from gradviz.runtime.progress import SHOW_AFTER_S

    bars: dict[str, tqdm] = {}

    def progress(done: int, total: int, label: str) -> None:
        # "fitting mahalanobis on mnist:train (once): 40/125 batches, ~00:30 left", drawn once a pass has run 2 s
        bar = bars.get(label)
        if bar is not None and (done < bar.n or bar.total != total):  # the same pass again, or its batches now
            bar.close()
            bar = None
        if bar is None and total <= 1 and done == 0:  # a pass announcing itself (e.g. a fit loading its set)
            return
        if bar is None:
            bar = bars[label] = tqdm(total=total, desc=label, unit="batch", leave=False, file=sys.stderr,
                                     delay=SHOW_AFTER_S, bar_format="{desc}: {n_fmt}/{total_fmt} batches, "
                                                                    "~{remaining} left {bar:12}")
        bar.update(done - bar.n)  # (tqdm draws it only after the delay, at most every 0.1 s)
        if done >= total:
            bar.close()
            bars.pop(label, None)

    return progress


class _PlanLines:
    """Prints each distinct batch plan of :mod:`gradviz.runtime.budget` once, as one stderr line, while a command
    runs."""

    def __enter__(self):
        import logging

        seen: set[str] = set()

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                text = record.getMessage()
                if text not in seen:
                    from tqdm.auto import tqdm

                    seen.add(text)
                    tqdm.write(text, file=sys.stderr)  # above any progress bar, not inside it

        self.logger = logging.getLogger("gradviz.runtime.budget")
        self.handler, self.level = Handler(logging.INFO), self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as the folder a command writes into, made if missing; checked before any work starts, so a
    file of that name (or a folder that cannot be made) ends in one ``error:`` line, not a traceback at the end."""
    out = Path(path)
    shown = str(path) if len(str(path)) <= 200 else f"{str(path)[:199]}… ({len(str(path)):,} characters)"
    if out.exists() and not out.is_dir():
        raise GradvizError(f"{flag} {shown} is an existing file, not a folder; name a folder (it is made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, no permission, read-only disk, name too long
        raise GradvizError(f"{flag} {shown}: cannot make that folder ({exc.strerror or type(exc).__name__}); "
                           "name a folder you can write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise GradvizError(f"{flag} {shown}: the folder is not writable; name a folder you can write to")
    return out


def check_count(value: int | None, flag: str, low: int, high: int) -> None:
    """A whole-number flag given on the command line within [low, high] (None: not given), else one error line."""
    if value is not None and not low <= value <= high:
        raise GradvizError(f"{flag} must be a whole number from {low:,} to {high:,}, got {value:,}")


# Run-configuration fields the flags set; given beside --config, a flag overrides that field of the file.
_FLAG_FIELDS = {"model": "model", "weights": "weights", "id": "id", "ood": "ood", "methods": "methods",
                "limit": "limit", "seed": "seed", "device": "device", "batch_size": "batch_size", "fit_set": "fit_set"}


def _add_common(p: argparse.ArgumentParser, methods: bool = False) -> None:
    g = p.add_argument_group("run configuration", "Each flag given beside --config overrides that field of the file; "
                                                  "fields neither sets take their defaults.")
    g.add_argument("--config", default=None, help="run configuration JSON, as exported by the dashboard (checked whole "
                                                   "before anything runs; flags given beside it override its fields)")
    g.add_argument("--model", default=None,
                   help="mnist-cnn (default), mnist-vit, torchvision:<arch>, timm:<name>, an installed plugin "
                        "(entry-point group gradviz.models), or path/to/file.py:build (runs that file)")
    g.add_argument("--weights", default=None,
                   help="weights file (.safetensors or a weights-only state dict); a JSON card with the same stem "
                        "beside it sets input size, mean/std, classes")
    g.add_argument("--id", default=None, help="in-distribution dataset spec (default: mnist)")
    g.add_argument("--id-split", type=float, default=None, metavar="FRACTION",
                   help="split your own ID set (e.g. folder:PATH or zip:FILE): FRACTION of it (per class, seeded) "
                        "fits the fitted methods, the rest is scored as ID (same as --id test:[F:]SPEC "
                        "--fit-set fit:[F:]SPEC)")
    g.add_argument("--fit-set", default=None,
                   help="dataset the fitted methods (Mahalanobis) fit on (default: mnist:train)")
    g.add_argument("--ood", action="append", default=None,
                   help="OOD dataset spec; repeat for several (given with --config: replaces the file's list)")
    g.add_argument("--limit", type=int, default=None, help="at most N samples per dataset (default: all)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="at most N images per batch (default: as many as the memory budget allows, GRADVIZ_MEMORY_MB)")
    if methods:
        g.add_argument("--methods", default=None, help="comma-separated method names or 'all' (default: all)")
    p.add_argument("--cache", default=None,
                   help="results cache folder (default: ~/.cache/gradviz/results); 'none' disables")
    p.add_argument("--compile", choices=["auto", "on", "off"], default=None,
                   help="compiled statistics kernel: auto (default: use it where it builds), on (warn if it "
                        "cannot), off (eager PyTorch); same as GRADVIZ_COMPILE")


def _read_config(path: Path) -> "RunConfig":
    from gradviz.runconfig import MAX_CONFIG_BYTES, RunConfig

    try:
        if not path.is_file():
            raise GradvizError(f"config file not found: {path}")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise GradvizError(f"config file {path} is {path.stat().st_size:,} bytes; at most {MAX_CONFIG_BYTES:,}")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise GradvizError(f"config file {path} is not UTF-8 text (a JSON run configuration)") from None
    except OSError as exc:
        raise GradvizError(f"config file {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    return RunConfig.from_json(text)


def _config(args) -> "RunConfig":
    """The run configuration: --config's file (or the defaults, with no OOD set), then every flag given on top,
    validated as a whole (one error line naming each bad field)."""
    from gradviz.runconfig import RunConfig

    cfg = _read_config(Path(args.config)) if getattr(args, "config", None) else RunConfig(ood=[], limit=None)
    for flag, name in _FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            setattr(cfg, name, value)
    split = getattr(args, "id_split", None)
    if split is not None:  # your own ID set: a seeded per-class split into fitting and scored parts
        from gradviz.data.splits import split_spec

        if not 0 < split < 1:
            raise GradvizError(f"--id-split must lie strictly between 0 and 1, got {split}")
        if getattr(args, "fit_set", None):
            raise GradvizError("--id-split sets the fitting set itself; drop --fit-set")
        cfg.id, cfg.fit_set = split_spec("test", cfg.id, split), split_spec("fit", cfg.id, split)
    return cfg.validate()


def _report_files(result) -> None:
    """One summary line per dataset with skipped files or decoder notes (details in skipped.csv / notes)."""
    for spec, items in result.skipped.items():
        first = f"{items[0][0]}: {items[0][1]}"
        print(f"note: {spec}: {len(items)} file(s) skipped (first: {first[:160]})", file=sys.stderr)
    for spec, items in result.notes.items():
        print(f"note: {spec}: {len(items)} file(s) altered while decoding (first: {items[0][0]}: {items[0][1][:120]})",
              file=sys.stderr)


def _load_model(name: str, weights: str | None, device: str):
    """The model of the command line: here, and only here, ``file.py:build`` may run (the user asked for it)."""
    from gradviz.engine.kernels import build_in_background
    from gradviz.models import load_model

    build_in_background()  # the statistics kernel compiles beside the model and data loading that follow
    return load_model(name, weights, device, allow_code=True)


def _store(args):
    from gradviz.runtime.store import ResultStore

    if args.cache and args.cache.lower() == "none":
        return None
    return ResultStore(args.cache) if args.cache else ResultStore()


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GradvizError("--device cuda asked for, but no CUDA GPU is available; use --device cpu")


def cmd_score(args) -> int:
    from gradviz.scoring import run
    from gradviz.reporting.tables import to_csv

    cfg = _config(args)
    _check_device(cfg.device)
    output_folder(args.out)
    if args.shard:
        from gradviz.runtime.distributed import run_sharded

        result = run_sharded(cfg, store=_store(args), progress=_tqdm_progress())
        if result is None:  # non-zero ranks write nothing
            return 0
    else:
        model = _load_model(cfg.model, cfg.weights, cfg.device)
        result = run(cfg, progress=_tqdm_progress(), store=_store(args), model=model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    to_csv(result.scores, out / "scores.csv")
    trust = _trust_report(cfg, result, _store(args), None if args.shard else model)
    _write_metrics(out, result, trust)
    (out / "config.json").write_text(cfg.to_json())
    rows = [(spec, f, "skipped", why) for spec, items in result.skipped.items() for f, why in items]
    rows += [(spec, f, "note", what) for spec, items in result.notes.items() for f, what in items]
    if rows:
        import pandas as pd

        to_csv(pd.DataFrame(rows, columns=["dataset", "file", "kind", "reason"]), out / "files.csv")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    _report_files(result)
    if rows:
        print(f"note: every skipped or altered file is listed in {out / 'files.csv'}", file=sys.stderr)
    if len(result.metrics):
        with_cols = [c for c in ["ood_dataset", "method", "auroc", "fpr95", "aupr_in", "aupr_out"]
                     if c in result.metrics]
        print(result.metrics[with_cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    _print_trust(trust)
    acc = result.scores.loc[result.scores["role"] == "id", "correct"].astype("float").mean()
    print(f"\nID accuracy: {acc:.4f}   wrote {out / 'scores.csv'}, {out / 'metrics.csv'}"
          + (f", {out / 'calibration.csv'}" if trust is not None else ""))
    return 0


def _trust_report(cfg, result, store, model=None):
    """Misclassification metrics of every method and the model's calibration (gradviz.trust.report), or None when the
    ID set has no labels. ``model``: the one the scores came from (loaded again when not given)."""
    from gradviz.data import load_dataset
    from gradviz.trust.selective import labelled_sets
    from gradviz.trust.report import fit_split, trust_report

    scores = result.scores
    if not scores.loc[scores["role"] == "id", "correct"].notna().any():
        return None
    model = model if model is not None else _load_model(cfg.model, cfg.weights, cfg.device)
    specs = [cfg.id, *labelled_sets(scores)]
    datasets = {spec: load_dataset(spec, model.card, limit=cfg.limit, seed=cfg.seed) for spec in specs}
    return trust_report(scores, cfg.method_names(), model, datasets, fit_split(cfg.fit_set, model, cfg.seed),
                        batch_size=cfg.batch_size, store=store, seed=cfg.seed)


def _write_metrics(out: Path, result, trust) -> None:
    """metrics.csv with a ``task`` column (ood / misclassification) and, with labels, calibration.csv."""
    from gradviz.reporting.tables import to_csv
    from gradviz.trust.report import metrics_with_task

    if trust is None:
        to_csv(result.metrics.assign(task="ood")[["task", *result.metrics.columns]], out / "metrics.csv")
        return
    to_csv(metrics_with_task(result.metrics, trust.misclassification), out / "metrics.csv")
    to_csv(trust.calibration, out / "calibration.csv")


def _print_trust(trust) -> None:
    if trust is None:
        return
    misc = trust.misclassification[trust.misclassification["shifted"] == ""]
    print("\nmisclassification on the ID set (AURC, E-AURC, FPR95 lower = better; AUROC higher = better):")
    print(misc[["method", "aurc", "e_aurc", "auroc", "fpr95", "n_errors"]].to_string(
        index=False, float_format=lambda v: f"{v:.4f}"))
    cal = trust.calibration[trust.calibration["shifted"] == ""]
    print(f"calibration on the ID set (fit split: T = {trust.temperature:.3f}, {trust.temperature_source}; "
          "crossfit: each half of the ID set scaled by the T fitted on the other):")
    print(cal[["temperature_fit", "temperature", "ece", "mce", "brier", "nll", "accuracy"]].to_string(
        index=False, float_format=lambda v: f"{v:.4f}"))


def cmd_coverage(args) -> int:
    """``layers --coverage``: which plan computes each parameter group's per-sample gradient."""
    from gradviz.engine import coverage
    from gradviz.reporting.tables import to_csv

    cfg = _config(args)
    _check_device(cfg.device)
    if args.out:
        output_folder(args.out)
    report = coverage(_load_model(cfg.model, cfg.weights, cfg.device))
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        to_csv(report.to_frame(), out / "coverage.csv")
        print(f"-> {out / 'coverage.csv'}")
    report.check()
    return 0


def cmd_layers(args) -> int:
    import pandas as pd

    from gradviz.data import load_dataset
    from gradviz.engine import LOSSES
    from gradviz.scoring import layer_table
    from gradviz.reporting.tables import flat_layer_table, to_csv

    if args.coverage:
        return cmd_coverage(args)
    if not args.out:
        raise GradvizError("layers needs --out FOLDER (or --coverage to see how each parameter is covered)")
    cfg = _config(args)
    if args.loss not in LOSSES:
        raise GradvizError(f"unknown loss {args.loss!r}; known: {', '.join(LOSSES)}")
    _check_device(cfg.device)
    output_folder(args.out)
    model = _load_model(cfg.model, cfg.weights, cfg.device)
    frames = []
    for spec in [cfg.id] + cfg.ood:
        data = load_dataset(spec, model.card, limit=cfg.limit, seed=cfg.seed)
        frames.append(layer_table(model, data, loss=args.loss, batch_size=cfg.batch_size,
                                  store=_store(args), progress=_tqdm_progress()))
    table = pd.concat(frames)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    to_csv(flat_layer_table(table), out / "layers.csv")
    summary = table.groupby(level="dataset").median().T.unstack("stat") if len(table) else table
    print(f"{len(table)} samples × {table.shape[1]} (layer, statistic) columns -> {out / 'layers.csv'}")
    has_l2 = "l2" in table.columns.get_level_values("stat")
    print(summary.xs("l2", axis=1, level="stat").to_string(float_format=lambda v: f"{v:.4g}") if has_l2 else "")
    return 0


def cmd_meta(args) -> int:
    import pandas as pd

    from gradviz.data import load_dataset
    from gradviz.analysis.meta import meta_report
    from gradviz.scoring import layer_table, run
    from gradviz.reporting.tables import join_layers, to_csv

    cfg = _config(args)
    cfg.methods = ["entropy", "msp"]
    _check_device(cfg.device)
    output_folder(args.out)
    model = _load_model(cfg.model, cfg.weights, cfg.device)
    store = _store(args)
    result = run(cfg, progress=_tqdm_progress(), store=store, model=model)
    layers = []
    for spec in [cfg.id] + cfg.ood:
        data = load_dataset(spec, model.card, limit=cfg.limit, seed=cfg.seed)
        layers.append(layer_table(model, data, batch_size=cfg.batch_size, store=store, progress=_tqdm_progress()))
    table = join_layers(result.scores, pd.concat(layers))
    report = meta_report(table, task=args.task, known_ood=args.known or None, model=args.classifier, seed=cfg.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    to_csv(report.results, out / "meta.csv")
    print(report.results.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _report_config(args) -> "ReportConfig":
    """The report's configuration: --quick or the full defaults, then --limit, --seed, --corruptions, --severities."""
    from gradviz.analysis.sweeps import SEVERITIES
    from gradviz.data.corruptions import list_corruptions
    from gradviz.reporting.report import ReportConfig
    from gradviz.runconfig import MAX_LIMIT, MAX_SEED

    check_count(args.limit, "--limit", 1, MAX_LIMIT)
    check_count(args.seed, "--seed", 0, MAX_SEED)
    cfg = ReportConfig.quick() if args.quick else ReportConfig()
    if args.limit:
        cfg.limit = args.limit
    cfg.seed = args.seed
    if args.corruptions:
        names = [n.strip() for n in args.corruptions.split(",") if n.strip()]
        unknown = [n for n in names if n not in list_corruptions()]
        if unknown or not names:
            raise GradvizError(f"unknown corruption(s) {unknown or names}; valid: {', '.join(list_corruptions())}")
        cfg.corruptions = names
    if args.severities:
        try:
            levels = tuple(int(v) for v in args.severities.split(","))
        except ValueError:
            levels = ()
        if not levels or any(v not in SEVERITIES for v in levels):
            raise GradvizError(f"--severities takes a comma-separated subset of 1–5 (e.g. 1,3,5), "
                               f"got {args.severities!r}")
        cfg.severities = levels
    return cfg


def cmd_report(args) -> int:
    from gradviz.reporting.report import build_report

    cfg = _report_config(args)
    output_folder(args.out)
    flags = [("--quick", args.quick), (f"--limit {args.limit}", args.limit), (f"--corruptions {args.corruptions}",
             args.corruptions), (f"--severities {args.severities}", args.severities)]
    argv = " ".join(["python -m gradviz report", *(flag for flag, given in flags if given)])
    path = build_report(cfg, args.out, store=_store(args), progress=_tqdm_progress(), command=argv)
    print(f"wrote {path}")
    return 0


def cmd_list(args) -> int:
    from gradviz.data import list_datasets
    from gradviz.methods import list_methods
    from gradviz.models import list_models
    from gradviz.models import zoo  # noqa: F401

    print("models:")
    for m in list_models():
        print(f"  {m.name:24s} {m.description}")
    print("  torchvision:<arch>       any torchvision classifier (ImageNet weights downloaded, or --weights FILE)")
    print("  timm:<name>              any timm model, e.g. timm:resnet18 (pretrained from the Hugging Face Hub when "
          "online, or --weights FILE.safetensors)")
    print("  path/to/file.py:build    your own nn.Module: build() returns (net, card) (runs that file)")
    print("  plugins: packages declaring entry points in the group gradviz.models are listed above as 'plugin'")
    print("datasets:")
    for d in list_datasets():
        print(f"  {d.example:24s} {d.description}")
    print("methods (uncertainty, higher = more uncertain):")
    for info in list_methods():
        print(f"  {info.name:24s} [{info.family}] {info.title} — {info.paper}")
    from gradviz.engine import kernels as reductions
    from gradviz.config import settings

    print(f"statistics kernel: {reductions.warm_up()} (GRADVIZ_COMPILE={reductions.resolve_mode(None)})")
    print(f"BatchNorm folding in the gradient engine: {'on' if settings().fold_bn else 'off'} (GRADVIZ_FOLD_BN)")
    return 0


def cmd_train(argv: list[str]) -> int:
    from gradviz.models.train import main as train_main

    return train_main(argv)


def cmd_fits(args) -> int:
    """Fit every fitted method of the bundled models on the default fit set and write (or check) the shipped fits."""
    from gradviz.config import asset_path
    from gradviz.methods import prefit

    out = Path(args.out) if args.out else asset_path()
    failed = 0
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in prefit.BUNDLED:
            raise GradvizError(f"fits ship only for the bundled models ({', '.join(prefit.BUNDLED)}), not {name!r}")
        path = out / f"{name.replace('-', '_')}{prefit.SUFFIX}"
        model, runners, images, labels = prefit.fit_bundled(name)
        if not args.check:
            prefit.write_fits(path, model, runners, images, labels)
            print(f"{path}: {len(runners)} fitted methods, {path.stat().st_size / 1e6:.2f} MB")
            continue
        for r in runners:
            shipped = prefit.shipped_state(model, r, images, labels, folder=out)
            problems = (["not shipped, or its key differs"] if shipped is None
                        else prefit.compare_states(shipped, r.state))
            failed += bool(problems)
            print(f"{name} {r.info.name}: {'ok' if not problems else '; '.join(problems)}")
    if failed:
        print(f"error: {failed} shipped fit(s) differ from a fresh fit; regenerate with `python -m gradviz fits`",
              file=sys.stderr)
    return 2 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gradviz",
                                     description="Gradient-based uncertainty for image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="reproduce a bundled model's weights (options: --arch cnn|vit --epochs --seed --out)",
                   add_help=False)
    p = sub.add_parser("score", help="score ID and OOD sets with uncertainty methods; writes scores.csv, metrics.csv "
                       "(OOD and misclassification), calibration.csv")
    _add_common(p, methods=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--shard", action="store_true", help="split datasets over torchrun processes (torch.distributed)")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("layers", help="layerwise gradient metrics table (Oberdiek et al. 2018)")
    _add_common(p)
    p.add_argument("--loss", default="nll_pred", help="nll_pred | confounding_sigmoid | confounding_softmax")
    p.add_argument("--out", help="output folder (layers.csv; with --coverage: coverage.csv)")
    p.add_argument("--coverage", action="store_true",
                   help="print how the engine computes each parameter group's per-sample gradient (no data needed)")
    p.set_defaults(func=cmd_layers)
    p = sub.add_parser("meta", help="meta classifier report (correct-vs-incorrect or ID-vs-OOD)")
    _add_common(p)
    p.add_argument("--task", choices=["correct", "ood"], default="correct")
    p.add_argument("--known", action="append", default=None, help="OOD set seen in training (known unknowns)")
    p.add_argument("--classifier", choices=["logistic", "boosting", "mlp"], default="logistic")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_meta)
    p = sub.add_parser("report", help="reproduce the papers' experiments on the embedded default -> docs/RESULTS.md")
    p.add_argument("--out", default="docs", help="folder for RESULTS.md and results/*.png (default: docs)")
    p.add_argument("--limit", type=int, default=None, help="samples per set (default 1000; --quick: 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="3 corruptions × severities 1/3/5, 120 samples (a minute or two)")
    p.add_argument("--corruptions", default=None,
                   help="comma-separated corruptions for section 2 (default: all; --quick: gaussian_noise,fog,rotate)")
    p.add_argument("--severities", default=None,
                   help="comma-separated severities 1–5 for section 2 (default: 1,2,3,4,5; --quick: 1,3,5)")
    p.add_argument("--cache", default=None, help="results cache folder; 'none' disables")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("fits", help="fit the bundled models' fitted methods on the default fit set and write them "
                       "beside the weights (assets/*.fits.safetensors), or --check them against a fresh fit")
    p.add_argument("--models", default="mnist-cnn,mnist-vit", help="comma-separated bundled models")
    p.add_argument("--out", default=None, help="folder (default: the bundled assets)")
    p.add_argument("--check", action="store_true", help="compare the files with a fresh fit instead of writing them")
    p.set_defaults(func=cmd_fits)
    p = sub.add_parser("list", help="list models, datasets and methods")
    p.set_defaults(func=cmd_list)
    return parser


def _settings(args) -> "Settings":
    """The environment's settings (a bad value is one error line naming its variable) with the options given."""
    from gradviz.config import settings

    chosen = settings()
    if getattr(args, "compile", None):
        chosen = chosen.model_copy(update={"compile": args.compile})
    return chosen


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        try:
            return cmd_train(argv[1:])
        except GradvizError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with use_settings(_settings(args)), _PlanLines():
            return int(args.func(args) or 0)
    except GradvizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that vanished or cannot be written mid-run: said in one line, as the rest
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot read or write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
