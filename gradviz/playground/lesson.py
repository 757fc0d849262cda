"""The playground's guided exercise: four steps a teacher can follow with a class, and what to look for.

What each step says to look for was checked on the bundled ``mnist-cnn`` against its 1,000 ID test digits
(a drawn 3 as in ``benchmarks/bench_playground.py``; percentiles move a little with the drawing, the
direction does not): the 3 is predicted 3 with p ≈ 1.00 and sits at the 3rd–50th percentile of most
scores; a scribble still gets a digit with p ≈ 0.98 while Mahalanobis and GAIA put it above ~98 % of the
digits; rotating the 3, every score but confounding rises and the prediction flips near 70° (3 → 7 → 9 →
8); adding noise, MSP, energy, GradNorm and the grad_* norms fall to the 0th percentile (the model is
*more* confident on noise than on any digit) while Mahalanobis, GAIA and confounding go to 100 %.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Step", "EXERCISE", "exercise_markdown"]


@dataclass(frozen=True)
class Step:
    do: str
    look_for: str


EXERCISE = [
    Step("**Draw a 3** on the canvas (thick strokes, like a felt pen).",
         "The prediction is 3 with a probability near 1, and most gauges stay short: the drawing looks like the "
         "training digits. The black line in each histogram sits inside the blue ID distribution, and the black "
         "per-layer gradient profile runs inside the blue ID band."),
    Step("**Reset the canvas and draw a scribble** (a tangle of lines that is no digit).",
         "The model still names *some* digit, often with p > 0.9. Yet most gauges jump to the top: this image is "
         "more uncertain than nearly every real digit. Compare the families: output scores (blue), feature "
         "distance (green), gradients (red). The gradient profile leaves the ID band."),
    Step("**Draw the 3 again, pick the path 'Rotate 0–180°' and click the step at 90°.**",
         "As the digit turns, the prediction flips (3 → 7 → 9 …) and almost every score rises with it: rotation "
         "is an easy case, everyone notices. The clicked step is loaded into the gauges and histograms above."),
    Step("**Switch the path to 'Add Gaussian noise'** (or 'Invert', or 'Morph into uniform noise').",
         "Now the scores split. MSP and energy (blue) fall to the bottom, and so do the gradient norms of the "
         "predicted label (GradNorm, grad_*): the model is *more* confident on noise than on real digits, and a "
         "confident prediction has a small gradient. Mahalanobis, GAIA and the confounding-label gradient climb "
         "to 100 %. The lesson: confidence is not evidence that an input resembles the training data, and "
         "gradient methods differ in what they look at."),
]


def exercise_markdown(steps: list[Step] = EXERCISE) -> str:
    """The exercise as a numbered Markdown list, each step with what to look for."""
    return "\n".join(f"{i}. {s.do}  \n   *Look for:* {s.look_for}" for i, s in enumerate(steps, 1))
