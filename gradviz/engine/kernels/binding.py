"""ctypes bindings of the compiled statistics kernel (``fused_stats.c``), loaded by :mod:`.loader`.

Every entry point's argument types are declared here once; the direct conv kernel takes its many
arguments as one named structure (:class:`ConvArgs`) whose size the C side reports, so a build of
another layout fails loudly at load instead of reading the wrong argument.
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from gradviz.errors import GradvizError

__all__ = ["FusedKernel", "ConvArgs", "transposed_weight"]

# Below this many elements one thread does the whole call (thread hand-off costs ~20 µs).
_PARALLEL_MIN = 1 << 16

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class ConvArgs(ctypes.Structure):
    """``gv_conv_args`` of fused_stats.c, field for field."""

    _fields_ = [("x", _P), ("d", _P), ("shape", _P), ("scale", _P), ("dscale", _P), ("wt", _P), ("z", _P),
                ("zshift", _P), ("out", _P), ("dot", _P), ("dsum", _P), ("zdot", _P), ("rowsel", _P),
                ("single", _P), ("nsel", _I64), ("nsingle", _I64), ("nzero", _I64), ("only_s2", ctypes.c_int32),
                ("threads", ctypes.c_int32)]


class FusedKernel:
    """The loaded C kernel: ``kernel(g (R, N) contiguous float32/float64) -> (R, 5) float64``.

    ``openmp``: the library parallelises itself (linked to PyTorch's own OpenMP runtime); otherwise
    calls are split over a thread pool here (ctypes releases the GIL)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self._fns = {torch.float32: lib.gv_row_parts_f32, torch.float64: lib.gv_row_parts_f64}
        for fn in self._fns.values():
            fn.argtypes = [_P, _I64, _I64, _I64, _I64, _P, ctypes.c_int]
            fn.restype = None
        self._bn = {torch.float32: lib.gv_bn_parts_f32, torch.float64: lib.gv_bn_parts_f64}
        for fn in self._bn.values():
            fn.argtypes = [_P] * 3 + [_I64] * 3 + [_P, ctypes.c_int]
            fn.restype = None
        self._conv = lib.gv_conv_parts_f32
        self._conv.argtypes = [ctypes.POINTER(ConvArgs)]
        self._conv.restype = ctypes.c_int
        lib.gv_conv_args_size.restype = _I64
        lib.gv_kernel_version.restype = ctypes.c_int
        lib.gv_has_openmp.restype = ctypes.c_int
        if lib.gv_conv_args_size() != ctypes.sizeof(ConvArgs):
            raise GradvizError(f"kernel build has another argument layout ({lib.gv_conv_args_size()} bytes, "
                               f"expected {ctypes.sizeof(ConvArgs)})")
        self.version = int(lib.gv_kernel_version())
        self.openmp = bool(lib.gv_has_openmp())
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._pool_lock = threading.Lock()

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
        else:
            self._split(total, threads, lambda lo, hi: fn(*args, lo, hi, out.data_ptr(), 1))
        if seg == 1:
            return out[:, 0]
        return torch.stack([out[..., 0].sum(1), out[..., 1].sum(1), out[..., 2].amax(1), out[..., 3].amin(1),
                            out[..., 4].sum(1)], dim=1)

    def bn_parts(self, x: torch.Tensor, d: torch.Tensor, mean: torch.Tensor) -> torch.Tensor | None:
        """(b, C, 2) float64: [Σ_s δ (x − μ_c), Σ_s δ] per sample and channel of x, δ (b, C, S); None
        where this kernel cannot run it (then the caller uses eager)."""
        if not (self.supports(x) and d.dtype == x.dtype):
            return None
        x, d = x.contiguous(), d.contiguous()
        mean = mean.to(x.dtype).contiguous()
        b, c, n = x.shape
        out = torch.empty(b, c, 2, dtype=torch.float64)
        threads = max(1, torch.get_num_threads()) if x.numel() >= _PARALLEL_MIN else 1
        fn = self._bn[x.dtype]
        if threads == 1 or self.openmp:
            fn(x.data_ptr(), d.data_ptr(), mean.data_ptr(), c, n, b * c, out.data_ptr(), threads)
        else:  # rows of whole samples per thread: the channel of row r is r % C
            per = c * n
            self._split(b, threads, lambda lo, hi: fn(x.data_ptr() + lo * per * x.element_size(),
                                                      d.data_ptr() + lo * per * d.element_size(), mean.data_ptr(),
                                                      c, n, (hi - lo) * c, out.data_ptr() + lo * c * 16, 1))
        return out

    @staticmethod
    def conv_supported(x: torch.Tensor, groups: int) -> bool:
        """Whether :meth:`conv_parts` runs a conv: groups = 1, a float32 CPU (b, C, H, W) input."""
        return groups == 1 and x.dtype == torch.float32 and x.device.type == "cpu" and x.ndim == 4

    def conv_parts(self, x: torch.Tensor, d: torch.Tensor, kernel_size, stride, padding, dilation,
                   only_s2: bool = False, scale: torch.Tensor | None = None, weight_t: torch.Tensor | None = None,
                   d_scale: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   z_shift: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                   single: torch.Tensor | None = None, zero_taps: int = 0) -> torch.Tensor | tuple:
        """Partial sums of each sample's conv weight gradient G_b = δ_b ⋆ x_b, computed in registers
        without materialising it. ``x`` (b, C, H, W), ``d`` (b, O, Ho, Wo), zero ``padding``. Returns
        (b, 5) float64 (PARTS order) of ``scale[o] · G_b[o, k]`` (``scale`` (O,) or None; with
        ``only_s2`` only column 1, Σg², is valid). With ``weight_t`` (the weight as (K, O),
        :func:`transposed_weight`) also the (b, O) float64 dot products Σ_k weight[o, k] G_b[o, k] of
        the unscaled G_b, and the (b, O) float64 sums Σ_p δ_b[o, p]. ``d_scale`` (O,) multiplies δ_b's
        channels as they are read (G_b, its dot products and its statistics are then those of the
        scaled δ; the sums Σ_p δ_b stay unscaled). With ``z`` (shaped like ``d``) and ``z_shift`` (O,)
        also Σ_p δ_b[o, p] (z_b[o, p] − z_shift[o]) (b, O) float64. With any of these extras the result
        is (parts, dots or None, Σ_p δ, z products or None). ``rows`` (int64 indices into the C·kh·kw
        columns of G_b) restricts the statistics to those columns (not with ``weight_t``); the other
        columns can be given as ``single`` ((n, 3) int64: position p, input row h, input column w of a
        kernel tap that sees position p only; its columns are x_b[c, h, w] · δ_b[:, p]) and
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

        def ptr(t: torch.Tensor | None, lo: int = 0) -> int | None:
            return None if t is None else t[lo:].data_ptr() if lo else t.data_ptr()

        def run(lo: int, hi: int, n_threads: int) -> int:
            shape = torch.tensor([hi - lo, *geometry], dtype=torch.int64)
            args = ConvArgs(x=ptr(x, lo), d=ptr(d, lo), shape=shape.data_ptr(), scale=ptr(scale),
                            dscale=ptr(d_scale), wt=ptr(weight_t), z=ptr(z, lo), zshift=ptr(z_shift),
                            out=ptr(out, lo), dot=ptr(dots, lo), dsum=ptr(sums, lo), zdot=ptr(zdots, lo),
                            rowsel=ptr(rows), single=ptr(single), nsel=0 if rows is None else rows.numel(),
                            nsingle=0 if single is None else single.shape[0], nzero=int(zero_taps),
                            only_s2=int(only_s2), threads=n_threads)
            return self._conv(ctypes.byref(args))

        if threads == 1 or b == 1 or self.openmp:
            codes = [run(0, b, min(threads, b))]
        else:
            codes = self._split(b, threads, lambda lo, hi: run(lo, hi, 1))
        if any(codes):
            raise MemoryError("the direct conv kernel could not allocate its buffers")
        return (out, dots, sums, zdots) if extras else out

    def _split(self, total: int, threads: int, call) -> list:
        """``call(lo, hi)`` over ``threads`` contiguous ranges of [0, total) on the pool; results in order."""
        bounds = [total * t // threads for t in range(threads + 1)]
        pool = self._executor(threads)
        jobs = [pool.submit(call, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
        return [job.result() for job in jobs]

    def _executor(self, threads: int) -> ThreadPoolExecutor:
        with self._pool_lock:  # two callers at once never build (or leak) two pools
            if self._pool is None or self._pool_size < threads:
                old, self._pool = self._pool, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gradviz-kernel")
                self._pool_size = threads
                if old is not None:
                    old.shutdown(wait=False)  # running jobs finish; its threads then exit
            return self._pool


def transposed_weight(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight (O, ...) as the direct kernel reads it: (K, O) float32, row-major, followed by
    64 spare entries (its vector loads of the last row may run past the end)."""
    w = weight.detach().to(torch.float32).reshape(weight.shape[0], -1)
    out = w.new_zeros(w.numel() + 64)
    out[: w.numel()].view(w.shape[1], w.shape[0]).copy_(w.t())
    return out
