"""The memory planner: how many images each pass over data may take at once.

Every pass over data (scoring, fitting, layer tables, attributions, the Playground, Compare
models, the meta classifier, reports) asks :func:`plan_batch` for its batch size instead of
using a fixed one. The planner sizes the batch from the model *at its input size*:

* one no-grad forward of a single zero image, with a forward hook on every leaf module, sums the
  bytes of every leaf output — ``A``, the activation bytes of one sample (memoised per model and
  input size). It runs on fake tensors (shapes without memory) where the model allows, else on one
  real image: the probe allocates nothing of the pass;
* a pass of kind ``k`` needs about ``FACTORS[k] · A + SAMPLE_PARAM_COPIES[k] · P`` bytes per sample (plus
  the input; ``P`` the parameter bytes: a double-backprop pass holds every sample's parameter gradient with
  its graph), and a fixed part: the parameter bytes, again for the parameter gradients of passes that
  backprop to the parameters (``PARAM_COPIES``), and the gradient engine's chunks;
* ``batch = clamp(floor((budget − fixed) / per_sample), 1, upper)``, ``upper`` being the caller's
  ``--batch-size`` (an upper bound, never a target) or the number of images.

If even one image does not fit, :class:`~gradviz.errors.GradvizError` says so with the numbers,
before the pass allocates anything.

The budget (:func:`memory_budget_mb`): ``GRADVIZ_MEMORY_MB`` when set, else — from the command
line — half of the memory the machine has available now (``MemAvailable``), at most
:data:`CPU_DEFAULT_MB` (2,048) for passes on the CPU, where a larger batch is no faster (ResNet-50 at
3×224², one thread, forward+backward: 0.31 s per image at batches 2–8, 0.36 at 16, 0.39 at 32); in the web app
each session's passes run inside :func:`session_budget` (``GRADVIZ_SESSION_MEMORY_MB``,
default 2,048, less what the session's own ID sets hold), and never beyond the server's budget
for all sessions together (:mod:`gradviz.runtime.ledger`, ``GRADVIZ_SERVER_MEMORY_MB``), from
which :func:`batch_size_for` reserves each plan's bytes before the pass runs. A model on a CUDA
device is planned for that GPU's memory instead: :data:`CUDA_SHARE` of what
``torch.cuda.mem_get_info`` reports free (and at most ``GRADVIZ_MEMORY_MB`` when set).

The factors are upper bounds measured on the real passes (peak RSS above a warm model, in a
fresh process; see ``benchmarks/bench_realsize.py`` and docs/PERFORMANCE.md): e.g. all 24
methods on mnist-cnn, a torchvision ResNet-18 and a small ViT at 3×64×64.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import torch
from torch import nn

from gradviz.errors import GradvizError

__all__ = ["KINDS", "FACTORS", "SAMPLE_PARAM_COPIES", "Plan", "plan_batch", "batch_size_for", "memory_budget_mb",
           "available_mb", "session_budget", "activation_bytes", "scoring_kind"]

log = logging.getLogger("gradviz.runtime.budget")

MB = 1024 * 1024

# Bytes per sample as a multiple of A (the summed leaf-module output bytes of one sample). Measured
# as upper bounds of the peak RSS per sample of the real passes (module doc); do not lower one
# without measuring again.
FACTORS: dict[str, float] = {
    "forward": 1.0,      # no-grad forward: logits + features (fit sets, output/feature methods, decomposition)
    "backward": 2.5,     # one forward+backward (attributions, the layer profile, Playground paths)
    "gradients": 4.0,    # the scoring pass with gradient methods: the engine's per-sample gradients, GAIA, ODIN…
    "second_order": 6.0,  # explaining a gradient score: double backprop through each sample's parameter gradient
}
# Measured per sample, in units of A (peak RSS above a warm model; slope between two batch sizes):
#                      forward  fwd+bwd  all 24 methods
#   mnist-cnn 1×28²     0.25     1.3       1.2
#   ResNet-18 3×64²     0.16     1.1       2.0
#   ResNet-50 3×96²      –       0.64      1.55
#   ViT (4×128) 3×64²   0.43     1.7       2.8
# and a fixed part of at most ~35 MB beyond the parameter gradients (OVERHEAD_MB).
# Explaining with saliency (benchmarks/bench_explain_memory.py; two runs, the larger shown), per sample:
#                      the class   energy   ODIN (input step)   grad_l2 (double backprop)
#   mnist-cnn 1×28²     1.3 A      1.4 A    2.0 A               4.6 MB = 6.4 A = 15.6 P
#   ResNet-18 3×64²     1.0 A      1.0 A    1.8 A               194 MB = 83 A = 4.5 P
# (P: the parameter bytes). The class, output scores and ODIN stay within "backward"; grad_l2 fits
# 4.7 A + 4.3 P on both models, and "second_order" plans 6 A + 5.5 P (~1.3× either measurement).
KINDS = tuple(FACTORS)
# Copies of the parameters a pass adds (their gradients; the engine's BN-folded weights).
PARAM_COPIES = {"forward": 0, "backward": 1, "gradients": 2, "second_order": 2}
# Copies of the parameters each sample adds (double backprop: its parameter gradient and that gradient's graph).
SAMPLE_PARAM_COPIES = {"forward": 0.0, "backward": 0.0, "gradients": 0.0, "second_order": 5.5}
WHAT = {"forward": "forward passes", "backward": "forward+backward passes", "gradients": "per-sample gradient passes",
        "second_order": "double-backprop passes (explaining a gradient score)"}
OVERHEAD_MB = 64  # allocator, thread pools, small buffers of any pass
CLI_SHARE = 0.5  # of MemAvailable, when GRADVIZ_MEMORY_MB is not set
CPU_DEFAULT_MB = 2048  # the most a CPU pass takes by default: larger batches are no faster there (module doc)
CUDA_SHARE = 0.8  # of the GPU memory free now, for a model on a CUDA device
FALLBACK_MB = 2048  # where the available memory cannot be read
MAX_BATCH = 65_536  # a sanity ceiling, as RunConfig's batch_size

_SESSION: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar("gradviz_session_budget",
                                                                                 default=None)


def available_mb() -> int | None:
    """MiB the machine has available now (``MemAvailable`` of /proc/meminfo, else sysconf), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MB)
    except (AttributeError, ValueError, OSError):
        return None


def cuda_free_mb(device) -> int:
    """MiB free now on the CUDA ``device`` (``torch.cuda.mem_get_info``)."""
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free // MB)


def memory_budget_mb(device=None) -> tuple[int, str]:
    """(MiB one pass on ``device`` (default the CPU) may use, where that number comes from)."""
    from gradviz.config import settings
    from gradviz.runtime.ledger import server_ledger

    device = torch.device(device) if device is not None else torch.device("cpu")
    scoped = _SESSION.get()
    if device.type == "cuda":
        free = cuda_free_mb(device)
        memory_mb = settings().memory_mb
        budget = (max(1, int(free * CUDA_SHARE)), f"{CUDA_SHARE:.0%} of the {free:,} MB free on {device}")
        configured = scoped or ((memory_mb, "GRADVIZ_MEMORY_MB") if memory_mb else None)
        if configured is not None and configured[0] < budget[0]:
            budget = configured
    elif scoped is not None:
        budget = scoped
    else:
        memory_mb = settings().memory_mb
        if memory_mb is not None:
            return memory_mb, "GRADVIZ_MEMORY_MB"
        available = available_mb()
        if available is None:
            return FALLBACK_MB, "default (available memory unknown)"
        share = max(64, int(available * CLI_SHARE))
        if share > CPU_DEFAULT_MB:
            return CPU_DEFAULT_MB, (f"the CPU default (a larger batch is no faster there; {CLI_SHARE:.0%} of the "
                                    f"{available:,} MB available would allow more: set GRADVIZ_MEMORY_MB)")
        return share, f"{CLI_SHARE:.0%} of the {available:,} MB available"
    if scoped is not None:  # a web session: never beyond what the server's passes may use together
        server = server_ledger(device)
        if server.budget_mb < budget[0]:
            return int(server.budget_mb), f"the server's budget for all sessions ({server.source})"
    return budget


@contextmanager
def session_budget(mb: int | None = None) -> Iterator[int]:
    """Within the block (this thread or task), passes plan for a web session's budget:
    ``mb`` or ``GRADVIZ_SESSION_MEMORY_MB``."""
    from gradviz.config import settings

    value = int(mb if mb is not None else settings().session_memory_mb)
    token = _SESSION.set((value, "this session's budget (GRADVIZ_SESSION_MEMORY_MB)"))
    try:
        yield value
    finally:
        _SESSION.reset(token)


# --- what one sample costs ----------------------------------------------------------------------

_PROFILES: dict[tuple, int] = {}
_PROFILES_LOCK = threading.Lock()


def _tensor_bytes(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_tensor_bytes(o) for o in out)
    if isinstance(out, dict):
        return sum(_tensor_bytes(o) for o in out.values())
    return 0


def _input_shape(model: nn.Module, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if shape is not None:
        return tuple(int(s) for s in shape)
    card = getattr(model, "card", None)
    if card is None:
        raise GradvizError("the planner needs the model's input size (a GradvizModel's card, or input_shape)")
    return tuple(int(s) for s in card.input_size)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def activation_bytes(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> int:
    """Bytes of every leaf module's output for ONE sample at ``input_shape`` (default: the card's).

    One no-grad forward of a zero image with a hook on each leaf module — on fake tensors (shapes only, no
    memory) where the model's ops allow, else for real; memoised per model and shape."""
    shape = _input_shape(model, input_shape)
    key = (getattr(model, "digest", None), id(model), shape, str(_device(model)))
    with _PROFILES_LOCK:
        if key in _PROFILES:
            return _PROFILES[key]
    total = [0]

    def hook(_module, _inputs, out):
        total[0] += _tensor_bytes(out)

    from gradviz.models.hooks import forward_hooks

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = {m: hook for m in leaves}
    try:  # shapes only, nothing allocated: fake tensors (the meta device under the real parameters)
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode(allow_non_fake_inputs=True):
            with torch.no_grad(), forward_hooks(model, hooks=hooks):
                model(torch.zeros((1, *shape), device=_device(model)))
    except Exception:  # noqa: BLE001 — an op without a fake kernel: one real image then (no grad, transient)
        total[0] = 0
        with torch.no_grad(), forward_hooks(model, hooks=hooks):
            model(torch.zeros((1, *shape), device=_device(model)))
    value = max(total[0], 4 * math.prod(shape))
    with _PROFILES_LOCK:
        _PROFILES[key] = value
        if len(_PROFILES) > 64:
            _PROFILES.pop(next(iter(_PROFILES)))
    return value


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# --- the plan -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """A pass's batch and why: per-sample and fixed MiB, the budget and where it comes from."""

    batch: int
    pass_name: str
    kind: str
    per_sample_mb: float
    fixed_mb: float
    budget_mb: int
    source: str
    model_name: str
    input_shape: tuple[int, ...]
    limited_by: str  # "budget", "batch size", "images" or "engine"

    @property
    def total_mb(self) -> float:
        """MiB the pass is planned to use: the fixed part and ``batch`` samples."""
        return self.fixed_mb + self.batch * self.per_sample_mb

    def describe(self) -> str:
        shape = "×".join(str(s) for s in self.input_shape)
        why = {"budget": "", "batch size": ", capped by --batch-size", "images": ", all images at once",
               "engine": ", the gradient engine's largest sub-batch"}[self.limited_by]
        return (f"batch {self.batch} for '{self.pass_name}' ({self.model_name} at {shape}: "
                f"~{_mb(self.per_sample_mb)} MB/sample + {_mb(self.fixed_mb)} MB fixed, "
                f"budget {self.budget_mb:,} MB{why})")


def _mb(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _engine_fixed_bytes(kind: str) -> int:
    if kind != "gradients":
        return 0
    from gradviz.config import settings

    return 4 * settings().chunk_mib * MB  # the engine's materialised chunks (a few alive at once)


def _kind_ceiling(kind: str) -> int:
    if kind == "gradients":  # a larger batch would not share one hooked forward (the engine's sub-batch)
        from gradviz.engine import FORWARD_BATCH

        return FORWARD_BATCH
    return MAX_BATCH


def plan_batch(model: nn.Module, kind: str, pass_name: str | None = None, *, upper: int | None = None,
               n: int | None = None, budget_mb: int | None = None,
               input_shape: tuple[int, ...] | None = None) -> Plan:
    """The batch for a pass of ``kind`` (one of :data:`KINDS`) over ``n`` images, at most ``upper``.

    Raises :class:`GradvizError` (with the numbers) when one image alone exceeds the budget."""
    if kind not in FACTORS:
        raise GradvizError(f"unknown pass kind {kind!r}; one of {', '.join(KINDS)}")
    if upper is not None and int(upper) < 1:
        raise GradvizError(f"batch size must be at least 1, got {upper}")
    if budget_mb is None:
        budget_mb, source = memory_budget_mb(_device(model))
    else:
        source = "given"
    shape = _input_shape(model, input_shape)
    card = getattr(model, "card", None)
    name = getattr(card, "name", None) or type(getattr(model, "net", model)).__name__
    per_sample = (FACTORS[kind] * activation_bytes(model, shape) + SAMPLE_PARAM_COPIES[kind] * parameter_bytes(model)
                  + 2 * 4 * math.prod(shape))  # + the input, twice
    fixed = PARAM_COPIES[kind] * parameter_bytes(model) + _engine_fixed_bytes(kind) + OVERHEAD_MB * MB
    room = budget_mb * MB - fixed
    if room < per_sample:
        raise GradvizError(
            f"one image does not fit the memory budget for '{pass_name or kind}': {name} at "
            f"{'×'.join(map(str, shape))} needs ~{_mb(per_sample / MB)} MB per image + {_mb(fixed / MB)} MB fixed "
            f"for {WHAT[kind]}, but the budget is {budget_mb:,} MB ({source}); raise GRADVIZ_MEMORY_MB "
            "(GRADVIZ_SESSION_MEMORY_MB in the web app) or use a smaller input size or model")
    batch, limited = min(int(room // per_sample), MAX_BATCH), "budget"
    if _kind_ceiling(kind) < batch:
        batch, limited = _kind_ceiling(kind), "engine"
    if upper is not None and int(upper) <= batch:
        batch, limited = int(upper), "batch size"
    if n is not None and 0 < int(n) <= batch:
        batch, limited = int(n), "images"
    return Plan(max(1, batch), pass_name or kind, kind, per_sample / MB, fixed / MB, int(budget_mb), source, name,
                shape, limited)


def batch_size_for(model: nn.Module, kind: str, pass_name: str, *, upper: int | None = None,
                   n: int | None = None, budget_mb: int | None = None) -> int:
    """:func:`plan_batch`'s batch, logged at INFO (logger ``gradviz.runtime.budget``; the CLI prints it).

    Inside a web session's work (:func:`gradviz.runtime.ledger.serving`) the plan's bytes are reserved from
    the server's ledger first: the call waits there while the server's budget is taken."""
    from gradviz.runtime.ledger import admit

    plan = plan_batch(model, kind, pass_name, upper=upper, n=n, budget_mb=budget_mb)
    log.info(plan.describe())
    admit(plan.total_mb, plan.pass_name, _device(model))
    return plan.batch


def scoring_kind(runners) -> str:
    """The pass kind of scoring with ``runners``: ``gradients`` if any reads gradients or the shared
    hooked forward, else ``forward``."""
    from gradviz.methods.registry import needs_graph

    if needs_graph(runners) or any(r.info.backprop for r in runners):
        return "gradients"
    return "forward"


# --- bounds before work (the web app) -------------------------------------------------------------

_META_PATCH = threading.Lock()


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Within the block, parameters this thread registers move to the meta device as they are made
    (one tensor alive at a time): for builders that compute on tensors and fail on the meta device."""
    me, original = threading.get_ident(), nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and threading.get_ident() == me and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        return original(module, name, param)

    with _META_PATCH:
        setattr(nn.Module, "register_parameter", register)
        try:
            yield
        finally:
            setattr(nn.Module, "register_parameter", original)


def _meta_build(arch: str, state: dict | None):
    from gradviz.models.resolver import build_untrained

    from gradviz.errors import ModelError

    try:
        with torch.device("meta"):
            return build_untrained(arch, state)
    except Exception:  # noqa: BLE001 — a builder that reads tensor values (e.g. RegNet's widths): parameters only
        pass
    try:
        with _parameters_on_meta():
            return build_untrained(arch, state)
    except GradvizError:
        raise
    except Exception as exc:  # noqa: BLE001 — never build what cannot be counted first
        raise ModelError(f"cannot count the parameters of {arch} before building it ({type(exc).__name__}: "
                         f"{str(exc)[:120]}); the web app loads only models it can count") from None


@lru_cache(maxsize=64)
def _default_shape(arch: str) -> tuple[int, object]:
    net, card = _meta_build(arch, None)
    return sum(p.numel() for p in net.parameters()), card


def count_parameters(arch: str, state: dict | None = None) -> int:
    """Parameters of the untrained ``arch`` (``torchvision:<name>``, ``timm:<name>``, a bundled
    architecture) shaped for ``state``, counted without allocating them (built on the meta device)."""
    if state is None:
        return _default_shape(arch)[0]
    net, _ = _meta_build(arch, state)
    return sum(p.numel() for p in net.parameters())


def check_parameters_web(arch: str, state: dict | None = None, limit: int | None = None) -> int:
    """The parameter count of a torchvision / timm ``arch``, or :class:`ModelError` over ``limit``
    (``GRADVIZ_MAX_PARAMS_WEB``) or when its default card is wider than ``GRADVIZ_MAX_SIDE_WEB``,
    before anything of it is allocated. Other names pass (0)."""
    from gradviz.config import settings
    from gradviz.errors import ModelError

    if not str(arch).startswith(("torchvision:", "timm:")):
        return 0
    limit = int(limit or settings().max_params_web)
    n = count_parameters(arch, state)
    if n > limit:
        raise ModelError(f"{arch} has {n:,} parameters ({n * 4 / 1e9:.2f} GB as float32); the web app builds models "
                         f"of at most {limit:,} (GRADVIZ_MAX_PARAMS_WEB): choose a smaller model, or run this one "
                         "from the command line")
    if state is None:  # the architecture's own card (an upload's card is checked where it is made)
        check_side_web(_default_shape(arch)[1])
    return n


def check_side_web(card, limit: int | None = None) -> None:
    """:class:`ModelError` when a card's input is wider or taller than ``limit`` (``GRADVIZ_MAX_SIDE_WEB``)."""
    from gradviz.config import settings
    from gradviz.errors import ModelError

    limit = int(limit or settings().max_side_web)
    c, h, w = (int(s) for s in card.input_size)
    if max(h, w) > limit:
        raise ModelError(f"the card's input size {c}×{h}×{w} is larger than the web app allows: at most {limit} "
                         f"pixels per side (GRADVIZ_MAX_SIDE_WEB); every image would be resized to {h}×{w} and "
                         f"each pass would need {h * w / (limit * limit):.1f}× the memory of {limit}×{limit}")


def set_session_budget(mb: int | None = None, held_mb: int = 0) -> None:
    """Plan this thread's passes for a web session's budget from now on (the dashboard calls it at the
    start of every script run; Streamlit runs each session's script in its own thread), less ``held_mb``
    (what the session's own ID sets hold)."""
    from gradviz.config import settings

    total = int(mb if mb is not None else settings().session_memory_mb)
    source = "this session's budget (GRADVIZ_SESSION_MEMORY_MB)"
    if held_mb > 0:
        source = f"this session's {total:,} MB (GRADVIZ_SESSION_MEMORY_MB) less {int(held_mb):,} MB of its own ID sets"
    _SESSION.set((max(1, total - int(held_mb)), source))


def fit_limit() -> int | None:
    """Images a fitted method may fit on: the web sample cap (``GRADVIZ_MAX_SAMPLES_WEB``) inside a web
    session, else None (the whole fit set)."""
    from gradviz.config import settings

    return settings().max_samples_web if _SESSION.get() is not None else None
