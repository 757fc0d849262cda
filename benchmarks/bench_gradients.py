"""Per-sample gradient quantities: every gradviz engine path and method vs the obvious ways and peer libraries.

Measures (never asserts), in ONE process and run, on
  - the bundled architecture with random weights: mnist-cnn, batch 256, 1×28×28;
  - torchvision resnet18 with random weights, 10 classes, 3×32×32, batch 32:
samples/s and throughput relative to a plain batched forward and to a plain batched
forward+backward of the same model and batch (measured right before each row); exactness
(max relative error vs a float64 per-sample autograd loop); peak memory at two batch sizes
(fresh subprocesses); machine and library versions.

    .venv/bin/python benchmarks/bench_gradients.py            # ~6 min on 2 idle cores
    .venv/bin/python benchmarks/bench_gradients.py --quick    # small batches, fewer repeats (~1.5 min)
    .venv/bin/python benchmarks/bench_gradients.py --write    # also writes docs/PERFORMANCE.md
    .venv/bin/python benchmarks/bench_gradients.py --device cuda   # on a GPU, when there is one

BackPACK and Opacus are optional (requirements-bench.txt); rows say where they refuse a model.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gradviz.engine import kernels as reductions
from gradviz.engine import STATS, layer_gradient_stats, layer_sq_l2_norms, parametrised_layers
from gradviz.methods import ModelOutputs, list_methods, run_method
from gradviz.models.zoo import random_model

ROOT = Path(__file__).resolve().parent.parent

CASES = {  # name -> (arch, input size, batch, quick batch, memory batches)
    "mnist-cnn": ("mnist-cnn", (1, 28, 28), 256, 64, (256, 1024)),
    "resnet18": ("resnet18", (3, 32, 32), 32, 8, (32, 128)),
}

# row -> (label, group); groups: engine paths, gradviz methods (each with its own forward), peers
ROWS = {
    "six": ("six statistics × every layer, compiled kernel", "engine"),
    "six_eager": ("six statistics × every layer, eager PyTorch", "engine"),
    "l2": ("‖∇θ‖² per layer only (confounding's quantity)", "engine"),
    "msp": ("msp (forward only)", "method"),
    "gradnorm": ("gradnorm (closed-form last layer)", "method"),
    "grad_last": ("grad_l2, layer=last (closed-form last layer)", "method"),
    "grad_all": ("grad_l1 … grad_std (six stats, all layers)", "method"),
    "confounding": ("confounding (L2 of every layer)", "method"),
    "gaia_z": ("gaia_z (one backward to BN outputs)", "method"),
    "gaia_a": ("gaia_a (one backward to the BN outputs of the last two stages)", "method"),
    "odin": ("odin (input gradient + second forward)", "method"),
    "all_methods": (f"all {sum(not m.needs_fit for m in list_methods())} unfitted methods on one shared forward",
                    "method"),
    "loop": ("per-sample autograd loop + stats", "peer"),
    "vmap": ("torch.func vmap(grad) + functional_call + stats", "peer"),
    "backpack": ("BackPACK BatchGrad + stats", "peer"),
    "backpack_l2": ("BackPACK BatchL2Grad (L2 only)", "peer"),
    "opacus": ("Opacus GradSampleModule + stats", "peer"),
}
SLOW = {"loop", "vmap", "backpack", "backpack_l2", "opacus"}
CLOSED_FORM = {"gradnorm", "grad_last"}


def make_case(name: str, quick: bool, batch: int | None = None, device: str = "cpu"):
    arch, size, full, small, _ = CASES[name]
    model = random_model(arch, 10, size, seed=0)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial BN statistics, as in a trained model
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    x = torch.rand((batch or (small if quick else full), *size), generator=g)
    return model.to(device), x.to(device)


def nll_pred(z: torch.Tensor) -> torch.Tensor:
    """Σ_b −log p_ŷ(x_b): the batch loss whose per-sample gradients Oberdiek et al. use."""
    return F.cross_entropy(z, z.argmax(-1).detach(), reduction="sum")


def stats_of(vectors: list[torch.Tensor]) -> torch.Tensor:
    """(B, L, 6) six statistics of per-sample gradient vectors, one (B, n_l) tensor per layer."""
    cols = []
    for v in vectors:
        cols.append(torch.stack([v.abs().sum(1), v.norm(dim=1), v.amax(1), v.amin(1), v.mean(1),
                                 v.std(1, unbiased=False)], 1))
    return torch.stack(cols, 1)


def layer_param_groups(module: nn.Module) -> list[list[nn.Parameter]]:
    return [list(m.parameters(recurse=False)) for _, m in parametrised_layers(module)]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- the contenders


def run_forward(model, x):
    with torch.no_grad():
        return model(x)


def run_forward_backward(model, x):
    return torch.autograd.grad(nll_pred(model(x)), list(model.parameters()))


def _method(name: str, **params):
    """One method as the scoring pipeline runs it: its batch's forward (kept as the shared graph
    when the method backpropagates) plus the method."""
    from gradviz.methods import get_method
    from gradviz.methods.registry import needs_graph

    keep = needs_graph([get_method(name).create(**params)])

    def run(model, x):
        return run_method(name, ModelOutputs.from_model(model, x, keep_graph=keep), **params)
    return run


def run_grad_all(model, x):
    batch = ModelOutputs.from_model(model, x, keep_graph=True)
    return [run_method(f"grad_{s}", batch) for s in ("l1", "l2", "max", "min", "std")]


def run_all_methods(model, x):
    batch = ModelOutputs.from_model(model, x, keep_graph=True)
    return [run_method(m.name, batch) for m in list_methods() if not m.needs_fit]


def run_loop(model, x, dtype=None):
    net = model.net if dtype is None else copy.deepcopy(model.net).to(dtype)
    groups = layer_param_groups(net)
    flat = [p for g in groups for p in g]
    dt = dtype or x.dtype  # normalise in the loop's own precision (a float32 input rounding is 1e-7)
    xn = (x.to(dt) - model.mean.to(dt)) / model.std.to(dt)
    per_layer: list[list[torch.Tensor]] = [[] for _ in groups]
    for b in range(x.shape[0]):
        grads = torch.autograd.grad(nll_pred(net(xn[b:b + 1])), flat)
        k = 0
        for i, g in enumerate(groups):
            per_layer[i].append(torch.cat([t.reshape(-1) for t in grads[k:k + len(g)]]))
            k += len(g)
    return stats_of([torch.stack(v) for v in per_layer])


def vmap_grads(model, x) -> dict[str, torch.Tensor]:
    """Per-sample gradients {qualified parameter name: (B, *shape)} by ``torch.func`` vmap(grad) (a peer;
    also bench_transformers')."""
    from torch.func import functional_call, grad, vmap

    net = model.net
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}

    def loss(p, xb):
        return nll_pred(functional_call(net, (p, buffers), (xb.unsqueeze(0),)))

    return vmap(grad(loss), in_dims=(None, 0))(params, model.normalize(x))


def run_vmap(model, x):
    grads = vmap_grads(model, x)
    vectors = []
    for name, m in parametrised_layers(model.net):
        keys = [f"{name}.{k}" for k, _ in m.named_parameters(recurse=False)]
        vectors.append(torch.cat([grads[k].reshape(x.shape[0], -1) for k in keys], 1))
    return stats_of(vectors)


def _backpack(model, x, extension):
    from backpack import backpack, extend

    net = extend(copy.deepcopy(model.net))
    lossfn = extend(nn.CrossEntropyLoss(reduction="sum"))
    z = net(model.normalize(x))
    loss = lossfn(z, z.argmax(-1).detach())
    with backpack(extension):
        loss.backward()
    return net


def run_backpack(model, x):
    from backpack.extensions import BatchGrad

    net = _backpack(model, x, BatchGrad())
    vectors = [torch.cat([p.grad_batch.reshape(x.shape[0], -1) for p in g], 1) for g in layer_param_groups(net)]
    return stats_of(vectors)


def run_backpack_l2(model, x):
    from backpack.extensions import BatchL2Grad

    net = _backpack(model, x, BatchL2Grad())
    return torch.stack([sum(p.batch_l2 for p in g) for g in layer_param_groups(net)], 1)  # (B, L) squared norms


def run_opacus(model, x):
    from opacus import GradSampleModule

    net = GradSampleModule(copy.deepcopy(model.net))
    z = net(model.normalize(x))
    nll_pred(z).backward()
    vectors = [torch.cat([p.grad_sample.reshape(x.shape[0], -1) for p in g], 1)
               for g in layer_param_groups(net._module)]
    return stats_of(vectors)


RUNNERS = {
    "six": lambda m, x: layer_gradient_stats(m, x, c_kernel="on").values,
    "six_eager": lambda m, x: layer_gradient_stats(m, x, c_kernel="off").values,
    "l2": lambda m, x: layer_sq_l2_norms(m, x, loss="nll_pred")[1],
    "msp": _method("msp"), "gradnorm": _method("gradnorm"), "grad_last": _method("grad_l2", layer="last"),
    "grad_all": run_grad_all, "confounding": _method("confounding"), "gaia_z": _method("gaia_z"),
    "gaia_a": _method("gaia_a"), "odin": _method("odin"), "all_methods": run_all_methods,
    "loop": run_loop, "vmap": run_vmap, "backpack": run_backpack, "backpack_l2": run_backpack_l2, "opacus": run_opacus,
}
OPTIONAL = {"backpack": "backpack", "backpack_l2": "backpack", "opacus": "opacus"}


# ---------------------------------------------------------------------------- measuring


def best_time(fn, device, min_time: float, max_reps: int) -> float:
    """Fastest of repeated calls (the minimum is the least noisy estimate on shared cores)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def _in_layer_order(model, names: list[str], values: torch.Tensor) -> torch.Tensor:
    # the engine reports forward order; the references (loop, vmap, BackPACK, Opacus) the network's registration order
    order = [n for n, _ in parametrised_layers(model.net)]
    return values[:, [names.index(n) for n in order]]


def exactness(row: str, model, xs, reference: torch.Tensor) -> dict | None:
    """Max relative error per statistic vs the float64 loop (L1, L2, std relative to themselves;
    max, min, mean relative to the gradient's RMS); L2 rows only the L2 column."""
    if row == "l2":
        names, sq = layer_sq_l2_norms(model, xs, loss="nll_pred")
        got = _in_layer_order(model, names, sq.double()).sqrt()
        return {"l2": ((got - reference[..., 1]).abs() / reference[..., 1]).max().item()}
    if row == "backpack_l2":
        got = RUNNERS[row](model, xs).double().sqrt()
        return {"l2": ((got - reference[..., 1]).abs() / reference[..., 1]).max().item()}
    if row in ("six", "six_eager"):
        res = layer_gradient_stats(model, xs, c_kernel="on" if row == "six" else "off")
        got = _in_layer_order(model, res.layers, res.values.double())
    elif row in ("loop", "vmap", "backpack", "opacus"):
        got = RUNNERS[row](model, xs).double()
    else:
        return None
    return relative_errors(model, got, reference)


def relative_errors(model, got: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """{stat: max relative error} of (B, L, 6) statistics: L1, L2, std relative to themselves;
    max, min, mean relative to the gradient's RMS (they can be ~0)."""
    numels = torch.tensor([float(sum(p.numel() for p in g)) for g in layer_param_groups(model.net)])
    rms = reference[..., 1] / numels.sqrt().to(reference.device)
    scale = torch.stack([reference[..., 0], reference[..., 1], rms, rms, rms, reference[..., 5]], -1)
    return dict(zip(STATS, ((got - reference).abs() / scale.clamp_min(1e-30)).amax((0, 1)).tolist()))


def available(row: str) -> bool:
    mod = OPTIONAL.get(row)
    if mod is None:
        return True
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def measure_case(case: str, quick: bool, device: str, exact: bool = True) -> tuple[list[dict], dict]:
    """Every row on one model; the two baselines are re-measured right before each row.
    ``exact``: also the exactness of every row and the float64 / float32-loop floors (slow)."""
    model, x = make_case(case, quick, device=device)
    min_time, reps = (0.3, 3) if quick else (1.5, 8)
    xs = x[:4 if quick else 8]
    reference = run_loop(model, xs, dtype=torch.float64) if exact else None
    model64 = make_case(case, quick, device=device)[0].double()  # same seeds: the same weights
    floor = {}
    for name, m in (("float32 loop", model), ("engine float64, compiled", model64),
                    ("engine float64, eager", model64)) if exact else ():
        if name == "float32 loop":
            got = run_loop(m, xs).double()
        else:  # the engine's float64 values before LayerStats rounds them to float32
            from gradviz.engine.plans import Job
            from gradviz.engine import GradientPass

            job = Job(STATS, None, "on" if "compiled" in name else "off")
            layers, _, values = GradientPass(m, xs.double()).reduce("nll_pred", None, job, None)
            got = _in_layer_order(m, layers, values.double())
        floor[name] = relative_errors(model, got, reference)
    results = []
    for row in ROWS:
        t0 = time.perf_counter()
        out = {"case": case, "row": row, "batch": x.shape[0]}
        if not available(row):
            out["refused"] = "not installed (pip install -r requirements-bench.txt)"
        elif row in SLOW and not exact:  # the slow peers run once, in the first round
            continue
        else:
            fn = RUNNERS[row]
            slow = row in SLOW
            try:
                warm = x[:2] if slow else x
                first = time.perf_counter()
                fn(model, warm)  # warm-up (first calls pay one-off set-up: calibration, kernel load)
                sync(device)
                out["first_call"] = time.perf_counter() - first
                out["fwd"] = best_time(lambda: run_forward(model, x), device, min_time, reps)
                out["fwdbwd"] = best_time(lambda: run_forward_backward(model, x), device, min_time, reps)
                if row in CLOSED_FORM:  # vs msp, timed alternately in the same window (both ~ one forward)
                    pair = [RUNNERS["msp"], fn]
                    both = [best_time(lambda f=f: f(model, x), device, min_time, reps) for f in pair * 2]
                    out["msp"] = min(both[0], both[2])
                out["seconds"] = best_time(lambda: fn(model, x), device, 0.0 if slow else min_time, 1 if slow else reps)
                out["error"] = exactness(row, model, xs, reference) if exact else None
            except Exception as exc:  # a peer refusing a model is a result, not a crash
                out.pop("seconds", None)
                out["refused"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:110]}"
        print(f"  {case:9s} {row:12s} {time.perf_counter() - t0:5.1f}s", file=sys.stderr, flush=True)
        results.append(out)
    return results, floor


# ---------------------------------------------------------------------------- memory (fresh processes)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def probe(case: str, batch: int, row: str) -> None:
    """In a fresh process: peak RSS increase during one call of ``row`` (after a tiny warm-up).

    The kernel's high-water mark is reset right before the call (``/proc/self/clear_refs`` 5), so
    import-time peaks of the CUDA-enabled torch build do not count."""
    torch.set_num_threads(2)
    model, x = make_case(case, False, batch=batch)
    fn = run_forward_backward if row == "fwdbwd" else RUNNERS[row]
    fn(model, x[:2])
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_mib("VmRSS")
    t = time.perf_counter()
    fn(model, x)
    seconds = time.perf_counter() - t
    print(json.dumps({"extra_mib": _status_mib("VmHWM") - base, "seconds": seconds}))


def measure_memory(quick: bool) -> list[dict]:
    rows = []
    for case, (*_, batches) in CASES.items():
        for batch in batches[:1] if quick else batches:
            for row in ("fwdbwd", "six", "l2", "vmap"):
                if row == "vmap" and batch != batches[0]:
                    continue
                cmd = [sys.executable, __file__, "--probe", case, str(batch), row]
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
                entry = {"case": case, "batch": batch, "row": row}
                if run.returncode == 0:
                    entry.update(json.loads(run.stdout.strip().splitlines()[-1]))
                else:
                    entry["refused"] = (run.stderr.strip().splitlines() or ["failed"])[-1][:120]
                rows.append(entry)
                print(f"  memory {case} {batch} {row}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cc = shutil.which(os.environ.get("CC", "cc"))
    cc_version = (subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0] if cc
                  else "none")
    libs = []
    for name in ("torch", "torchvision", "numpy", "backpack-for-pytorch", "opacus"):
        try:
            libs.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            libs.append(f"{name} not installed")
    return (f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
            f"Python {platform.python_version()}; {', '.join(libs)}; C compiler: {cc_version}; "
            f"gradviz kernel: {reductions.compiled_status()}")


def aggregate(rounds: list[list[dict]]) -> list[dict]:
    """One row per (case, row): the median over rounds of each throughput ratio (ratios are taken
    within a round, against that round's baselines), with the range of the fwd+bwd ratio."""
    import statistics

    out = []
    for first in rounds[0]:
        same = [r for rnd in rounds for r in rnd if r["case"] == first["case"] and r["row"] == first["row"]
                and "seconds" in r]
        if "seconds" not in first or not same:
            out.append(first)
            continue
        row = dict(first)
        for key in ("fwd", "fwdbwd", "msp"):
            if key in first:
                row[f"r_{key}"] = statistics.median(r[key] / r["seconds"] for r in same)
        row["samples_s"] = statistics.median(r["batch"] / r["seconds"] for r in same)
        ratios = [r["fwdbwd"] / r["seconds"] for r in same]
        row["r_fwdbwd_range"] = (min(ratios), max(ratios))
        row["rounds"] = len(same)
        out.append(row)
    return out


def report(results: list[dict], floors: dict, memory: list[dict], quick: bool, total: float) -> str:
    lines = ["| model (batch) | row | samples/s | vs forward | vs fwd+bwd (range) | max rel. error vs float64 loop "
             "| first call s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        label = ROWS[r["row"]][0]
        model = f"{r['case']} ({r['batch']})"
        if "refused" in r:
            lines.append(f"| {model} | {label} | refused: {r['refused']} | | | | |")
            continue
        err = "—" if not r.get("error") else f"{max(r['error'].values()):.1e}"
        vs_fwd = f"{r['r_fwd']:.2f}×"
        if "r_msp" in r:
            vs_fwd += f" ({r['r_msp']:.2f}× of msp)"
        lo, hi = r["r_fwdbwd_range"]
        spread = f" ({lo:.2f}–{hi:.2f})" if r["rounds"] > 1 else ""
        lines.append(f"| {model} | {label} | {r['samples_s']:,.0f} | {vs_fwd} | {r['r_fwdbwd']:.2f}×{spread} | {err} | "
                     f"{r['first_call']:.2f} |")
    lines += ["", "Exactness per statistic (max relative error over layers and the first samples; L1, L2, std "
              "relative to themselves, max/min/mean relative to the gradient's RMS):", "",
              "| model | path | " + " | ".join(STATS) + " |", "|---|---|" + "---:|" * len(STATS)]
    for r in results:
        if r.get("error") and len(r["error"]) == len(STATS) and r["row"] in ("six", "six_eager"):
            lines.append(f"| {r['case']} | engine float32, {'compiled' if r['row'] == 'six' else 'eager'} | "
                         + " | ".join(f"{r['error'][s]:.1e}" for s in STATS) + " |")
    for case, fl in floors.items():
        for name, errs in fl.items():
            lines.append(f"| {case} | {name} | " + " | ".join(f"{errs[s]:.1e}" for s in STATS) + " |")
    if memory:
        lines += ["", "Peak memory of one call in a fresh process (RSS increase over the process after a 2-sample "
                  "warm-up; chunk budget `GRADVIZ_CHUNK_MIB` = 16):", "",
                  "| model | batch | plain fwd+bwd | six statistics (compiled) | L2 only | vmap(grad) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for case, (*_, batches) in CASES.items():
            for batch in batches:
                cells = []
                for row in ("fwdbwd", "six", "l2", "vmap"):
                    m = next((e for e in memory if e["case"] == case and e["batch"] == batch and e["row"] == row), None)
                    cells.append("—" if m is None else m.get("refused") or f"+{m['extra_mib']:.0f} MiB")
                if any(c != "—" for c in cells):
                    lines.append(f"| {case} | {batch} | " + " | ".join(cells) + " |")
    mode = "--quick (small batches)" if quick else "default"
    note = (f"\n{time.strftime('%Y-%m-%d %H:%M')} · `benchmarks/bench_gradients.py` ({mode}), {total:.0f} s · "
            f"{machine()}. Throughput ratios: a row's samples/s ÷ that of a plain batched forward (no grad) / "
            "forward+backward (parameter gradients of the summed loss) of the same batch, both measured in the "
            "same process right before the row; higher is better, 1.00× = as fast; each is the median over "
            "the rounds (`--rounds`), with the range of the fwd+bwd ratio in brackets. Times are the fastest of "
            "repeated calls after one warm-up call (first call s: that warm-up, which includes the one-off "
            "calibration of each layer's plan and the kernel load); the slow peers run once. Method rows include "
            "their own forward, as the scoring pipeline runs them. Load average at the end: "
            f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}.\n")
    return "\n".join(lines) + "\n" + note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches, fewer repeats")
    ap.add_argument("--write", action="store_true", help="write the tables to docs/PERFORMANCE.md")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all rows; the table gives medians (default 3)")
    ap.add_argument("--probe", nargs=3, metavar=("CASE", "BATCH", "ROW"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        probe(args.probe[0], int(args.probe[1]), args.probe[2])
        return
    torch.set_num_threads(2 if args.device == "cpu" else torch.get_num_threads())
    reductions.warm_up()
    t0 = time.perf_counter()
    rounds, floors = [], {}
    for k in range(max(1, args.rounds)):
        rnd = []
        for case in CASES:
            rows, floor = measure_case(case, args.quick, args.device, exact=k == 0)
            rnd += rows
            floors.setdefault(case, floor)
        rounds.append(rnd)
    results = aggregate(rounds)
    memory = [] if args.no_memory or args.device != "cpu" else measure_memory(args.quick)
    md = report(results, floors, memory, args.quick, time.perf_counter() - t0)
    print(md)
    if args.write:
        from report_md import replace_section  # beside this script

        heading = "Per-sample gradient engine" + ("" if args.device == "cpu" else f" ({args.device})")
        replace_section(ROOT / "docs" / "PERFORMANCE.md", heading, md)
        print(f"wrote {ROOT / 'docs' / 'PERFORMANCE.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
