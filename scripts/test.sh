#!/usr/bin/env bash
# The tests: set up, then the unit tests (with the lint of the notebooks' stored outputs), strict
# nbval on the committed notebooks, the book build with warnings as errors, the browser tests of the
# built book, and the wheel test (which runs nbval a second time, on the installed package with
# torch's plain CPU kernels). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export MPLBACKEND=Agg
# the unit tests two at a time, one thread each, on the 2 cores
OMP_NUM_THREADS=1 python -m pytest tests -q -p no:cacheprovider -n 2
# the shipped samplers give the same float32 samples, bit for bit, as before the library was reshaped (8ed6fd4)
python scripts/bit_identity.py
# two notebooks at a time, one thread each, on the 2 cores (the second run, with torch's plain CPU
# kernels, is the wheel test's, below)
OMP_NUM_THREADS=1 python -m pytest --nbval notebooks/ --nbval-sanitize-with nbval_sanitize.cfg -n 2 --dist loadfile -q -p no:cacheprovider
rm -rf _build
jupyter-book build . -W -n --keep-going
# the built book in Chromium with every outside request blocked (screenshots in _build/screenshots/)
python -m pytest -m browser tests/test_browser.py -q -p no:cacheprovider
# the package as Colab gets it: build the wheel, install it with its declared dependencies in a fresh
# venv, run the CLI, then strict nbval on every notebook outside the repository with
# ATEN_CPU_CAPABILITY=default. That makes torch use its non-vectorised kernels (no AVX2 or AVX-512),
# so sums round differently, as on another reader's machine: the stored outputs must not depend on
# the CPU that wrote them, and anything printed past its own precision fails here.
python -m pytest -m wheel tests/test_wheel.py -q -p no:cacheprovider
