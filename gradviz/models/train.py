"""Reproducible training of the bundled ``mnist-cnn`` (``python -m gradviz train``).

Trains :class:`~gradviz.models.cnn.MnistResNet` on the 4,000 training digits of
:func:`gradviz.data.mnist.mnist_split`, evaluates on the 1,000 held-out digits, and writes
``mnist_cnn.safetensors`` (float32 state dict) and ``mnist_cnn.json`` (the model card).
Seeded end to end: parameter init, data order and augmentation draw from one seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
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


def random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Batched small random affine of (B, C, H, W) images in [0, 1]: rotation ±10°,
    translation ±2 px, scale 0.9–1.1; zero (black) fill, bilinear sampling."""
    b, _, h, w = x.shape
    u = torch.rand(b, 4, generator=generator)  # (B, 4) uniform draws: angle, scale, tx, ty
    angle = (2 * u[:, 0] - 1) * math.radians(MAX_ROTATION_DEG)
    scale = SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[:, 1]
    tx = (2 * u[:, 2] - 1) * MAX_TRANSLATE_PX * 2 / w  # pixels -> normalised [-1, 1] coords
    ty = (2 * u[:, 3] - 1) * MAX_TRANSLATE_PX * 2 / h
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


def train_mnist_cnn(
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    out_dir: Path = ASSETS,
    progress: bool = True,
    limit: int | None = None,
) -> dict:
    """Train the bundled MnistResNet, write weights + card into ``out_dir``, return a summary.

    AdamW with a one-cycle learning-rate schedule, cross-entropy (no label smoothing, so the
    softmax stays a plain maximum-likelihood fit for the uncertainty methods), light batched
    affine augmentation. ``limit`` trains and evaluates on the first ``limit`` images only
    (smoke tests). Returns test accuracy, train time, file paths and the training details.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from gradviz.data.mnist import mnist_split
    from gradviz.models.cnn import MnistResNet
    from gradviz.models.zoo import MNIST_MEAN, MNIST_STD, mnist_card

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
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
    net = MnistResNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=MAX_LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=MAX_LR, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25
    )

    started = time.perf_counter()
    history = []
    bar = tqdm(range(epochs), desc="train mnist-cnn", unit="epoch", disable=not progress)
    for epoch in bar:
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss, seen = 0.0, 0
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            xb = (random_affine(x_train[idx], generator) - mean) / std  # (B, 1, 28, 28)
            loss = F.cross_entropy(net(xb), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
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
    weights_path = out_dir / WEIGHTS_NAME
    card_path = out_dir / CARD_NAME
    save_file(state, str(weights_path), metadata={"format": "pt", "model": "mnist-cnn", "seed": str(seed)})

    details = {
        "epochs": epochs,
        "seed": seed,
        "batch_size": BATCH_SIZE,
        "optimizer": f"AdamW(lr={MAX_LR}, weight_decay={WEIGHT_DECAY}) + OneCycleLR(pct_start=0.25)",
        "loss": "cross-entropy (no label smoothing)",
        "augmentation": (
            f"random affine: rotation ±{MAX_ROTATION_DEG:g}°, translate ±{MAX_TRANSLATE_PX:g} px, "
            f"scale {SCALE_RANGE[0]}–{SCALE_RANGE[1]}"
        ),
        "train_images": len(x_train),
        "test_images": len(x_test),
        "train_accuracy": round(train_accuracy, 4),
        "final_train_loss": round(history[-1], 4),
        "train_time_s": round(train_time, 1),
        "torch_version": torch.__version__,
    }
    card = mnist_card(test_accuracy=round(test_accuracy, 4))
    if weights_path.resolve() != (ASSETS / WEIGHTS_NAME).resolve():
        card.weights = str(weights_path)
    card.extra.update(details)
    card_path.write_text(card.to_json() + "\n")
    return {"test_accuracy": test_accuracy, "weights": weights_path, "card": card_path, **details}


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m gradviz.models.train [--epochs N] [--seed S] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="gradviz train", description="Train the bundled mnist-cnn reproducibly.")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"training epochs (default {DEFAULT_EPOCHS})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=ASSETS, help=f"output folder (default {ASSETS})")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (smoke test)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    result = train_mnist_cnn(epochs=args.epochs, seed=args.seed, out_dir=args.out, limit=args.limit)
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
