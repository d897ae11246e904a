#!/usr/bin/env bash
# The main job: set up, train the mnist-cpu preset on real MNIST (about 10 minutes on 2 CPU
# cores; it resumes if runs/mnist-cpu already holds a checkpoint), sample from it with DDPM
# (1000 steps) and DDIM (50 steps), and build the HTML book into _build/html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export MPLBACKEND=Agg
RUN=runs/mnist-cpu
python -m ddpm_lib train --preset mnist-cpu --out "$RUN"
python -m ddpm_lib sample --checkpoint "$RUN/checkpoint.safetensors" --n 64 --sampler ddpm --seed 0 --out "$RUN/samples_ddpm1000.npz"
python -m ddpm_lib sample --checkpoint "$RUN/checkpoint.safetensors" --n 64 --sampler ddim --steps 50 --seed 0 --out "$RUN/samples_ddim50.npz"
jupyter-book build . -W -n --keep-going
echo "samples: $RUN/samples_ddpm1000.png $RUN/samples_ddim50.png; book: _build/html/index.html"
