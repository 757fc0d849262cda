"""Issue 24's "done when": the CLI on a ResNet-50 at 224² with every method, default settings.

Makes what a new user brings — random ResNet-50 weights with 2 classes saved as safetensors, a folder of
``--id`` ID images and one of ``--ood`` OOD images (PNG, 224×224) — then runs, each in its own process:

  1. ``gradviz score --model torchvision:resnet50 --weights W.safetensors --id folder:ID --id-split 0.5
     --ood folder:OOD --methods all`` with default settings (no ``--batch-size``, no budget set);
  2. one plain forward+backward pass (the predicted label's loss, gradients of every parameter) over the
     same images, decoded by the same loader, in batches of ``--plain-batch`` (32, the issue's measurement).

and prints both wall times, their ratio and both peak RSS (GNU time's maximum resident set size). The CLI runs
on an empty result store of its own (a first-time user's). Measures, never asserts. ``--threads`` torch threads
for both (default: every core).

    .venv/bin/python benchmarks/cli_realsize.py                 # 200 + 200 images (about 10 min on 2 cores)
    .venv/bin/python benchmarks/cli_realsize.py --id 40 --ood 40  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PLAIN = textwrap.dedent("""
    import json, sys, time
    import torch
    from gradviz.data import load_dataset
    from gradviz.models import load_model

    model = load_model("torchvision:resnet50", sys.argv[1])
    t = time.perf_counter()
    xs = [load_dataset(spec, model.card).images for spec in sys.argv[2:4]]
    x, step = torch.cat(xs), int(sys.argv[4])
    params = [p for p in model.parameters()]
    for i in range(0, len(x), step):
        z = model(x[i:i + step])
        torch.autograd.grad(-z.log_softmax(-1).amax(-1).sum(), params)
    print(json.dumps({"seconds": time.perf_counter() - t, "images": len(x)}))
""")


def make_inputs(folder: Path, n_id: int, n_ood: int) -> tuple[Path, Path, Path]:
    """Random ResNet-50 weights (2 classes) and two folders of 224² PNGs: smooth blobs (ID), noise (OOD)."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None, num_classes=2)
    weights = folder / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    rng = np.random.default_rng(0)
    id_dir, ood_dir = folder / "ID", folder / "OOD"
    for d in (id_dir / "a", id_dir / "b", ood_dir):
        d.mkdir(parents=True)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    for i in range(n_id):
        cx, cy, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.1, 0.3)]
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        rgb = np.stack([blob * c for c in rng.uniform(0.3, 1.0, 3)], -1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(id_dir / ("ab"[i % 2]) / f"{i:04d}.png")
    for i in range(n_ood):
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(ood_dir / f"{i:04d}.png")
    return weights, id_dir, ood_dir


def child(cmd: list[str], env: dict, tmp: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd``; its wall seconds and its peak RSS in MB (GNU time's %M, this child alone)."""
    peak_file = tmp / "peak_kib"
    t = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(peak_file), *cmd], capture_output=True, text=True,
                          env=env)
    seconds = time.perf_counter() - t
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return seconds, int(peak_file.read_text().split()[-1]) / 1024, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--id", type=int, default=200, help="ID images (split 0.5: half fit, half scored)")
    parser.add_argument("--ood", type=int, default=200)
    parser.add_argument("--plain-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    env.pop("GRADVIZ_MEMORY_MB", None)  # default settings
    with tempfile.TemporaryDirectory() as tmp:
        # An empty result store: the same seeds make the same weights and images, so a shared cache would serve an
        # earlier run's scores (a warm cache halves the CLI's time; a first run measured that way read 1.47x).
        env["GRADVIZ_CACHE_DIR"] = str(Path(tmp) / "cache")
        weights, id_dir, ood_dir = make_inputs(Path(tmp), args.id, args.ood)
        cli = [sys.executable, "-m", "gradviz", "score", "--model", "torchvision:resnet50", "--weights", str(weights),
               "--id", f"folder:{id_dir}", "--id-split", "0.5", "--ood", f"folder:{ood_dir}", "--methods", "all",
               "--out", str(Path(tmp) / "out")]
        cli_s, cli_mb, done = child(cli, env, Path(tmp))
        plans = [line for line in done.stderr.splitlines() if "batch" in line.lower()][:6]
        plain_s, plain_mb, done2 = child([sys.executable, "-c", _PLAIN, str(weights), f"folder:{id_dir}",
                                          f"folder:{ood_dir}", str(args.plain_batch)], env, Path(tmp))
        inner = json.loads(done2.stdout.strip().splitlines()[-1])
    result = {"images": inner["images"], "threads": args.threads, "cli_s": round(cli_s, 1),
              "cli_peak_rss_mb": round(cli_mb), "plain_s": round(plain_s, 1),
              "plain_pass_s": round(inner["seconds"], 1), "plain_peak_rss_mb": round(plain_mb),
              "time_ratio": round(cli_s / plain_s, 2), "plans": plans}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
