"""Can this map be trusted: the randomisation check flags a map that ignores the model and passes saliency of the
trained model; deletion/insertion curves and the Gini sparseness agree with direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from gradviz.data import load_dataset
from gradviz.errors import GradvizError
from gradviz.explain.sanity import (deletion_insertion, gini_sparseness, randomization_check, randomized_copy,
                            saliency_explainer, top_layers)


def edge_detector(model, x, target):
    """An "attribution" that never looks at the model: the Sobel gradient magnitude of the image."""
    k = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])[None, None]
    img = x.sum(1, keepdim=True)
    return (F.conv2d(img, k, padding=1) ** 2 + F.conv2d(img, k.transpose(-1, -2), padding=1) ** 2).sqrt()[:, 0]


@pytest.fixture(scope="module")
def digits(bundled_model):
    return load_dataset("mnist", bundled_model.card, limit=6).images


def test_randomisation_flags_a_map_that_ignores_the_model(bundled_model, digits):
    r = randomization_check(bundled_model, digits, edge_detector, n_layers=2)
    assert r.flagged.all() and np.allclose(r.final, 1.0)


def test_randomisation_passes_saliency_of_the_trained_model(bundled_model, digits):
    r = randomization_check(bundled_model, digits, saliency_explainer, n_layers=3)
    assert r.similarity.shape == (3, 6) and r.layers[0] == "fc"
    assert not r.flagged.any(), r.final
    # the similarity is the Spearman correlation of |map| computed directly on the re-initialised copy
    target = bundled_model(digits).argmax(-1)
    before = saliency_explainer(bundled_model, digits, target)
    after = saliency_explainer(randomized_copy(bundled_model, r.layers, seed=0), digits, target)
    assert r.final[0] == pytest.approx(spearmanr(before[0].reshape(-1).abs(), after[0].reshape(-1).abs()).statistic)


def test_randomised_copy_leaves_the_shared_model_alone(bundled_model):
    digest = bundled_model.digest
    state = {k: v.clone() for k, v in bundled_model.state_dict().items()}
    copy = randomized_copy(bundled_model, top_layers(bundled_model, 2))
    assert not torch.equal(copy.net.fc.weight, bundled_model.net.fc.weight)
    assert all(torch.equal(v, bundled_model.state_dict()[k]) for k, v in state.items())
    assert bundled_model.digest == digest
    with pytest.raises(GradvizError, match="randomise between 1 and"):
        top_layers(bundled_model, 0)


def test_deletion_insertion_curves_match_a_direct_loop(bundled_model, digits):
    x = digits[:1]
    t = int(bundled_model(x).argmax())
    prob = lambda imgs: bundled_model(imgs).softmax(-1)[:, t]  # noqa: E731
    att = saliency_explainer(bundled_model, x, torch.tensor([t]))[0]
    curves = deletion_insertion(prob, x, att, steps=7)
    order = att.reshape(-1).argsort(descending=True, stable=True)
    for k, frac in enumerate(curves.fractions):
        c = int(np.ceil(frac * 784))
        d, i = x.clone().reshape(-1), torch.zeros(784)
        d[order[:c]] = 0
        i[order[:c]] = x.reshape(-1)[order[:c]]
        with torch.no_grad():
            assert curves.deletion[k] == pytest.approx(prob(d.reshape(1, 1, 28, 28)).item(), abs=1e-6)
            assert curves.insertion[k] == pytest.approx(prob(i.reshape(1, 1, 28, 28)).item(), abs=1e-6)
    assert curves.deletion_auc == pytest.approx(np.trapezoid(curves.deletion, curves.fractions))
    # saliency's order removes the evidence faster than the reverse order does
    worst = deletion_insertion(prob, x, -att, steps=7)
    assert curves.deletion_auc < worst.deletion_auc


def test_gini_sparseness_limits_and_formula():
    assert gini_sparseness(np.ones((4, 4))) == pytest.approx(0.0)
    one = np.zeros((4, 4))
    one[1, 2] = -3.0
    assert gini_sparseness(one) == pytest.approx(15 / 16)
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 5, 5))
    a = np.sort(np.abs(maps[1]).reshape(-1))
    n = a.size
    direct = sum((2 * (k + 1) - n - 1) * a[k] for k in range(n)) / (n * a.sum())
    assert gini_sparseness(torch.tensor(maps))[1] == pytest.approx(direct)
    assert gini_sparseness(np.zeros((2, 3, 3))).tolist() == [0.0, 0.0]


def test_bad_inputs_are_clear(bundled_model, digits):
    prob = lambda imgs: bundled_model(imgs).softmax(-1)[:, 0]  # noqa: E731
    with pytest.raises(GradvizError, match="one image"):
        deletion_insertion(prob, digits, torch.zeros(28, 28))
    with pytest.raises(GradvizError, match="the map has 10 values"):
        deletion_insertion(prob, digits[:1], torch.zeros(10))
    with pytest.raises(GradvizError, match="threshold must be"):
        randomization_check(bundled_model, digits[:1], edge_detector, threshold=2)


def test_map_checks_table_for_the_class_and_for_a_score(bundled_model, digits):
    from gradviz.explain.sanity import map_checks

    x = digits[:1]
    table = map_checks(bundled_model, x, ["saliency", "gradcam"], steps=5)
    assert list(table["method"]) == ["saliency", "gradcam"]
    assert table[["deletion_auc", "insertion_auc"]].stack().between(0, 1).all()  # class probabilities
    assert table["sparseness"].between(0, 1).all() and table["flagged"].dtype == bool
    score = map_checks(bundled_model, x, ["saliency"], score="energy", steps=5)
    assert score["deletion_auc"].iloc[0] < 0  # the energy score itself (negative on digits), not a probability
    assert not score["flagged"].iloc[0]
