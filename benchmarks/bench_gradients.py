"""Per-sample gradient statistics: gradviz's engine vs the obvious ways and peer libraries.

Measures (never asserts) samples/s, time relative to a plain forward and to a plain batched
forward+backward of the same batch, peak RSS, and exactness (max relative error vs a float64
per-sample autograd loop) on:
  - the bundled architecture, random weights: mnist-cnn, batch 256, 1×28×28;
  - torchvision resnet18, random weights, 10 classes, 3×32×32, batch 32.

    .venv/bin/python benchmarks/bench_gradients.py            # ~2-3 min on 2 idle cores
    .venv/bin/python benchmarks/bench_gradients.py --quick    # ~20 s, small batches
    .venv/bin/python benchmarks/bench_gradients.py --write    # also writes docs/PERFORMANCE.md

BackPACK and Opacus are optional (requirements-bench.txt); rows say where they refuse a model.
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradviz.gradients import STATS, layer_gradient_stats, layer_sq_l2_norms, parametrised_layers  # noqa: E402
from gradviz.models.zoo import random_model  # noqa: E402

CASES = {  # name -> (arch, input size, batch, quick batch)
    "mnist-cnn": ("mnist-cnn", (1, 28, 28), 256, 64),
    "resnet18": ("resnet18", (3, 32, 32), 32, 8),
}
ROWS = ["engine", "engine_l2", "gradnorm", "msp", "loop", "vmap", "backpack", "opacus"]
LABELS = {
    "engine": "gradviz engine, 6 stats × all layers (eager)",
    "engine_l2": "gradviz engine, L2 only (Gram/ghost where cheaper)",
    "gradnorm": "gradnorm closed form (last layer, forward only)",
    "msp": "msp (forward only)",
    "loop": "per-sample autograd loop + stats",
    "vmap": "torch.func vmap(grad) + functional_call + stats",
    "backpack": "BackPACK BatchGrad + stats",
    "opacus": "Opacus GradSampleModule + stats",
}


def make_case(name: str, quick: bool):
    arch, size, batch, quick_batch = CASES[name]
    model = random_model(arch, 10, size, seed=0)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial BN statistics, as in a trained model
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    x = torch.rand((quick_batch if quick else batch, *size), generator=g)
    return model, x


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


# ---------------------------------------------------------------------------- the contenders


def run_forward(model, x):
    with torch.no_grad():
        return model(x)


def run_forward_backward(model, x):
    params = [p for p in model.parameters()]
    return torch.autograd.grad(nll_pred(model(x)), params)


def run_msp(model, x):
    with torch.no_grad():
        return -model(x).softmax(-1).amax(-1)


def run_gradnorm(model, x):
    logits, h = model.logits_and_features(x)
    p = logits.softmax(-1)
    return -h.abs().sum(-1) * (p - 1.0 / p.shape[-1]).abs().sum(-1)


def run_engine(model, x):
    return layer_gradient_stats(model, x).values


def run_engine_l2(model, x):
    return layer_sq_l2_norms(model, x, loss="nll_pred")[1]


def run_loop(model, x, dtype=None):
    net = model.net if dtype is None else copy.deepcopy(model.net).to(dtype)
    groups = layer_param_groups(net)
    flat = [p for g in groups for p in g]
    xn = model.normalize(x).to(dtype or x.dtype)
    per_layer: list[list[torch.Tensor]] = [[] for _ in groups]
    for b in range(x.shape[0]):
        grads = torch.autograd.grad(nll_pred(net(xn[b:b + 1])), flat)
        k = 0
        for i, g in enumerate(groups):
            per_layer[i].append(torch.cat([t.reshape(-1) for t in grads[k:k + len(g)]]))
            k += len(g)
    return stats_of([torch.stack(v) for v in per_layer])


def run_vmap(model, x):
    from torch.func import functional_call, grad, vmap

    net = model.net
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}

    def loss(p, xb):
        return nll_pred(functional_call(net, (p, buffers), (xb.unsqueeze(0),)))

    grads = vmap(grad(loss), in_dims=(None, 0))(params, model.normalize(x))
    vectors = []
    for name, m in parametrised_layers(net):
        keys = [f"{name}.{k}" for k, _ in m.named_parameters(recurse=False)]
        vectors.append(torch.cat([grads[k].reshape(x.shape[0], -1) for k in keys], 1))
    return stats_of(vectors)


def run_backpack(model, x):
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    net = extend(copy.deepcopy(model.net))
    lossfn = extend(nn.CrossEntropyLoss(reduction="sum"))
    z = net(model.normalize(x))
    loss = lossfn(z, z.argmax(-1).detach())
    with backpack(BatchGrad()):
        loss.backward()
    vectors = [torch.cat([p.grad_batch.reshape(x.shape[0], -1) for p in g], 1) for g in layer_param_groups(net)]
    return stats_of(vectors)


def run_opacus(model, x):
    from opacus import GradSampleModule

    net = GradSampleModule(copy.deepcopy(model.net))
    z = net(model.normalize(x))
    nll_pred(z).backward()
    vectors = [torch.cat([p.grad_sample.reshape(x.shape[0], -1) for p in g], 1)
               for g in layer_param_groups(net._module)]
    return stats_of(vectors)


RUNNERS = {
    "engine": run_engine, "engine_l2": run_engine_l2, "gradnorm": run_gradnorm, "msp": run_msp,
    "loop": run_loop, "vmap": run_vmap, "backpack": run_backpack, "opacus": run_opacus,
}


# ---------------------------------------------------------------------------- measuring


class RssSampler:
    """Peak resident memory of this process while a block runs (sampled from /proc every 2 ms)."""

    def __enter__(self):
        import threading

        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * resource.getpagesize() / 2**20
        except OSError:  # not Linux: fall back to the (monotonic) getrusage peak
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def best_time(fn, warm, min_time: float, max_reps: int) -> float:
    """Fastest of repeated ``fn()`` calls after one ``warm()`` (the minimum is the least noisy
    estimate on cores shared with other work)."""
    warm()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def exactness(row: str, model, xs, reference: torch.Tensor) -> float | None:
    """Max relative error of the six statistics (L2 only for engine_l2) vs the float64 loop.

    L1, L2, std relative to themselves; max, min, mean relative to the gradient's RMS.
    """
    order = [n for n, _ in parametrised_layers(model)]  # the engine reports forward order: reorder
    if row == "engine_l2":
        names, sq = layer_sq_l2_norms(model, xs, loss="nll_pred")
        got = sq.double().sqrt()[:, [names.index(n) for n in order]]
        return ((got - reference[..., 1]).abs() / reference[..., 1]).max().item()
    if row not in ("engine", "loop", "vmap", "backpack", "opacus"):
        return None
    if row == "engine":
        res = layer_gradient_stats(model, xs)
        got = res.values.double()[:, [res.layers.index(n) for n in order]]
    else:
        got = RUNNERS[row](model, xs).double()
    numels = torch.tensor([float(sum(p.numel() for p in g)) for g in layer_param_groups(model.net)])
    rms = reference[..., 1] / numels.sqrt()
    scale = torch.stack([reference[..., 0], reference[..., 1], rms, rms, rms, reference[..., 5]], -1)
    return ((got - reference).abs() / scale.clamp_min(1e-30)).max().item()


def available(row: str) -> bool:
    mod = {"backpack": "backpack", "opacus": "opacus"}.get(row)
    if mod is None:
        return True
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def measure_case(case: str, quick: bool) -> list[dict]:
    """Every row on one model; baselines measured in the same process right before the rows."""
    model, x = make_case(case, quick)
    min_time, reps = (0.3, 3) if quick else (1.5, 7)
    few = x[:2]
    reference = run_loop(model, x[:4 if quick else 8], dtype=torch.float64)
    results = []
    for row in ROWS:
        t0 = time.perf_counter()
        out = {"case": case, "row": row, "batch": x.shape[0]}
        if not available(row):
            out["refused"] = "not installed (see requirements-bench.txt)"
        else:
            fn = RUNNERS[row]
            slow = row in ("loop", "vmap", "backpack", "opacus")
            try:  # baselines right before each row: load from other work drifts over minutes
                out["fwd"] = best_time(lambda: run_forward(model, x), lambda: None, min_time, reps)
                out["fwdbwd"] = best_time(lambda: run_forward_backward(model, x), lambda: None, min_time, reps)
                with RssSampler() as rss:
                    out["seconds"] = best_time(lambda: fn(model, x), lambda: fn(model, few if slow else x),
                                               0.0 if slow else min_time, 1 if slow else reps)
                out["rss_peak_mib"], out["rss_extra_mib"] = rss.peak, rss.peak - rss.start
                out["error"] = exactness(row, model, x[:reference.shape[0]], reference)
            except Exception as exc:  # a peer refusing a model is a result, not a crash
                out.pop("seconds", None)
                out["refused"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
        print(f"  {case:9s} {row:9s} {time.perf_counter() - t0:5.1f}s", file=sys.stderr)
        results.append(out)
    return results


def run_all(quick: bool) -> list[dict]:
    return [r for case in CASES for r in measure_case(case, quick)]


def table(results: list[dict], quick: bool) -> str:
    head = ("| model (batch) | method | samples/s | × forward | × fwd+bwd | max rel. error vs float64 loop "
            "| peak RSS MiB (+ over start) |\n|---|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in results:
        label = LABELS[r["row"]]
        model = f"{r['case']} ({r.get('batch', '—')})"
        if "refused" in r:
            lines.append(f"| {model} | {label} | refused: {r['refused']} | | | | |")
            continue
        err = "—" if r.get("error") is None else f"{r['error']:.1e}"
        rss = f"{r['rss_peak_mib']:.0f} (+{r['rss_extra_mib']:.0f})"
        lines.append(f"| {model} | {label} | {r['batch'] / r['seconds']:,.0f} | {r['seconds'] / r['fwd']:.1f} | "
                     f"{r['seconds'] / r['fwdbwd']:.2f} | {err} | {rss} |")
    mode = "--quick (small batches)" if quick else "default"
    note = (f"\nCPU, torch {torch.__version__}, {torch.get_num_threads()} threads, mode {mode}. "
            "× forward / × fwd+bwd = time of the method ÷ time of a plain batched forward / "
            "forward+backward (parameter gradients of the summed loss) of the same batch, measured "
            "in the same process just before the row; times are the fastest of repeated runs (one run for the "
            "slow rows: loop, vmap, BackPACK). Peak RSS = the whole process (model, batch, Python, torch) "
            "sampled while that row ran, and its increase over the RSS when the row started. Peak RSS of "
            f"the whole run (getrusage): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB.\n")
    return "\n".join(lines) + "\n" + note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches, fewer repeats, ~20 s")
    ap.add_argument("--write", action="store_true", help="write the table to docs/PERFORMANCE.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    results = run_all(args.quick)
    md = table(results, args.quick)
    print(md)
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.write:
        path = ROOT / "docs" / "PERFORMANCE.md"
        path.write_text("# Performance: per-sample gradient statistics\n\n"
                        "Written by `benchmarks/bench_gradients.py --write` (see benchmarks/README.md). "
                        "The machine's 2 cores are shared, so absolute numbers are noisy; the ratios "
                        "within one run are what to compare.\n\n" + md)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
