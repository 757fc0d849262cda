"""The cost of every registered uncertainty method, as a ratio to one plain forward+backward of the same batch.

Measures (never asserts), in ONE process and run:
  - the bundled mnist-cnn (trained weights), batch 256 of held-out digits, 1×28×28;
  - torchvision resnet18 with random weights, 10 classes, 3×32×32, batch 32 (random images).
Per method: the time to score one batch as the scoring pipeline runs a method on its own (its batch's
forward — kept as the shared hooked forward when the method backpropagates — plus the method) divided
by one plain forward+backward (parameter gradients of the summed predicted-label loss) of the same
batch timed right before it; the median of that ratio over 21 rounds, with its quartiles. Fitted methods are
fitted once on an ID fit set before timing (the fit is reported separately: seconds, and as a ratio
to a forward+backward of the whole fit set), with the shared fit-set forward cleared before each fit.

    .venv/bin/python benchmarks/bench_methods.py            # ~3 min on 2 idle cores
    .venv/bin/python benchmarks/bench_methods.py --quick    # smaller batches and fit sets (~1 min)
    .venv/bin/python benchmarks/bench_methods.py --write    # also writes "Cost of each method" in docs/PERFORMANCE.md
    .venv/bin/python benchmarks/bench_methods.py --threads 2   # torch threads (default 1)
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from gradviz.methods import ModelOutputs, list_methods
from gradviz.methods import _fitting
from gradviz.methods.registry import needs_graph

ROOT = Path(__file__).resolve().parent.parent

HEADING = "Cost of each method"


def make_case(name: str, quick: bool):
    """(model, batch x, fit images, fit labels, description)."""
    if name == "mnist-cnn":
        from gradviz.data import load_dataset
        from gradviz.models import load_model

        model = load_model("mnist-cnn")
        batch = 64 if quick else 256
        x = load_dataset("mnist", model.card, limit=batch, seed=0).images
        fit = load_dataset("mnist:train", model.card, limit=1000 if quick else None, seed=0)
        return model, x, fit.images, fit.labels, f"bundled mnist-cnn (trained), batch {batch}, fit set {len(fit)}"
    from gradviz.models.zoo import random_model

    model = random_model("resnet18", 10, (3, 32, 32), seed=0)
    batch, n_fit = (8, 200) if quick else (32, 1000)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, 32, 32, generator=g)
    fit_x = torch.rand(n_fit, 3, 32, 32, generator=g)
    fit_y = model(fit_x).argmax(-1).numpy()
    return model, x, fit_x, fit_y, f"torchvision resnet18 (random weights, 10 classes), batch {batch}, fit set {n_fit}"


def forward_backward(model, x) -> None:
    z = model(x)
    torch.autograd.grad(-z.log_softmax(-1).gather(1, z.argmax(-1, keepdim=True)).sum(), list(model.parameters()))


def best_time(fn, min_time: float, max_reps: int) -> float:
    """Fastest of repeated calls (the minimum is the least noisy estimate on shared cores)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def paired_ratios(reference, fn, rounds: int) -> tuple[float, float, float]:
    """(median, low, high) over ``rounds`` of t(fn) / t(reference), the two timed back to back in each round: a
    slow phase of the shared cores slows both calls of a round alike, so their ratio stays put; the median
    discards the rounds where it did not. low/high: the 25th and 75th percentiles."""
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        reference()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    q = np.percentile(ratios, [50, 25, 75])
    return float(q[0]), float(q[1]), float(q[2])


def measure(case: str, quick: bool) -> tuple[str, list[dict]]:
    model, x, fit_x, fit_y, desc = make_case(case, quick)
    rounds = 5 if quick else 21
    fb_ms = 1e3 * best_time(lambda: forward_backward(model, x), 1.0, 10)
    rows = []
    for info in list_methods():
        runner = info.create()
        fit_s = fit_ratio = None
        if info.needs_fit:
            with _fitting._OUTPUTS_LOCK:
                _fitting._OUTPUTS.clear()  # each fit pays its own forward of the fit set
            t = time.perf_counter()
            runner.fit(model, fit_x, fit_y)
            fit_s = time.perf_counter() - t
            chunks = [fit_x[i:i + len(x)] for i in range(0, len(fit_x), len(x))]
            fb_fit = sum(best_time(lambda c=c: forward_backward(model, c), 0.0, 1) for c in chunks)
            fit_ratio = fit_s / fb_fit
        keep = needs_graph([runner])
        score = lambda: runner.score(ModelOutputs.from_model(model, x, keep_graph=keep))  # noqa: E731
        score()  # warm-up (kernels, calibration, caches of the model)
        ratio, low, high = paired_ratios(lambda: forward_backward(model, x), score, rounds)
        rows.append({"method": info.name, "family": info.family, "ratio": ratio, "low": low, "high": high,
                     "backprop": info.backprop, "fit_s": fit_s, "fit_ratio": fit_ratio})
        print(f"{case:10s} {info.name:18s} {ratio:5.2f}× fwd+bwd [{low:.2f}–{high:.2f}]"
              + (f"   fit {fit_s:.2f} s ({fit_ratio:.2f}× fwd+bwd of the fit set)" if fit_s is not None else ""),
              flush=True)
    return f"{desc}, fastest forward+backward {fb_ms:.1f} ms", rows


def machine() -> str:
    import os

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}")


def report(results: dict[str, tuple[str, list[dict]]], quick: bool, total: float) -> str:
    import os

    cases = list(results)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"Measured by `python benchmarks/bench_methods.py{' --quick' if quick else ''}` in one run ({total:.0f} s; "
        f"{machine()}; load average at the end {load} — the cores were shared with other work, so ratios, not "
        "absolute times, are the result).",
        "",
        "**Ratio** = time to score one batch with the method alone, as the scoring pipeline runs it (the batch's "
        "forward, kept as the shared hooked forward when the method backpropagates, plus the method), divided by "
        "one plain forward+backward (parameter gradients of the summed loss) of the same batch, the two timed back "
        "to back in each round: the median over the rounds, [25th–75th percentile] in brackets. Below 1: cheaper "
        "than a training step; forward-only and closed-form methods cost about one forward. In the dashboard all "
        "chosen methods share one forward and one hooked pass, so running several costs less than the sum. "
        "**Fit**: one-off, on the ID fit set (cached afterwards), in seconds and as a ratio to a forward+backward "
        "of the whole fit set (one timing: indicative).",
        "",
        "| family | method | " + " | ".join(f"{c} ratio | {c} fit" for c in cases) + " |",
        "|---|---|" + "---|---|" * len(cases),
    ]
    by_case = {c: {r["method"]: r for r in rows} for c, (_, rows) in results.items()}
    for info in list_methods():
        cells = []
        for c in cases:
            r = by_case[c].get(info.name)
            if r is None:
                cells += ["—", "—"]
                continue
            fit = f"{r['fit_s']:.1f} s ({r['fit_ratio']:.2f}×)" if r["fit_s"] is not None else "—"
            cells += [f"{r['ratio']:.2f}× [{r['low']:.2f}–{r['high']:.2f}]", fit]
        lines.append(f"| {info.family} | {info.name} | " + " | ".join(cells) + " |")
    lines += ["", "Cases: " + "; ".join(f"**{c}**: {d}" for c, (d, _) in results.items()) + "."]
    for c, (_, rows) in results.items():
        fams = {}
        for r in rows:
            fams.setdefault(r["family"], []).append(r["ratio"])
        top = max(rows, key=lambda r: r["ratio"])
        lines.append(f"- **{c}**, median ratio range per family: " + ", ".join(
            f"{f} {min(v):.2f}–{max(v):.2f}×" for f, v in fams.items())
            + f"; the most expensive method: `{top['method']}` {top['ratio']:.2f}×.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true", help=f"write '## {HEADING}' in docs/PERFORMANCE.md")
    parser.add_argument("--case", action="append", choices=["mnist-cnn", "resnet18"], default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on busy shared cores a multi-threaded op waits for its "
                             "slowest thread, which makes ratios noisy)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    results = {c: measure(c, args.quick) for c in (args.case or ["mnist-cnn", "resnet18"])}
    text = report(results, args.quick, time.perf_counter() - start)
    print(text)
    if args.write:
        from report_md import replace_section

        replace_section(ROOT / "docs" / "PERFORMANCE.md", HEADING, text)
        print(f"wrote '## {HEADING}' in docs/PERFORMANCE.md")


if __name__ == "__main__":
    main()
