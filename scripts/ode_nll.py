"""Bits/dim of the MNIST test set under the probability-flow ODE of a shipped DDPM, resumable, as JSON.

Evaluates the first test images in order, one batch at a time, with
:func:`ddpm_lib.evaluation.ode_likelihood.ode_nll_bits_per_dim`, and rewrites the JSON after every batch
(atomically), so that a killed run resumes where it stopped: run the same command again (the JSON
keeps the first command in ``command`` and every later one in ``resumed_with``). It stops
starting new batches after ``--budget-s`` CPU seconds of evaluation (summed over resumed runs), after
``--max-wall-s`` seconds of this run, or at ``--n`` images. Then, once, for the images evaluated:

* ``elbo``: each image's negative ELBO (:func:`ddpm_lib.evaluation.elbo_bits_per_dim`, ``n_strata=25``,
  seed = the image's index, the mean of two draws), so that the two bounds can be compared image by image;
* ``checks``: the first ``--check-n`` images again in one batch of their own at the run's tolerances, at
  tolerances ten times tighter, and from ``eps = 1e-5`` instead of ``1 / T`` (same noise throughout).

What wrote ``ddpm_lib/weights/mnist-ode-nll.json`` (both commands are stored in it)::

    OMP_NUM_THREADS=1 python scripts/ode_nll.py --checkpoint mnist --budget-s 2400 --max-wall-s 4800 \\
        --out ddpm_lib/weights/mnist-ode-nll.json   # stopped by hand after 1200 images (75 batches)
    OMP_NUM_THREADS=1 python scripts/ode_nll.py --checkpoint mnist --budget-s 2400 --max-wall-s 0 \\
        --out ddpm_lib/weights/mnist-ode-nll.json   # no new batch: the ELBO and the checks

Every image draws its own noise and the batches are the same, so ``--n 1200`` in one command gives the
same values (on the same kind of CPU; the adaptive steps follow the last bits of the arithmetic).

``python -m ddpm_lib evaluate --metrics ode-nll`` computes the same bound with the same library function,
in one go; this script adds the resuming, the per-image ELBO and the checks.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from ddpm_lib.checkpoint import load_model, write_atomic
from ddpm_lib.data import load_mnist
from ddpm_lib.evaluation import elbo_bits_per_dim
from ddpm_lib.evaluation.ode_likelihood import ODE_DEFAULTS, ode_nll_bits_per_dim

SETTINGS = ("checkpoint", "rtol", "atol", "n_probes", "probe", "method", "eps", "seed", "batch_size")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="mnist")
    p.add_argument("--out", default="ddpm_lib/weights/mnist-ode-nll.json")
    p.add_argument("--n", type=int, default=10000, help="at most this many test images (the first ones)")
    p.add_argument("--budget-s", type=float, default=2400.0,
                   help="no new batch after this many CPU seconds of ODE solves (this process, summed over resumed runs)")
    p.add_argument("--max-wall-s", type=float, default=float("inf"),
                   help="and none after this many wall-clock seconds of this run (on a shared machine)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rtol", type=float, default=ODE_DEFAULTS["rtol"])
    p.add_argument("--atol", type=float, default=ODE_DEFAULTS["atol"])
    p.add_argument("--n-probes", type=int, default=2)
    p.add_argument("--probe", default=ODE_DEFAULTS["probe"], choices=("rademacher", "gaussian"))
    p.add_argument("--method", default=ODE_DEFAULTS["method"])
    p.add_argument("--eps", type=float, default=None, help="start time of the ODE (default 1/T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-n", type=int, default=4, help="images for the tolerance and eps checks (0: none)")
    return p.parse_args(argv)


def save(path: Path, result: dict) -> None:
    write_atomic(path, (json.dumps(result, indent=1) + "\n").encode())


def summarize(values: list[float]) -> tuple[float, float]:
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    loaded = load_model(args.checkpoint)
    eps = 1.0 / loaded.schedule.T if args.eps is None else args.eps
    settings = {"checkpoint": args.checkpoint, "rtol": args.rtol, "atol": args.atol, "n_probes": args.n_probes,
                "probe": args.probe, "method": args.method, "eps": eps, "seed": args.seed, "batch_size": args.batch_size}
    images, _ = load_mnist("test")
    images = images[: args.n]
    command = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in ["scripts/ode_nll.py", *(argv if argv is not None else sys.argv[1:])])
    if out.exists():
        result = json.loads(out.read_text())
        differ = {k: (result["settings"][k], settings[k]) for k in SETTINGS if result["settings"][k] != settings[k]}
        if differ:
            sys.exit(f"{out} was written with other settings {differ}; pass the same ones to resume, or another --out.")
        result.setdefault("resumed_with", []).append(command)
    else:
        result = {
            "description": "bits/dim of the first MNIST test images under the probability-flow ODE of the checkpoint: "
                           "uniform dequantization over the bins of width 2/255 centred on k/127.5 - 1, dopri5 in "
                           "log-SNR time from u = eps to 1, Hutchinson trace, N(0, I) prior; each value is an unbiased "
                           "estimate of an upper bound on -log2 P(k)/D of the discrete model P(k) = integral of the "
                           "ODE density over the bin of k (book chapter 'Exact likelihood through the probability-flow ODE')",
            "command": command,
            "settings": settings,
            "split": "test",
            "bits_per_dim_per_image": [], "bits_per_dim_per_probe": [], "prior_bpd_per_image": [],
            "nfe_per_batch": [], "seconds_per_batch": [], "cpu_seconds_per_batch": [],
        }
    result["environment"] = {"torch": torch.__version__, "python": platform.python_version(),
                             "threads": torch.get_num_threads(), "machine": platform.machine()}
    run_start = time.perf_counter()
    while (len(result["bits_per_dim_per_image"]) < len(images) and sum(result["cpu_seconds_per_batch"]) < args.budget_s
           and time.perf_counter() - run_start < args.max_wall_s):
        start = len(result["bits_per_dim_per_image"])
        cpu0 = time.process_time()
        batch = images[start : start + args.batch_size]
        r = ode_nll_bits_per_dim(loaded, batch, rtol=args.rtol, atol=args.atol, n_probes=args.n_probes, probe=args.probe,
                                 method=args.method, eps=eps, seed=args.seed, first_index=start,
                                 batch_size=args.batch_size, progress=False)
        result["bits_per_dim_per_image"] += r["bits_per_dim_per_image"]
        result["bits_per_dim_per_probe"] += r["bits_per_dim_per_probe"]
        result["prior_bpd_per_image"] += r["prior_bpd_per_image"]
        result["nfe_per_batch"] += r["nfe_per_batch"]
        result["seconds_per_batch"].append(r["seconds"])
        result["cpu_seconds_per_batch"].append(time.process_time() - cpu0)
        n = len(result["bits_per_dim_per_image"])
        result["n_images"] = n
        result["bits_per_dim"], result["bits_per_dim_stderr"] = summarize(result["bits_per_dim_per_image"])
        save(out, result)
        print(f"{n} images, {sum(result['cpu_seconds_per_batch']):.0f} CPU s, {sum(result['seconds_per_batch']):.0f} s: "
              f"{result['bits_per_dim']:.4f} "
              f"± {result['bits_per_dim_stderr']:.4f} bits/dim (nfe {r['nfe_mean']:.0f})", flush=True)
    n = len(result["bits_per_dim_per_image"])
    if n > 0 and ("elbo_bits_per_dim_per_image" not in result or len(result["elbo_bits_per_dim_per_image"]) != n):
        t0 = time.perf_counter()
        # elbo_bits_per_dim takes N >= 2 images and returns their mean: pass each image twice, which
        # averages two independent draws of its (stratified, unbiased) estimate
        elbo = [elbo_bits_per_dim(loaded, images[[i, i]], seed=i, progress=False, n_strata=25)["bits_per_dim"]
                for i in range(n)]
        result["elbo"] = {"n_strata": 25, "draws_per_image": 2, "seed": "the image's index",
                          "seconds": time.perf_counter() - t0}
        result["elbo_bits_per_dim_per_image"] = elbo
        result["elbo_bits_per_dim"], result["elbo_bits_per_dim_stderr"] = summarize(elbo)
        diff = [e - o for e, o in zip(elbo, result["bits_per_dim_per_image"])]
        result["elbo_minus_ode"], result["elbo_minus_ode_stderr"] = summarize(diff)
        save(out, result)
        print(f"ELBO of the same {n} images: {result['elbo_bits_per_dim']:.4f} ± {result['elbo_bits_per_dim_stderr']:.4f}; "
              f"ELBO - ODE = {result['elbo_minus_ode']:.4f} ± {result['elbo_minus_ode_stderr']:.4f}", flush=True)
    if args.check_n > 0 and n > 0 and "checks" not in result:
        k = min(args.check_n, n)
        common = dict(n_probes=args.n_probes, probe=args.probe, method=args.method, seed=args.seed, batch_size=k, progress=False)
        checks = {"n_images": k}
        for name, kw in (("run_tolerances", dict(rtol=args.rtol, atol=args.atol, eps=eps)),
                         ("tolerances_over_10", dict(rtol=args.rtol / 10, atol=args.atol / 10, eps=eps)),
                         ("eps_1e-5", dict(rtol=args.rtol, atol=args.atol, eps=1e-5))):
            r = ode_nll_bits_per_dim(loaded, images[:k], **kw, **common)
            checks[name] = {**kw, "bits_per_dim_per_image": r["bits_per_dim_per_image"],
                            "bits_per_dim_per_probe": r["bits_per_dim_per_probe"], "nfe": r["nfe_mean"], "seconds": r["seconds"]}
            print(f"check {name}: {r['bits_per_dim']:.4f} (nfe {r['nfe_mean']:.0f}, {r['seconds']:.0f} s)", flush=True)
        result["checks"] = checks
        save(out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
