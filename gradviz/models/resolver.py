"""One way from a model spec to a model: :func:`resolve` names the source, :func:`load` applies weights and card.

The flow, for ``load_model(spec, weights)`` (and the same steps for uploads and the web bounds)::

    resolve(spec) -> Source                  which kind, checked before anything is built or imported
        "mnist-cnn", "mnist-vit"        Bundled      the net, its committed weights and card (zoo.py)
        "torchvision:<arch>"            Torchvision  torchvision builders, ImageNet download (below)
        "timm:<name>"                   Timm         timm builders, Hugging Face Hub download (timm_models.py)
        an installed entry point        Plugin       the package's build() (plugins.py)
        "path/to/file.py:build"         File         imports that file: only with allow_code (plugins.py)
        "upload:…", anything else       ModelError   one line saying what to do

    no weights file:  source.pretrained() -> (net, card)        the weights and card the source ships
    a weights file:   open_weights(file)                        header checked, nothing allocated (weights.py)
                      fit_weights(source, file)
                          source.untrained(shapes) on meta      where the shape follows the file (sized_by_weights):
                                                                shapes compared first, no memory spent
                          source.untrained(shapes)              the real net, compared (again)
                          file.tensors() -> apply_state_dict    NaN/inf refused, loaded strictly
                      card: a JSON card beside the file (same stem), else the source's default card
    finish(net, card): the card validated, one dry forward pass (check_card_fits), GradvizModel
                       (which runs the eager module of a torch.compile'd net)

Uploads (upload.py) run the same ``fit_weights`` and ``finish`` on bytes (``architecture=True``: a bundled
network takes its channels and classes from the file); the web app's parameter bound (runtime/budget.py)
counts ``build_untrained(arch, state)`` on the meta device before anything is built. ``file.py:build`` is
resolved only with ``allow_code`` (the command line, or a spec the server's configuration lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from gradviz.errors import ModelError
from gradviz.models.card import MAX_CLASSES, ModelCard
from gradviz.models.weights import WeightsFile, apply_state_dict, check_state_fits, open_weights

KINDS = ("bundled", "torchvision", "timm", "plugin", "file")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CODE_ONLY = ("runs a Python file; it is loaded only when the person running gradviz asks for it (command line "
              "--model, or the dashboard's server configuration GRADVIZ_MODELS)")


class Source(Protocol):
    """Where a model comes from. ``untrained(state)`` builds the network without weights (sized for ``state``
    where the kind allows it) and its default card; ``pretrained()`` the network with the weights it ships."""

    kind: str
    spec: str
    sized_by_weights: bool  # its shape follows a weights file (built on meta first); else fixed, or set by code

    def untrained(self, state: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, ModelCard]: ...

    def pretrained(self) -> tuple[nn.Module, ModelCard]: ...


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
    mean, std = card.mean, card.std
    if channels != card.channels:
        mean, std = (mean[0],) * channels, (std[0],) * channels
    names = card.class_names if num_classes == card.num_classes else [f"class {i}" for i in range(num_classes)]
    return replace(card, input_size=(channels, *card.input_size[1:]), mean=mean, std=std, class_names=names,
                   test_accuracy=None, weights=None, extra={})


@dataclass(frozen=True)
class Bundled:
    """A model shipped with gradviz: ``net(channels, classes)``, its committed ``weights`` and card (``card_file``,
    or ``default_card()`` before the model is trained).

    As a model name (``--model mnist-cnn``) the network has the committed shape and card; as an
    architecture for someone's weights (``architecture=True``: uploads) its channels and classes are
    read from the file (``keys``: the first layer's and the head's weight) and the card follows."""

    spec: str
    net: Callable[[int, int], nn.Module]
    weights: Path
    card_file: Path
    default_card: Callable[[], ModelCard]
    command: str  # reproduces the committed weights
    keys: tuple[str, str]
    architecture: bool = False
    kind: str = field(default="bundled", init=False)

    @property
    def sized_by_weights(self) -> bool:
        return self.architecture

    def card(self) -> ModelCard:
        return ModelCard.from_json(self.card_file) if self.card_file.is_file() else self.default_card()

    def untrained(self, state=None):
        if not self.architecture:
            return self.net(1, 10), self.card()
        first, head = self.keys
        channels, classes = _rows(state, first, 1, 1), check_class_count(_rows(state, head, 0, 10), f"the head {head}")
        if channels not in (1, 3):
            raise ModelError(f"{first} takes {channels:,} input channels; gradviz takes 1 (grey) or 3 (RGB)")
        return self.net(channels, classes), _resized(self.card(), channels, classes)

    def pretrained(self):
        if not self.weights.is_file():
            raise ModelError(f"weights not found at {self.weights}; reproduce them with `{self.command}`")
        net, _ = fit_weights(self, open_weights(self.weights))
        return net, self.card()


@dataclass(frozen=True)
class Torchvision:
    """``torchvision:<arch>``: classes from a weights file's head, or ImageNet weights downloaded."""

    spec: str
    arch: str
    kind: str = field(default="torchvision", init=False)
    sized_by_weights: bool = field(default=True, init=False)

    def classes_in(self, state: dict[str, torch.Tensor]) -> int:
        """Rows of the head's weight in ``state``; the head is found on a shape-only (meta) build, since file key
        order is not module order (safetensors sorts keys by name)."""
        import torchvision

        with torch.device("meta"):
            ref = torchvision.models.get_model(self.arch, weights=None)
        linears = [name for name, m in ref.named_modules() if isinstance(m, nn.Linear)]
        for key in (f"{linears[-1]}.weight", f"module.{linears[-1]}.weight") if linears else ():
            if key in state and state[key].ndim == 2:
                return int(state[key].shape[0])
        return 1000

    def untrained(self, state=None):
        import torchvision

        classes = check_class_count(self.classes_in(state), f"the head of {self.arch}") if state else 1000
        try:
            net = torchvision.models.get_model(self.arch, weights=None, num_classes=classes)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"cannot build {self.arch} with {classes} classes: {exc}") from None
        return net, self._card((3, 224, 224), [f"class {i}" for i in range(classes)])

    def pretrained(self):
        import torchvision

        try:
            w = torchvision.models.get_model_weights(self.arch).DEFAULT
            net = torchvision.models.get_model(self.arch, weights=w)
        except Exception as exc:  # URLError / HTTPError / OSError when offline
            raise ModelError(
                f"could not download ImageNet weights for {self.arch} ({type(exc).__name__}); this machine may be "
                f"offline. The bundled mnist-cnn works offline; for {self.arch}, weights already on this machine "
                f"(a .safetensors file) can be used instead"
            ) from None
        size = int(w.transforms().crop_size[0]) if hasattr(w.transforms(), "crop_size") else 224
        return net, self._card((3, size, size), list(w.meta["categories"]), str(w))

    def _card(self, input_size: tuple[int, int, int], names: list[str], weights: str | None = None) -> ModelCard:
        return ModelCard(name=self.spec, architecture=self.arch, input_size=input_size, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, class_names=names, weights=weights)


@dataclass(frozen=True)
class Timm:
    """``timm:<name>``: classes from a weights file's head, or pretrained weights from the Hub."""

    spec: str
    name: str
    kind: str = field(default="timm", init=False)
    sized_by_weights: bool = field(default=True, init=False)

    def untrained(self, state=None):
        from gradviz.models.timm_models import build_timm, num_classes_in

        classes = check_class_count(num_classes_in(self.name, state), f"the head of {self.name}") if state else None
        return build_timm(self.name, classes)

    def pretrained(self):
        from gradviz.models.timm_models import timm_pretrained

        return timm_pretrained(self.name)


@dataclass(frozen=True)
class Plugin:
    """An installed entry point of the group ``gradviz.models``: its ``build()`` makes the net and card."""

    spec: str
    kind: str = field(default="plugin", init=False)
    sized_by_weights: bool = field(default=False, init=False)

    def untrained(self, state=None):
        from gradviz.models.plugins import build_plugin

        return build_plugin(self.spec)

    pretrained = untrained


@dataclass(frozen=True)
class File:
    """``path/to/file.py:build``: the file is imported and ``build()`` called (the person running gradviz asked)."""

    spec: str
    kind: str = field(default="file", init=False)
    sized_by_weights: bool = field(default=False, init=False)

    def untrained(self, state=None):
        from gradviz.models.plugins import build_from_file

        return build_from_file(self.spec)

    pretrained = untrained


def resolve(spec: str, *, allow_code: bool = False, architecture: bool = False) -> Source:
    """The source of ``spec`` (module doc), or one :class:`ModelError` saying what is known.

    ``allow_code`` must be True for ``file.py:build`` (it runs that file; plugins are installed
    packages and always allowed). ``architecture``: ``spec`` names an architecture for someone's
    weights (an upload), so a bundled network takes its shape from the file."""
    from gradviz.models import MODEL_REGISTRY, list_models, plugins, timm_models, zoo  # noqa: F401 (zoo registers)

    spec = str(spec).strip()
    if spec in MODEL_REGISTRY:
        source = MODEL_REGISTRY[spec].origin
        return replace(source, architecture=True) if architecture else source
    if spec.startswith("torchvision:"):
        import torchvision

        arch = spec.split(":", 1)[1]
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ModelError(f"unknown torchvision classification model {arch!r}; e.g. resnet18, mobilenet_v3_small")
        return Torchvision(spec, arch)
    if spec.startswith(timm_models.PREFIX):
        return Timm(spec, timm_models.check_name(spec[len(timm_models.PREFIX):]))
    if plugins.is_file_spec(spec):
        if not allow_code:
            raise ModelError(f"{spec} {_CODE_ONLY}")
        return File(spec)
    if spec in plugins.plugin_entry_points():
        return Plugin(spec)
    if architecture:
        raise ModelError(f"unknown architecture {spec!r}; choose mnist-cnn, mnist-vit, torchvision:<arch>, "
                         "timm:<name> or an installed gradviz.models plugin")
    if spec.startswith("upload:"):
        raise ModelError(f"{spec} was uploaded in a web session and lives only there; load its architecture with "
                         "--model <arch> --weights FILE.safetensors instead")
    known = ", ".join(m.name for m in list_models()) + ", torchvision:<arch>, timm:<name>, path/to/file.py:build"
    raise ModelError(f"unknown model {spec!r}; known: {known}")


def build_untrained(arch: str, state: dict[str, torch.Tensor] | None = None, *,
                    allow_code: bool = False) -> tuple[nn.Module, ModelCard]:
    """An untrained network of the architecture ``arch`` shaped for ``state`` (classes from its head), and a
    default card: ``resolve(arch, architecture=True).untrained(state)``."""
    return resolve(arch, allow_code=allow_code, architecture=True).untrained(state)


def fit_weights(source: Source, weights: WeightsFile) -> tuple[nn.Module, ModelCard]:
    """The network of ``source`` with ``weights`` loaded strictly, and the source's default card.

    A network whose shape follows the file (torchvision, timm, a bundled architecture for an upload) is
    first built on the ``meta`` device and compared with the file's declared shapes, so a file that declares
    2,000,000,000 classes or tensors the network lacks is refused before any memory is spent; the others (a
    bundled model by name: its fixed small shape; plugins and ``file.py:build``: set by their code) are
    built, then compared. Only then are the
    file's tensors made (NaN/inf refused) and loaded."""
    if source.sized_by_weights:
        try:
            with torch.device("meta"):
                reference, _ = source.untrained(weights.shapes)
        except ModelError:
            raise
        except Exception:  # noqa: BLE001 — a few models cannot be built on meta; the real build below is bounded
            reference = None  # by the class limit and compared before any tensor of the file is made
        if reference is not None:
            check_state_fits(reference, weights.shapes, weights.name)
    net, card = source.untrained(weights.shapes)
    check_state_fits(net, weights.shapes, weights.name)
    apply_state_dict(net, weights.tensors(), weights.name)
    return net, card


def check_card_fits(net: nn.Module, card: ModelCard, source: str) -> None:
    """One dry forward pass of two images of ``card.input_size`` (seeded noise in [0, 1]; not blank, which
    a feature-normalising head would turn into 0/0): the network must take them and return one finite
    tensor of logits (2, ``card.num_classes``); otherwise one :class:`ModelError` says which part
    disagrees."""
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


def finish(net: nn.Module, card: ModelCard, source: str):
    """``net`` and ``card`` as a :class:`~gradviz.models.GradvizModel`: the card validated and checked against
    the network with one dry forward pass (:func:`check_card_fits`) of the eager module."""
    from gradviz.models import GradvizModel
    from gradviz.models.compiled import uncompiled

    net = uncompiled(net)
    check_card_fits(net, card.validate(), source)
    return GradvizModel(net, card)


def load(spec: str, weights: str | Path | None = None, *, allow_code: bool = False):
    """The model ``spec`` (see :func:`resolve`) with its own weights, or with a weights file; its card is a JSON
    card beside that file (same stem, ``.json``) or the source's default card."""
    source = resolve(spec, allow_code=allow_code)
    if weights is None:
        net, card = source.pretrained()
        return finish(net, card, source.spec)
    file = open_weights(weights)
    net, card = fit_weights(source, file)
    where, beside = file.name, Path(weights).with_suffix(".json")
    if beside.is_file():
        card, where = ModelCard.from_json(beside), beside.name
    card.weights = str(weights)
    return finish(net, card, where)


def model_from_state(arch: str, state: dict[str, torch.Tensor], card: ModelCard | None = None, source: str = "weights",
                     *, allow_code: bool = False):
    """The architecture ``arch`` with a state dict loaded strictly and ``card`` (default: the architecture's)."""
    net, default = fit_weights(resolve(arch, allow_code=allow_code, architecture=True),
                               WeightsFile(source, state, lambda: state))
    return finish(net, card or default, source)
