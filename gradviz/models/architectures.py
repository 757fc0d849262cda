"""Architectures without weights, sized to a weights file: the first half of "bring your own weights".

:func:`build_untrained` makes an untrained network of an architecture — bundled
(``mnist-cnn``, ``mnist-vit``), ``torchvision:<arch>``, ``timm:<name>``, an installed plugin, or
a server-allowed ``file.py:build`` — with as many classes (and input channels, for the bundled
ones) as a state dict's head holds, plus a default card. :func:`build_for_weights` does the same
for a weights file's declared shapes, comparing them first with a shape-only (``meta``) build, so
a file that declares 2,000,000,000 classes or tensors the network lacks is refused before any
memory is spent. :func:`model_from_state` / :func:`model_from_weights` load the weights strictly,
check the card against the network with one dry forward pass (:func:`check_card_fits`), and wrap it.
"""

from __future__ import annotations

import torch
from torch import nn

from gradviz.errors import ModelError
from gradviz.models.card import MAX_CLASSES, ModelCard

BUNDLED_ARCHS = ("mnist-cnn", "mnist-vit")
# state-dict keys that decide the shape of a bundled network: (first layer weight, head weight)
_BUNDLED_KEYS = {"mnist-cnn": ("stem.0.weight", "fc.weight"), "mnist-vit": ("conv_proj.weight", "heads.head.weight")}


def check_class_count(classes: int, where: str) -> int:
    """``classes`` read from a file's head (``where``), refused above the card's limit before a network is built."""
    if not 1 <= classes <= MAX_CLASSES:
        raise ModelError(f"{where} declares {classes:,} classes; gradviz takes 1–{MAX_CLASSES:,} — the file is "
                         "damaged or not made for this architecture")
    return classes


def _rows(state: dict | None, key: str, dim: int, default: int) -> int:
    if state:
        for k in (key, f"module.{key}"):
            if k in state and state[k].ndim > dim:
                return int(state[k].shape[dim])
    return default


def _resized(card: ModelCard, channels: int, num_classes: int) -> ModelCard:
    """``card`` with ``channels`` input channels and ``num_classes`` classes (defaults for what changed)."""
    from dataclasses import replace

    mean, std = card.mean, card.std
    if channels != card.channels:
        mean, std = (mean[0],) * channels, (std[0],) * channels
    names = card.class_names if num_classes == card.num_classes else [f"class {i}" for i in range(num_classes)]
    return replace(card, input_size=(channels, *card.input_size[1:]), mean=mean, std=std, class_names=names,
                   test_accuracy=None, weights=None, extra={})


def _bundled(arch: str, state: dict | None) -> tuple[nn.Module, ModelCard]:
    from gradviz.models.zoo import bundled_card

    first, head = _BUNDLED_KEYS[arch]
    channels, classes = _rows(state, first, 1, 1), check_class_count(_rows(state, head, 0, 10), f"the head {head}")
    if channels not in (1, 3):
        raise ModelError(f"{first} takes {channels:,} input channels; gradviz takes 1 (grey) or 3 (RGB)")
    if arch == "mnist-cnn":
        from gradviz.models.cnn import MnistResNet

        net: nn.Module = MnistResNet(in_channels=channels, num_classes=classes)
    else:
        from gradviz.models.vit import mnist_vit

        net = mnist_vit(in_channels=channels, num_classes=classes)
    return net, _resized(bundled_card(arch), channels, classes)


def _torchvision(arch: str, state: dict | None) -> tuple[nn.Module, ModelCard]:
    import torchvision

    from gradviz.models.zoo import IMAGENET_MEAN, IMAGENET_STD, _num_classes_in

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(f"unknown torchvision classification model {arch!r}; e.g. resnet18, mobilenet_v3_small")
    classes = check_class_count(_num_classes_in(arch, state), f"the head of {arch}") if state else 1000
    try:
        net = torchvision.models.get_model(arch, weights=None, num_classes=classes)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {arch} with {classes} classes: {exc}") from None
    card = ModelCard(name=f"torchvision:{arch}", architecture=arch, input_size=(3, 224, 224), mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, class_names=[f"class {i}" for i in range(classes)])
    return net, card


def build_untrained(arch: str, state: dict[str, torch.Tensor] | None = None, *,
                    allow_code: bool = False) -> tuple[nn.Module, ModelCard]:
    """An untrained network of ``arch`` shaped for ``state`` (classes from its head) and a default card.

    ``allow_code`` must be True for ``file.py:build`` (it runs that file); plugins are
    installed packages and always allowed.
    """
    from gradviz.models import plugins, timm_models

    arch = str(arch).strip()
    if arch in BUNDLED_ARCHS:
        return _bundled(arch, state)
    if arch.startswith("torchvision:"):
        return _torchvision(arch.split(":", 1)[1], state)
    if arch.startswith(timm_models.PREFIX):
        name = arch[len(timm_models.PREFIX):]
        classes = check_class_count(timm_models.num_classes_in(name, state), f"the head of {name}") if state else None
        return timm_models.build_timm(name, classes)
    if plugins.is_file_spec(arch):
        if not allow_code:
            raise ModelError(f"{arch} runs a Python file; it is loaded only when the person running gradviz asks for it "
                             "(command line --model, or the dashboard's server configuration GRADVIZ_MODELS)")
        model = plugins.build_from_file(arch)
        return model.net, model.card
    if arch in plugins.plugin_entry_points():
        model = plugins.build_plugin(arch)
        return model.net, model.card
    raise ModelError(f"unknown architecture {arch!r}; choose mnist-cnn, mnist-vit, torchvision:<arch>, timm:<name> "
                     "or an installed gradviz.models plugin")


def check_card_fits(net: nn.Module, card: ModelCard, source: str) -> None:
    """One dry forward pass of two images of ``card.input_size`` (seeded noise in [0, 1]; not blank, which
    a feature-normalising head would turn into 0/0): the network must take them and return one finite
    tensor of logits (2, ``card.num_classes``); otherwise one :class:`ModelError` says which part
    disagrees. Uploads, ``--weights`` files, plugins and ``file.py:build`` all pass here."""
    net.eval()
    x = torch.rand(2, *card.input_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = net(x.to(next(net.parameters(), x).device))
    except Exception as exc:  # noqa: BLE001 — any failure here means the card and the network disagree
        size, why = "×".join(map(str, card.input_size)), str(exc).splitlines()[0][:160] if str(exc) else ""
        raise ModelError(f"{source}: the network does not take images of the card's input size {size} "
                         f"({type(exc).__name__}: {why}); fix input_size in the card or the network") from None
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"{source}: the network's forward returned a {type(out).__name__}; gradviz needs one tensor "
                         "of logits (batch, classes) — return only the logits (e.g. out[0] of a tuple)")
    if out.ndim != 2 or out.shape[0] != 2:
        raise ModelError(f"{source}: the network must return logits (batch, classes); for a batch of 2 images it "
                         f"returned shape {tuple(out.shape)}")
    if out.shape[1] != card.num_classes:
        raise ModelError(f"{source}: the network has {out.shape[1]} outputs but the card names {card.num_classes} "
                         "classes; give one class name per output")
    if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
        raise ModelError(f"{source}: the network's logits for a test image are "
                         f"{'not floating point' if not out.is_floating_point() else 'NaN or infinite'}; "
                         "check its weights and its forward")


def build_for_weights(arch: str, shapes: dict[str, torch.Tensor], source: str, *,
                      allow_code: bool = False) -> tuple[nn.Module, ModelCard]:
    """:func:`build_untrained` for a weights file's declared ``shapes`` (meta tensors or a state dict),
    the names and shapes compared before anything is allocated: an architecture sized from the file
    (bundled, torchvision, timm) is first built on the ``meta`` device. Code architectures
    (plugins, ``file.py:build``) do not depend on the file and are built, then compared."""
    from gradviz.models.weights import check_state_fits

    if arch in BUNDLED_ARCHS or arch.startswith(("torchvision:", "timm:")):
        try:
            with torch.device("meta"):
                reference, _ = build_untrained(arch, shapes)
        except ModelError:
            raise
        except Exception:  # noqa: BLE001 — a few models cannot be built on meta; the real build below is bounded
            reference = None  # by the class limit and compared before any tensor of the file is made
        if reference is not None:
            check_state_fits(reference, shapes, source)
    net, card = build_untrained(arch, shapes, allow_code=allow_code)
    check_state_fits(net, shapes, source)
    return net, card


def model_from_state(arch: str, state: dict[str, torch.Tensor], card: ModelCard | None = None, source: str = "weights",
                     *, allow_code: bool = False):
    """``arch`` with ``state`` loaded strictly and ``card`` (default: the architecture's) checked against it."""
    from gradviz.models import GradvizModel
    from gradviz.models.weights import apply_state_dict

    net, default = build_for_weights(arch, state, source, allow_code=allow_code)
    apply_state_dict(net, state, source)
    card = (card or default).validate()
    check_card_fits(net, card, source)
    return GradvizModel(net, card)


def model_from_weights(arch: str, weights, card: ModelCard | None = None, *, allow_code: bool = False):
    """``arch`` with an opened :class:`~gradviz.models.weights.WeightsFile`: shapes compared first, then
    the tensors read and loaded, and the card checked (see :func:`model_from_state`)."""
    from gradviz.models import GradvizModel
    from gradviz.models.weights import apply_state_dict

    net, default = build_for_weights(arch, weights.shapes, weights.name, allow_code=allow_code)
    apply_state_dict(net, weights.tensors(), weights.name)
    card = (card or default).validate()
    check_card_fits(net, card, weights.name)
    return GradvizModel(net, card)
