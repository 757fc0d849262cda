"""The Playground's per-stroke fast path, server side: one drawn image -> every score, its ID percentiles,
the per-layer profile and the figures; and one transformation path as one batch.

A stroke = the canvas PNG the browser sends (280×280 RGBA, white on black) -> decode (gradviz.data.images) ->
MNIST-style input (gradviz.playground.preprocess) -> score_batch (every method on one shared hooked
forward + the per-layer gradient profile) -> the four live figures built and serialised to JSON (what
``st.plotly_chart`` sends). Strokes are synthetic: a "3" drawn stroke by stroke, then a scribble growing
over it, so every image differs (nothing is served from a cache). A path = walk (31 steps) + score_batch
of the 31 steps + the path figure, for every path kind.

Everything runs in ONE process; the reference (a plain no-grad forward of one image) is measured in the
same run, and each part is reported in ms (median, p90 over the strokes) and as a ratio to it, once per
torch thread count (default: torch's default, then 1: with other work on the cores, two OpenMP threads on a
one-image batch can wait on each other far longer than they save). The cores are shared with other work:
read the ratios, not the absolute times, and see the load average printed.

    .venv/bin/python benchmarks/bench_playground.py [--model mnist-cnn] [--samples 1000] [--strokes 24] [--threads 2,1]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from gradviz.plots import figures as plots
from gradviz.data import load_dataset
from gradviz.data.images import decode_image
from gradviz.methods.registry import resolve_methods
from gradviz.models import load_model
from gradviz.playground import PATHS, build_reference, canvas_to_input, figures, score_batch, walk
from gradviz.scoring import RunConfig, layer_table, make_runner, run

ROOT = Path(__file__).resolve().parent.parent

CANVAS = 280


def stroke_images(n: int, width: int = 22) -> list[bytes]:
    """``n`` canvas PNGs: a '3' drawn stroke by stroke (short arcs), then a scribble growing over it."""
    img = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 255))
    draw = ImageDraw.Draw(img)
    arcs = [((90, 40, 190, 140), a, a + 45) for a in range(200, 450, 45)]
    arcs += [((80, 130, 190, 240), a, a + 45) for a in range(270, 520, 45)]
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        if k < len(arcs):
            box, a0, a1 = arcs[k]
            draw.arc(box, a0, a1, fill="white", width=width)
        else:
            pts = [tuple(int(v) for v in p) for p in rng.integers(30, 250, (3, 2))]
            draw.line(pts, fill="white", width=width, joint="curve")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def ms(values: list[float]) -> tuple[float, float]:
    v = sorted(1000 * t for t in values)
    return statistics.median(v), v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mnist-cnn")
    ap.add_argument("--samples", type=int, default=1000, help="samples per set of the reference run")
    ap.add_argument("--strokes", type=int, default=24)
    ap.add_argument("--steps", type=int, default=31)
    ap.add_argument("--threads", default=f"{torch.get_num_threads()},1",
                    help="torch intra-op thread counts to measure, comma-separated (default: torch's default, then 1)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model)
    cfg = RunConfig(model=args.model, limit=args.samples)
    infos = resolve_methods(cfg.methods)
    t0 = time.perf_counter()
    result = run(cfg, model=model)
    table = layer_table(model, load_dataset(cfg.id, model.card, limit=cfg.limit, seed=cfg.seed))
    ref = build_reference(result.scores, infos, cfg.id, table)
    runners = [make_runner(model, i, None, cfg.fit_set, cfg.seed) for i in infos]
    setup = time.perf_counter() - t0
    classes = model.card.class_names

    x_ref = load_dataset(cfg.id, model.card, limit=1).images
    x3 = canvas_to_input(decode_image(stroke_images(12)[11], "drawing").array, model.card)
    shades = figures.method_shades(ref.methods, ref.families)
    strokes = stroke_images(args.strokes)
    results = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for _ in range(3):  # warm-up: first-call set-up of the engine and kernels is not a stroke
            score_batch(model, x_ref, runners, ref)
        fwd = []
        for _ in range(30):
            t = time.perf_counter()
            with torch.no_grad():
                model(x_ref)
            fwd.append(time.perf_counter() - t)
        parts: dict[str, list[float]] = {k: [] for k in ("decode", "preprocess", "score", "figures", "total")}
        preds = []
        for png in strokes:
            t = time.perf_counter()
            decoded = decode_image(png, "drawing")
            t1 = time.perf_counter()
            x = canvas_to_input(decoded.array, model.card)
            t2 = time.perf_counter()
            rep = score_batch(model, x, runners, ref)
            t3 = time.perf_counter()
            one = rep.scores
            figs = [figures.percentile_gauges(one, ref.id_spec),
                    figures.marker_histograms(ref, dict(zip(one["method"], one["score"]))),
                    plots.layer_profile(ref.bands["l2"], "l2", rep.profile("l2")),
                    plots.probability_bars(rep.probs[0], classes)]
            for f in figs:
                f.to_json()
            t4 = time.perf_counter()
            for k, v in zip(parts, (t1 - t, t2 - t1, t3 - t2, t4 - t3, t4 - t)):
                parts[k].append(v)
            preds.append(classes[int(rep.prediction[0])])
        paths: dict[str, tuple[float, float, float]] = {}
        for kind in PATHS:
            gen, score, fig = [], [], []
            for _ in range(3):
                t = time.perf_counter()
                w = walk(x3, kind, args.steps, target=x_ref if PATHS[kind].needs_target else None)
                t1 = time.perf_counter()
                rep = score_batch(model, w.images, runners, ref, layer_profile=False)
                t2 = time.perf_counter()
                figures.path_figure(rep.wide(), w.values, w.labels(), [classes[int(k)] for k in rep.prediction],
                                    rep.probs.max(1), shades, PATHS[kind].axis, ref.id_spec).to_json()
                t3 = time.perf_counter()
                gen.append(t1 - t), score.append(t2 - t1), fig.append(t3 - t2)
            paths[kind] = (statistics.median(gen), statistics.median(score), statistics.median(fig))
        results[threads] = (statistics.median(fwd), parts, paths, preds)

    load = os.getloadavg()
    print(f"# Playground fast path — {args.model}, {len(runners)} methods ({', '.join(r.info.name for r in runners)})")
    print(f"torch {torch.__version__}, {os.cpu_count()} cores; load average {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f} (1 / 5 / 15 min; shared busy cores: one run, read the ratios)")
    print(f"reference set-up (scores of {args.samples}/set × {1 + len(cfg.ood)} sets, ID layer table, fits): "
          f"{setup:.1f} s (once per choice; the dashboard shares it with Compare/Inspect)")
    print(f"strokes: {args.strokes} ({' '.join(results[next(iter(results))][3])})\n")
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''}: median / p90 ms (× forward)" for t in results)
    print(f"| per stroke | {head} |\n|---|" + "---:|" * len(results))
    print("| plain no-grad forward of one image | " + " | ".join(f"{1000 * r[0]:.2f}" for r in results.values()) + " |")
    for k in ("decode", "preprocess", "score", "figures", "total"):
        cells = []
        for plain, parts, _, _ in results.values():
            med, p90 = ms(parts[k])
            cells.append(f"{med:.1f} / {p90:.1f} ({med / (1000 * plain):.0f}×)")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print(f"\n| path, {args.steps} steps as one batch (median of 3): images + score + figure ms | "
          + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in results) + " |\n|---|" + "---:|" * len(results))
    for kind in PATHS:
        cells = [" + ".join(f"{1000 * v:.0f}" for v in r[2][kind]) + f" = {1000 * sum(r[2][kind]):.0f}"
                 for r in results.values()]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
