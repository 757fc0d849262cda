"""Server configuration of the dashboard: which models that run the user's own code it may load.

The person who starts the server chooses them, never a browser::

    streamlit run app.py -- --model path/to/net.py:build [--model other.py:make]
    GRADVIZ_MODELS="path/to/net.py:build;other.py:make" streamlit run app.py

Each appears in the sidebar's Model picker (and as an architecture for weight uploads).
"""

from __future__ import annotations

from gradviz.models.plugins import is_file_spec, server_model_specs


def configured_models() -> list[str]:
    """Every model the server configuration names (``--model`` after ``--``, ``GRADVIZ_MODELS``)."""
    return server_model_specs()


def allowed_code_models() -> set[str]:
    """The ``file.py:build`` models among them: the only code-running models the web app loads."""
    return {s for s in configured_models() if is_file_spec(s)}
