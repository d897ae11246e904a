"""Check that the shipped samplers give bit-identical samples to those of a base revision (default 8ed6fd4).

Both sides run here, on this machine, in float32 on the CPU with one thread: the base revision's
`ddpm_lib` is extracted with `git archive` into a temporary folder and run in a subprocess with its
own sampling API; the working tree's runs with today's. For each shipped DDPM (mnist, mnist-cpu and
the three mnist-cpu-short-*) and each sampler (ddpm with all T steps; ddpm-strided, ddim and dpm-solver-2m
with 20 steps; dpm-solver-2m with 7), four seeded images are drawn in one batch and compared with
torch.equal on the float32 output of the loop (before any conversion to uint8).

    python scripts/bit_identity.py [--base REV [--base-sampling MODULE]]   # exit status 0 when every sample is identical

Bit identity holds within one batch. Across batches that share one generator, the deterministic
samplers (ddim with eta = 0, dpm-solver-2m) no longer draw the noise they never used, so a second
batch starts from other noise than before (the stochastic ddpm and ddpm-strided draw as before).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CASES = [("ddpm", None), ("ddpm-strided", 20), ("ddim", 20), ("dpm-solver-2m", 20), ("dpm-solver-2m", 7)]
MODELS = ["mnist", "mnist-cpu", "mnist-cpu-short-eps", "mnist-cpu-short-x0", "mnist-cpu-short-v"]

# The same program on both sides; only where the sampling functions are imported from differs (ddpm_lib.samplers
# before the reshaping, ddpm_lib.sampling after).
SIDE = """
import sys, torch
from ddpm_lib.checkpoint import load_model
from %(sampling)s import clip_denoiser, model_denoiser, sample, sampler_plan
torch.set_num_threads(1)
out = {}
for name in %(models)r:
    m = load_model(name)
    den = clip_denoiser(model_denoiser(m.model.eval(), m.schedule, m.target))
    for sampler, steps in %(cases)r:
        step, ts = sampler_plan(sampler, m.schedule.T, steps)
        gen = torch.Generator().manual_seed(0)
        x_T = torch.randn((4, 1, 28, 28), generator=gen)
        out[f"{name}/{sampler}/{steps}"] = sample(den, m.schedule, step, x_T, ts, gen)
torch.save(out, sys.argv[1])
"""


def start_side(sampling: str, pythonpath: Path, out: Path) -> subprocess.Popen:
    # one thread each, the two sides side by side; run outside the repository, so that the working tree's
    # ddpm_lib does not shadow the base's
    env = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS="1")
    code = SIDE % {"sampling": sampling, "models": MODELS, "cases": CASES}
    return subprocess.Popen([sys.executable, "-c", code, str(out)], env=env,
                            cwd=tempfile.gettempdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="8ed6fd4", help="the revision to compare with (default: 8ed6fd4, before the reshaping)")
    parser.add_argument("--base-sampling", default="ddpm_lib.samplers",
                        help="the module of the base revision that holds the sampling functions (ddpm_lib.sampling since the reshaping)")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_dir = tmp / "base"
        base_dir.mkdir()
        archive = subprocess.run(["git", "-C", str(repo), "archive", args.base, "ddpm_lib"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base_dir)], input=archive, check=True)
        sides = [start_side(args.base_sampling, base_dir, tmp / "base.pt"), start_side("ddpm_lib.sampling", repo, tmp / "head.pt")]
        if any(side.wait() != 0 for side in sides):
            print("a side failed (see above)")
            return 2
        base, head = torch.load(tmp / "base.pt"), torch.load(tmp / "head.pt")
    bad = 0
    for key in base:
        same = torch.equal(base[key], head[key])
        bad += not same
        detail = "" if same else f"  max |diff| = {float((base[key] - head[key]).abs().max()):.3g}"
        print(f"{key:40s} {'bit-identical' if same else 'DIFFERS'}{detail}")
    print(f"{len(base) - bad} of {len(base)} identical to {args.base}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
