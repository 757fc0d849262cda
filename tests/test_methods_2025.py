"""Gradient Short-Circuit and PRO, each against a direct per-sample float64 implementation (a second forward pass
of the head for GSC, one backward per sample and step for PRO), and an AUROC check where the answer is known."""

from __future__ import annotations

import pytest
import torch

from gradviz.errors import MethodError
from gradviz.methods import ModelOutputs, get_method, run_method
from gradviz.analysis.metrics import auroc
from gradviz.models.zoo import random_model


@pytest.fixture
def model64():
    return random_model("mnist-cnn", num_classes=10, input_size=(1, 28, 28), seed=0).double()


@pytest.fixture
def images():
    return torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


# --------------------------------------------------------------------------- Gradient Short-Circuit


def _gsc_direct(model, x: torch.Tensor, ratio: float, rank_by: str, score: str) -> torch.Tensor:
    """Per sample: g = ∇_h z_ŷ by autograd, zero the top-k coordinates, a SECOND forward of the head on h'."""
    out = []
    for xb in x:
        _, h = model.logits_and_features(xb[None])
        h = h[0].clone().requires_grad_(True)
        z = model.head(h)
        (g,) = torch.autograd.grad(z[z.argmax()], h)
        rank = g.abs() if rank_by == "gradient" else (g * h).abs()
        k = int(round(ratio * h.numel()))
        h2 = h.detach().clone()
        h2[rank.topk(k).indices] = 0.0
        with torch.no_grad():
            z2 = model.head(h2)
        out.append(-torch.logsumexp(z2, -1) if score == "energy" else -z2.softmax(-1).max())
    return torch.stack(out)


@pytest.mark.parametrize("ratio, rank_by, score", [(0.1, "gradient", "energy"), (0.25, "contribution", "energy"),
                                                   (0.05, "gradient", "msp")])
def test_gsc_matches_a_second_forward_of_the_short_circuited_features(model64, images, ratio, rank_by, score):
    batch = ModelOutputs.from_model(model64, images)
    got = get_method("gsc").impl(batch, ratio=ratio, rank_by=rank_by, score=score)
    torch.testing.assert_close(got, _gsc_direct(model64, images, ratio, rank_by, score), rtol=1e-10, atol=1e-12)


def test_gsc_with_nothing_short_circuited_is_the_energy(tiny_model, images):
    batch = ModelOutputs.from_model(tiny_model, images.float())
    torch.testing.assert_close(run_method("gsc", batch, ratio=0.0), run_method("energy", batch))
    assert not torch.allclose(run_method("gsc", batch), run_method("energy", batch))


def test_gsc_refuses_unknown_choices():
    with pytest.raises(MethodError, match="rank_by"):
        get_method("gsc").create(rank_by="hessian")
    with pytest.raises(MethodError, match="ratio"):
        get_method("gsc").create(ratio=1.5)


# --------------------------------------------------------------------------- PRO


def _confidence64(z: torch.Tensor, score: str) -> torch.Tensor:
    p = z.softmax(-1)
    return {"msp": p.max(), "energy": torch.logsumexp(z, -1), "entropy": (p * p.log()).sum()}[score]


def _pro_direct(model, x: torch.Tensor, epsilon: float, steps: int, score: str) -> torch.Tensor:
    """Per sample, as the authors' loop: a normalised input moved by ε·sign(∇ g) per step, the minimum g kept."""
    out = []
    for xb in x:
        xn = model.normalize(xb[None])  # the authors perturb the normalised input
        confs = []
        for _ in range(steps):
            xn = xn.detach().requires_grad_(True)
            g = _confidence64(model.net(xn)[0], score)
            (grad,) = torch.autograd.grad(g, xn)
            confs.append(g.detach())
            xn = xn - epsilon * grad.sign()
        with torch.no_grad():
            confs.append(_confidence64(model.net(xn)[0], score))
        out.append(-torch.stack(confs).min())
    return torch.stack(out)


@pytest.mark.parametrize("epsilon, steps, score", [(0.003, 1, "msp"), (0.01, 3, "energy"), (0.0014, 2, "entropy")])
def test_pro_matches_a_per_sample_float64_loop(model64, images, epsilon, steps, score):
    batch = ModelOutputs.from_model(model64, images)
    got = get_method("pro").impl(batch, epsilon=epsilon, steps=steps, score=score)
    torch.testing.assert_close(got, _pro_direct(model64, images, epsilon, steps, score), rtol=1e-9, atol=1e-12)


def test_pro_never_exceeds_the_unperturbed_uncertainty_and_more_steps_only_lower_it(tiny_model, images):
    """−min over the iterates: at least the plain score's uncertainty, and non-decreasing in the steps taken."""
    batch = ModelOutputs.from_model(tiny_model, images.float())
    plain = run_method("msp", batch)
    one, three = run_method("pro", batch, steps=1, epsilon=0.01), run_method("pro", batch, steps=3, epsilon=0.01)
    assert (one >= plain - 1e-7).all() and (three >= one - 1e-7).all() and (three > plain).any()
    torch.testing.assert_close(run_method("pro", batch, steps=0), plain)


def test_pro_separates_inputs_that_sit_near_a_decision_boundary():
    """Known answer: a linear 2-class model; 'ID' points far from the boundary keep their confidence under a
    small step, 'OOD' points close to it lose it: PRO ranks them apart (AUROC 1) where the step matters."""
    from gradviz.models import GradvizModel
    from gradviz.models.card import ModelCard

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.eye(4))
        net[1].bias.zero_()
        net[3].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]) * 20)
        net[3].bias.zero_()
    card = ModelCard(name="toy", architecture="toy", input_size=(1, 2, 2), mean=(0.0,), std=(1.0,),
                     class_names=["a", "b"])
    model = GradvizModel(net, card)
    g = torch.Generator().manual_seed(0)
    far = torch.rand(50, 1, 2, 2, generator=g) * 0.1 + torch.tensor([0.9, 0.0, 0.5, 0.5]).view(1, 1, 2, 2)
    near = torch.rand(50, 1, 2, 2, generator=g) * 0.1 + torch.tensor([0.5, 0.45, 0.5, 0.5]).view(1, 1, 2, 2)
    id_scores, ood_scores = (run_method("pro", ModelOutputs.from_model(model, x), epsilon=0.05, steps=2)
                             for x in (far, near))
    assert auroc(id_scores.numpy(), ood_scores.numpy()) == pytest.approx(1.0)


@pytest.fixture
def backwards(monkeypatch) -> list[bool]:
    """Every backward run on a batch's shared pass from now on (whether it asked for the input gradient)."""
    from gradviz.engine import GradientPass

    calls, real = [], GradientPass.output_grads

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("input_grad", False))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GradientPass, "output_grads", counted)
    return calls


def test_pro_msp_beside_grad_methods_steps_along_their_backward(model64, images, backwards):
    """PRO-MSP's step is −sign ∇ₓ(−log p_ŷ): scored with grad_* on the batch's shared pass it reads that input
    gradient off their one backward (no backward of its own) and still equals the float64 per-sample loop."""
    from gradviz.scoring import score_images

    want = _pro_direct(model64, images, 0.003, 1, "msp")
    together = score_images(model64, images, [get_method(n).create() for n in ("pro", "grad_l2")])
    assert backwards == [True]  # grad_l2's statistics, with the input gradient kept for PRO
    backwards.clear()
    alone = score_images(model64, images, [get_method("pro").create()])
    assert backwards == [True]  # PRO's own backward
    backwards.clear()
    entropy = score_images(model64, images, [get_method(n).create(**p) for n, p in (("pro", {"score": "entropy"}),
                                                                                   ("grad_l2", {}))])
    assert len(backwards) == 2  # another direction: a backward of its own
    for got in (together["pro"], alone["pro"]):
        torch.testing.assert_close(torch.from_numpy(got).double(), want.float().double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.from_numpy(entropy["pro"]).double(),
                               _pro_direct(model64, images, 0.003, 1, "entropy").float().double(), rtol=1e-6, atol=1e-7)


def _odin_direct(model, x: torch.Tensor, temperature: float, epsilon: float) -> torch.Tensor:
    """Per sample: its own backward of CE(z/T, ŷ), the signed step, the tempered MSP at x̃."""
    out = []
    for xb in x:
        xb = xb[None].clone().requires_grad_(True)
        z = model(xb) / temperature
        (g,) = torch.autograd.grad(-z.log_softmax(-1)[0, z.argmax()], xb)
        with torch.no_grad():
            out.append(-(model(xb - epsilon * g.sign()) / temperature).softmax(-1).amax())
    return torch.stack(out)


@pytest.mark.parametrize("temperature", [1000.0, 1.0])
def test_odin_on_two_classes_beside_grad_methods_steps_along_their_backward(images, backwards, temperature):
    """With two classes ODIN's ∂CE/∂z = (softmax(z/T) − e_ŷ)/T and grad_*'s p − e_ŷ are positive multiples of each
    other: ODIN reads its step's sign off grad_*'s backward and still equals its per-sample float64 loop. With ten
    classes it keeps a backward of its own."""
    from gradviz.scoring import score_images

    for classes, expected in ((2, [True]), (10, [False, True])):
        model = random_model("mnist-cnn", num_classes=classes, input_size=(1, 28, 28), seed=1).double()
        backwards.clear()
        got = score_images(model, images, [get_method("odin").create(temperature=temperature, epsilon=0.01),
                                           get_method("grad_l2").create()])
        assert backwards == expected, classes
        want = _odin_direct(model, images, temperature, 0.01)
        torch.testing.assert_close(torch.from_numpy(got["odin"]).double(), want.float().double(), rtol=1e-6,
                                   atol=1e-7)
