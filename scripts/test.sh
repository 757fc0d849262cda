#!/usr/bin/env bash
# Set up the environment with the test packages and run the whole test suite.
# The real-browser test runs when /usr/bin/chromium exists (apt-get install chromium), else it is skipped.
# --fast leaves out the tests marked slow or browser (pytest.ini); other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
args=()
for a in "$@"; do
  if [ "$a" = "--fast" ]; then args+=(-m "not slow and not browser"); else args+=("$a"); fi
done
exec "${GRADVIZ_VENV:-.venv}/bin/python" -m pytest -q ${args[@]+"${args[@]}"}
