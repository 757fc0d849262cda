"""GROOD — ElAraby, Sahoo, Pequignot, Novello & Paull, "GROOD: Gradient-Aware Out-of-Distribution
Detection", TMLR 2025 (arXiv 2312.14427; OpenOOD's ``grood`` postprocessor).

Prototypes: μ_c = mean penultimate feature of ID training class c, and an OOD prototype o built
from synthetic OOD inputs. A nearest-class-prototype classifier scores s_j = −‖h − μ_j‖ for the C
class prototypes and s_{C+1} = −‖h − o‖; its cross-entropy against the network's own prediction ŷ
is differentiated with respect to the OOD prototype, in closed form (ŷ is never the OOD class):

    g(x) = ∂CE(s, ŷ)/∂o = q_o · (h − o)/‖h − o‖,   q = softmax(s)

ID training samples that the network classifies correctly give the reference gradients {g_i};
the uncertainty is the distance to the k-th nearest of them (k = 1 as in OpenOOD):

    u(x) = ‖g(x) − g_(k)‖₂

Synthetic OOD (``mixup``): each ID training image is mixed with the mean of the class the network
ranks second for it, and o is the mean feature of the mixed images — ID data only, no OOD set is
used. Where the mixing happens is a choice (``mixup_layer``):

- ``"auto"`` (default, the paper's synthetic OOD, as in the authors' and OpenOOD's code): an intermediate
  layer's output a is mixed with the mean output of the runner-up class, ã = λa + (1 − λ)ā_{c₂}, by a
  forward hook, and the forward continues from there. The layer is found by :func:`auto_mixup_layer`: the
  model's repeated blocks (its stages, or a transformer's encoder layers), the one before the middle
  (``layer2`` of a ResNet or of the bundled mnist-cnn, ``encoder_layer_1`` of a 4-layer ViT).
- a module name: that module's output, mixed the same way. It must run once per forward and return one
  tensor with the batch first.
- ``"input"`` (an adaptation): in input space, x̃ = λx + (1 − λ)x̄_{c₂} with x̄_c the mean training image
  of class c (λ = ``mixup``, 0.5); needs no knowledge of the architecture. On the bundled mnist-cnn this
  changes the result a lot (noise AUROC 1.00 with input mixup, far lower with the paper's layer mixup, see
  docs/RESULTS.md).

Batched: the gradient is a closed form of (h, prototypes), the neighbours a ``torch.cdist`` against
the reference set.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import torch

from gradviz.errors import MethodError
from gradviz.methods._fitting import check_labels, fit_outputs, require_fitted
from gradviz.methods.registry import ModelOutputs, register
from gradviz.models import GradvizModel


def prototype_gradient(h: torch.Tensor, prototypes: torch.Tensor, ood: torch.Tensor) -> torch.Tensor:
    """∂CE(s, ŷ)/∂o for features ``h`` (B, D), class ``prototypes`` (C, D), OOD prototype ``ood`` (D,): (B, D)."""
    diff = h - ood  # (B, D)
    dist = diff.norm(dim=-1, keepdim=True)  # (B, 1)
    s = torch.cat([-torch.cdist(h, prototypes), -dist], dim=1)  # (B, C + 1) nearest-prototype logits
    return s.softmax(-1)[:, -1:] * diff / dist.clamp_min(1e-12)


def auto_mixup_layer(model: GradvizModel) -> str:
    """The module whose output ``mixup_layer="auto"`` mixes: of the model's repeated blocks, the one before
    the middle (index (n − 1) // 2).

    One forward of a zero image records the modules that run exactly once and return one batch-first tensor.
    The repeated blocks are the largest group of such non-leaf siblings of one class under the shallowest
    parent that has two or more: ``layer1``..``layer4`` of a ResNet, ``encoder.layers.*`` of a ViT,
    ``blocks.*`` of a timm ViT. A model without them (a plain sequence of layers) uses its layers in the order
    they run, the last (the head) left out. A model with neither is refused with a message naming the choices."""
    net = model.net
    calls: dict[str, int] = {}
    order: list[str] = []  # batch-first outputs, in the order they were produced
    handles = []
    for name, module in net.named_modules():
        if name:
            def hook(_m, _inp, out, name=name):
                calls[name] = calls.get(name, 0) + 1
                if isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[0] == 1:
                    order.append(name)
            handles.append(module.register_forward_hook(hook))
    try:
        with model.lock, torch.no_grad():
            model.logits_and_features(torch.zeros(1, *model.card.input_size, device=model.device))
    finally:
        for handle in handles:
            handle.remove()
    once = {n for n in order if calls[n] == 1}
    best: tuple[int, int, list[str]] | None = None  # (depth, -size, names)
    for parent, module in net.named_modules():
        groups: dict[type, list[str]] = {}
        for child_name, child in module.named_children():
            full = f"{parent}.{child_name}" if parent else child_name
            if full in once and any(True for _ in child.children()):
                groups.setdefault(type(child), []).append(full)
        depth = parent.count(".") + 1 if parent else 0
        for names in groups.values():
            if len(names) >= 2 and (best is None or (depth, -len(names)) < best[:2]):
                best = (depth, -len(names), names)
    if best is not None:
        return best[2][(len(best[2]) - 1) // 2]
    layers = [n for n in order if n in once and "." not in n][:-1]  # top-level layers, the head left out
    if len(layers) < 2:
        raise MethodError("grood: mixup_layer 'auto' found no intermediate layer in this model; give 'input' or a "
                          "module name (top level: " + ", ".join(n for n, _ in net.named_children()) + ")")
    return layers[(len(layers) - 1) // 2]


def _module(model: GradvizModel, name: str) -> torch.nn.Module:
    modules = dict(model.net.named_modules())
    if name not in modules or not name:
        some = ", ".join(n for n, _ in model.net.named_children())
        raise MethodError(f"grood: mixup_layer {name!r} is not a module of the model; give 'input' or a module "
                          f"name (top level: {some})")
    return modules[name]


class _Reached(Exception):
    """Raised by a hook to end a forward once the hooked module has run (nothing after it is needed)."""


@overload
def _hooked_passes(model: GradvizModel, name: str, images: torch.Tensor, chunk: int, hook,
                   stop: Literal[False] = False) -> torch.Tensor: ...
@overload
def _hooked_passes(model: GradvizModel, name: str, images: torch.Tensor, chunk: int, hook,
                   stop: Literal[True]) -> None: ...
def _hooked_passes(model: GradvizModel, name: str, images: torch.Tensor, chunk: int, hook,
                   stop: bool = False) -> torch.Tensor | None:
    """Penultimate features (N, D) of ``images`` with ``hook(out, rows)`` replacing ``name``'s output (rows = the
    chunk's indices); the hook is removed afterwards, and a module that does not run exactly once per forward
    or whose output is not one batch-first tensor is refused. ``stop``: each forward ends right after ``hook``
    (the layers after ``name`` do not run) and None is returned — for a pass that only reads the layer's output
    (the once-per-forward check is then left to a full pass)."""
    module, feats = _module(model, name), []
    state: dict[str, Any] = {"calls": 0, "rows": None}  # forward calls in the chunk, the chunk's indices

    def forward_hook(_m, _inp, out):
        state["calls"] += 1
        if not isinstance(out, torch.Tensor) or out.shape[:1] != state["rows"].shape:
            raise MethodError(f"grood: mixup_layer {name!r} must return one tensor with the batch first")
        out = hook(out, state["rows"])
        if stop:
            raise _Reached
        return out

    with model.lock:
        handle = module.register_forward_hook(forward_hook)
        try:
            for start in range(0, int(images.shape[0]), chunk):
                state["calls"], state["rows"] = 0, torch.arange(start, min(start + chunk, int(images.shape[0])))
                try:
                    feats.append(model.logits_and_features(images[state["rows"]].to(model.device))[1].float().cpu())
                except _Reached:
                    continue
                if state["calls"] != 1:
                    raise MethodError(f"grood: mixup_layer {name!r} runs {state['calls']} times per forward; "
                                      "name a module that runs once")
        finally:
            handle.remove()
    return None if stop else torch.cat(feats).reshape(int(images.shape[0]), -1)


def layer_mixup_features(model: GradvizModel, name: str, images: torch.Tensor, labels, classes, pick: torch.Tensor,
                         lam: float, chunk: int = 512) -> torch.Tensor:
    """Features (N, D) of ``images`` with module ``name``'s output a mixed as λa + (1 − λ)ā_c, ā_c its mean output
    over the training images of class ``classes[pick]`` (the runner-up class; rows with pick < 0 are left
    unmixed and should be dropped by the caller). Two forwards of the images: up to ``name`` for the class means,
    then a whole one with the mix, in batches planned for the memory budget (``chunk`` is an upper bound)."""
    from gradviz.runtime.budget import batch_size_for

    chunk = batch_size_for(model, "forward", "fitting grood (layer mixup)", upper=max(1, int(chunk)),
                           n=int(images.shape[0]))
    sums: dict[int, torch.Tensor] = {}
    label_t = torch.as_tensor(labels)
    position = {int(c): i for i, c in enumerate(classes)}

    def accumulate(out, rows):
        for c in label_t[rows].unique().tolist():
            part = out.detach().float()[(label_t[rows] == c).to(out.device)].sum(0).cpu()
            sums[position[c]] = sums.get(position[c], 0) + part
        return out

    _hooked_passes(model, name, images, chunk, accumulate, stop=True)  # the layers after `name` are not needed
    counts = torch.bincount(torch.tensor([position[int(c)] for c in label_t.tolist()]), minlength=len(classes))
    means = torch.stack([sums[i] / counts[i] for i in range(len(classes))])  # (C, *layer output)

    def mix(out, rows):
        partner = pick[rows].clamp_min(0)
        mixed = lam * out + (1 - lam) * means[partner].to(out.device, out.dtype)
        return torch.where((pick[rows] >= 0).view(-1, *[1] * (out.dim() - 1)).to(out.device), mixed, out)

    return _hooked_passes(model, name, images, chunk, mix)


@register("grood", title="GROOD (gradients toward an OOD prototype)", paper="ElAraby et al., TMLR 2025", year=2025,
          formula=r"u(x) = \lVert g(x) - g_{(k)} \rVert_2,\; "
                  r"g(x) = \frac{\partial\, \mathrm{CE}(s, \hat y)}{\partial o} "
                  r"= q_o \frac{h - o}{\lVert h - o\rVert},\; s_j = -\lVert h - \mu_j \rVert",
          family="gradient", backprop=False, link="https://arxiv.org/abs/2312.14427",
          intuition="Place one prototype per class and one 'OOD prototype' (from synthetic OOD: training images "
                    "whose intermediate features are mixed with those of the class ranked second) in feature "
                    "space. Ask how the nearest-prototype classifier's loss would change if the OOD prototype "
                    "moved: ID inputs, anchored at their class, barely care; OOD inputs do. The gradient is "
                    "compared with those of training images by nearest neighbour.",
          reading="A gradient w.r.t. a prototype, not w.r.t. network weights: closed form, no backward pass. "
                  "Near 0 = an ID training image had almost the same gradient. Choice (`mixup_layer`): `auto` "
                  "(default, as the paper and OpenOOD) mixes an intermediate layer's output — the block before the "
                  "middle of the model's repeated blocks (`layer2` of a ResNet or of mnist-cnn); a module name mixes "
                  "that module; `input` (an adaptation) mixes images. The two rank inputs very differently: on "
                  "mnist-cnn, noise AUROC is far lower with the paper's layer mixup than with input mixup (1.00).",
          expected={"noise-uniform": "lower", "letters": "higher"},
          bounds={"mixup": (0.0, 0.999), "k": (1, None), "chunk": (1, None)},
          paper_settings={"mixup_layer": "auto"})
class GROOD:
    """Nearest-neighbour distance of the gradient w.r.t. a synthetic OOD prototype (closed form)."""

    def __init__(self, mixup: float = 0.5, k: int = 1, chunk: int = 4096, mixup_layer: str = "auto") -> None:
        if not 0.0 <= float(mixup) < 1.0:
            raise MethodError(f"grood: mixup must be in [0, 1), got {mixup}")
        if int(k) < 1 or int(chunk) < 1:
            raise MethodError(f"grood: k and chunk must be >= 1, got k={k}, chunk={chunk}")
        if not isinstance(mixup_layer, str) or not mixup_layer.strip():
            raise MethodError(f"grood: mixup_layer must be 'auto', 'input' or a module name, got {mixup_layer!r:.60}")
        self.mixup, self.k, self.chunk = float(mixup), int(k), int(chunk)
        self.mixup_layer = mixup_layer.strip()
        self.prototypes_: torch.Tensor | None = None  # (C, D)
        self.ood_prototype_: torch.Tensor | None = None  # (D,)
        self.bank_: torch.Tensor | None = None  # (N', D) gradients of correctly classified ID training images
        self.mixed_layer_: str | None = None  # the module mixed ("input" for input mixup), "auto" resolved

    def fit(self, model: GradvizModel, images: torch.Tensor, labels) -> "GROOD":
        """Class prototypes, the synthetic OOD prototype and the reference gradients on ID training ``images``."""
        labels = check_labels("grood", images, labels)
        logits, feats = fit_outputs(model, images)
        classes = np.unique(labels)
        index = {int(c): i for i, c in enumerate(classes)}
        self.prototypes_ = torch.stack([feats[torch.from_numpy(labels == c)].mean(0) for c in classes])
        # synthetic OOD: each image mixed with the mean of its runner-up class (input space or a layer's output)
        runner_up = logits.topk(2, dim=1).indices[:, 1].tolist()
        pick = torch.tensor([index.get(int(c), -1) for c in runner_up])
        keep = pick >= 0  # a runner-up class without training images has no mean image
        if not bool(keep.any()):
            raise MethodError("grood: no training image has a runner-up class among the fitted classes")
        self.mixed_layer_ = auto_mixup_layer(model) if self.mixup_layer == "auto" else self.mixup_layer
        if self.mixed_layer_ == "input":
            mean_images = torch.stack([images[torch.from_numpy(labels == c)].float().mean(0) for c in classes])
            mixed = self.mixup * images[keep].float() + (1 - self.mixup) * mean_images[pick[keep]]
            self.ood_prototype_ = fit_outputs(model, mixed)[1].mean(0)
        else:
            self.ood_prototype_ = layer_mixup_features(model, self.mixed_layer_, images, labels, classes, pick,
                                                       self.mixup, self.chunk)[keep].mean(0)
        correct = torch.from_numpy(labels) == logits.argmax(-1)
        if int(correct.sum()) < self.k:
            raise MethodError(f"grood: k = {self.k} needs at least {self.k} correctly classified training images")
        self.bank_ = prototype_gradient(feats[correct], self.prototypes_, self.ood_prototype_)
        return self

    def gradients(self, features: torch.Tensor) -> torch.Tensor:
        """g(x) for a batch of penultimate features, (B, D)."""
        prototypes, ood_prototype = require_fitted("grood", self.prototypes_, self.ood_prototype_)
        h = features.detach().float().cpu().reshape(features.shape[0], -1)
        if h.shape[1] != prototypes.shape[1]:
            raise MethodError(f"grood was fitted on {prototypes.shape[1]}-d features, got {h.shape[1]}-d")
        return prototype_gradient(h, prototypes, ood_prototype)

    def score(self, batch: ModelOutputs) -> torch.Tensor:
        """Distance to the k-th nearest reference gradient, (B,)."""
        bank = require_fitted("grood", self.bank_)
        g = self.gradients(batch.features)
        best = torch.cat([torch.cdist(g, part).topk(min(self.k, part.shape[0]), dim=1, largest=False).values
                          for part in bank.split(self.chunk)], dim=1)
        return best.kthvalue(self.k, dim=1).values
