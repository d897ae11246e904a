"""How well the bootstrap error of a Fréchet distance matches the spread over independent sets.

`sampler_table` gives every distance a bootstrap standard error (the N samples resampled with
replacement). Near the floor a Fréchet distance behaves like a squared norm whose first-order term
vanishes, where the ordinary bootstrap is known to be unreliable, so this script measures it
against the real thing, the spread of the distance over independent sets of the same size:

* real digits: ``--real-sets`` disjoint random sets of N training digits (the floor's regime);
* a model row: ``--model-seeds`` independently seeded sets of N samples of one sampler and budget.

For each it stores the distances, their standard deviation and the bootstrap standard error of
the first set. Run (about 15 minutes on one core):

    OMP_NUM_THREADS=1 python scripts/fd_calibration.py --out ddpm_lib/weights/mnist-fd-calibration.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch

from ddpm_lib.checkpoint import load_classifier, load_model
from ddpm_lib.data import load_mnist
from ddpm_lib.evaluation import frechet_bootstrap, frechet_distances, generate_images, random_real_sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="mnist")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--real-sets", type=int, default=20)
    p.add_argument("--model-seeds", type=int, default=5)
    p.add_argument("--sampler", default="dpm-solver-2m")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    classifier = load_classifier("mnist-classifier")
    reference = load_mnist("test")[0]
    real = random_real_sets(load_mnist("train")[0], args.n, args.real_sets, seed=1)
    loaded = load_model(args.checkpoint)
    model = [generate_images(loaded, args.n, args.sampler, args.nfe, 0.0, seed, 250) for seed in range(args.model_seeds)]
    fds = frechet_distances(real + model, reference, classifier)
    boots = frechet_bootstrap([real[0], model[0]], reference, classifier, n_bootstrap=args.bootstrap, seed=0)
    result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "n": args.n, "threads": torch.get_num_threads()}
    for name, values, boot in (("real", fds[: args.real_sets], boots[0]), (f"{args.sampler}-{args.nfe}", fds[args.real_sets :], boots[1])):
        result[name] = {"fd": values, "sd_over_sets": statistics.stdev(values), "bootstrap_se_of_first": statistics.stdev(boot)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "fd"} for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
