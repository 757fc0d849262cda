"""Server configuration of the dashboard: which models that run the user's own code it may load, and torch's
threads (:func:`apply_torch_threads`).

The person who starts the server chooses them, never a browser::

    streamlit run app.py -- --model path/to/net.py:build [--model other.py:make]
    GRADVIZ_MODELS="path/to/net.py:build;other.py:make" streamlit run app.py

Each appears in the sidebar's Model picker (and as an architecture for weight uploads).
"""

from __future__ import annotations

import torch

from gradviz.config import server_torch_threads
from gradviz.models.plugins import is_file_spec, server_model_specs


def configured_models() -> list[str]:
    """Every model the server configuration names (``--model`` after ``--``, ``GRADVIZ_MODELS``)."""
    return server_model_specs()


def allowed_code_models() -> set[str]:
    """The ``file.py:build`` models among them: the only code-running models the web app loads."""
    return {s for s in configured_models() if is_file_spec(s)}


def apply_torch_threads() -> int:
    """Set torch's threads for the web server (:func:`gradviz.config.server_torch_threads`: 1 unless
    ``GRADVIZ_TORCH_THREADS`` or ``OMP_NUM_THREADS`` says otherwise); the threads torch now uses."""
    n = server_torch_threads()
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()
