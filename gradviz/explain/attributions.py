"""Input attributions (captum wrappers) and overlay rendering for display and download.

Every method shares one call shape, like captum::

    att = attribute(model, x, "integrated_gradients", target=None)   # None = predicted class
    att.maps        # (B, H, W) signed, channel-summed, at the input size
    rgb = render_overlay(x[0], att.maps[0], mode="signed")           # (H', W', 3) uint8

The model is shared between sessions and threads: every call holds ``model.lock`` while
captum's hooks are registered, works on a fresh ``x.clone().requires_grad_()``, and leaves
no hook and no ``.grad`` behind (captum takes gradients with ``torch.autograd.grad``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import (
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn

from gradviz.errors import GradvizError, ImageError, MethodError
from gradviz.models import GradvizModel
from gradviz.models.hooks import forward_hooks

__all__ = [
    "ATTRIBUTIONS",
    "Attribution",
    "AttributionInfo",
    "attribute",
    "default_attributions",
    "default_gradcam_layer",
    "heatmap_rgb",
    "list_attributions",
    "render_overlay",
    "to_png_bytes",
]


@dataclass(frozen=True)
class AttributionInfo:
    """A registry row: what the method is, which captum class runs it, its default parameters."""

    name: str
    title: str
    captum_class: type
    kind: str  # "pixel" (input-sized map) | "layer" (layer map upsampled) | "attention" (transformers, patch grid)
    defaults: dict = field(default_factory=dict)
    description: str = ""


@dataclass
class Attribution:
    """The result of :func:`attribute` for one batch (tensors detached, on the CPU)."""

    maps: torch.Tensor  # (B, H, W) signed, summed over channels, at the input size
    raw: torch.Tensor  # (B, C, H, W) for pixel methods, the layer map (B, 1, h, w) for Grad-CAM
    method: str
    target: torch.Tensor  # (B,) class explained per sample
    layer: str | None = None  # layer used (Grad-CAM), a name inside ``model.net``
    note: str = ""


ATTRIBUTIONS: dict[str, AttributionInfo] = {
    info.name: info
    for info in [
        AttributionInfo(
            "saliency", "Saliency", Saliency, "pixel", {"abs": True},
            "Gradient of the target logit w.r.t. the input pixels, |∂z_t/∂x| (Simonyan et al. 2014).",
        ),
        AttributionInfo(
            "integrated_gradients", "Integrated Gradients", IntegratedGradients, "pixel",
            {"n_steps": 32, "baseline": 0.0, "internal_batch_size": 128},
            "(x − x₀)·∫ ∂z_t/∂x along the straight path from a black baseline x₀; "
            "sums to z_t(x) − z_t(x₀) (Sundararajan et al. 2017).",
        ),
        AttributionInfo(
            "input_x_gradient", "Input × Gradient", InputXGradient, "pixel", {},
            "x ⊙ ∂z_t/∂x (Shrikumar et al. 2016).",
        ),
        AttributionInfo(
            "guided_backprop", "Guided Backprop", GuidedBackprop, "pixel", {},
            "Gradient with negative gradients zeroed at every ReLU (Springenberg et al. 2015).",
        ),
        AttributionInfo(
            "gradcam", "Grad-CAM", LayerGradCam, "layer",
            {"layer": None, "relu_attributions": True, "interpolate_mode": "bilinear"},
            "ReLU(Σ_k mean(∂z_t/∂A_k)·A_k) at the last convolution, upsampled to the input "
            "(Selvaraju et al. 2017).",
        ),
        AttributionInfo(
            "attention_rollout", "Attention rollout", object, "attention", {"discard_ratio": 0.0},
            "Head-averaged attention plus the residual, multiplied through the layers; the class token's row over "
            "the patches (Abnar & Zuidema 2020); for Swin, the mean readout through the shifted windows. "
            "Transformers only; the same for every class.",
        ),
        AttributionInfo(
            "transformer_relevance", "Attention relevance (Chefer et al. 2021)", object, "attention", {},
            "R ← R + E_h[(∇A ⊙ A)⁺]·R through the layers: attention weighted by its gradient for the target "
            "(Chefer, Gur & Wolf, ICCV 2021). Transformers only.",
        ),
        AttributionInfo(
            "occlusion", "Occlusion", Occlusion, "pixel",
            {"window": None, "stride": None, "baseline": 0.0, "perturbations_per_eval": 16},
            "Drop of the target logit when a sliding square is set to the baseline (Zeiler & Fergus 2014).",
        ),
        AttributionInfo(
            "smoothgrad", "SmoothGrad", NoiseTunnel, "pixel",
            {"nt_samples": 16, "stdevs": 0.15, "nt_samples_batch_size": 16, "abs": True},
            "Saliency averaged over copies of the input with Gaussian noise (Smilkov et al. 2017).",
        ),
    ]
}


def list_attributions() -> list[AttributionInfo]:
    """The registered attribution methods, most robust first."""
    return list(ATTRIBUTIONS.values())


def default_attributions(model: GradvizModel) -> list[str]:
    """The maps shown first: saliency, integrated gradients and Grad-CAM; for a transformer saliency, attention
    rollout, the gradient-weighted relevance and token Grad-CAM."""
    from gradviz.explain.transformer_maps import is_transformer

    if is_transformer(model):
        return ["saliency", "attention_rollout", "transformer_relevance", "gradcam"]
    return ["saliency", "integrated_gradients", "gradcam"]


# --------------------------------------------------------------------------- helpers


def _check_input(model: GradvizModel, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ImageError(f"attribute() needs a batch of images (B, C, H, W); got {shape}")
    if x.shape[0] == 0:
        raise ImageError("attribute() got an empty batch")
    if x.shape[1] != model.card.channels:
        raise ImageError(
            f"the model expects {model.card.channels} channel(s) but the images have {x.shape[1]}"
        )
    if not torch.isfinite(x).all():
        raise ImageError("the images contain NaN or infinite values")
    return x.detach().to(model.device, torch.float32)


def _resolve_target(model: GradvizModel, x: torch.Tensor, target: int | torch.Tensor | None) -> torch.Tensor:
    num_classes = model.card.num_classes
    if target is None:
        with torch.no_grad():
            return model(x).argmax(-1)
    if isinstance(target, (int, np.integer)):
        t = torch.full((x.shape[0],), int(target), dtype=torch.long, device=x.device)
    else:
        t = torch.as_tensor(target, device=x.device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0]).clone()
        if t.numel() != x.shape[0]:
            raise MethodError(f"target has {t.numel()} entries for a batch of {x.shape[0]} images")
    if (t < 0).any() or (t >= num_classes).any():
        raise MethodError(f"target class out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return t


def _baseline(value: Any, x: torch.Tensor) -> torch.Tensor:
    """A scalar (0 = black) or a tensor broadcastable to ``x``."""
    b = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    try:
        return torch.broadcast_to(b, x.shape).contiguous()
    except RuntimeError:
        raise MethodError(f"baseline of shape {tuple(b.shape)} does not broadcast to the images {tuple(x.shape)}") from None


_DEFAULT_LAYER_CACHE: dict[tuple[str, str, tuple], str] = {}


def default_gradcam_layer(model: GradvizModel) -> str:
    """Name (inside ``model.net``) of the Conv2d that runs last in a forward pass.

    Execution order, not registration order: in a residual block the projection shortcut is
    registered after the main-path convolutions but runs before them.
    """
    key = (model.digest, model.card.architecture, tuple(model.card.input_size))
    if key in _DEFAULT_LAYER_CACHE:
        return _DEFAULT_LAYER_CACHE[key]
    order: list[str] = []
    convs = {module: (lambda _m, _i, _o, name=name: order.append(name))
             for name, module in model.net.named_modules() if isinstance(module, nn.Conv2d)}
    with forward_hooks(model, convs), torch.no_grad():
        model(torch.zeros((1, *model.card.input_size), device=model.device))
    if not order:
        raise MethodError("Grad-CAM needs a convolutional layer (nn.Conv2d); this model has none — use saliency")
    _DEFAULT_LAYER_CACHE[key] = order[-1]
    return order[-1]


def _layer_by_name(model: GradvizModel, name: str) -> nn.Module:
    modules = dict(model.net.named_modules())
    key = name[len("net."):] if name.startswith("net.") and name not in modules else name
    if key not in modules or key == "":
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise MethodError(f"no layer named {name!r} in the model; convolutions: {', '.join(convs[-6:]) or 'none'}")
    return modules[key]


# --------------------------------------------------------------------------- runners
# Each runner: (model, forward, x (B,C,H,W) requiring grad, target (B,) or None, params) -> (raw, layer, note).
# ``forward`` is what captum differentiates: the model (logits, ``target`` picks the class) or a score
# function x -> (B,) (gradviz.explain.scores; ``target`` None).

Runner = Callable[[GradvizModel, Callable, torch.Tensor, torch.Tensor | None, dict],
                  tuple[torch.Tensor, str | None, str]]


def _pass_kind(f) -> str:
    """The planner's kind of an attribution pass: ``second_order`` where the explained score is taken by double
    backprop (each sample's parameter gradient kept with its graph), else one forward+backward."""
    return "second_order" if getattr(f, "route", "") == "double backprop" else "backward"


def _planned(model, f, name: str, upper, n: int) -> int:
    """Images per internal forward+backward of an attribution, planned for the memory budget (``upper``,
    the method's parameter, is an upper bound)."""
    from gradviz.runtime.budget import batch_size_for

    return batch_size_for(model, _pass_kind(f), name, upper=int(upper) if upper else None, n=max(1, int(n)))


def _noisy_per_batch(model, f, x, p) -> int:
    """SmoothGrad's noisy copies per image and batch (captum runs that many × B images at once), planned."""
    b = max(1, int(x.shape[0]))
    upper = int(p["nt_samples_batch_size"]) * b if p["nt_samples_batch_size"] else None
    return max(1, _planned(model, f, "smoothgrad", upper, int(p["nt_samples"]) * b) // b)


def _saliency(model, f, x, target, p):
    return Saliency(f).attribute(x, target=target, abs=bool(p["abs"])), None, ""


def _integrated_gradients(model, f, x, target, p):
    n_steps = int(p["n_steps"])
    if n_steps < 1:
        raise MethodError("integrated_gradients: n_steps must be >= 1")
    base = _baseline(p["baseline"], x)
    attr, delta = IntegratedGradients(f).attribute(
        x, baselines=base, target=target, n_steps=n_steps,
        internal_batch_size=_planned(model, f, "integrated gradients", p["internal_batch_size"], n_steps * x.shape[0]),
        return_convergence_delta=True,
    )
    what = "z" if f is model else "u"
    note = f"completeness gap max |Σ attr − ({what}(x) − {what}(x₀))| = {delta.abs().max().item():.3g} ({n_steps} steps)"
    return attr, None, note


def _input_x_gradient(model, f, x, target, p):
    return InputXGradient(f).attribute(x, target=target), None, ""


def _guided_backprop(model, f, x, target, p):
    if f is not model:
        raise MethodError("guided_backprop rewrites every ReLU's backward, which a score's own gradient uses — "
                          "explain the score with saliency, integrated_gradients, smoothgrad or gradcam")
    # captum clones each ReLU's input in a pre-hook and clamps the gradient on the tensor, so
    # in-place and reused ReLU modules (torchvision ResNets) give the same result as unique
    # non-in-place ones (checked in tests). Functional F.relu calls are not overridden.
    if not any(isinstance(m, nn.ReLU) for m in model.net.modules()):
        raise MethodError(
            "guided_backprop overrides the gradient of nn.ReLU modules, and this model has none "
            "(it may use functional relu or other activations) — use saliency or integrated_gradients"
        )
    attr = GuidedBackprop(model).attribute(x, target=target)
    return attr, None, "negative gradients zeroed at every nn.ReLU module"


_NO_LAYER_MAPS = ("Grad-CAM reads one layer's activations, but this score re-runs the network for each sample's "
                  "parameter gradient (double backprop) — explain it with saliency, integrated_gradients or "
                  "smoothgrad")


def _gradcam(model, f, x, target, p):
    from gradviz.explain.transformer_maps import default_token_layer, is_transformer, token_gradcam
    from gradviz.explain.window_maps import default_stage_layer, is_windowed, stage_gradcam

    chosen = p["layer"]
    stage = is_windowed(model) and (chosen is None or not isinstance(_layer_by_name(model, chosen), nn.Conv2d))
    if stage:  # Swin: a stage's (B, H, W, C) map, channels last
        if not getattr(f, "layer_maps", True):
            raise MethodError(_NO_LAYER_MAPS)
        name = p["layer"] or default_stage_layer(model)
        up, grid = stage_gradcam(model, _layer_by_name(model, name), x, target, None if f is model else f)
        size = f"{x.shape[-2]}×{x.shape[-1]}"
        return (grid, up[:, None]), name, f"stage {name} ({grid.shape[-2]}×{grid.shape[-1]}, channels last) to {size}"
    if p["layer"] is None and is_transformer(model):  # tokens (B, 1+N, D): Grad-CAM over the patch grid
        name = default_token_layer(model)
        up, grid = token_gradcam(model, _layer_by_name(model, name), x, target, None if f is model else f)
        note = f"tokens of {name} on the {grid.shape[-2]}×{grid.shape[-1]} patch grid, upsampled to {x.shape[-2]}×{x.shape[-1]}"
        return (grid, up[:, None]), name, note
    if not getattr(f, "layer_maps", True):
        raise MethodError(_NO_LAYER_MAPS)
    name = p["layer"] or default_gradcam_layer(model)
    layer = _layer_by_name(model, name)
    layer_map = LayerGradCam(f, layer).attribute(
        x, target=target, relu_attributions=bool(p["relu_attributions"])
    )  # (B, 1, h, w)
    if layer_map.ndim != 4:
        raise MethodError(f"Grad-CAM needs a layer with a spatial output (B, C, h, w); {name!r} gives {tuple(layer_map.shape)}")
    up = LayerAttribution.interpolate(layer_map, tuple(x.shape[-2:]), interpolate_mode=p["interpolate_mode"])
    note = f"layer {name} ({layer_map.shape[-2]}×{layer_map.shape[-1]}) upsampled to {x.shape[-2]}×{x.shape[-1]}"
    return (layer_map, up), name, note


def _occlusion(model, f, x, target, p):
    c, h, w = x.shape[1:]
    window = int(p["window"] or max(2, min(h, w) // 7))
    stride = int(p["stride"] or max(1, window // 2))
    if window < 1 or window > min(h, w) or stride < 1:
        raise MethodError(f"occlusion: window must be in 1..{min(h, w)} and stride >= 1 (got {window}, {stride})")
    attr = Occlusion(f).attribute(
        x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
        baselines=float(p["baseline"]), target=target, perturbations_per_eval=int(p["perturbations_per_eval"]),
    )
    return attr, None, f"{window}×{window} window, stride {stride}, baseline {p['baseline']}"


def _smoothgrad(model, f, x, target, p):
    attr = NoiseTunnel(Saliency(f)).attribute(
        x, nt_type="smoothgrad", nt_samples=int(p["nt_samples"]),
        nt_samples_batch_size=_noisy_per_batch(model, f, x, p),
        stdevs=float(p["stdevs"]), target=target, abs=bool(p["abs"]),
    )
    return attr, None, f"{p['nt_samples']} noisy copies, σ = {p['stdevs']} (input units)"


def _attention_rollout(model, f, x, target, p):
    from gradviz.explain.transformer_maps import attention_rollout
    from gradviz.explain.window_maps import READOUT_NOTE, is_windowed

    up, grid = attention_rollout(model, x, float(p["discard_ratio"]))
    what = READOUT_NOTE if is_windowed(model) else "class token's attention"
    return (grid, up[:, None]), None, f"{what} rolled out over the patch grid (no gradient)"


def _transformer_relevance(model, f, x, target, p):
    from gradviz.explain.transformer_maps import attention_relevance
    from gradviz.explain.window_maps import READOUT_NOTE, is_windowed

    up, grid = attention_relevance(model, x, target, None if f is model else f)
    what = f" ({READOUT_NOTE})" if is_windowed(model) else ""
    return (grid, up[:, None]), None, f"gradient-weighted attention over the patch grid{what}"


_RUNNERS: dict[str, Runner] = {
    "attention_rollout": _attention_rollout,
    "transformer_relevance": _transformer_relevance,
    "saliency": _saliency,
    "integrated_gradients": _integrated_gradients,
    "input_x_gradient": _input_x_gradient,
    "guided_backprop": _guided_backprop,
    "gradcam": _gradcam,
    "occlusion": _occlusion,
    "smoothgrad": _smoothgrad,
}


def _detached(result: tuple) -> tuple:
    """A runner's (raw, layer, note) with its tensors cut from the graph (a chunk's graph is freed at once)."""
    raw, layer, note = result
    raw = tuple(r.detach() for r in raw) if isinstance(raw, tuple) else raw.detach()
    return raw, layer, note


def attribute(
    model: GradvizModel,
    x: torch.Tensor,
    method: str,
    target: int | torch.Tensor | None = None,
    *,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    **params: Any,
) -> Attribution:
    """Attribute the target logit of ``model`` to the pixels of ``x`` (B, C, H, W) in [0, 1].

    ``target`` None explains each sample's predicted class. ``params`` override the method's
    defaults (see ``ATTRIBUTIONS[method].defaults``); unknown names raise :class:`MethodError`.
    ``forward``: a score function x -> (B,) to explain instead of a class logit
    (:func:`gradviz.explain.scores.score_fn`); ``target`` is then ignored.
    """
    if method not in ATTRIBUTIONS:
        raise MethodError(f"unknown attribution method {method!r}; known: {', '.join(ATTRIBUTIONS)}")
    info = ATTRIBUTIONS[method]
    unknown = set(params) - set(info.defaults)
    if unknown:
        raise MethodError(f"{method}: unknown parameter(s) {sorted(unknown)}; known: {sorted(info.defaults) or 'none'}")
    p = {**info.defaults, **params}
    x = _check_input(model, x)
    f = forward or model
    # images per pass, planned (IG and SmoothGrad plan their own inner batches of steps / noisy copies)
    step = x.shape[0] if method in ("integrated_gradients", "smoothgrad") else _planned(model, f, info.title, None,
                                                                                        x.shape[0])
    with model.lock:
        t = _resolve_target(model, x, target)
        try:
            with warnings.catch_warnings():
                # captum announces its (always removed) ReLU hooks on every call
                warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
                parts = [_detached(_RUNNERS[method](model, f, xc.clone().requires_grad_(), None if forward else tc, p))
                         for xc, tc in zip(x.split(step), t.split(step))]
        except GradvizError:
            raise
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise MethodError(f"{info.title} failed on this model: {exc}".strip()) from exc
    (raw, layer, note), rest = parts[0], parts[1:]
    if rest:
        raw = (tuple(torch.cat([r[0][i] for r in parts]) for i in range(len(raw))) if isinstance(raw, tuple)
               else torch.cat([r[0] for r in parts]))
    if isinstance(raw, tuple):  # layer method: (layer map, upsampled map)
        raw, up = raw
        maps = up.sum(1)
    else:
        maps = raw.sum(1)
    return Attribution(
        maps=maps.detach().cpu(), raw=raw.detach().cpu(), method=method,
        target=t.detach().cpu(), layer=layer, note=note,
    )


# --------------------------------------------------------------------------- rendering

_MODES = ("signed", "absolute", "positive")
_DEFAULT_CMAP = {"signed": "RdBu_r", "absolute": "inferno", "positive": "inferno"}


def _colormap(name: str):
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise GradvizError(f"unknown colour map {name!r}; e.g. RdBu_r, coolwarm, inferno, viridis, magma") from None


def _display_size(h: int, w: int, size: int | None) -> tuple[int, int]:
    if size is None:
        return h, w
    if int(size) < 1:
        raise GradvizError(f"size must be a positive number of pixels (got {size})")
    return int(size), max(1, round(w * int(size) / h))  # height = size, aspect kept


def _normalised(attribution: torch.Tensor | np.ndarray, mode: str) -> torch.Tensor:
    """Attribution scaled by the 99th percentile of |a|: [-1, 1] for signed, [0, 1] otherwise."""
    if mode not in _MODES:
        raise GradvizError(f"unknown mode {mode!r}; use one of {', '.join(_MODES)}")
    a = torch.as_tensor(np.asarray(attribution, dtype=np.float32) if isinstance(attribution, np.ndarray) else attribution)
    a = a.detach().float().cpu()
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise GradvizError(f"an attribution map must be (H, W); got {tuple(a.shape)}")
    a = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.percentile(a.abs().numpy(), 99))
    if scale <= 0:
        scale = float(a.abs().max()) or 1.0
    v = a / scale
    if mode == "signed":
        return v.clamp(-1, 1)
    if mode == "absolute":
        return v.abs().clamp(0, 1)
    return v.clamp(0, 1)


def _resize(t: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    """(C, H, W) → (C, h, w)."""
    if tuple(t.shape[-2:]) == hw:
        return t
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t[None], size=hw, mode=mode, **kwargs)[0]


def _heat_float(v: torch.Tensor, mode: str, cmap: str | None) -> np.ndarray:
    colours = _colormap(cmap or _DEFAULT_CMAP[mode])
    unit = (v + 1) / 2 if mode == "signed" else v  # zero -> the centre of a diverging map
    return np.asarray(colours(unit.numpy()))[..., :3].astype(np.float32)  # (H, W, 3) in [0, 1]


def heatmap_rgb(
    attribution: torch.Tensor | np.ndarray, mode: str = "absolute", cmap: str | None = None, size: int | None = None
) -> np.ndarray:
    """The attribution (H, W) as an RGB heat map (H', W', 3) uint8, scaled by its 99th percentile of |a|."""
    v = _normalised(attribution, mode)
    v = _resize(v[None], _display_size(*v.shape, size), "bilinear")[0]
    return _to_uint8(_heat_float(v, mode, cmap))


def colorbar_rgb(mode: str = "absolute", cmap: str | None = None, width: int = 224, height: int = 12) -> np.ndarray:
    """The heat maps' colour bar: a (height, width, 3) uint8 strip, low values left (see :func:`colorbar_caption`)."""
    if mode not in _MODES:
        raise GradvizError(f"unknown mode {mode!r}; use one of {', '.join(_MODES)}")
    lo = -1.0 if mode == "signed" else 0.0
    row = torch.linspace(lo, 1.0, max(2, int(width)))
    return _to_uint8(np.repeat(_heat_float(row[None], mode, cmap), max(1, int(height)), axis=0))


def colorbar_caption(mode: str = "absolute") -> str:
    """What the ends of :func:`colorbar_rgb` mean: every map is scaled by its own 99th percentile of |attribution|."""
    if mode == "signed":
        return "−1 (against the class) … 0 … +1 (for it): attribution ÷ its 99th percentile of |a|"
    what = "|attribution|" if mode == "absolute" else "positive attribution"
    return f"0 (none) … 1 (strongest): {what} ÷ its 99th percentile"


def render_overlay(
    image: torch.Tensor | np.ndarray,
    attribution: torch.Tensor | np.ndarray,
    mode: str = "absolute",
    cmap: str | None = None,
    alpha: float = 0.5,
    size: int | None = None,
) -> np.ndarray:
    """Blend a heat map of ``attribution`` (H, W) over ``image`` (C, H, W) in [0, 1] → (H', W', 3) uint8.

    Diverging map (``RdBu_r``, zero = white) for ``signed``, sequential (``inferno``) for
    ``absolute``/``positive``; ``alpha`` = heat-map opacity (0 gives the image back);
    ``size`` = display height in pixels (image upscaled nearest, heat map bilinear).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise GradvizError(f"alpha must be in [0, 1] (got {alpha})")
    img = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image)
    img = img.detach().float().cpu()
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ImageError(f"an image must be (C, H, W) with 1 or 3 channels; got {tuple(img.shape)}")
    img = img.clamp(0, 1).expand(3, -1, -1)
    hw = _display_size(img.shape[1], img.shape[2], size)
    img = _resize(img, hw, "nearest")
    v = _resize(_normalised(attribution, mode)[None], hw, "bilinear")[0]
    heat = _heat_float(v, mode, cmap)
    base = img.permute(1, 2, 0).numpy()
    return _to_uint8((1.0 - float(alpha)) * base + float(alpha) * heat)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def to_png_bytes(array: np.ndarray) -> bytes:
    """Encode an (H, W, 3) or (H, W) uint8 array as PNG (for ``st.download_button``)."""
    from PIL import Image

    a = np.asarray(array)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(f"to_png_bytes needs a uint8 (H, W) or (H, W, 3) array; got {a.dtype} {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()
