"""Per-sample gradient statistics on vision transformers and modern CNNs: the engine against one
plain forward+backward of the same model and batch, the obvious ways and the peer libraries.

Measures (never asserts), in ONE process and run, with random weights:
  - vit-tiny-28: torchvision VisionTransformer for 28×28 digits (1 channel, patch 7, 4 layers, d=64,
    4 heads, MLP 128), batch 256 — the shape of the bundled mnist-vit;
  - vit_b_16, swin_t, convnext_tiny at 224×224, batch 8 (1,000 classes);
  - resnet18 at 32×32, batch 32 (the CNN row that must not regress).
Each row's time is the best of a few repeats; its ratio is the throughput relative to a plain
forward+backward (the loss's gradient w.r.t. every parameter) measured right before it, so a
shared machine's drift cancels. Peak memory above the model's resident size is measured in fresh
subprocesses. Exactness is checked by the test suite (tests/test_engine_architectures.py), not here.

    .venv/bin/python benchmarks/bench_transformers.py                    # every case (~15 min on 2 cores)
    .venv/bin/python benchmarks/bench_transformers.py --cases vit-tiny-28 --quick
    .venv/bin/python benchmarks/bench_transformers.py --write            # also updates docs/PERFORMANCE.md

Peers (requirements-bench.txt): a per-sample autograd loop, ``torch.func.vmap(grad)``, Opacus
(``GradSampleModule`` after ``ModuleValidator.fix``), BackPACK (``BatchGrad``); a row says where one
refuses a model and why.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

from gradviz.engine import kernels
from gradviz.engine import layer_gradient_stats, layer_parameters, layer_sq_l2_norms
from gradviz.methods import ModelOutputs, run_method
from gradviz.models import GradvizModel
from gradviz.models.card import ModelCard

from bench_gradients import nll_pred, vmap_grads  # beside this script: the peers' loss and vmap, one copy

ROOT = Path(__file__).resolve().parent.parent

CASES = {  # name -> (builder, input size, classes, batch, quick batch)
    "vit-tiny-28": ("vit-tiny-28", (1, 28, 28), 10, 256, 64),
    "vit_b_16": ("vit_b_16", (3, 224, 224), 1000, 8, 2),
    "swin_t": ("swin_t", (3, 224, 224), 1000, 8, 2),
    "convnext_tiny": ("convnext_tiny", (3, 224, 224), 1000, 8, 2),
    "resnet18": ("resnet18", (3, 32, 32), 10, 32, 8),
}
ROWS = {
    "six": "six statistics × every group, compiled kernel",
    "six_eager": "six statistics × every group, eager PyTorch",
    "l2": "‖∇θ‖² per group only",
    "gaia_z": "gaia_z (forward + backward to the norm outputs)",
    "gaia_a": "gaia_a (forward + backward to the last two stages' norm outputs)",
    "loop": "peer: per-sample autograd loop + stats",
    "vmap": "peer: torch.func vmap(grad) + stats",
    "opacus": "peer: Opacus GradSampleModule (after ModuleValidator.fix) + stats",
    "backpack": "peer: BackPACK BatchGrad + stats",
}
PEERS = {"loop", "vmap", "opacus", "backpack"}


def build(name: str, quick: bool, batch: int | None = None) -> tuple[GradvizModel, torch.Tensor]:
    arch, size, classes, full, small = CASES[name]
    torch.manual_seed(0)
    if arch == "vit-tiny-28":
        net = torchvision.models.VisionTransformer(28, 7, 4, 4, 64, 128, num_classes=classes)
        net.conv_proj = torch.nn.Conv2d(1, 64, 7, 7)
    else:
        net = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    c = size[0]
    card = ModelCard(name=name, architecture=arch, input_size=size, mean=(0.5,) * c, std=(0.25,) * c,
                     class_names=[str(i) for i in range(classes)])
    model = GradvizModel(net, card).eval()
    x = torch.rand((batch or (small if quick else full), *size), generator=torch.Generator().manual_seed(1))
    return model, x


def forward_backward(model, x):
    return torch.autograd.grad(nll_pred(model(x)), [p for p in model.parameters()])


def stats_of(grads: dict[str, torch.Tensor], model) -> torch.Tensor:
    """(B, L, 6) six statistics per group from per-sample gradients {qualified name: (B, *shape)}."""
    cols = []
    for _, params in layer_parameters(model).items():
        v = torch.cat([grads[q].flatten(1) for q, _ in params], 1)
        cols.append(torch.stack([v.abs().sum(1), v.norm(dim=1), v.amax(1), v.amin(1), v.mean(1),
                                 v.std(1, unbiased=False)], 1))
    return torch.stack(cols, 1)


def run_loop(model, x):
    named = dict(model.net.named_parameters())
    out = {k: [] for k in named}
    for b in range(x.shape[0]):
        grads = torch.autograd.grad(nll_pred(model(x[b:b + 1])), list(named.values()))
        for k, g in zip(named, grads):
            out[k].append(g)
    return stats_of({k: torch.stack(v) for k, v in out.items()}, model)


def run_vmap(model, x):
    return stats_of(vmap_grads(model, x), model)


def run_opacus(model, x):
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    net = ModuleValidator.fix(copy.deepcopy(model.net))  # BatchNorm -> GroupNorm: another model, noted
    gsm = GradSampleModule(net)
    z = gsm(model.normalize(x))
    nll_pred(z).backward()
    names = dict(net.named_parameters())
    grads = {k: p.grad_sample for k, p in names.items()}
    if any(g is None for g in grads.values()):
        raise RuntimeError("some parameters got no per-sample gradient")
    return stats_of(grads, GradvizModel(net, model.card))


def run_backpack(model, x):
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    net = extend(copy.deepcopy(model.net))
    loss = extend(torch.nn.CrossEntropyLoss(reduction="sum"))
    z = net(model.normalize(x))
    with backpack(BatchGrad()):
        loss(z, z.argmax(-1).detach()).backward()
    return stats_of({k: p.grad_batch for k, p in net.named_parameters()}, model)


RUNNERS = {
    "six": lambda m, x: layer_gradient_stats(m, x, c_kernel="on"),
    "six_eager": lambda m, x: layer_gradient_stats(m, x, c_kernel="off"),
    "l2": lambda m, x: layer_sq_l2_norms(m, x, loss="nll_pred"),
    "gaia_z": lambda m, x: run_method("gaia_z", ModelOutputs.from_model(m, x)),
    "gaia_a": lambda m, x: run_method("gaia_a", ModelOutputs.from_model(m, x)),
    "loop": run_loop, "vmap": run_vmap, "opacus": run_opacus, "backpack": run_backpack,
}


def best_of(fn, repeats: int, budget: float) -> float:
    times, start = [], time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(case: str, quick: bool, rows: list[str], rounds: int) -> list[dict]:
    """Per row: ``rounds`` back-to-back pairs (best-of-k plain fwd+bwd, best-of-k row), so a drift of the
    shared cores' speed hits both sides of each ratio; the median ratio and its range are reported."""
    model, x = build(case, quick)
    repeats, budget = (2, 10.0) if quick or x.shape[-1] >= 224 else (3, 20.0)  # 224² calls take seconds
    forward_backward(model, x)  # warm
    results = []
    for row in rows:
        out = {"case": case, "row": row, "batch": int(x.shape[0])}
        try:
            if row in PEERS:  # one timed call each (they are slow); warm on two samples
                RUNNERS[row](model, x[:2])
                pairs = []
                for _ in range(1 if row == "loop" else min(rounds, 2)):
                    base = best_of(lambda: forward_backward(model, x), repeats, budget)
                    t0 = time.perf_counter()
                    RUNNERS[row](model, x)
                    pairs.append((base, time.perf_counter() - t0))
            else:
                RUNNERS[row](model, x)  # warm-up: first calls of a shape, calibration
                pairs = [(best_of(lambda: forward_backward(model, x), repeats, budget),
                          best_of(lambda: RUNNERS[row](model, x), repeats, budget)) for _ in range(rounds)]
            ratios = sorted(b / t for b, t in pairs)
            out.update(seconds=statistics.median(t for _, t in pairs), base=statistics.median(b for b, _ in pairs),
                       ratio=statistics.median(ratios), low=ratios[0], high=ratios[-1], rounds=len(pairs))
        except Exception as exc:  # a peer refusing a model: say why
            out["refused"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}" if str(exc).strip() \
                else type(exc).__name__
        results.append(out)
        print(json.dumps(out), flush=True)
    return results


_MEMORY = r"""
import json
import bench_transformers as b  # run in benchmarks/

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

model, x = b.build({case!r}, {quick!r})
b.forward_backward(model, x[:1])  # allocator and kernels warm; the model resident
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current RSS (Linux)
before = kib("VmRSS:")
{call}
print(json.dumps((kib("VmHWM:") - before) / 1024))
"""


def peak_memory(case: str, quick: bool, what: str) -> float | None:
    """MiB of peak resident memory above a warm model, in a fresh process."""
    call = {"fwd+bwd": "b.forward_backward(model, x)", "six": "b.RUNNERS['six'](model, x)",
            "l2": "b.RUNNERS['l2'](model, x)"}[what]
    code = _MEMORY.format(case=case, quick=quick, call=call)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", capture_output=True, text=True,
                         timeout=1800)
    try:
        return float(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def table(results: list[dict], memory: dict) -> str:
    cases = list(dict.fromkeys(r["case"] for r in results))
    lines = ["| row | " + " | ".join(f"{c} (batch {next(r['batch'] for r in results if r['case'] == c)})"
                                     for c in cases) + " |", "|---|" + "---|" * len(cases)]
    for row in dict.fromkeys(r["row"] for r in results):
        cells = []
        for c in cases:
            r = next((r for r in results if r["case"] == c and r["row"] == row), None)
            if r is None:
                cells.append("—")
            elif "refused" in r:
                cells.append(f"refuses ({r['refused'][:70]})")
            else:
                spread = f", {r['low']:.2f}–{r['high']:.2f}" if r["rounds"] > 1 else ""
                cells.append(f"**{r['ratio']:.2f}×** ({r['seconds'] * 1e3:,.0f} ms{spread})")
        lines.append(f"| {ROWS[row]} | " + " | ".join(cells) + " |")
    if memory:
        lines.append("| peak memory above the model: fwd+bwd / six statistics / ‖∇θ‖² | " + " | ".join(
            " / ".join("?" if memory.get((c, w)) is None else f"{memory[(c, w)]:,.0f} MiB"
                       for w in ("fwd+bwd", "six", "l2")) for c in cases) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--quick", action="store_true", help="small batches, fewer repeats")
    parser.add_argument("--rounds", type=int, default=5, help="back-to-back (fwd+bwd, row) pairs per row")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--results", nargs="*", default=[], metavar="JSONL",
                        help="rows printed by an earlier run (one JSON object per line): their cases are not measured "
                             "again (a long run in parts)")
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md's transformer section")
    args = parser.parse_args()
    kernels.warm_up()
    results, memory = [], {}
    for path in args.results:
        results += [json.loads(line) for line in Path(path).read_text().splitlines() if line.startswith('{"case"')]
    done = {r["case"] for r in results}
    for case in args.cases:
        if case not in done:
            results += measure(case, args.quick, args.rows, args.rounds)
        if not args.no_memory:
            for what in ("fwd+bwd", "six", "l2"):
                memory[(case, what)] = peak_memory(case, args.quick, what)
    machine = (f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
               f"kernel {kernels.compiled_status()}, {time.strftime('%Y-%m-%d %H:%M')}")
    order = {c: i for i, c in enumerate(CASES)}
    md = table(sorted(results, key=lambda r: order[r["case"]]), memory)
    print(md)
    print(machine)
    if args.write:
        doc = ROOT / "docs" / "PERFORMANCE.md"
        text = doc.read_text()
        block = (f"<!-- transformers:begin -->\nMeasured by `python benchmarks/bench_transformers.py` ({machine}); "
                 f"ratio = throughput relative to one plain forward+backward of the same model and batch "
                 f"(higher is faster), median of {args.rounds} back-to-back pairs (best-of-3 each, best-of-2 at 224²; "
                 f"range after the time; peers: one or two timed calls).\n\n{md}\n<!-- transformers:end -->")
        if "<!-- transformers:begin -->" in text:
            text = re.sub(r"<!-- transformers:begin -->.*<!-- transformers:end -->", lambda _: block, text, flags=re.S)
        else:
            text += "\n\n## Transformers and modern CNNs\n\n" + block + "\n"
        doc.write_text(text)


if __name__ == "__main__":
    main()
