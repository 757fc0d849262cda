"""The teaching playground behind ``pages/playground.py``: draw or photograph a digit, score it live,
walk it along a transformation path. Plain data in and out, no Streamlit:

- :mod:`~gradviz.playground.preprocess` — a drawing or photo -> the model's input, MNIST-style
  (20×20 box, aspect kept, anti-aliased, centred by centre of mass);
- :mod:`~gradviz.playground.live` — ID reference distributions computed once per choice, and
  :func:`score_batch`: every method's score and ID percentile, the prediction and the per-layer
  gradient profile of a batch on one shared forward;
- :mod:`~gradviz.playground.paths` — rotation, blur, noise, contrast, inversion and morphs as one
  batch of steps;
- :mod:`~gradviz.playground.figures` — the gauges, marker histograms and path plot;
- :mod:`~gradviz.playground.lesson` — the guided exercise.
"""

from gradviz.playground.live import LiveReport, Reference, build_reference, method_family, score_batch
from gradviz.playground.paths import PATHS, Walk, walk
from gradviz.playground.preprocess import canvas_to_input, mnist_style, photo_to_input

__all__ = ["LiveReport", "Reference", "build_reference", "method_family", "score_batch", "PATHS", "Walk", "walk",
           "canvas_to_input", "mnist_style", "photo_to_input"]
