"""gradviz.playground: MNIST-style preprocessing, transformation paths, the live scoring and its figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradviz.data.mnist import mnist_split
from gradviz.errors import GradvizError
from gradviz.methods.registry import get_method, resolve_methods
from gradviz.plots import figures as plots
from gradviz.playground import PATHS, build_reference, canvas_to_input, method_family, mnist_style, score_batch, walk
from gradviz.playground import figures
from gradviz.playground.preprocess import MIN_INK_COVER, photo_to_ink, photo_to_input
from gradviz.scoring import make_runner, score_images

UNFITTED = ["msp", "energy", "gradnorm", "gaia_z", "grad_l2", "confounding"]


def digits(n: int = 8) -> torch.Tensor:
    return mnist_split("test")[0][:n]  # (n, 1, 28, 28) in [0, 1]


def centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
    return float((yy * a).sum() / a.sum()), float((xx * a).sum() / a.sum())


# --------------------------------------------------------------------------- preprocessing


def test_mnist_style_box_aspect_and_centre_of_mass():
    yy, xx = np.mgrid[:280, :280]
    # a 200 × 50 ellipse, right edge
    ink = ((((yy - 120) / 100.0) ** 2 + ((xx - 225) / 25.0) ** 2) <= 1).astype(np.float32)
    out = mnist_style(ink)
    assert out.shape == (28, 28)
    rows, cols = np.flatnonzero(out.max(1) > 0.05), np.flatnonzero(out.max(0) > 0.05)
    assert rows[-1] - rows[0] + 1 in (20, 21)  # longer side scaled to the 20 px box (+1 for Lanczos's edge)
    assert 4 <= cols[-1] - cols[0] + 1 <= 7  # aspect kept
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 0.5 + 1e-6 and abs(cx - 14) <= 0.5 + 1e-6  # centred by mass, integer shift
    assert ((out > 0.05) & (out < 0.95)).any()  # anti-aliased edges, not a binary image


def test_mnist_digit_drawn_large_comes_back_as_itself():
    # an MNIST digit upscaled to the canvas size and preprocessed is close to the original: the
    # preprocessing is the one that made the digits (20 px box, centre of mass at the centre)
    # (a few digits are not 20 px tall in MNIST itself: those are rescaled, hence the quantiles)
    x = digits(64)
    big = F.interpolate(x, size=(280, 280), mode="bilinear", align_corners=False)
    card = type("Card", (), {"input_size": (1, 28, 28)})()
    corr = [np.corrcoef(orig[0].numpy().ravel(), canvas_to_input(drawn.numpy(), card)[0, 0].numpy().ravel())[0, 1]
            for orig, drawn in zip(x, big)]
    assert np.median(corr) > 0.95 and np.percentile(corr, 10) > 0.85


def test_blank_drawing_gives_none_and_grey_repeats_over_channels():
    card3 = type("Card", (), {"input_size": (3, 32, 32)})()
    assert canvas_to_input(np.zeros((1, 280, 280), np.float32), card3) is None
    ink = np.zeros((3, 100, 100), np.float32)
    ink[:, 30:70, 45:55] = 1.0
    x = canvas_to_input(ink, card3)
    assert x.shape == (1, 3, 32, 32) and torch.equal(x[0, 0], x[0, 2])


def test_photo_dark_ink_on_paper_is_inverted_and_thin_strokes_thickened():
    rng = np.random.default_rng(0)
    photo = np.clip(0.8 + rng.normal(0, 0.02, (300, 400)), 0, 1).astype(np.float32)
    photo[60:240, 198:201] = 0.1  # a thin dark pen stroke: 3 px of a 180 px tall '1'
    photo[60:63, 150:200] = 0.1
    ink = photo_to_ink(photo)
    assert ink[0, 0] == 0 and ink[150, 199] > 0.9  # paper -> 0, pen -> 1
    rows, cols = np.flatnonzero(ink.max(1) > 0.5), np.flatnonzero(ink.max(0) > 0.5)
    assert (ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] > 0.5).mean() >= MIN_INK_COVER
    card = type("Card", (), {"input_size": (1, 28, 28)})()
    assert photo_to_input(np.full((1, 50, 50), 0.7, np.float32), card) is None  # nothing stands out


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("kind", list(PATHS))
def test_path_is_one_batch_of_steps_with_monotone_severity(kind):
    x = digits(2)
    steps = 23
    w = walk(x[0], kind, steps, target=x[1] if PATHS[kind].needs_target else None, seed=3)
    assert w.images.shape == (steps, 1, 28, 28)
    assert len(w.severity) == len(w.values) == len(w.labels()) == steps
    assert w.severity[0] == 0 and w.severity[-1] == 1 and np.all(np.diff(w.severity) > 0)
    assert np.all(np.diff(w.values) > 0) and w.values[-1] == PATHS[kind].end
    assert torch.allclose(w.images[0], x[0], atol=1e-5)  # step 0 is the image itself
    assert w.images.min() >= 0 and w.images.max() <= 1
    dist = (w.images - x[0]).flatten(1).norm(dim=1).numpy()
    assert dist[-1] > 1.0  # the end is far from the start
    if kind not in ("rotate", "blur"):  # the same change applied more strongly at each step
        assert np.all(np.diff(dist) >= -1e-5)


def test_path_ends_are_what_they_say():
    x, t = digits(2)
    assert torch.allclose(walk(x, "rotate", 5).images[-1], torch.flip(x, dims=(-2, -1)), atol=1e-4)
    assert torch.allclose(walk(x, "invert", 5).images[-1], 1 - x, atol=1e-6)
    assert torch.allclose(walk(x, "to_image", 5, target=t).images[-1], t, atol=1e-6)
    flat = walk(x, "contrast", 5).images[-1]
    assert torch.allclose(flat, torch.full_like(flat, float(x.mean())), atol=1e-5)
    blur = walk(x, "blur", 5).images
    assert blur[-1].max() < 0.6 * blur[0].max()  # the strokes are smeared out
    assert torch.equal(walk(x, "noise", 9, seed=1).images, walk(x, "noise", 9, seed=1).images)  # deterministic


def test_bad_path_requests_are_clear_errors():
    x = digits(1)
    with pytest.raises(GradvizError, match="unknown path"):
        walk(x, "melt", 20)
    with pytest.raises(GradvizError, match="steps"):
        walk(x, "rotate", 1)
    with pytest.raises(GradvizError, match="steps"):
        walk(x, "rotate", 500)
    with pytest.raises(GradvizError, match="target"):
        walk(x, "to_image", 20)
    with pytest.raises(GradvizError, match="one image"):
        walk(digits(3), "rotate", 20)


# --------------------------------------------------------------------------- live scoring


@pytest.fixture(scope="module")
def live(bundled_model):
    """Runners for a few unfitted methods, a scores table of 64 ID digits + 32 noise images, and its reference."""
    import pandas as pd

    from gradviz.scoring import layer_table
    from gradviz.data import ImageSet

    infos = resolve_methods(UNFITTED)
    runners = [make_runner(bundled_model, i) for i in infos]
    ids, noise = digits(64), torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    frames = []
    for spec, role, x in (("mnist", "id", ids), ("noise-uniform", "ood", noise)):
        s = score_images(bundled_model, x, runners)
        frames.append(pd.DataFrame({"dataset": spec, "role": role, **{r.info.name: s[r.info.name] for r in runners}}))
    scores = pd.concat(frames, ignore_index=True)
    table = layer_table(bundled_model, ImageSet("mnist", ids, np.zeros(64, np.int64)))
    return runners, scores, build_reference(scores, infos, "mnist", table)


def test_live_scores_match_the_scoring_pipeline_and_are_batch_independent(bundled_model, live):
    runners, _, ref = live
    x = walk(digits(1), "to_noise", 6).images
    batch = score_batch(bundled_model, x, runners, ref)
    pipeline = score_images(bundled_model, x, runners)
    for r in runners:
        np.testing.assert_allclose(batch.wide("score")[r.info.name].to_numpy(), pipeline[r.info.name], rtol=1e-4,
                                   atol=1e-6)
    single = score_batch(bundled_model, x[3:4], runners, ref)
    np.testing.assert_allclose(single.wide("score").iloc[0].to_numpy(), batch.wide("score").iloc[3].to_numpy(),
                               rtol=1e-3, atol=1e-5)
    assert (batch.prediction == pipeline["prediction"]).all()


def test_percentiles_place_id_samples_by_rank(bundled_model, live):
    runners, scores, ref = live
    id_rows = scores[scores["role"] == "id"]
    for m in ref.methods:
        v = np.sort(id_rows[m].to_numpy())
        assert ref.percentiles(m, [v[0]])[0] == 0
        assert ref.percentiles(m, [v[-1] + 1])[0] == 100
        assert abs(ref.percentiles(m, [v[32]])[0] - 50) <= 100 / 64
    noise = score_batch(bundled_model, torch.rand(4, 1, 28, 28), runners, ref, layer_profile=False)
    assert (noise.wide()["gaia_z"] == 100).all()  # uniform noise is beyond every digit for GAIA (see RESULTS.md)


def test_layer_profile_of_a_sample_matches_layer_gradient_stats(bundled_model, live):
    from gradviz.engine import layer_gradient_stats

    runners, _, ref = live
    x = digits(3)
    rep = score_batch(bundled_model, x, runners[:1], ref)  # msp alone: the profile needs its own backward
    stats = layer_gradient_stats(bundled_model, x)
    np.testing.assert_allclose(rep.profile("l2", 2).to_numpy(), stats.get("l2")[2].double().numpy(), rtol=1e-4)
    assert list(rep.profile("l2").index) == list(ref.bands["l2"]["layer"].unique())
    assert score_batch(bundled_model, x, runners, ref, layer_profile=False).profile("l2") is None


def test_family_comes_from_the_registry_with_kind_as_fallback():
    info = get_method("msp")
    assert method_family(info) == (getattr(info, "family", None) or getattr(info, "kind", None))

    class WithFamily:
        family, kind = "density", "feature"

    class WithoutFamily:
        kind = "gradient"

    assert method_family(WithFamily()) == "density" and method_family(WithoutFamily()) == "gradient"
    assert method_family(object()) == "other"


# --------------------------------------------------------------------------- figures


def test_figures_colour_by_family_mark_the_sample_and_carry_step_indices(bundled_model, live):
    runners, _, ref = live
    rep = score_batch(bundled_model, digits(1), runners, ref)
    fig = figures.percentile_gauges(rep.scores, "mnist")
    bars = {m: t.marker.color for t in fig.data[1:] for m in t.y}
    fams = dict(zip(rep.scores["method"], rep.scores["family"]))
    assert set(bars) == set(UNFITTED)
    for a in UNFITTED:
        for b in UNFITTED:
            assert (bars[a] == bars[b]) == (fams[a] == fams[b])
    sample = dict(zip(rep.scores["method"], rep.scores["score"]))
    hist = figures.marker_histograms(ref, sample)
    hist = type(hist)(hist.to_dict())  # validates every trace (the per-stroke build skips re-validating the bars)
    lines = [t for t in hist.data if t.name == "this image"]
    assert len(lines) == len(ref.methods)
    shift = {m: 0.0 if m in ref.log_axis else plots.shown_score(m)[1] for m in ref.methods}  # MSP shown as 1 − MSP
    assert {float(t.x[0]) for t in lines} == {float(ref.hist_axis(m, [sample[m]])[0]) + shift[m] for m in ref.methods}
    w = walk(digits(1), "rotate", 21)
    p = score_batch(bundled_model, w.images, runners, ref, layer_profile=False)
    path = figures.path_figure(p.wide(), w.values, w.labels(), [str(k) for k in p.prediction], p.probs.max(1),
                               figures.method_shades(ref.methods, ref.families), "rotation (°)", "mnist", selected=10)
    assert all([int(c[0]) for c in t.customdata] == list(range(21)) for t in path.data)
    assert len(path.data) == len(UNFITTED) + 1
