"""Reproducible training of the bundled models (``python -m gradviz train [--arch cnn|vit]``).

Trains ``mnist-cnn`` (:class:`~gradviz.models.cnn.MnistResNet`, ``--arch cnn``, the default) or
``mnist-vit`` (:func:`~gradviz.models.vit.mnist_vit`, ``--arch vit``) on the 4,000 training
digits of :func:`gradviz.data.mnist.mnist_split`, evaluates on the 1,000 held-out digits, and
writes ``<name>.safetensors`` (float32 state dict) and ``<name>.json`` (the model card).
Seeded end to end: parameter init, data order and augmentation draw from one seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gradviz.config import ASSETS

WEIGHTS_NAME = "mnist_cnn.safetensors"
CARD_NAME = "mnist_cnn.json"
DEFAULT_EPOCHS = 20
BATCH_SIZE = 64
MAX_LR = 4e-3
WEIGHT_DECAY = 5e-4
MAX_ROTATION_DEG = 10.0
MAX_TRANSLATE_PX = 2.0
SCALE_RANGE = (0.9, 1.1)


@dataclass(frozen=True)
class Recipe:
    """How one bundled architecture is trained (every number that decides the weights)."""

    arch: str
    model_name: str
    epochs: int
    batch_size: int
    max_lr: float
    weight_decay: float
    pct_start: float
    max_rotation_deg: float = MAX_ROTATION_DEG
    max_translate_px: float = MAX_TRANSLATE_PX
    scale_range: tuple[float, float] = SCALE_RANGE
    clip_grad_norm: float | None = None

    @property
    def weights_name(self) -> str:
        return self.model_name.replace("-", "_") + ".safetensors"

    @property
    def card_name(self) -> str:
        return self.model_name.replace("-", "_") + ".json"


RECIPES = {
    "cnn": Recipe("cnn", "mnist-cnn", DEFAULT_EPOCHS, BATCH_SIZE, MAX_LR, WEIGHT_DECAY, pct_start=0.25),
    "vit": Recipe("vit", "mnist-vit", epochs=60, batch_size=64, max_lr=2e-3, weight_decay=0.05, pct_start=0.15,
                  max_rotation_deg=12.0, max_translate_px=2.5, scale_range=(0.9, 1.1), clip_grad_norm=1.0),
}


def random_affine(x: torch.Tensor, generator: torch.Generator, max_rotation_deg: float = MAX_ROTATION_DEG,
                  max_translate_px: float = MAX_TRANSLATE_PX, scale_range: tuple[float, float] = SCALE_RANGE) -> torch.Tensor:
    """Batched small random affine of (B, C, H, W) images in [0, 1]: rotation ±10°,
    translation ±2 px, scale 0.9–1.1 by default; zero (black) fill, bilinear sampling."""
    b, _, h, w = x.shape
    u = torch.rand(b, 4, generator=generator)  # (B, 4) uniform draws: angle, scale, tx, ty
    angle = (2 * u[:, 0] - 1) * math.radians(max_rotation_deg)
    scale = scale_range[0] + (scale_range[1] - scale_range[0]) * u[:, 1]
    tx = (2 * u[:, 2] - 1) * max_translate_px * 2 / w  # pixels -> normalised [-1, 1] coords
    ty = (2 * u[:, 3] - 1) * max_translate_px * 2 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def evaluate(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> float:
    """Accuracy of ``net`` (eval mode) on images in [0, 1] normalised with mean/std."""
    net.eval()
    correct = 0
    for start in range(0, len(images), 500):
        logits = net((images[start : start + 500] - mean) / std)
        correct += int((logits.argmax(1) == labels[start : start + 500]).sum())
    return correct / len(images)


def _build(arch: str) -> nn.Module:
    if arch == "cnn":
        from gradviz.models.cnn import MnistResNet

        return MnistResNet()
    from gradviz.models.vit import mnist_vit

    return mnist_vit()


def _card(recipe: Recipe, test_accuracy: float):
    from gradviz.models.zoo import mnist_card, mnist_vit_card

    make = mnist_card if recipe.arch == "cnn" else mnist_vit_card
    return make(test_accuracy=round(test_accuracy, 4))


def train_model(
    arch: str = "cnn",
    epochs: int | None = None,
    seed: int = 0,
    out_dir: Path = ASSETS,
    progress: bool = True,
    limit: int | None = None,
) -> dict:
    """Train the bundled ``arch`` ("cnn" or "vit"), write weights + card into ``out_dir``, return a summary.

    AdamW with a one-cycle learning-rate schedule, cross-entropy (no label smoothing, so the
    softmax stays a plain maximum-likelihood fit for the uncertainty methods), light batched
    affine augmentation; the numbers are the arch's :data:`RECIPES` entry. ``limit`` trains
    and evaluates on the first ``limit`` images only (smoke tests). Returns test accuracy,
    train time, file paths and the training details.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from gradviz.data.mnist import mnist_split
    from gradviz.models.zoo import MNIST_MEAN, MNIST_STD

    if arch not in RECIPES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(RECIPES)}")
    recipe = RECIPES[arch]
    if epochs is not None:
        recipe = replace(recipe, epochs=int(epochs))
    if recipe.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {recipe.epochs}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    x_train, y_train = mnist_split("train")
    x_test, y_test = mnist_split("test")
    y_train, y_test = torch.from_numpy(y_train), torch.from_numpy(y_test)
    if limit is not None:
        x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]
    mean = torch.tensor(MNIST_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(MNIST_STD).view(1, -1, 1, 1)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = _build(arch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.max_lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.max_lr, epochs=recipe.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=recipe.pct_start,
    )

    started = time.perf_counter()
    history = []
    bar = tqdm(range(recipe.epochs), desc=f"train {recipe.model_name}", unit="epoch", disable=not progress)
    for epoch in bar:
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss, seen = 0.0, 0
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            xb = random_affine(x_train[idx], generator, recipe.max_rotation_deg, recipe.max_translate_px,
                               recipe.scale_range)
            loss = F.cross_entropy(net((xb - mean) / std), y_train[idx])  # (B, 1, 28, 28) normalised
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(net.parameters(), recipe.clip_grad_norm)
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(idx)
            seen += len(idx)
        history.append(total_loss / seen)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    train_time = time.perf_counter() - started
    net.eval()

    test_accuracy = evaluate(net, x_test, y_test, mean, std)
    train_accuracy = evaluate(net, x_train, y_train, mean, std)

    # float tensors as float32; BatchNorm's int64 num_batches_tracked counters kept as they are
    state = {k: (v.float() if v.is_floating_point() else v).detach().contiguous() for k, v in net.state_dict().items()}
    weights_path = out_dir / recipe.weights_name
    card_path = out_dir / recipe.card_name
    save_file(state, str(weights_path), metadata={"format": "pt", "model": recipe.model_name, "seed": str(seed)})

    details = {
        "epochs": recipe.epochs,
        "seed": seed,
        "batch_size": recipe.batch_size,
        "optimizer": f"AdamW(lr={recipe.max_lr}, weight_decay={recipe.weight_decay}) + OneCycleLR(pct_start={recipe.pct_start})",
        "loss": "cross-entropy (no label smoothing)",
        "augmentation": (
            f"random affine: rotation ±{recipe.max_rotation_deg:g}°, translate ±{recipe.max_translate_px:g} px, "
            f"scale {recipe.scale_range[0]}–{recipe.scale_range[1]}"
        ),
        "train_images": len(x_train),
        "test_images": len(x_test),
        "train_accuracy": round(train_accuracy, 4),
        "final_train_loss": round(history[-1], 4),
        "train_time_s": round(train_time, 1),
        "torch_version": torch.__version__,
    }
    if recipe.clip_grad_norm is not None:
        details["optimizer"] += f", gradient norm clipped at {recipe.clip_grad_norm:g}"
    card = _card(recipe, test_accuracy)
    if weights_path.resolve() != (ASSETS / recipe.weights_name).resolve():
        card.weights = str(weights_path)
    card.extra.update(details)
    card_path.write_text(card.to_json() + "\n")
    return {"test_accuracy": test_accuracy, "weights": weights_path, "card": card_path, **details}


def train_mnist_cnn(epochs: int = DEFAULT_EPOCHS, seed: int = 0, out_dir: Path = ASSETS, progress: bool = True,
                    limit: int | None = None) -> dict:
    """Train the bundled ``mnist-cnn`` (:func:`train_model` with ``arch="cnn"``)."""
    return train_model("cnn", epochs, seed, out_dir, progress, limit)


def train_mnist_vit(epochs: int | None = None, seed: int = 0, out_dir: Path = ASSETS, progress: bool = True,
                    limit: int | None = None) -> dict:
    """Train the bundled ``mnist-vit`` (:func:`train_model` with ``arch="vit"``)."""
    return train_model("vit", epochs, seed, out_dir, progress, limit)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m gradviz train [--arch cnn|vit] [--epochs N] [--seed S] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="gradviz train",
                                     description="Train a bundled model (mnist-cnn or mnist-vit) reproducibly.")
    parser.add_argument("--arch", choices=sorted(RECIPES), default="cnn",
                        help="cnn: mnist-cnn (default); vit: mnist-vit, the small vision transformer")
    parser.add_argument("--epochs", type=int, default=None,
                        help=", ".join(f"{a}: {r.epochs}" for a, r in RECIPES.items()).join(["training epochs (default ", ")"]))
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=ASSETS, help=f"output folder (default {ASSETS})")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (smoke test)")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    from gradviz.cli import check_count, output_folder
    from gradviz.runconfig import MAX_LIMIT, MAX_SEED

    check_count(args.limit, "--limit", 1, MAX_LIMIT)
    check_count(args.seed, "--seed", 0, MAX_SEED)
    output_folder(args.out)  # before the minutes of training, not after
    result = train_model(args.arch, epochs=args.epochs, seed=args.seed, out_dir=args.out, limit=args.limit)
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
