#!/usr/bin/env bash
# The tests: set up, then the unit tests (with the lint of the notebooks' stored outputs), strict
# nbval on the committed notebooks twice (with torch's vectorised CPU kernels, then with its plain
# ones), the book build with warnings as errors, the browser tests of the built book, and the wheel
# test. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export MPLBACKEND=Agg
python -m pytest tests -q -p no:cacheprovider
# the shipped samplers give the same float32 samples, bit for bit, as before the library was reshaped (8ed6fd4)
python scripts/bit_identity.py
python -m pytest --nbval notebooks/ --nbval-sanitize-with nbval_sanitize.cfg -q -p no:cacheprovider
# The stored outputs must not depend on the CPU that wrote them. ATEN_CPU_CAPABILITY=default makes
# torch use its non-vectorised kernels (no AVX2 or AVX-512), so sums round differently, as on
# another reader's machine; anything printed past its own precision fails here.
ATEN_CPU_CAPABILITY=default python -m pytest --nbval notebooks/ --nbval-sanitize-with nbval_sanitize.cfg -q -p no:cacheprovider
rm -rf _build
jupyter-book build . -W -n --keep-going
# the built book in Chromium with every outside request blocked (screenshots in _build/screenshots/)
python -m pytest -m browser tests/test_browser.py -q -p no:cacheprovider
# the package as Colab gets it: build the wheel, install it with its declared dependencies in a fresh
# venv, run the CLI and every notebook outside the repository (about 9 minutes on 2 shared CPU cores)
python -m pytest -m wheel tests/test_wheel.py -q -p no:cacheprovider
