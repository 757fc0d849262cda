"""Building, checking and loading the compiled statistics kernel — never at the cost of the process.

``fused_stats.c`` is built once with the system C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``;
``-O3 -march=native``, about 1.5 s, started in the background when a model is loaded:
:func:`build_in_background`) into ``$GRADVIZ_CACHE_DIR/kernels``. What keeps that safe:

- **The cache key** is the source, the compiler's path, version and flags, the machine type, the
  Python version and the CPU's feature flags: a home directory or image shared between machines
  (a cluster, a Docker layer built on a newer CPU) never loads a build made for other instructions.
- **A new build is run once in a child process first** (a plain Python without PyTorch calls every
  entry point on a small input). A build that dies there (SIGILL, a crash) is recorded and never
  loaded; a ``.ok`` stamp beside a build that passed lets later processes load it at once.
- **One OpenMP runtime.** The kernel uses OpenMP only when the process already has GNU libgomp
  loaded under the soname ``libgomp.so.1`` (PyTorch's own on Linux): the kernel's dependency then
  binds to that very library. Otherwise it is built without OpenMP and the caller splits the work
  over its own threads (:class:`~.binding.FusedKernel`).
- **One version number**, in the C source (``GV_KERNEL_VERSION``), read from there and compared
  with the build's; the conv entry point's argument structure is size-checked at load.
- Builds interrupted mid-way leave ``tmp*.so`` files: those older than a minute are removed.
- Loaded builds are checked against eager PyTorch before first use (:func:`_verify`); where no
  compiler exists or anything fails, the reason is kept (:func:`compiled_status`) and eager
  PyTorch is used: never a crash.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

from gradviz.config import settings
from gradviz.engine.kernels.binding import FusedKernel, transposed_weight
from gradviz.errors import GradvizError

__all__ = ["MODES", "fused_kernel", "resolve_mode", "compiled_status", "warm_up", "build_in_background",
           "source_version", "cpu_features"]

MODES = ("auto", "on", "off")
SOURCE = Path(__file__).resolve().parent / "fused_stats.c"
STALE_TMP_SECONDS = 60

# Run by the child process that tries a new build: every entry point on a small input, no PyTorch.
_CHILD_CHECK = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
P, I = ctypes.c_void_p, ctypes.c_int64
g = (ctypes.c_float * 256)(*[((i * 37) % 17 - 8) / 7.0 for i in range(256)])
gd = (ctypes.c_double * 256)(*[((i * 37) % 17 - 8) / 7.0 for i in range(256)])
out = (ctypes.c_double * 40)()
lib.gv_row_parts_f32.argtypes = lib.gv_row_parts_f64.argtypes = [P, I, I, I, I, P, ctypes.c_int]
lib.gv_row_parts_f32(g, 128, 2, 0, 4, out, 1)
lib.gv_row_parts_f64(gd, 128, 2, 0, 4, out, 1)
lib.gv_bn_parts_f32.argtypes = [P, P, P, I, I, I, P, ctypes.c_int]
mu = (ctypes.c_float * 2)(0.5, -0.5)
lib.gv_bn_parts_f32(g, g, mu, 2, 32, 8, out, 1)
class A(ctypes.Structure):
    _fields_ = [(n, P) for n in ("x d shape scale dscale wt z zshift out dot dsum zdot rowsel single".split())] + \
        [("nsel", I), ("nsingle", I), ("nzero", I), ("only_s2", ctypes.c_int32), ("threads", ctypes.c_int32)]
lib.gv_conv_args_size.restype = I
assert lib.gv_conv_args_size() == ctypes.sizeof(A)
shape = (I * 15)(1, 2, 8, 8, 20, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1)
x = (ctypes.c_float * 128)(*[((i * 13) % 11 - 5) / 3.0 for i in range(128)])
d = (ctypes.c_float * 1280)(*[((i * 7) % 5 - 2) / 3.0 for i in range(1280)])
o5 = (ctypes.c_double * 5)()
lib.gv_conv_parts_f32.argtypes = [ctypes.POINTER(A)]
rc = lib.gv_conv_parts_f32(ctypes.byref(A(x=ctypes.addressof(x), d=ctypes.addressof(d), shape=ctypes.addressof(shape),
                                          out=ctypes.addressof(o5), threads=1)))
assert rc == 0 and o5[1] > 0, (rc, list(o5))
print("ok", lib.gv_kernel_version(), lib.gv_has_openmp())
"""


def source_version(source: str | None = None) -> int:
    """``GV_KERNEL_VERSION`` as written in ``fused_stats.c`` (the only place it is kept)."""
    text = SOURCE.read_text() if source is None else source
    found = re.search(r"#define\s+GV_KERNEL_VERSION\s+(\d+)", text)
    if found is None:
        raise GradvizError("fused_stats.c defines no GV_KERNEL_VERSION")
    return int(found.group(1))


def cpu_features() -> str:
    """The CPU's model and feature flags (Linux ``/proc/cpuinfo``; else what ``platform`` knows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features", "model name", "cpu part", "cpu implementer", "isa") and key not in fields:
            fields[key] = " ".join(sorted(value.split()))
    return "; ".join(f"{k}={v}" for k, v in sorted(fields.items())) or platform.machine()


def _compiler_version(cc: str) -> str:
    try:
        run = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=20)
        return (run.stdout.strip().splitlines() or ["?"])[0]
    except (OSError, subprocess.SubprocessError):
        return "?"


def _compilers() -> list[str]:
    names = [os.environ["CC"]] if os.environ.get("CC") else []
    names += ["cc", "gcc", "clang"]
    found = []
    for name in names:
        path = shutil.which(name)
        if path and path not in found:
            found.append(path)
    return found


def _torch_libgomp() -> str | None:
    """The path of the GNU OpenMP runtime this process has loaded as ``libgomp.so.1`` (PyTorch's), if any."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if line.rstrip().endswith("libgomp.so.1")}
    return next(iter(paths)) if len(paths) == 1 else None


def _flag_sets() -> list[list[str]]:
    openmp = ["-fopenmp"] if _torch_libgomp() else []
    sets = [["-O3", "-march=native", *openmp], ["-O3", "-march=native"], ["-O3", *openmp], ["-O3"]]
    return [s for i, s in enumerate(sets) if s not in sets[:i]]


def _clean_stale(folder: Path) -> None:
    """Remove temporary files of builds that were interrupted (older than a minute)."""
    now = time.time()
    for tmp in folder.glob("tmp*.so"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:
            continue


def _child_check(target: Path) -> str | None:
    """Run every entry point of ``target`` once in a child process; None if it passed, else why not."""
    try:
        run = subprocess.run([sys.executable, "-I", "-c", _CHILD_CHECK, str(target)], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the check could not run: {exc}"
    if run.returncode == 0 and run.stdout.startswith("ok"):
        return None
    code = run.returncode
    why = f"signal {-code}" if code < 0 else f"exit status {code}"
    return f"the build failed its check in a child process ({why}): {(run.stderr.strip().splitlines() or [''])[-1][:200]}"


def _compile(cc: str, flags: list[str], target: Path) -> str | None:
    """Compile to ``target`` atomically; None on success, else the compiler's last line."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, *flags, "-fPIC", "-shared", "-o", tmp, str(SOURCE), "-lm"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            return (run.stderr.strip().splitlines() or ["failed"])[-1]
        os.replace(tmp, target)  # atomic: concurrent builders (torchrun ranks) never see half a file
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build() -> FusedKernel:
    """Compile (or reuse the cached, checked build of) the C kernel, load and verify it."""
    source = SOURCE.read_bytes()
    version = source_version(source.decode())
    compilers = _compilers()
    if not compilers:
        raise GradvizError("no C compiler found (set CC, or install gcc or clang)")
    folder = settings().cache_dir / "kernels"
    folder.mkdir(parents=True, exist_ok=True)
    _clean_stale(folder)
    errors = []
    features = cpu_features()
    for cc in compilers:
        cc_version = _compiler_version(cc)
        for flags in _flag_sets():
            key = "\n".join([cc, cc_version, *flags, platform.machine(), platform.python_version(), features])
            tag = hashlib.sha256(source + key.encode()).hexdigest()[:16]
            target, stamp, bad = folder / f"fused_stats-{tag}.so", folder / f"fused_stats-{tag}.ok", \
                folder / f"fused_stats-{tag}.bad"
            if bad.is_file():
                errors.append(f"{Path(cc).name} {' '.join(flags)}: {bad.read_text()[:200]}")
                continue
            if not stamp.is_file():
                if not target.is_file():
                    failed = _compile(cc, flags, target)
                    if failed is not None:
                        errors.append(f"{Path(cc).name} {' '.join(flags)}: {failed}")
                        continue
                failed = _child_check(target)
                if failed is not None:
                    bad.write_text(failed)
                    errors.append(f"{Path(cc).name} {' '.join(flags)}: {failed}")
                    continue
                stamp.write_text(key)
            kernel = FusedKernel(ctypes.CDLL(str(target)))
            if kernel.version != version:
                raise GradvizError(f"stale kernel build {target.name}: version {kernel.version}, source {version}")
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
            # A process that ends while the build still runs torch code in this thread can abort during
            # interpreter teardown ("terminate called without an active exception"): let the build finish first.
            atexit.register(self.thread.join, 120)

    def get(self, warn: bool) -> FusedKernel | None:
        if self.kernel is None and self.error is None:
            self._build_once()
        if self.error is not None and warn and not self.warned:
            self.warned = True
            warnings.warn(f"gradviz: compiled statistics kernel unavailable, using eager PyTorch ({self.error})",
                          RuntimeWarning, stacklevel=4)
        return self.kernel


_COMPILED = _Compiled()


def resolve_mode(c_kernel: bool | str | None) -> str:
    """``None`` -> ``GRADVIZ_COMPILE`` (default ``auto``); True -> ``on``; False -> ``off``.

    ``auto`` and ``on`` both use the compiled kernel where it can be built and eager otherwise;
    ``on`` also warns when it cannot.
    """
    if c_kernel is None:
        c_kernel = settings().compile
    if c_kernel is True:
        return "on"
    if c_kernel is False:
        return "off"
    mode = str(c_kernel).strip().lower()
    mode = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(mode, mode)
    if mode not in MODES:
        raise GradvizError(f"c_kernel (the compiled statistics kernel) must be one of {', '.join(MODES)} "
                           f"(or True/False), got {c_kernel!r}")
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
