#!/usr/bin/env bash
# The tests: set up, then the unit tests, strict nbval on the committed notebooks, and the book
# build with warnings as errors. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export MPLBACKEND=Agg
python -m pytest tests -q -p no:cacheprovider
python -m pytest --nbval notebooks/ --nbval-sanitize-with nbval_sanitize.cfg -q -p no:cacheprovider
rm -rf _build
jupyter-book build . -W -n --keep-going
