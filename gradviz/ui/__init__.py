"""Streamlit glue (the only part of gradviz that imports Streamlit): sidebar, caches, errors.

Session-state keys (shared by every page):

| key               | holds                                                    |
|-------------------|----------------------------------------------------------|
| ``gv_config``     | the current :class:`gradviz.scoring.RunConfig`           |
| ``gv_uploads``    | {name: ImageSet} of images this session uploaded as OOD  |
| ``gv_selected``   | (dataset, index) of the sample chosen for inspection     |
| ``gv_upload_pixels`` | {upload: (budget, limit text, pixels decoded)}: the session's pixel budget (ui.uploads) |

A session's own uploads (weights, ID sets) live under the keys listed in :mod:`gradviz.ui.private`.
"""

from gradviz.engine.kernels import build_in_background as _build_in_background

_build_in_background()  # every page computes: compile the statistics kernel while the page imports and loads
