"""Real-size models: every method against one plain forward+backward, in time and peak memory.

Measures (never asserts), with random weights saved as safetensors and loaded the way a user does
(``load_model("torchvision:<arch>", "W.safetensors")``), 2 classes, at 3×224×224:

  - ResNet-50, ViT-B/16 and ConvNeXt-T (``--models``);
  - ``--images`` random images (default 256), in batches of ``--batch`` (default: the memory
    planner's choice for a gradient pass, ``GRADVIZ_MEMORY_MB`` or half of the available memory;
    every row runs on the batch of the plain forward+backward);
  - each method alone and all of them together (``--methods``; fitted methods are fitted first on
    ``--images`` // 2 other random images, outside the timing; their fit time is reported apart).

Every measurement runs in its own fresh subprocess: the model is loaded and warmed up on one batch,
the freed memory handed back (``malloc_trim``) and the peak reset (``/proc/self/clear_refs``), then
the pass runs. "time ×" is its time over the time of one plain forward+backward (the loss's gradient
w.r.t. every parameter) over the same images and batches; "peak ×" is its peak RSS above the warm
model over the plain forward+backward's peak on the same batch. ``--repeats`` gives medians.

    .venv/bin/python benchmarks/bench_realsize.py                          # 3 models, 256 images (hours on 2 cores)
    .venv/bin/python benchmarks/bench_realsize.py --models resnet50 --images 8 --methods msp,grad_l2   # a smoke run
    .venv/bin/python benchmarks/bench_realsize.py --write                  # also updates docs/PERFORMANCE.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"resnet50": "ResNet-50", "vit_b_16": "ViT-B/16", "convnext_tiny": "ConvNeXt-T"}
SECTION = "## Real-size models"

_WORKER = textwrap.dedent("""
    import ctypes, gc, json, sys, time
    import torch
    from gradviz.runtime.budget import plan_batch, scoring_kind
    from gradviz.errors import GradvizError
    from gradviz.methods.registry import resolve_methods
    from gradviz.models import load_model
    from gradviz.scoring import score_images

    def kib(field):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

    torch.manual_seed(0)
    model = load_model({name!r}, {weights!r})
    g = torch.Generator().manual_seed(1)
    x = torch.rand(({images}, *model.card.input_size), generator=g)
    what, batch = {what!r}, {batch!r}
    fit_s, skipped = 0.0, []
    if what == "fwdbwd":
        params = [p for p in model.parameters()]
        step = batch or plan_batch(model, "gradients", n=len(x)).batch

        def run(xs):
            for i in range(0, len(xs), step):
                z = model(xs[i:i + step])
                torch.autograd.grad(-z.log_softmax(-1).amax(-1).sum(), params)
    else:
        runners = []
        fit_x = torch.rand((max(64, {images} // 2), *model.card.input_size), generator=g)
        fit_y = torch.arange(len(fit_x)) % model.card.num_classes
        for info in resolve_methods("all" if what == "all" else [what]):
            r = info.create()
            if info.needs_fit:
                t = time.perf_counter()
                try:
                    r.fit(model, fit_x, fit_y)
                except GradvizError as exc:  # e.g. a covariance random images do not make positive definite
                    skipped.append(f"{{info.name}} ({{str(exc)[:80]}})")
                    continue
                finally:
                    fit_s += time.perf_counter() - t
            runners.append(r)
        step = batch or plan_batch(model, scoring_kind(runners), n=len(x)).batch

        def run(xs):
            score_images(model, xs, runners, batch_size=step)

    run(x[:step])  # one batch: kernels, the allocator and the engine's calibration warm, the model resident
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current RSS
    before = kib("VmRSS:")
    t = time.perf_counter()
    run(x)
    seconds = time.perf_counter() - t
    print(json.dumps({{"seconds": seconds, "peak_mb": (kib("VmHWM:") - before) / 1024, "batch": step,
                      "fit_s": fit_s, "skipped": skipped}}))
""")


def save_weights(arch: str, folder: Path) -> Path:
    """Random weights of ``arch`` with 2 classes, as safetensors (what a user brings)."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None, num_classes=2)
    path = folder / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def measure(arch: str, weights: Path, what: str, images: int, batch: int | None, threads: int) -> dict:
    """One measurement in a fresh process."""
    code = _WORKER.format(name=f"torchvision:{arch}", weights=str(weights), images=images,
                          what=what, batch=batch)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=6 * 3600, env=env)
    try:
        return json.loads(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (run.stderr.strip().splitlines() or ["no output"])[-1][:200]}


def median_of(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return rows[0]
    out = {k: statistics.median(r[k] for r in ok) for k in ("seconds", "peak_mb", "batch", "fit_s")}
    return {**out, "skipped": ok[0].get("skipped", [])}


def table(arch: str, results: dict[str, dict], images: int) -> str:
    base = results["fwdbwd"]
    lines = [f"**{MODELS.get(arch, arch)}** at 3×224×224, {images} images, batch {int(base.get('batch', 0))} "
             f"(plain forward+backward: {base.get('seconds', float('nan')):.1f} s, "
             f"{base.get('peak_mb', float('nan')):,.0f} MB above the model)", "",
             "| methods | time (s) | time × | peak (MB) | peak × | fit (s) |", "|---|---:|---:|---:|---:|---:|"]
    for what, r in results.items():
        if what == "fwdbwd":
            continue
        if "error" in r:
            lines.append(f"| {what} | failed: {r['error']} | | | | |")
            continue
        label = what + (f" (without {', '.join(r['skipped'])})" if r.get("skipped") else "")
        lines.append(f"| {label} | {r['seconds']:.1f} | {r['seconds'] / base['seconds']:.2f} | {r['peak_mb']:,.0f} | "
                     f"{r['peak_mb'] / max(base['peak_mb'], 1e-9):.2f} | {r['fit_s']:.1f} |")
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    doc = path.read_text() if path.exists() else ""
    if SECTION in doc:
        head, _, rest = doc.partition(SECTION)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        doc = head + text + "\n" + tail
    else:
        doc = doc.rstrip() + "\n\n" + text + "\n"
    path.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision architectures")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default: the planner's choice)")
    parser.add_argument("--methods", default="each,all",
                        help="'each,all' (every method alone, then all together) or comma-separated names (and 'all')")
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement (the median is reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the tables into docs/PERFORMANCE.md")
    args = parser.parse_args()
    from gradviz.methods.registry import list_methods

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "each" in names:
        names = [m.name for m in list_methods()] + [n for n in names if n not in ("each",)]
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in [a.strip() for a in args.models.split(",") if a.strip()]:
            weights = save_weights(arch, Path(tmp))
            results, batch = {}, args.batch
            for what in ["fwdbwd", *names]:  # every method on the batch of the plain forward+backward
                rows = [measure(arch, weights, what, args.images, batch, args.threads) for _ in range(args.repeats)]
                results[what] = median_of(rows)
                if batch is None and "batch" in results[what]:
                    batch = int(results[what]["batch"])
                print(arch, what, json.dumps(results[what]), flush=True)
            sections.append(table(arch, results, args.images))
            print("\n" + sections[-1] + "\n", flush=True)
    text = "\n\n".join([SECTION, f"Measured by `benchmarks/bench_realsize.py` on {platform.machine()}, "
                                 f"{args.threads} threads, medians of {args.repeats} run(s).", *sections])
    if args.write:
        write_section(text, ROOT / "docs" / "PERFORMANCE.md")


if __name__ == "__main__":
    main()
