"""The command line: ``python -m ddpm_lib {train,sample,info,benchmark} ...`` (the only place that parses arguments)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from .core.targets import TARGETS
from .sampling.loop import SAMPLERS


def _cmd_train(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .training.ddpm import PRESETS, train

    if args.preset not in PRESETS:
        raise SystemExit(f"error: unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}.")
    config = PRESETS[args.preset] if args.target is None else replace(PRESETS[args.preset], target=args.target)
    # under torchrun: one process per device, each told its rank and the number of processes by the environment
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = args.device
    if world > 1 and device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    path = train(config, args.out, device=device, steps=args.steps, progress=not args.no_progress, world_size=world, rank=rank)
    if rank == 0:  # under torchrun, only the first process reports
        print(f"checkpoint: {path}\nsamples: {Path(args.out) / 'samples.png'}\nmetrics: {Path(args.out) / 'metrics.jsonl'}")


def _cmd_sample(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .data import save_grid
    from .sampling.images import generate_images
    from .devices import pick_device

    out = Path(args.out)
    if out.suffix != ".npz":
        raise SystemExit(f"error: --out must end in .npz, got {out}.")
    dev = pick_device(args.device)
    loaded = load_model(args.checkpoint, device=dev)
    images = generate_images(loaded, args.n, args.sampler, args.steps, args.eta, args.seed, args.batch_size, progress=True).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images)
    png = save_grid(images[:256], out.with_suffix(".png"))
    print(f"images: {out} {images.shape} {images.dtype}\ngrid: {png}")


def _cmd_info(args: argparse.Namespace) -> None:
    from .checkpoint import read_checkpoint, resolve_checkpoint

    print(json.dumps(read_checkpoint(resolve_checkpoint(args.checkpoint)).meta, indent=2, sort_keys=True))


def _cmd_benchmark(args: argparse.Namespace) -> None:
    from .benchmark import benchmark_preset

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for name in args.preset:
        print(json.dumps(benchmark_preset(name, device=args.device, train_steps=args.train_steps)), flush=True)


def _cmd_train_vae(args: argparse.Namespace) -> None:
    import shlex

    from .training.vae import VAETrainConfig, train_vae
    from .models.vae import VAEConfig

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = VAETrainConfig(model=VAEConfig(latent_dim=args.latent_dim, hidden=tuple(args.hidden)),
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    command = " ".join(["python -m ddpm_lib train-vae", "--out", shlex.quote(str(args.out)), "--steps", str(args.steps),
                        "--latent-dim", str(args.latent_dim), "--hidden", *map(str, args.hidden), "--batch-size",
                        str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed)]
                       + (["--threads", str(args.threads)] if args.threads is not None else [])
                       + (["--export", shlex.quote(str(args.export))] if args.export else []))
    path = train_vae(config, args.out, steps=args.steps, progress=not args.no_progress, command=command)
    if args.export:  # the weights to ship, with the test-set bits/dim measured on the trained model
        from .checkpoint import export_vae, load_vae
        from .data import load_mnist
        from .evaluation import vae_test_metrics

        export_vae(path, args.export, vae_test_metrics(load_vae(path)[0], load_mnist("test")[0], seed=0))
    print(f"checkpoint: {path}" + (f"\nweights: {args.export}" if args.export else ""))


def _command_line() -> str:
    return " ".join(["python -m ddpm_lib", *map(shlex.quote, sys.argv[1:])])


def _cmd_pretrained(args: argparse.Namespace) -> None:
    from .checkpoint import WEIGHTS_DIR, pretrained_names, read_checkpoint

    names = pretrained_names()
    print("\n".join(names))
    print()
    for name in names:
        meta = read_checkpoint(WEIGHTS_DIR / f"{name}.safetensors").meta
        print(f"# {name}: kind={meta.get('kind', 'ddpm')}; trained by: {meta.get('command', 'n/a')}")


def _cmd_export(args: argparse.Namespace) -> None:
    from .checkpoint import export_weights

    print(export_weights(args.checkpoint, args.out, args.command or f"(exported from {args.checkpoint})"))


def _cmd_train_classifier(args: argparse.Namespace) -> None:
    from .checkpoint import save_classifier
    from .data import load_mnist
    from .evaluation import classifier_accuracy
    from .training.classifier import train_classifier

    settings = {"epochs": args.epochs, "batch_size": 128, "lr": 1e-3, "seed": args.seed}
    model = train_classifier(**settings, device=args.device, progress=not args.no_progress)
    accuracy = classifier_accuracy(model, *load_mnist("test"))
    path = save_classifier(args.out, model, {"train": settings, "test_accuracy": accuracy, "command": _command_line()})
    print(f"classifier: {path}\ntest accuracy: {accuracy:.4f}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .checkpoint import load_classifier, load_model
    from .data import check_images, load_mnist
    from .evaluation import elbo_bits_per_dim, frechet_bootstrap, frechet_distances, random_real_sets
    from .sampling.images import generate_images
    from .devices import pick_device

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - {"nll", "ode-nll", "fd"})
    if unknown or not metrics:
        raise SystemExit(f"error: --metrics takes a comma-separated subset of nll,ode-nll,fd; got {args.metrics!r}.")
    dev = pick_device(args.device)
    loaded = load_model(args.checkpoint, device=dev)
    test_images = load_mnist("test")[0]
    if args.limit is not None:
        if args.limit < 2:
            raise SystemExit("error: --limit must be >= 2.")
        test_images = test_images[: args.limit]
    result = {"checkpoint": str(args.checkpoint), "command": _command_line()}
    if "nll" in metrics:
        result.update(elbo_bits_per_dim(loaded, test_images, batch_size=args.batch_size, seed=args.seed,
                                        n_strata=args.strata))
    if "ode-nll" in metrics:
        # the probability-flow ODE's bound on the discrete NLL (book chapter "Exact likelihood through the
        # probability-flow ODE"); keys prefixed ode_ so that they sit beside the ELBO's
        from .evaluation.ode_likelihood import ode_nll_bits_per_dim

        ode = ode_nll_bits_per_dim(loaded, test_images, seed=args.seed, batch_size=min(args.batch_size, 16),
                                   progress=True)
        result.update({f"ode_{k}": v for k, v in ode.items()})
    if "fd" in metrics:
        classifier = load_classifier(args.classifier)
        if args.samples:
            with np.load(args.samples) as f:
                if "images" not in f:
                    raise SystemExit(f"error: {args.samples} has no 'images' array; write one with `python -m ddpm_lib sample`.")
                fake = check_images(torch.from_numpy(f["images"]), f"{args.samples}['images']")
        else:
            n = args.n_samples or test_images.shape[0]
            fake = generate_images(loaded, n, args.sampler, args.steps, 0.0, args.seed, args.batch_size, progress=True)
        floor_images = random_real_sets(load_mnist("train")[0], fake.shape[0], 1, seed=args.seed)[0]
        fd, floor = frechet_distances([fake, floor_images], test_images, classifier)
        fd_se = float(np.std(frechet_bootstrap([fake], test_images, classifier, n_bootstrap=200, seed=args.seed)[0], ddof=1))
        if fake.shape[0] < 2000:
            print(f"warning: the Fréchet distance of {fake.shape[0]} samples is strongly biased upward and noisy; the book "
                  "compares models at 2000 samples or more, against a floor of as many random real digits.", file=sys.stderr)
        result.update({"fd": fd, "fd_se": fd_se, "fd_floor": floor, "fd_ratio": fd / floor, "fd_n_samples": int(fake.shape[0]),
                       "fd_reference": f"MNIST test, {test_images.shape[0]} images",
                       "fd_sampler": "from --samples" if args.samples else f"{args.sampler}, steps={args.steps or 'default'}"})
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


def _cmd_sampler_table(args: argparse.Namespace) -> None:
    from .checkpoint import load_classifier, load_model
    from .evaluation.frechet import sampler_table
    from .devices import pick_device

    dev = pick_device(args.device)
    table = sampler_table(load_model(args.checkpoint, device=dev), load_classifier(args.classifier), args.n, args.nfe,
                          samplers=tuple(args.samplers), seed=args.seed, batch_size=args.batch_size,
                          floor_sets=args.floor_sets, n_bootstrap=args.bootstrap)
    result = {"checkpoint": str(args.checkpoint), "command": _command_line(), **table}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"n = {table['n']}; floor (n random training digits, {table['floor_sets']} disjoint sets) = "
          f"{table['floor']:.2f} +- {table['floor_sd']:.2f} (sd)")
    print(f"{'sampler':>14} {'steps':>5} {'NFE':>5} {'FD':>14} {'ratio':>13} {'s':>7}")
    for r in table["rows"]:
        print(f"{r['sampler']:>14} {r['steps']:>5} {r['nfe']:>5} {r['fd']:>7.2f} +- {r['fd_se']:<4.2f} {r['fd_ratio']:>6.2f} +- {r['fd_ratio_se']:<4.2f} {r['seconds']:>7.1f}")


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (so that e.g. ``--steps 0`` is refused, not read as "default")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddpm_lib", description="Train and sample DDPMs on MNIST.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a preset; writes checkpoint, samples.png, metrics.jsonl")
    t.add_argument("--preset", required=True, help="mnist (GPU-sized) or mnist-cpu (about 10 minutes on 2 CPU cores)")
    t.add_argument("--out", required=True, help="run folder; an existing checkpoint there is resumed")
    t.add_argument("--steps", type=_positive_int, help="total optimizer steps of the run (overrides the preset); "
                   "a resumed run trains up to this total")
    t.add_argument("--target", choices=list(TARGETS), help="what the network predicts (overrides the preset)")
    t.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: CUDA, else MPS, else CPU)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="draw images from a checkpoint into an .npz (uint8, (N, 28, 28)) and a PNG grid")
    s.add_argument("--checkpoint", required=True, help="a checkpoint path or a shipped name (see `pretrained`)")
    s.add_argument("--n", type=_positive_int, default=64)
    s.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                   help="the sampler (default ddim); euler-maruyama is a hybrid: the ancestral step where sigma_t > 80, "
                   "Euler-Maruyama elsewhere; pc: ancestral predictor + one Langevin corrector step")
    s.add_argument("--steps", type=_positive_int,
                   help="every sampler but ddpm: number of steps in 1..T (default 50); ddpm: must be T")
    s.add_argument("--eta", type=float, default=0.0, help="ddim's eta (0: deterministic; 1: DDPM-like)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: CUDA, else MPS, else CPU)")
    s.add_argument("--out", required=True, help="FILE.npz; the grid goes to FILE.png")
    s.set_defaults(func=_cmd_sample)

    i = sub.add_parser("info", help="print a checkpoint's JSON config")
    i.add_argument("checkpoint", help="a checkpoint path or a shipped name (see `pretrained`)")
    i.set_defaults(func=_cmd_info)

    b = sub.add_parser("benchmark", help="training and sampling throughput and peak memory of presets")
    b.add_argument("--preset", nargs="+", default=["mnist-cpu", "mnist"])
    b.add_argument("--device")
    b.add_argument("--train-steps", type=_positive_int, default=10)
    b.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    b.set_defaults(func=_cmd_benchmark)

    v = sub.add_parser("train-vae", help="train (or resume) the Part I VAE on MNIST; writes a checkpoint (and --export weights)")
    v.add_argument("--out", required=True, help="run folder; an existing checkpoint there is resumed")
    v.add_argument("--steps", type=_positive_int, default=12000, help="total optimizer steps (default 12000)")
    v.add_argument("--latent-dim", type=int, default=32)
    v.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="hidden widths of the encoder MLP")
    v.add_argument("--batch-size", type=int, default=128)
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--threads", type=int, help="torch intra-op threads (e.g. 2 on a shared 2-core machine)")
    v.add_argument("--export", help="also write a weights-only file with the test-set bits/dim, e.g. ddpm_lib/weights/vae-mnist.safetensors")
    v.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    v.set_defaults(func=_cmd_train_vae)
    pt = sub.add_parser("pretrained", help="list the shipped checkpoints (one name per line first)")
    pt.set_defaults(func=_cmd_pretrained)

    ex = sub.add_parser("export", help="write a slim shipping copy (EMA weights, schedule, config) of a training checkpoint")
    ex.add_argument("--checkpoint", required=True, help="a checkpoint path or a shipped name")
    ex.add_argument("--out", required=True)
    ex.add_argument("--command", help="the command that trained it, stored in the JSON")
    ex.set_defaults(func=_cmd_export)

    tc = sub.add_parser("train-classifier", help="train the MNIST evaluation classifier (minutes on a CPU)")
    tc.add_argument("--out", required=True, help="the checkpoint file to write, e.g. classifier.safetensors")
    tc.add_argument("--epochs", type=_positive_int, default=3)
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--device")
    tc.add_argument("--no-progress", action="store_true")
    tc.set_defaults(func=_cmd_train_classifier)

    ev = sub.add_parser("evaluate", help="the ELBO in bits/dim (nll) and the classifier-feature Frechet distance (fd)")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint path or a shipped name")
    ev.add_argument("--metrics", default="nll,fd", help="comma-separated: nll (the ELBO), ode-nll (the probability-flow ODE's bound, about 1.5 CPU-seconds per image), fd")
    ev.add_argument("--limit", type=int, help="use the first N test images (default: all 10,000)")
    ev.add_argument("--strata", type=int, help="nll: sum the terms t = 2..T by one draw per image from each of at most K "
                    "equal-width log-SNR groups (unbiased, about K + 1 network calls per image); default: every t, T calls")
    ev.add_argument("--out", help="write the metrics as JSON here too")
    ev.add_argument("--classifier", default="mnist-classifier", help="the evaluation network (path or shipped name)")
    ev.add_argument("--samples", help="an .npz from `sample` to score instead of drawing new images")
    ev.add_argument("--n-samples", type=_positive_int, help="images to draw for fd (default: as many as test images)")
    ev.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    ev.add_argument("--steps", type=_positive_int, help="fd's sampler steps, as in `sample`")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=_positive_int, default=250)
    ev.add_argument("--device")
    ev.set_defaults(func=_cmd_evaluate)
    st = sub.add_parser("sampler-table", help="FD ratio against network evaluations for any of the samplers: DDPM (1000 steps and "
                        "strided), DDIM, DPM-Solver++(2M), Heun, euler-maruyama (Euler-Maruyama with the ancestral step "
                        "where sigma_t > 80) and pc (ancestral predictor + one Langevin corrector step)")
    st.add_argument("--checkpoint", required=True)
    st.add_argument("--classifier", default="mnist-classifier")
    st.add_argument("--n", type=_positive_int, default=2000, help="samples per row (the floor uses as many real images per set)")
    st.add_argument("--nfe", type=_positive_int, nargs="+", default=[10, 20, 50, 100], help="numbers of steps for every sampler but ddpm (which runs all T steps); each is also its number "
                    "of network evaluations, but for heun and pc (about two per step), whose counts the table records")
    st.add_argument("--samplers", nargs="+", choices=sorted(SAMPLERS), default=["ddpm", "ddpm-strided", "ddim", "dpm-solver-2m"],
                    help="samplers to compare (ddpm costs T network calls per image; heun and pc about two per step; "
                    "euler-maruyama is a hybrid: the ancestral step where sigma_t > 80, Euler-Maruyama elsewhere)")
    st.add_argument("--floor-sets", type=_positive_int, default=5, help="disjoint sets of n training digits for the floor")
    st.add_argument("--bootstrap", type=_positive_int, default=200, help="bootstrap replicates for each distance's error")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--batch-size", type=_positive_int, default=250)
    st.add_argument("--device")
    st.add_argument("--out", help="write the rows as JSON here too")
    st.set_defaults(func=_cmd_sampler_table)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError, RuntimeError, KeyError) as err:  # OSError: FileNotFoundError, PermissionError, ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
