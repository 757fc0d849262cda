"""Per-sample reductions of materialised gradients: one fused compiled pass, or an eager fallback.

The six statistics of a per-sample gradient are finished from five partial sums per sample:
``s1 = Σ|g|``, ``s2 = Σg²``, ``mx = max g``, ``mn = min g``, ``sm = Σg`` (:data:`PARTS`).

- **Compiled** (default when possible): ``gradviz/kernels/fused_stats.c`` computes all five in
  ONE pass over the data (SIMD lanes, no fast-math, deterministic). It is built once with the
  system C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``; ``-O3 -march=native``, about 1.5 s,
  started in the background when a model is loaded: :func:`build_in_background`) into
  ``$GRADVIZ_CACHE_DIR/kernels``, loaded with :mod:`ctypes`, checked against eager on a test
  input, and run on ``torch.get_num_threads()`` threads (ctypes releases the GIL).
- **Eager** (fallback, or ``compile="off"``): one fast PyTorch kernel per part (``amax``,
  ``amin``, ``vector_norm(2)``, ``sum``, in-place ``abs_`` + ``sum``); the slow CPU kernels
  ``aminmax`` and ``vector_norm(1)`` are avoided.

The same C file holds the **direct conv kernel** (:meth:`FusedKernel.conv_parts`): the five partial
sums of each sample's Conv2d weight gradient δ_b ⋆ x_b (groups = 1, float32), formed tile by tile in
SIMD registers from the input and the output gradient and reduced there, so the gradient is never
written to memory; optionally with a per-channel scale and the dot products a folded BatchNorm needs
(:mod:`gradviz.folding`). It is checked against an unfolded matmul before first use, like the rest.

Measured on the 2-core build machine, a 2 MiB chunk: eager amax alone 22 µs, the compiled kernel
(all five) ≈ 35 µs, eager all five ≈ 160 µs (benchmarks/bench_gradients.py). Where no compiler
exists or the build fails, the reason is kept (:func:`compiled_status`) and eager is used: never a
crash. ``torch.compile`` was measured too and not used: inductor's CPU code for these fused
reductions ran at about a third of this kernel's speed (cascade summation).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from gradviz.config import settings
from gradviz.errors import GradvizError

__all__ = ["PARTS", "MODES", "reduce_rows", "fused_kernel", "FusedKernel", "resolve_mode", "compiled_status",
           "warm_up", "build_in_background", "transposed_weight"]

PARTS = ("s1", "s2", "mx", "mn", "sm")
MODES = ("auto", "on", "off")
SOURCE = Path(__file__).resolve().parent / "kernels" / "fused_stats.c"
KERNEL_VERSION = 13
# Below this many elements one thread does the whole call (thread hand-off costs ~20 µs).
_PARALLEL_MIN = 1 << 16


def _eager(g: torch.Tensor, need: frozenset[str], scratch: bool) -> dict[str, torch.Tensor]:
    """One fast eager kernel per wanted part; ``scratch`` = ``g`` may be overwritten (``abs_``)."""
    out: dict[str, torch.Tensor] = {}
    if "mx" in need:
        out["mx"] = g.amax(1)
    if "mn" in need:
        out["mn"] = g.amin(1)
    if "s2" in need:
        out["s2"] = torch.linalg.vector_norm(g, 2, dim=1).square()
    if "sm" in need:
        out["sm"] = g.sum(1)
    if "s1" in need:
        out["s1"] = (g.abs_() if scratch else g.abs()).sum(1)
    return out


class FusedKernel:
    """The loaded C kernel: ``kernel(g (R, N) contiguous float32/float64) -> (R, 5) float64``."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fns = {torch.float32: lib.gv_row_parts_f32, torch.float64: lib.gv_row_parts_f64}
        for fn in self._fns.values():
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                           ctypes.c_void_p, ctypes.c_int]
            fn.restype = None
        self._bn = {torch.float32: lib.gv_bn_parts_f32, torch.float64: lib.gv_bn_parts_f64}
        for fn in self._bn.values():
            fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_void_p, ctypes.c_int]
            fn.restype = None
        self._conv = lib.gv_conv_parts_f32
        self._conv.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_int] + [ctypes.c_void_p] * 10
                               + [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int])
        self._conv.restype = ctypes.c_int
        self.openmp = bool(lib.gv_has_openmp())
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def supports(self, g: torch.Tensor) -> bool:
        return g.dtype in self._fns and g.device.type == "cpu"

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        if g.ndim != 2 or not self.supports(g):
            raise GradvizError("the fused kernel takes a 2-D float32/float64 CPU tensor")
        g = g.contiguous()
        rows, n = g.shape
        threads = max(1, torch.get_num_threads()) if g.numel() >= _PARALLEL_MIN else 1
        seg = max(1, -(-threads // rows)) if n >= 2 * threads else 1  # few long rows: split each row
        out = torch.empty(rows, seg, 5, dtype=torch.float64)
        fn, total = self._fns[g.dtype], rows * seg
        args = (g.data_ptr(), n, seg)
        if threads == 1 or total == 1 or self.openmp:
            fn(*args, 0, total, out.data_ptr(), min(threads, total))
        else:  # built without OpenMP: split the range over Python threads (ctypes releases the GIL)
            pool = self._executor(threads)
            bounds = [total * t // threads for t in range(threads + 1)]
            jobs = [pool.submit(fn, *args, lo, hi, out.data_ptr(), 1) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
            for job in jobs:
                job.result()
        if seg == 1:
            return out[:, 0]
        return torch.stack([out[..., 0].sum(1), out[..., 1].sum(1), out[..., 2].amax(1), out[..., 3].amin(1),
                            out[..., 4].sum(1)], dim=1)

    def bn_parts(self, x: torch.Tensor, d: torch.Tensor, mean: torch.Tensor) -> torch.Tensor | None:
        """(b, C, 2) float64: [Σ_s δ (x − μ_c), Σ_s δ] per sample and channel of x, δ (b, C, S); None
        where this kernel cannot run it (then the caller uses eager)."""
        if not (self.supports(x) and d.dtype == x.dtype and self.openmp):
            return None
        x, d = x.contiguous(), d.contiguous()
        mean = mean.to(x.dtype).contiguous()
        b, c, n = x.shape
        out = torch.empty(b, c, 2, dtype=torch.float64)
        threads = max(1, torch.get_num_threads()) if x.numel() >= _PARALLEL_MIN else 1
        self._bn[x.dtype](x.data_ptr(), d.data_ptr(), mean.data_ptr(), c, n, b * c, out.data_ptr(), threads)
        return out

    @staticmethod
    def conv_supported(module: torch.nn.Module, x: torch.Tensor) -> bool:
        """Whether :meth:`conv_parts` runs this layer: a groups=1 Conv2d on a float32 CPU input."""
        return (isinstance(module, torch.nn.Conv2d) and module.groups == 1 and x.dtype == torch.float32
                and x.device.type == "cpu" and x.ndim == 4)

    def conv_parts(self, x: torch.Tensor, d: torch.Tensor, kernel_size, stride, padding, dilation,
                   only_s2: bool = False, scale: torch.Tensor | None = None, weight_t: torch.Tensor | None = None,
                   d_scale: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   z_shift: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                   single: torch.Tensor | None = None, zero_taps: int = 0) -> torch.Tensor | tuple:
        """Partial sums of each sample's conv weight gradient G_b = δ_b ⋆ x_b, computed in registers
        without materialising it (``fused_stats.c``). ``x`` (b, C, H, W), ``d`` (b, O, Ho, Wo), zero
        ``padding``. Returns (b, 5) float64 (:data:`PARTS`) of ``scale[o] · G_b[o, k]`` (``scale``
        (O,) or None; with ``only_s2`` only column 1, Σg², is valid). With ``weight_t`` (the weight
        as (K, O), :func:`transposed_weight`) also the (b, O) float64 dot products
        Σ_k weight[o, k] G_b[o, k] of the unscaled G_b, and the (b, O) float64 sums Σ_p δ_b[o, p].
        ``d_scale`` (O,) multiplies δ_b's channels as they are read (G_b, its dot products and its
        statistics are then those of the scaled δ; the sums Σ_p δ_b stay unscaled). With ``z`` (shaped
        like ``d``) and ``z_shift`` (O,) also Σ_p δ_b[o, p] (z_b[o, p] − z_shift[o]) (b, O) float64.
        With any of these extras the result is (parts, dots or None, Σ_p δ, z products or None).
        ``rows`` (int64 indices into the C·kh·kw columns of G_b) restricts the statistics to those
        columns; it cannot be combined with ``weight_t``. The other columns can be given as
        ``single`` ((n, 3) int64: position p, input row h, input column w of a kernel tap that sees
        position p only; its columns are x_b[c, h, w] · δ_b[:, p], added in closed form) and
        ``zero_taps`` (taps that see no position: columns of zeros)."""
        x, d = x.contiguous(), d.contiguous()
        if x.dtype != torch.float32 or d.dtype != torch.float32 or x.ndim != 4 or d.ndim != 4:
            raise GradvizError("the direct conv kernel takes float32 (b, C, H, W) inputs and (b, O, Ho, Wo) gradients")
        b, o = x.shape[0], d.shape[1]
        scale, d_scale = (None if t is None else t.detach().to(torch.float32).contiguous() for t in (scale, d_scale))
        k = x.shape[1] * kernel_size[0] * kernel_size[1]
        if any(t is not None and t.numel() != o for t in (scale, d_scale)):
            raise GradvizError("scale and d_scale must have one entry per output channel")
        if weight_t is not None and (weight_t.dtype != torch.float32 or weight_t.numel() < k * o + 64
                                     or not weight_t.is_contiguous()):
            raise GradvizError("weight_t must come from transposed_weight(weight)")
        if z is not None:
            z = z.detach().to(torch.float32).contiguous()
            z_shift = torch.zeros(o) if z_shift is None else z_shift.detach().to(torch.float32).contiguous()
            if z.shape != d.shape or z_shift.numel() != o:
                raise GradvizError("z must be shaped like d, z_shift have one entry per output channel")
        if rows is not None:
            rows = rows.to(torch.int64).contiguous()
            if weight_t is not None or rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= k:
                raise GradvizError("rows must be indices into the gradient's columns, without weight_t")
        if single is not None:
            single = single.to(torch.int64).contiguous()
            if rows is None or single.ndim != 2 or single.shape[1] != 3:
                raise GradvizError("single must be (n, 3) [position, row, column] and comes with rows")
        extras = weight_t is not None or z is not None
        out = torch.empty(b, 5, dtype=torch.float64)
        dots = torch.empty(b, o, dtype=torch.float64) if weight_t is not None else None
        sums = torch.empty(b, o, dtype=torch.float64) if extras else None
        zdots = torch.empty(b, o, dtype=torch.float64) if z is not None else None
        threads = max(1, torch.get_num_threads())
        geometry = [*x.shape[1:], *d.shape[1:], *kernel_size, *stride, *padding, *dilation]
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731

        def run(lo: int, hi: int, n_threads: int) -> int:
            shape = torch.tensor([hi - lo, *geometry], dtype=torch.int64)
            rows_out = [None if t is None else t[lo:hi].data_ptr() for t in (dots, sums, zdots)]
            return self._conv(x[lo:hi].data_ptr(), d[lo:hi].data_ptr(), shape.data_ptr(), int(only_s2),
                              ptr(scale), ptr(d_scale), ptr(weight_t),
                              None if z is None else z[lo:hi].data_ptr(), ptr(z_shift),
                              out[lo:hi].data_ptr(), *rows_out, ptr(rows), 0 if rows is None else rows.numel(),
                              ptr(single), 0 if single is None else single.shape[0], int(zero_taps), n_threads)

        if threads == 1 or b == 1 or self.openmp:
            codes = [run(0, b, min(threads, b))]
        else:  # no OpenMP: split the samples over Python threads (ctypes releases the GIL)
            bounds = [b * t // threads for t in range(threads + 1)]
            codes = [job.result() for job in [self._executor(threads).submit(run, lo, hi, 1)
                                              for lo, hi in zip(bounds, bounds[1:]) if hi > lo]]
        if any(codes):
            raise MemoryError("the direct conv kernel could not allocate its buffers")
        return (out, dots, sums, zdots) if extras else out

    def _executor(self, threads: int) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_size < threads:
            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gradviz-kernel")
            self._pool_size = threads
        return self._pool


def transposed_weight(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight (O, ...) as the direct kernel reads it: (K, O) float32, row-major, followed by
    64 spare entries (its vector loads of the last row may run past the end)."""
    w = weight.detach().to(torch.float32).reshape(weight.shape[0], -1)
    out = w.new_zeros(w.numel() + 64)
    out[: w.numel()].view(w.shape[1], w.shape[0]).copy_(w.t())
    return out


def _compilers() -> list[str]:
    names = [os.environ["CC"]] if os.environ.get("CC") else []
    names += ["cc", "gcc", "clang"]
    found = []
    for name in names:
        path = shutil.which(name)
        if path and path not in found:
            found.append(path)
    return found


def _build() -> FusedKernel:
    """Compile (or reuse the cached build of) the C kernel, load and verify it."""
    source = SOURCE.read_bytes()
    compilers = _compilers()
    if not compilers:
        raise GradvizError("no C compiler found (set CC, or install gcc or clang)")
    folder = settings().cache_dir / "kernels"
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for cc in compilers:
        for flags in (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3", "-march=native"], ["-O3"]):
            tag = hashlib.sha256(source + " ".join([cc, *flags, platform.machine(), platform.python_version()]).encode())
            target = folder / f"fused_stats-{tag.hexdigest()[:16]}.so"
            if not target.is_file():
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
                os.close(fd)
                try:
                    cmd = [cc, *flags, "-fPIC", "-shared", "-o", tmp, str(SOURCE), "-lm"]
                    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                    if run.returncode != 0:
                        errors.append(f"{Path(cc).name} {' '.join(flags)}: "
                                      f"{(run.stderr.strip().splitlines() or ['failed'])[-1]}")
                        continue
                    os.replace(tmp, target)  # atomic: concurrent builders (torchrun ranks) never see half a file
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            lib = ctypes.CDLL(str(target))
            if lib.gv_kernel_version() != KERNEL_VERSION:
                raise GradvizError(f"stale kernel build {target}")
            kernel = FusedKernel(lib)
            _verify(kernel)
            return kernel
    raise GradvizError("could not compile the fused kernel: " + "; ".join(errors))


def _verify(kernel: FusedKernel) -> None:
    """The kernel must agree with eager PyTorch on a test input before it is ever used."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for shape in ((3, 1001), (1, 70_000), (40, 7)):
            g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            got = kernel(g)
            want = torch.stack([g.abs().sum(1), (g * g).sum(1), g.amax(1), g.amin(1), g.sum(1)], 1).double()
            scale = torch.stack([want[:, 0], want[:, 1], g.abs().amax(1), g.abs().amax(1), want[:, 0]], 1).double()
            if not ((got - want).abs() <= 1e-5 * scale).all():
                raise GradvizError("the fused kernel disagrees with eager PyTorch on a test input")
    # direct conv statistics: a 3x3 and a strided, dilated 2x3 kernel, channels not whole vectors
    for c_in, c_out, kernel_size, stride, padding, dilation in ((3, 20, (3, 3), (1, 1), (1, 1), (1, 1)),
                                                               (2, 7, (2, 3), (2, 1), (1, 2), (2, 1))):
        x = torch.randn(3, c_in, 9, 8, generator=gen)
        ho = (9 + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
        wo = (8 + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
        d = torch.randn(3, c_out, ho, wo, generator=gen)
        s = torch.randn(c_out, generator=gen)
        w = torch.randn(c_out, c_in * kernel_size[0] * kernel_size[1], generator=gen)
        zs = torch.randn(c_out, generator=gen)
        got, dots, sums, zdots = kernel.conv_parts(x, d, kernel_size, stride, padding, dilation, scale=s,
                                                   weight_t=transposed_weight(w), z=2 * d + 1, z_shift=zs)
        u = torch.nn.functional.unfold(x.double(), kernel_size, dilation, padding, stride)  # (b, K, P)
        g = torch.matmul(d.double().flatten(2), u.transpose(1, 2))  # (b, O, K)
        want_dots = (g * w.double()).sum(-1)
        g = (g * s.double()[:, None]).flatten(1)
        want = torch.stack([g.abs().sum(1), (g * g).sum(1), g.amax(1), g.amin(1), g.sum(1)], 1)
        tol = 1e-5 * g.abs().amax(1, keepdim=True) * g.shape[1]
        want_z = (d.double() * (2 * d.double() + 1 - zs.double().view(1, -1, 1, 1))).flatten(2).sum(-1)
        ok = torch.allclose(dots, want_dots, rtol=1e-4, atol=1e-4) and torch.allclose(
            sums, d.double().flatten(2).sum(-1), rtol=1e-5, atol=1e-5) and torch.allclose(zdots, want_z, rtol=1e-5)
        if not ((got - want).abs() <= tol).all() or not ok:
            raise GradvizError("the direct conv kernel disagrees with eager PyTorch on a test input")


class _Compiled:
    """The process-wide kernel, built once (thread-safe); failures are remembered, not retried.

    :meth:`start` builds it in a daemon thread, so the C compiler (a separate process, ~1.5 s)
    runs beside whatever the caller does next (imports, loading data, fitting); a :meth:`get`
    meanwhile waits for that build instead of starting another."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held for the whole build: a get() meanwhile waits for it
        self.start_lock = threading.Lock()  # only for starting the thread: start() never waits for a build
        self.kernel: FusedKernel | None = None
        self.error: str | None = None
        self.warned = False
        self.thread: threading.Thread | None = None

    def _build_once(self) -> None:
        with self.lock:
            if self.kernel is None and self.error is None:
                try:
                    self.kernel = _build()
                except Exception as exc:  # no compiler, read-only cache, odd platform: eager instead
                    self.error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"

    def start(self) -> None:
        with self.start_lock:
            if self.kernel is not None or self.error is not None or self.thread is not None:
                return
            self.thread = threading.Thread(target=self._build_once, name="gradviz-kernel-build", daemon=True)
            self.thread.start()

    def get(self, warn: bool) -> FusedKernel | None:
        if self.kernel is None and self.error is None:
            self._build_once()
        if self.error is not None and warn and not self.warned:
            self.warned = True
            warnings.warn(f"gradviz: compiled statistics kernel unavailable, using eager PyTorch ({self.error})",
                          RuntimeWarning, stacklevel=4)
        return self.kernel


_COMPILED = _Compiled()


def resolve_mode(compile: bool | str | None) -> str:
    """``None`` -> ``GRADVIZ_COMPILE`` (default ``auto``); True -> ``on``; False -> ``off``.

    ``auto`` and ``on`` both use the compiled kernel where it can be built and eager otherwise;
    ``on`` also warns when it cannot.
    """
    if compile is None:
        compile = settings().compile
    if compile is True:
        return "on"
    if compile is False:
        return "off"
    mode = str(compile).strip().lower()
    mode = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(mode, mode)
    if mode not in MODES:
        raise GradvizError(f"compile must be one of {', '.join(MODES)} (or True/False), got {compile!r}")
    return mode


def fused_kernel(mode: str, dtype: torch.dtype = torch.float32) -> FusedKernel | None:
    """The compiled kernel to use under ``mode`` (:func:`resolve_mode`) for ``dtype``, or None (eager)."""
    if mode == "off" or dtype not in (torch.float32, torch.float64):
        return None
    return _COMPILED.get(warn=mode == "on")


def build_in_background() -> None:
    """Start building the compiled kernel in a background thread unless ``GRADVIZ_COMPILE=off``.

    Called where a computation is about to start (model loading, the dashboard's first page);
    the first statistics call then finds the kernel ready, or waits for the rest of the build."""
    try:
        mode = resolve_mode(None)
    except GradvizError:
        return  # a bad GRADVIZ_COMPILE is reported by the call that uses it
    if mode != "off":
        _COMPILED.start()


def warm_up() -> str:
    """Build the compiled kernel now (once per process; ~1.5 s with the C compiler, or a load from the cache)."""
    _COMPILED.get(warn=False)
    return compiled_status()


def compiled_status() -> str:
    """``ready``, ``building``, ``not built`` or ``failed: <reason>``."""
    if _COMPILED.error is not None:
        return f"failed: {_COMPILED.error}"
    if _COMPILED.kernel is not None:
        return "ready"
    return "building" if _COMPILED.thread is not None and _COMPILED.thread.is_alive() else "not built"


def reduce_rows(g: torch.Tensor, need: frozenset[str] = frozenset(PARTS), kernel: FusedKernel | None = None,
                scratch: bool = False) -> dict[str, torch.Tensor]:
    """Partial sums (:data:`PARTS`) of every row of ``g`` (R, N): {part: (R,)}, only those in ``need``.

    ``kernel`` is :func:`fused_kernel`'s compiled pass (None = eager); ``scratch=True`` lets the
    eager path overwrite ``g`` (a buffer the caller reuses).
    """
    if kernel is None or len(need) < 2 or not kernel.supports(g):
        return _eager(g, need, scratch)
    out = kernel(g)
    return {k: out[:, i] for i, k in enumerate(PARTS) if k in need}
