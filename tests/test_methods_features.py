"""KNN, ViM, Relative Mahalanobis, ReAct: each equal to a direct per-sample implementation (NumPy loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from gradviz.errors import MethodError
from gradviz.methods import ModelOutputs, get_method


@pytest.fixture
def fitted_data(tiny_model):
    """(model, fit images, fit labels, test batch) with float64 NumPy features of both."""
    g = torch.Generator().manual_seed(5)
    images, test = torch.rand(120, 1, 28, 28, generator=g), torch.rand(7, 1, 28, 28, generator=g)
    labels = np.arange(120) % 4
    return tiny_model, images, labels, ModelOutputs.from_model(tiny_model, test)


def _features(model, x) -> np.ndarray:
    return model.logits_and_features(x)[1].double().numpy()


def test_knn_matches_numpy_loop_and_chunks_do_not_change_it(fitted_data):
    model, images, labels, batch = fitted_data
    bank = _features(model, images)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    want = []
    for h in batch.features.double().numpy():  # reference: one sample at a time
        z = h / np.linalg.norm(h)
        want.append(np.sort(np.linalg.norm(bank - z, axis=1))[9])  # the 10th nearest
    for chunk in (4096, 7):
        det = get_method("knn").create(k=10, chunk=chunk).fit(model, images, labels)
        np.testing.assert_allclose(det.score(batch).numpy(), want, rtol=1e-4, atol=1e-6)


def test_knn_caps_k_at_a_small_fit_set(fitted_data):
    """k = 50 on 10 fit images uses k = 10: the distance to the farthest of them (numpy reference)."""
    model, images, labels, batch = fitted_data
    det = get_method("knn").create().fit(model, images[:10], labels[:10])
    bank = _features(model, images[:10])
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    z = batch.features.double().numpy()
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    want = np.linalg.norm(z[:, None] - bank[None], axis=-1).max(1)
    assert det.state.k == 50 and det.state.k_ == 10
    np.testing.assert_allclose(det.score(batch).numpy(), want, rtol=1e-4, atol=1e-6)
    with pytest.raises(MethodError, match="k must be"):
        get_method("knn").impl(k=0)


def test_vim_matches_numpy_loop(fitted_data):
    model, images, labels, batch = fitted_data
    feats = _features(model, images)
    w = model.head.weight.detach().double().numpy()
    b = model.head.bias.detach().double().numpy()
    origin = -np.linalg.pinv(w) @ b
    # principal subspace from an SVD of the centred features (the method uses an eigendecomposition)
    _, _, vt = np.linalg.svd(feats - origin, full_matrices=False)
    dim = 32  # the paper's rule for D = 64
    resid = np.eye(64) - vt[:dim].T @ vt[:dim]  # projector onto what the principal subspace misses
    alpha = (feats @ w.T + b).max(1).mean() / np.mean([np.linalg.norm(resid @ (h - origin)) for h in feats])
    want = []
    for h, z in zip(batch.features.double().numpy(), batch.logits.double().numpy()):
        want.append(alpha * np.linalg.norm(resid @ (h - origin)) - logsumexp(z))
    got = get_method("vim").create().fit(model, images, labels).score(batch)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_relative_mahalanobis_matches_numpy_loop(fitted_data):
    model, images, labels, batch = fitted_data
    feats = _features(model, images)
    means = np.stack([feats[labels == c].mean(0) for c in range(4)])
    prec = np.linalg.pinv(np.cov((feats - means[labels]).T, bias=True))
    mean0 = feats.mean(0)
    prec0 = np.linalg.pinv(np.cov((feats - mean0).T, bias=True))
    want = []
    for h in batch.features.double().numpy():
        md0 = (h - mean0) @ prec0 @ (h - mean0)
        want.append(min((h - mu) @ prec @ (h - mu) - md0 for mu in means))
    got = get_method("rmds").create(covariance="empirical").fit(model, images, labels).score(batch)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_react_matches_per_sample_head_on_clipped_features(fitted_data):
    model, images, labels, batch = fitted_data
    threshold = np.percentile(_features(model, images), 80)
    want = []
    with torch.no_grad():
        for h in batch.features:  # one sample at a time through the head
            want.append(-torch.logsumexp(model.head(h.clamp_max(float(threshold))[None])[0], -1).item())
    got = get_method("react").create(percentile=80).fit(model, images, labels).score(batch)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(MethodError, match="percentile"):
        get_method("react").impl(percentile=0)


def test_fitted_feature_methods_share_one_forward_of_the_fit_set(fitted_data):
    from gradviz.runtime.budget import activation_bytes

    model, images, labels, _ = fitted_data
    activation_bytes(model)  # the memory planner's one-image probe (memoised), not a pass over the fit set
    calls = []
    handle = model.net.register_forward_hook(lambda *_: calls.append(1))
    try:
        for name in ("knn", "vim", "rmds", "react", "mahalanobis"):
            get_method(name).create().fit(model, images.clone(), labels)
    finally:
        handle.remove()
    assert len(calls) == 1  # one chunk of 120 images, read by all five
