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
