"""The compiled statistics kernel: agreement with eager PyTorch, and a loader that can never take the
process down (cache keyed on CPU and compiler, child-process check, one OpenMP runtime, one version)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradviz.engine.kernels.loader as loader
from gradviz.engine.kernels import FusedKernel, fused_kernel, transposed_weight
from gradviz.engine.reduce import PARTS, reduce_rows
from gradviz.errors import GradvizError
from gradviz.engine import layer_gradient_stats
from gradviz.models.zoo import random_model

from engine_reference import require_kernel
from engine_reference import batch


def test_compiled_kernel_agrees_with_eager_on_odd_shapes():
    require_kernel()
    kernel = fused_kernel("on", torch.float32)
    g = torch.Generator().manual_seed(3)
    for shape in [(1, 70_001), (2, 3), (1000, 17), (3, 1)]:  # one long row is split over threads
        x = torch.randn(shape, generator=g)
        got = kernel(x)
        want = reduce_rows(x.clone(), kernel=None)
        for i, part in enumerate(PARTS):
            assert torch.allclose(got[:, i], want[part].double(), rtol=1e-5, atol=1e-5), part


def _materialised_parts(x, d, kernel_size, stride, padding, dilation):
    """(b, 5) float64 partial sums of each sample's conv weight gradient, materialised by unfold."""
    u = F.unfold(x.double(), kernel_size, dilation, padding, stride)
    g = torch.matmul(d.double().flatten(2), u.transpose(1, 2)).flatten(1)
    return torch.stack([g.abs().sum(1), (g * g).sum(1), g.amax(1), g.amin(1), g.sum(1)], 1), g


@pytest.mark.parametrize("c_in, c_out, size, kernel_size, stride, padding, dilation", [
    (1, 16, 28, (3, 3), (1, 1), (1, 1), (1, 1)),  # one input channel (the bundled model's stem)
    (3, 20, 9, (3, 3), (1, 1), (1, 1), (1, 1)),  # output channels not a whole number of vectors
    (16, 64, 14, (3, 3), (2, 2), (1, 1), (1, 1)),
    (7, 70, 11, (5, 5), (2, 2), (2, 2), (2, 2)),  # generic path: 5x5, dilated
    (32, 37, 6, (1, 1), (2, 2), (0, 0), (1, 1)),  # 1x1 downsample
    (3, 64, 32, (7, 7), (2, 2), (3, 3), (1, 1)),  # ResNet stem
    (9, 5, 4, (2, 3), (1, 2), (0, 1), (1, 1)),
])
def test_direct_conv_kernel_matches_materialised_gradients(c_in, c_out, size, kernel_size, stride, padding, dilation):
    require_kernel()
    kernel = fused_kernel("on", torch.float32)
    gen = torch.Generator().manual_seed(c_in * 100 + c_out)
    x = torch.randn(5, c_in, size, size, generator=gen)
    conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, dilation, bias=False)
    d = torch.randn(conv(x).shape, generator=gen)
    want, g = _materialised_parts(x, d, kernel_size, stride, padding, dilation)
    got = kernel.conv_parts(x, d, kernel_size, stride, padding, dilation)
    scale = torch.stack([want[:, 0], want[:, 1], g.abs().amax(1), g.abs().amax(1), want[:, 0]], 1)
    assert ((got - want).abs() / scale).max() < 1e-5
    only = kernel.conv_parts(x, d, kernel_size, stride, padding, dilation, only_s2=True)
    assert torch.allclose(only[:, 1], want[:, 1], rtol=1e-5)
    # per-channel scale (a folded BatchNorm's γ/σ) on the statistics, dot products with W on the unscaled G
    s, w = torch.randn(c_out, generator=gen), torch.randn(c_out, c_in, *kernel_size, generator=gen)
    z, shift = torch.randn(d.shape, generator=gen), torch.randn(c_out, generator=gen)
    got, dots, sums, zdots = kernel.conv_parts(x, d, kernel_size, stride, padding, dilation, scale=s,
                                               weight_t=transposed_weight(w), z=z, z_shift=shift)
    assert torch.allclose(sums, d.double().flatten(2).sum(-1), rtol=1e-5, atol=1e-5)
    want_z = (d.double() * (z.double() - shift.double().view(1, -1, 1, 1))).flatten(2).sum(-1)
    assert torch.allclose(zdots, want_z, rtol=1e-5, atol=1e-6)
    g3 = g.view(5, c_out, -1)
    want_s, _ = _materialised_parts(x, d * s.view(1, -1, 1, 1), kernel_size, stride, padding, dilation)
    assert ((got - want_s).abs() / (scale * s.abs().max())).max() < 1e-5
    want_dots = (g3 * w.double().flatten(1)).sum(-1)
    assert ((dots - want_dots).abs() / (g3.abs() * w.double().flatten(1).abs()).sum(-1)).max() < 1e-5


def test_direct_conv_kernel_rejects_other_dtypes():
    require_kernel()
    kernel = fused_kernel("on", torch.float32)
    x, d = torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with pytest.raises(GradvizError, match="float32"):
        kernel.conv_parts(x, d, (3, 3), (1, 1), (1, 1), (1, 1))


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """A loader with nothing built yet, caching into an empty folder (where a kernel can be built)."""
    require_kernel()
    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    compiled = loader._Compiled()
    monkeypatch.setattr(loader, "_COMPILED", compiled)
    return tmp_path / "kernels"


def test_without_a_compiler_the_engine_falls_back_to_eager(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADVIZ_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(loader, "_COMPILED", loader._Compiled())
    model = random_model("mnist-cnn", 10, (1, 28, 28), seed=0)
    x = batch((1, 28, 28), 3)
    monkeypatch.setattr(loader, "_compilers", lambda: [])
    eager = layer_gradient_stats(model, x, c_kernel="off")
    with pytest.warns(RuntimeWarning, match="unavailable"):
        got = layer_gradient_stats(model, x, c_kernel="on")
    assert torch.allclose(got.values, eager.values, rtol=1e-6, atol=1e-12)
    assert loader.compiled_status().startswith("failed") and "no C compiler" in loader.compiled_status()
    monkeypatch.setattr(loader, "_COMPILED", loader._Compiled())
    monkeypatch.setattr(loader, "_compilers", lambda: ["/bin/false"])  # a compiler that fails
    layer_gradient_stats(model, x, c_kernel="auto")  # auto: silent fallback
    assert loader.compiled_status().startswith("failed: GradvizError: could not compile")


@pytest.mark.slow
def test_cache_key_holds_the_cpu_features_and_the_compiler_version(monkeypatch, fresh_kernel):
    """A cache shared by machines with other CPUs (or another compiler) never reuses a build."""
    assert loader.warm_up() == "ready"
    first = {p.name for p in fresh_kernel.glob("*.so")}
    monkeypatch.setattr(loader, "cpu_features", lambda: "flags=sse2 only (another machine)")
    monkeypatch.setattr(loader, "_COMPILED", loader._Compiled())
    assert loader.warm_up() == "ready"
    second = {p.name for p in fresh_kernel.glob("*.so")}
    assert len(second) == len(first) + 1  # a new build for the other CPU
    monkeypatch.setattr(loader, "_compiler_version", lambda cc: "cc 99.0 (another compiler)")
    monkeypatch.setattr(loader, "_COMPILED", loader._Compiled())
    assert loader.warm_up() == "ready"
    assert len({p.name for p in fresh_kernel.glob("*.so")}) == len(second) + 1
    assert "flags" in loader.cpu_features() or loader.cpu_features()


@pytest.mark.slow
def test_a_build_that_crashes_is_caught_in_a_child_process_and_never_loaded(monkeypatch, fresh_kernel):
    """A build whose code dies (SIGILL on a CPU without its instructions) kills the child that tries
    it, not this process; it is remembered as bad, and the engine stays eager."""
    monkeypatch.setattr(loader, "_CHILD_CHECK", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    loaded = []
    real_cdll = loader.ctypes.CDLL
    monkeypatch.setattr(loader.ctypes, "CDLL", lambda path, *a, **k: loaded.append(path) or real_cdll(path, *a, **k))
    assert loader.warm_up().startswith("failed")
    assert "signal 4" in loader.compiled_status() and loaded == []
    assert list(fresh_kernel.glob("*.bad"))
    model = random_model("mnist-cnn", 10, (1, 28, 28), seed=0)
    assert layer_gradient_stats(model, batch((1, 28, 28), 2), c_kernel="auto").values.isfinite().all()


@pytest.mark.slow
def test_a_checked_build_loads_without_a_second_check(monkeypatch, fresh_kernel):
    assert loader.warm_up() == "ready"
    assert list(fresh_kernel.glob("*.ok"))
    checks = []
    monkeypatch.setattr(loader, "_child_check", lambda target: checks.append(target))
    monkeypatch.setattr(loader, "_COMPILED", loader._Compiled())
    assert loader.warm_up() == "ready" and checks == []


@pytest.mark.slow
def test_interrupted_builds_are_cleaned_up(monkeypatch, fresh_kernel):
    fresh_kernel.mkdir(parents=True)
    stale, recent = fresh_kernel / "tmpold123.so", fresh_kernel / "tmpnew456.so"
    stale.write_bytes(b"half a build")
    recent.write_bytes(b"a build in progress")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    loader.warm_up()
    assert not stale.exists() and recent.exists()


@pytest.mark.slow
def test_one_version_number_and_a_mismatch_fails_loudly(monkeypatch, fresh_kernel):
    version = loader.source_version()
    assert f"#define GV_KERNEL_VERSION {version}" in loader.SOURCE.read_text()
    assert fused_kernel("on").version == version
    monkeypatch.setattr(loader, "source_version", lambda source=None: version + 1)
    monkeypatch.setattr(loader, "_COMPILED", loader._Compiled())
    assert "stale kernel build" in loader.warm_up()


def test_argument_structure_size_is_checked_at_load():
    require_kernel()
    kernel = fused_kernel("on")

    class Fake:
        def __getattr__(self, name):
            return getattr(kernel.lib, name)

    fake = Fake()
    fake.gv_conv_args_size = lambda: 8  # a build of another layout
    with pytest.raises(GradvizError, match="argument layout"):
        FusedKernel(fake)


@pytest.mark.slow
def test_one_openmp_runtime_in_the_process():
    """Loading the kernel adds no OpenMP runtime to the process: it binds to the one PyTorch loaded (or
    uses none). Checked in a fresh process holding torch alone (scikit-learn vendors one of its own)."""
    require_kernel()
    code = """
import sys, json, torch
from pathlib import Path
def runtimes():
    maps = Path("/proc/self/maps").read_text()
    return {line.split()[-1] for line in maps.splitlines() if "gomp" in line or "iomp" in line}
before = runtimes()
from gradviz.engine.kernels import fused_kernel, warm_up
status = warm_up()
print(json.dumps([status, sorted(runtimes() - before), fused_kernel("on").openmp]))
"""
    if not Path("/proc/self/maps").exists():
        pytest.skip("no /proc/self/maps on this platform")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    status, added, openmp = json.loads(run.stdout.strip().splitlines()[-1])
    assert status == "ready" and added == [], (status, added, run.stderr[-500:])
    assert openmp == bool(loader._torch_libgomp())


def test_thread_pool_is_built_once_and_replaced_pools_are_shut_down():
    require_kernel()
    kernel = fused_kernel("on")
    pools = []
    threads = [threading.Thread(target=lambda: pools.append(kernel._executor(2))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(p) for p in pools}) == 1
    old = pools[0]
    bigger = kernel._executor(4)
    assert bigger is not old and old._shutdown


def test_kernel_builds_once_in_the_background_and_a_caller_waits_for_it(monkeypatch):
    """build_in_background starts one build in a thread; a get() meanwhile waits for it (no second build),
    a failure is remembered and reported, and GRADVIZ_COMPILE=off starts nothing."""
    release, builds = threading.Event(), []

    def slow_build():
        builds.append(threading.current_thread().name)
        release.wait(10)
        return "kernel"

    monkeypatch.setattr(loader, "_build", slow_build)
    fresh = loader._Compiled()
    monkeypatch.setattr(loader, "_COMPILED", fresh)
    monkeypatch.setenv("GRADVIZ_COMPILE", "off")
    loader.build_in_background()
    assert fresh.thread is None and loader.compiled_status() == "not built"
    monkeypatch.setenv("GRADVIZ_COMPILE", "auto")
    loader.build_in_background()
    loader.build_in_background()  # already building: no second thread
    assert loader.compiled_status() == "building"  # the second call returned at once, not after the build
    got = []
    waiter = threading.Thread(target=lambda: got.append(loader.fused_kernel("auto")))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and got == []  # waits for the background build
    release.set()
    waiter.join(10)
    assert got == ["kernel"] and builds == ["gradviz-kernel-build"]
    assert loader.compiled_status() == "ready"

    failing = loader._Compiled()
    monkeypatch.setattr(loader, "_COMPILED", failing)
    monkeypatch.setattr(loader, "_build", lambda: (_ for _ in ()).throw(GradvizError("no C compiler found")))
    loader.build_in_background()
    failing.thread.join(10)
    assert loader.compiled_status().startswith("failed: GradvizError: no C compiler")
    with pytest.warns(RuntimeWarning, match="using eager PyTorch"):
        assert loader.fused_kernel("on") is None
