"""The memory planner: batches planned from the model at its input size, bounded by the budget and
--batch-size, a clear refusal before any allocation, and a real pass that stays within its budget."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

import gradviz.scoring as scoring
from gradviz.runtime import budget
from gradviz.runtime.budget import plan_batch, session_budget
from gradviz.errors import GradvizError
from gradviz.methods.registry import ModelOutputs, resolve_methods
from gradviz.models import GradvizModel, ModelCard

ROOT = Path(__file__).resolve().parent.parent


def _resnet(side: int) -> GradvizModel:
    torch.manual_seed(0)
    card = ModelCard(name="resnet18", architecture="resnet18", input_size=(3, side, side), mean=(0.5,) * 3,
                     std=(0.25,) * 3, class_names=["a", "b"])
    return GradvizModel(torchvision.models.resnet18(num_classes=2), card)


@pytest.fixture(scope="module")
def resnets() -> dict[int, GradvizModel]:
    return {side: _resnet(side) for side in (32, 64, 128)}


@pytest.mark.parametrize("kind", ["forward", "backward", "gradients"])
def test_batch_shrinks_as_the_input_grows(resnets, kind):
    batches = [plan_batch(resnets[side], kind, budget_mb=400).batch for side in (32, 64, 128)]
    assert batches[0] > batches[1] > batches[2] >= 1, batches


def test_batch_shrinks_as_the_budget_shrinks(resnets):
    batches = [plan_batch(resnets[64], "backward", budget_mb=mb).batch for mb in (1600, 800, 400, 200)]
    assert batches == sorted(batches, reverse=True) and len(set(batches)) == 4, batches


def test_batch_size_is_an_upper_bound_never_a_target(resnets):
    plan = plan_batch(resnets[32], "forward", upper=5, budget_mb=100_000)
    assert plan.batch == 5 and plan.limited_by == "batch size"
    assert plan_batch(resnets[32], "forward", upper=5, n=3, budget_mb=100_000).batch == 3
    small = plan_batch(resnets[128], "backward", upper=10_000, budget_mb=300)
    assert 1 <= small.batch < 10_000 and small.limited_by == "budget"


def test_the_estimate_follows_the_activations(resnets):
    # 4× the pixels: about 4× the activation bytes of one sample (the probe reads the real shapes)
    ratio = budget.activation_bytes(resnets[128]) / budget.activation_bytes(resnets[64])
    assert 3.5 < ratio < 4.5


def test_one_image_over_budget_is_refused_before_any_allocation(resnets, monkeypatch):
    model = resnets[128]
    runners = [info.create() for info in resolve_methods(["msp", "grad_l2"])]
    forwards = []
    monkeypatch.setattr(ModelOutputs, "from_model", classmethod(lambda cls, *a, **k: forwards.append(1)))
    monkeypatch.setenv("GRADVIZ_MEMORY_MB", "80")
    images = torch.rand(4, 3, 128, 128)
    with pytest.raises(GradvizError) as info:
        scoring.score_images(model, images, runners)
    text = str(info.value)
    assert "one image does not fit" in text and "'scoring'" in text and "3×128×128" in text
    assert "budget is 80 MB (GRADVIZ_MEMORY_MB)" in text and "MB per image" in text
    assert forwards == []  # no batch was run


def test_unknown_pass_kind_and_bad_upper_bound_are_errors(resnets):
    with pytest.raises(GradvizError, match="unknown pass kind"):
        plan_batch(resnets[32], "sideways", budget_mb=100)
    with pytest.raises(GradvizError, match="at least 1"):
        plan_batch(resnets[32], "forward", upper=0, budget_mb=100)


def test_budget_sources(monkeypatch):
    monkeypatch.delenv("GRADVIZ_MEMORY_MB", raising=False)
    mb, source = budget.memory_budget_mb()
    assert "available" in source and 64 <= mb <= min(budget.available_mb() or 10**9, budget.CPU_DEFAULT_MB)
    monkeypatch.setattr(budget, "available_mb", lambda: 64_000)  # a large machine: the CPU default bounds it
    assert budget.memory_budget_mb() == (2048, budget.memory_budget_mb()[1])
    assert "CPU default" in budget.memory_budget_mb()[1] and "GRADVIZ_MEMORY_MB" in budget.memory_budget_mb()[1]
    monkeypatch.setattr(budget, "available_mb", lambda: 1_000)  # a small one: half of what it has
    assert budget.memory_budget_mb() == (500, "50% of the 1,000 MB available")
    monkeypatch.setenv("GRADVIZ_MEMORY_MB", "777")
    assert budget.memory_budget_mb() == (777, "GRADVIZ_MEMORY_MB")
    monkeypatch.setenv("GRADVIZ_SESSION_MEMORY_MB", "333")
    with session_budget():
        assert budget.memory_budget_mb()[0] == 333
    assert budget.memory_budget_mb()[0] == 777  # only within the block


@pytest.mark.slow
def test_the_cli_prints_the_chosen_batch(monkeypatch, capsys, tmp_path):
    from gradviz.cli import main
    from gradviz.models import load_model

    monkeypatch.setenv("GRADVIZ_MEMORY_MB", "150")
    rc = main(["score", "--id", "mnist", "--ood", "noise-uniform", "--limit", "30", "--methods", "msp,grad_l2",
               "--out", str(tmp_path), "--cache", "none"])
    assert rc == 0
    err = capsys.readouterr().err
    expected = plan_batch(load_model("mnist-cnn"), "gradients", "scoring", n=30)
    assert expected.batch < 30  # the budget, not the set, decides here
    assert f"batch {expected.batch} for 'scoring' (mnist-cnn at 1×28×28" in err and "budget 150 MB" in err


_PEAK = textwrap.dedent("""
    import ctypes, gc, json, sys, torch, torchvision
    sys.path.insert(0, {root!r})
    from gradviz.models import GradvizModel, ModelCard
    from gradviz.methods.registry import resolve_methods
    from gradviz.scoring import score_images
    from gradviz.runtime.budget import plan_batch

    def kib(field):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

    torch.manual_seed(0)
    card = ModelCard(name="resnet18", architecture="resnet18", input_size=(3, 64, 64), mean=(0.5,) * 3,
                     std=(0.25,) * 3, class_names=["a", "b"])
    model = GradvizModel(torchvision.models.resnet18(num_classes=2), card)
    runners = []
    for info in resolve_methods("all"):
        r = info.create()
        if info.needs_fit:
            r.fit(model, torch.rand(24, 3, 64, 64), torch.arange(24) % 2)
        runners.append(r)
    x = torch.rand(48, 3, 64, 64)
    score_images(model, x[:1], runners)  # kernels and allocator warm, as a real run after its fits
    gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
    open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current RSS
    before = kib("VmRSS:")
    score_images(model, x, runners)
    print(json.dumps({{"peak_mb": (kib("VmHWM:") - before) / 1024,
                      "batch": plan_batch(model, "gradients", n=48).batch}}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak accounting")
def test_a_real_scoring_pass_stays_within_its_budget(tmp_path):
    budget_mb = 320
    run = subprocess.run([sys.executable, "-c", _PEAK.format(root=str(ROOT))], capture_output=True, text=True,
                         timeout=600, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path),
                                           "GRADVIZ_CACHE_DIR": str(tmp_path), "GRADVIZ_MEMORY_MB": str(budget_mb)})
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert 1 < out["batch"] < 48  # the budget split the 48 images into several batches
    assert 0 < out["peak_mb"] <= budget_mb * 0.9, out  # the plan is an upper bound, with margin


def test_the_probe_reads_shapes_and_falls_back_to_one_real_image(monkeypatch):
    model = _resnet(48)
    fake = budget.activation_bytes(model)
    budget._PROFILES.clear()
    import torch._subclasses.fake_tensor as fake_tensor

    def broken(*args, **kwargs):
        raise RuntimeError("no fake kernel")

    monkeypatch.setattr(fake_tensor, "FakeTensorMode", broken)
    assert budget.activation_bytes(model) == fake  # the same bytes, counted on a real image


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_model_is_planned_for_the_gpus_memory(monkeypatch):
    from gradviz.scoring import score_images

    monkeypatch.delenv("GRADVIZ_MEMORY_MB", raising=False)
    model = _resnet(64).to("cuda")
    free = budget.cuda_free_mb("cuda")
    plan = plan_batch(model, "gradients", "scoring", n=4096)
    assert "MB free on cuda" in plan.source and plan.budget_mb <= free
    monkeypatch.setenv("GRADVIZ_MEMORY_MB", "300")  # a smaller budget bounds the GPU's share too
    small = plan_batch(model, "gradients", "scoring", n=4096)
    assert (small.budget_mb, small.source) == (300, "GRADVIZ_MEMORY_MB") and 1 <= small.batch < plan.batch
    runners = [info.create() for info in resolve_methods(["msp", "grad_l2", "gradnorm"])]
    x = torch.rand(64, 3, 64, 64)
    score_images(model, x[:1], runners)  # kernels and the caching allocator warm
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    scores = score_images(model, x, runners)
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    assert len(scores["grad_l2"]) == 64 and 0 < peak_mb <= 300, peak_mb


def test_a_cuda_device_is_planned_for_its_free_memory_everywhere(monkeypatch):
    """The planner's CUDA arithmetic, with the GPU's free memory stubbed (runs without a GPU)."""
    import contextvars

    from gradviz.runtime import ledger

    monkeypatch.setattr(budget, "cuda_free_mb", lambda device: 10_000)
    monkeypatch.setattr(ledger, "_LEDGERS", {})
    monkeypatch.delenv("GRADVIZ_MEMORY_MB", raising=False)
    monkeypatch.delenv("GRADVIZ_SERVER_MEMORY_MB", raising=False)
    assert budget.memory_budget_mb(torch.device("cuda")) == (8000, "80% of the 10,000 MB free on cuda")
    monkeypatch.setenv("GRADVIZ_MEMORY_MB", "3000")
    assert budget.memory_budget_mb(torch.device("cuda:1")) == (3000, "GRADVIZ_MEMORY_MB")

    def web(session_mb):
        with session_budget(session_mb):
            return budget.memory_budget_mb(torch.device("cuda"))

    assert contextvars.copy_context().run(web, 2048)[0] == 2048  # a session's budget bounds its GPU passes too
    monkeypatch.setenv("GRADVIZ_SERVER_MEMORY_MB", "1500")  # and the server's, on the GPU as on the CPU
    mb, source = contextvars.copy_context().run(web, 2048)
    assert mb == 1500 and "the server's budget for all sessions (GRADVIZ_SERVER_MEMORY_MB)" == source
    assert ledger.server_ledger("cuda").budget_mb == 1500 and ledger.server_ledger("cpu").budget_mb == 1500
    assert ledger.server_ledger("cuda") is not ledger.server_ledger("cpu")  # one ledger per memory


def test_explaining_a_gradient_score_plans_for_its_second_order_graph(resnets):
    from gradviz.models import load_model

    for model in (load_model("mnist-cnn"), resnets[64]):
        cls = plan_batch(model, "backward", "saliency of the class", budget_mb=2000)
        grad = plan_batch(model, "second_order", "saliency of grad_l2", budget_mb=2000)
        assert 1 <= grad.batch < cls.batch and grad.per_sample_mb > 3 * cls.per_sample_mb, (grad, cls)
    # measured (benchmarks/bench_explain_memory.py): ~192 MB per sample for grad_l2's saliency on ResNet-18 at 64²
    assert plan_batch(resnets[64], "second_order", budget_mb=2000).per_sample_mb > 192
    assert "double-backprop passes" in pytest.raises(GradvizError, plan_batch, resnets[64], "second_order",
                                                     budget_mb=150).value.args[0]


@pytest.mark.parametrize("name", ["mnist-cnn", "mnist-vit"])
def test_a_scored_batch_leaves_no_tensors_for_the_cyclic_collector(name):
    """Each batch's graph and activations go when the batch does, by reference counting: a pass left in a
    reference cycle waits for Python's cyclic collector, and a run holds several batches' graphs at once
    (ResNet-50 at 224², batch 3: 256 MB per batch, GBs over a long run)."""
    import gc

    from gradviz.methods.registry import ModelOutputs, resolve_methods
    from gradviz.models import load_model
    from gradviz.scoring import make_runners

    model = load_model(name)
    runners = make_runners(model, [i for i in resolve_methods("all") if not i.needs_fit], {}, "mnist:train", 0)
    warm = ModelOutputs.from_model(model, torch.rand(3, 1, 28, 28), keep_graph=True)
    for r in runners:  # once per model: the engine's folded twin, its traced code
        r.score(warm)
    del warm
    gc.collect()
    gc.disable()  # from here on only reference counting frees anything, as between two automatic collections
    try:
        batch = ModelOutputs.from_model(model, torch.rand(3, 1, 28, 28), keep_graph=True)
        for r in runners:
            r.score(batch)
        del batch
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        # the batch's tensors (a module another test left to a cache, evicted meanwhile, would show as Parameters)
        left = [o for o in gc.garbage if isinstance(o, torch.Tensor) and not isinstance(o, torch.nn.Parameter)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == [], f"{len(left)} tensors of the batch were left in reference cycles"


@pytest.mark.parametrize("entry", ["score_images", "inspect_images"])
def test_each_batch_is_gone_before_the_next_batch_s_forward(monkeypatch, entry):
    """A loop that rebinds its batch keeps the previous batch's graph alive through the next forward: two
    graphs at the peak (ResNet-50 at 224², grad_l2 at batch 3: 632 MB above the model instead of 480)."""
    import gc
    import weakref

    from gradviz.analysis import samples
    from gradviz import scoring
    from gradviz.methods.registry import ModelOutputs, resolve_methods
    from gradviz.models import load_model

    model = load_model("mnist-cnn")
    runners = scoring.make_runners(model, resolve_methods(["grad_l2", "msp"]), {}, "mnist:train", 0)
    made: list[weakref.ref] = []
    alive_at_forward: list[int] = []
    original = ModelOutputs.from_model

    def from_model(*args, **kwargs):
        alive_at_forward.append(sum(r() is not None for r in made))
        out = original(*args, **kwargs)
        made.append(weakref.ref(out))
        return out

    monkeypatch.setattr(ModelOutputs, "from_model", staticmethod(from_model))
    x = torch.rand(9, 1, 28, 28)
    gc.collect()
    gc.disable()  # only reference counting frees a batch here
    try:
        if entry == "score_images":
            scoring.score_images(model, x, runners, batch_size=3)
        else:
            monkeypatch.setattr("gradviz.runtime.budget.batch_size_for", lambda *a, **k: 3)
            samples.inspect_images(model, x, runners)
    finally:
        gc.enable()
    assert len(made) == 3 and alive_at_forward == [0, 0, 0], alive_at_forward
