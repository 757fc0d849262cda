#!/usr/bin/env bash
# Set up the environment (first run: a few minutes) and start the dashboard on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${GRADVIZ_VENV:-.venv}/bin/streamlit" run app.py "$@"
