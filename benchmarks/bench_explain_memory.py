"""Peak memory of explaining a score against explaining the class: the memory planner's factors for attributions.

For each model and each target — the class logit, an output score (energy: one forward+backward with the graph of
the features), ODIN (its input step: a gradient w.r.t. the input, then a forward and backward at
the stepped input) and a gradient score (grad_l2 by double backprop: every sample's parameter gradient kept with its
graph, then a second backward) — saliency runs on batches of two sizes, each in a fresh process: the model is
warmed on one image, freed memory handed back (``malloc_trim``), the peak reset (``/proc/self/clear_refs``), then
the pass runs. The per-sample cost is the slope of the peak RSS between the two batches, reported in MB and in
units of A (the planner's activation bytes of one sample) and of P (the parameter bytes). Measures, never asserts.

    .venv/bin/python benchmarks/bench_explain_memory.py            # mnist-cnn 1×28² and ResNet-18 3×64² (~2 min)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

_WORKER = textwrap.dedent("""
    import ctypes, gc, json
    import torch
    from gradviz.explain.attributions import attribute
    from gradviz.explain.scores import explain_score
    from gradviz.models import load_model
    from gradviz.models.zoo import random_model
    from gradviz.runtime.budget import activation_bytes, parameter_bytes

    def kib(field):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

    model = load_model("mnist-cnn") if {arch!r} == "mnist-cnn" else random_model({arch!r}, 10, {size!r})
    x = torch.rand(({batch}, *model.card.input_size), generator=torch.Generator().manual_seed(0))

    def run(xs):
        if {target!r} == "class":
            return attribute(model, xs, "saliency")
        return explain_score(model, xs, "saliency", {target!r})

    run(x[:1])
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    open("/proc/self/clear_refs", "w").write("5")
    before = kib("VmRSS:")
    run(x)
    print(json.dumps({{"peak_mb": (kib("VmHWM:") - before) / 1024, "a_mb": activation_bytes(model) / 2 ** 20,
                      "p_mb": parameter_bytes(model) / 2 ** 20}}))
""")

CASES = {"mnist-cnn": ((1, 28, 28), (8, 32)), "resnet18": ((3, 64, 64), (4, 16))}
TARGETS = ("class", "energy", "odin", "grad_l2")


def measure(arch: str, size, target: str, batch: int) -> dict:
    code = _WORKER.format(arch=arch, size=size, target=target, batch=batch)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600, env=env)
    try:
        return json.loads(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (run.stderr.strip().splitlines() or ["no output"])[-1][:200]}


def main() -> None:
    print("| model | explains | peak MB (small, large batch) | per sample MB | × A | × P |")
    print("|---|---|---|---:|---:|---:|")
    for arch, (size, (small, large)) in CASES.items():
        for target in TARGETS:
            lo, hi = measure(arch, size, target, small), measure(arch, size, target, large)
            if "error" in lo or "error" in hi:
                print(f"| {arch} | {target} | {lo.get('error') or hi.get('error')} | | | |")
                continue
            slope = max(hi["peak_mb"] - lo["peak_mb"], 0.0) / (large - small)
            print(f"| {arch} {'×'.join(map(str, size))} | {target} | {lo['peak_mb']:.0f}, {hi['peak_mb']:.0f} | "
                  f"{slope:.2f} | {slope / lo['a_mb']:.1f} | {slope / lo['p_mb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
