#!/usr/bin/env bash
# Set up the environment with the test packages and run the whole test suite.
# The real-browser test runs when /usr/bin/chromium exists (apt-get install chromium), else it is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
exec "${GRADVIZ_VENV:-.venv}/bin/python" -m pytest -q "$@"
