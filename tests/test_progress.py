"""Progress with an ETA: the text names the pass and says the time left once a pass runs long; fits report
their batches through the scoring pass's callback."""

import pytest

import gradviz.scoring as scoring
from gradviz.methods import _fitting
from gradviz.models.zoo import random_model
from gradviz.runtime.progress import Eta, format_seconds, report, reporting
from gradviz.scoring import RunConfig, run


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_names_the_pass_and_says_the_time_left():
    clock = Clock()
    eta = Eta(clock)
    assert eta.text(0, 125, "fitting mahalanobis") == "fitting mahalanobis: 0/125 batches"
    clock.now += 12.0  # 40 batches in 12 s: 85 left at 0.3 s each
    assert eta.text(40, 125, "fitting mahalanobis") == "fitting mahalanobis: 40/125 batches, ~26 s left"
    clock.now += 100.0
    assert eta.text(125, 125, "fitting mahalanobis") == "fitting mahalanobis: 125/125 batches"  # done: no ETA


def test_quick_passes_get_no_eta_and_a_rerun_is_timed_afresh():
    clock = Clock()
    eta = Eta(clock)
    eta.text(0, 10, "scoring mnist")
    clock.now += 0.1
    assert eta.text(1, 10, "scoring mnist") == "scoring mnist: 1/10 batches"  # ~1 s in all: not worth an ETA
    clock.now += 500.0  # a later run of the same pass starts at 0 again
    eta.text(0, 10, "scoring mnist")
    clock.now += 60.0
    assert eta.text(5, 10, "scoring mnist").endswith(", ~60 s left")  # not ~9 min: the old start is gone


@pytest.mark.parametrize("seconds, text", [(0.2, "~1 s"), (30, "~30 s"), (150, "~2 min"), (3900, "~1 h 5 min")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_report_goes_to_the_installed_callback_only():
    seen = []
    report(1, 2)  # nobody listening: nothing happens
    with reporting(lambda d, t, label: seen.append((d, t, label)), "fitting knn"):
        report(1, 2)
    report(2, 2)
    assert seen == [(1, 2, "fitting knn")]


def test_a_fit_reports_its_batches_under_the_fitting_label(monkeypatch):
    """With a budget that splits the fit set, the fit's batches arrive one by one, named, before scoring."""
    scoring._FITTED.clear()
    _fitting._OUTPUTS.clear()
    monkeypatch.setenv("GRADVIZ_MEMORY_MB", "70")  # ~8 digits per forward batch of mnist-cnn
    real_load = scoring.load_dataset
    monkeypatch.setattr(scoring, "load_dataset", lambda spec, card, limit=None, seed=0, **kw: real_load(
        spec, card, limit=64 if spec == "mnist:train" else limit, seed=seed, **kw))
    seen = []
    cfg = RunConfig(id="mnist", ood=[], methods=["knn"], limit=20, params={"knn": {"k": 5}})
    run(cfg, progress=lambda d, t, label: seen.append((d, t, label)), model=random_model("mnist-cnn"))
    fit = [(d, t) for d, t, label in seen if label == "fitting knn on mnist:train (once)"]
    batches = [(d, t) for d, t in fit if t > 1]
    total = batches[0][1]
    assert total >= 4 and [d for d, _ in batches] == list(range(total + 1))
    assert fit[-1] == (1, 1)  # then closed
    scored = [label for _, _, label in seen if label.startswith("scoring ")]
    assert scored and scored[0] == "scoring mnist"
    assert seen.index(next(s for s in seen if s[2] == "scoring mnist")) > seen.index(next(s for s in seen if s[1] > 1))
