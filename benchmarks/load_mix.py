"""``load_test.py --mix``: one heavy session beside N Playground sessions drawing, in one process (see load_test.py).

Each session is a thread, as Streamlit runs each session's script in its own thread; each runs its work inside
``gradviz.runtime.ledger.serving`` with its session budget, so every pass plans for that budget and reserves its
plan from the one server ledger, as on the dashboard.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from gradviz.methods.registry import resolve_methods
from gradviz.models import GradvizModel, ModelCard, load_model
from gradviz.playground import score_batch
from gradviz.runtime.budget import session_budget
from gradviz.runtime.ledger import server_ledger, serving
from gradviz.scoring import make_runners, score_images

HEADER = ("| heavy session | Playgrounds | strokes alone p50 / p95 s | strokes beside it p50 / p95 s | heavy s "
          "| waits | server budget MB | ledger peak MB | RSS before MB | peak RSS MB |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def _stroke_images(seed: int, n: int) -> list[torch.Tensor]:
    """A digit drawn stroke by stroke: image k holds the first k+1 strokes (1, 1, 28, 28), as the canvas sends."""
    rng = np.random.default_rng(seed)
    canvas, out = np.zeros((28, 28), np.float32), []
    y, x = 14.0, 14.0
    for _ in range(n):
        dy, dx = rng.normal(0, 3, 2)
        for t in np.linspace(0, 1, 8):  # a short line of ~3-px ink
            yy, xx = int(np.clip(y + t * dy, 4, 23)), int(np.clip(x + t * dx, 4, 23))
            canvas[yy - 1:yy + 2, xx - 1:xx + 2] = 1.0
        y, x = float(np.clip(y + dy, 4, 23)), float(np.clip(x + dx, 4, 23))
        out.append(torch.from_numpy(canvas.copy())[None, None])
    return out


def _heavy_model(arch: str, side: int) -> GradvizModel:
    torch.manual_seed(0)
    card = ModelCard(name=arch, architecture=arch, input_size=(3, side, side), mean=(0.5,) * 3, std=(0.25,) * 3,
                     class_names=["a", "b"])
    return GradvizModel(getattr(torchvision.models, arch)(num_classes=2), card)


def _heavy(model: GradvizModel, images: int, session_mb: int, out: dict) -> None:
    """Fit every fitted method on random images, then score ID and OOD images with all methods."""
    c, h, w = model.card.input_size
    gen = torch.Generator().manual_seed(1)
    fit_x, fit_y = torch.rand(images, c, h, w, generator=gen), torch.arange(images) % 2
    t0 = time.perf_counter()
    with session_budget(session_mb), serving(notify=lambda text: out.setdefault("waits", []).append(text) if text
                                             else None):
        runners = []
        for info in resolve_methods("all"):
            runner = info.create()
            if info.needs_fit:
                runner.fit(model, fit_x, fit_y)
            runners.append(runner)
        for power in (1, 3):  # "ID" and a darker "OOD" set
            score_images(model, torch.rand(images, c, h, w, generator=gen) ** power, runners)
    out["seconds"] = time.perf_counter() - t0


def _playground(model: GradvizModel, runners, seed: int, session_mb: int, strokes: int | None,
                until: threading.Event | None, times: list[float], waits: list[str]) -> None:
    """Score a drawing stroke by stroke (every method + the layer profile) until ``until`` or ``strokes``."""
    images = _stroke_images(seed, 400)
    k = 0
    while (strokes is None or k < strokes) and not (until is not None and until.is_set()):
        t0 = time.perf_counter()
        with session_budget(session_mb), serving(notify=lambda text: waits.append(text) if text else None):
            score_batch(model, images[k % len(images)], runners, None, layer_profile=True)
        times.append(time.perf_counter() - t0)
        k += 1
        if until is not None:
            until.wait(0.1)  # the hand between two strokes


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_mix(args, root: Path, append_section) -> int:
    if args.server_mb:
        os.environ["GRADVIZ_SERVER_MEMORY_MB"] = str(args.server_mb)
    torch.set_num_threads(1)  # the web server's default (GRADVIZ_TORCH_THREADS)
    session_mb = int(os.environ.get("GRADVIZ_SESSION_MEMORY_MB", "2048"))
    ledger = server_ledger()
    mnist = load_model("mnist-cnn")
    runners = make_runners(mnist, resolve_methods("all"), {}, "mnist:train", 0)  # fitted once, shared (cached)
    heavy = _heavy_model(args.heavy, args.side)
    alone: list[float] = []
    threads = [threading.Thread(target=_playground, args=(mnist, runners, i, session_mb, args.alone_strokes, None,
                                                          alone, [])) for i in range(args.playgrounds)]
    for t in [*threads]:
        t.start()
    for t in threads:
        t.join()
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM restarts from the current RSS
    rss_before = _kib("VmRSS:") / 1024
    done, beside, waits, heavy_out = threading.Event(), [], [], {}
    heavy_thread = threading.Thread(target=_heavy, args=(heavy, args.images, session_mb, heavy_out))
    players = [threading.Thread(target=_playground, args=(mnist, runners, 100 + i, session_mb, None, done, beside,
                                                          waits)) for i in range(args.playgrounds)]
    heavy_thread.start()
    for t in players:
        t.start()
    heavy_thread.join()
    done.set()
    for t in players:
        t.join()
    peak = _kib("VmHWM:") / 1024
    n_waits = len(waits) + len(heavy_out.get("waits", []))
    row = (f"| {args.heavy} at {args.side}², all methods, {args.images}+{args.images} images | {args.playgrounds} "
           f"| {_pct(alone, 50):.2f} / {_pct(alone, 95):.2f} | {_pct(beside, 50):.2f} / {_pct(beside, 95):.2f} "
           f"({len(beside)} strokes) | {heavy_out.get('seconds', float('nan')):.0f} | {n_waits} "
           f"| {ledger.budget_mb:,.0f} | {ledger.peak_mb:,.0f} | {rss_before:,.0f} | {peak:,.0f} |")
    cmd = " ".join(["benchmarks/load_test.py", "--mix", *(a for a in sys.argv[1:] if a not in ("--mix", "--write"))])
    note = (f"{time.strftime('%Y-%m-%d %H:%M')} · `{cmd}` · {os.cpu_count()} cores, load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} after · session budget {session_mb:,} MB, server budget "
            f"{ledger.budget_mb:,.0f} MB ({ledger.source}). Strokes: one 28×28 drawing growing stroke by stroke, every "
            "method and the per-layer profile scored on the bundled mnist-cnn (the Playground's per-stroke pass, "
            "without Streamlit), 0.1 s between strokes. Ledger peak = the most the passes of all sessions had "
            "reserved at once; peak RSS = the process's VmHWM during the heavy session (RSS before = models, fitted "
            "methods and caches already resident).")
    table = f"{HEADER}\n{row}"
    print(table)
    print(note)
    if args.write:
        append_section(root / "docs" / "PERFORMANCE.md", "Load test: a heavy session beside the Playground",
                       f"{table}\n\n{note}")
    return 0
