#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv, install the pinned packages, then gradviz itself
# (editable: the checkout's code is what runs; the `gradviz` command is on the venv's PATH).
# Usage: bash scripts/setup_env.sh [--test]   (--test adds the test-only packages)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${GRADVIZ_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.gradviz-installed"
want=$(cat requirements.txt requirements-test.txt pyproject.toml setup.py | sha256sum | cut -c1-16)$*
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  if [ "${1:-}" = "--test" ]; then
    "$VENV/bin/python" -m pip install -q -r requirements.txt -r requirements-test.txt
  else
    "$VENV/bin/python" -m pip install -q -r requirements.txt
  fi
  # the build backend named in pyproject.toml [build-system], then the package without build isolation
  "$VENV/bin/python" -m pip install -q "setuptools==84.2.1"
  "$VENV/bin/python" -m pip install -q -e . --no-deps --no-build-isolation
  echo "$want" > "$stamp"
fi
