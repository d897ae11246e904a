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
    path = train(config, args.out, device=device, steps=args.steps, progress=not args.no_progress, world_size=world, rank=rank,
                 threads=args.threads)
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
    labels, denoiser_for = _guidance_from_args(args, loaded, dev)
    images = generate_images(loaded, args.n, args.sampler, args.steps, args.eta, args.seed, args.batch_size, progress=True,
                             labels=labels, denoiser_for=denoiser_for).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images, **({} if labels is None else {"labels": labels.numpy()}))
    png = save_grid(images[:256], out.with_suffix(".png"))
    print(f"images: {out} {images.shape} {images.dtype}" + ("" if labels is None else f", labels {tuple(labels.shape)}")
          + f"\ngrid: {png}")


def _parse_class_labels(text: str, n: int) -> torch.Tensor:
    """``--class-labels``: ``"3,3,7"`` (repeated to ``n`` images) or ``"0-9"`` (the range, cycled), as int64 ``(n,)``."""
    text = text.strip()
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            if hi < lo:
                raise ValueError
            cycle = list(range(lo, hi + 1))
        else:
            cycle = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--class-labels takes a comma-separated list such as 3,3,7 or a range such as 0-9; got {text!r}.") from None
    if any(not 0 <= v <= 9 for v in cycle):
        raise ValueError(f"--class-labels {text!r}: MNIST's classes are the digits 0-9.")
    return torch.tensor([cycle[i % len(cycle)] for i in range(n)], dtype=torch.long)


def _guidance_from_args(args: argparse.Namespace, loaded, dev):
    """The labels and the batch denoiser builder that ``--class-labels``, ``--guidance-scale`` and ``--classifier`` ask for."""
    from functools import partial

    from .checkpoint import load_noisy_classifier
    from .sampling.guided import classifier_free_denoiser, classifier_guided_denoiser

    conditional = loaded.model.config.num_classes is not None
    if args.class_labels is None:
        if args.guidance_scale is not None or args.classifier is not None:
            raise ValueError("--guidance-scale and --classifier guide towards classes: give them with --class-labels "
                             "(e.g. 0-9).")
        if conditional:
            raise ValueError(f"{args.checkpoint} is a conditional model: give --class-labels (e.g. 0-9), and "
                             f"optionally --guidance-scale.")
        return None, None
    labels = _parse_class_labels(args.class_labels, args.n)
    scale = 1.0 if args.guidance_scale is None else args.guidance_scale
    if args.classifier is not None:
        if conditional:
            raise ValueError(f"--classifier guides an unconditional model, and {args.checkpoint} is conditional: drop "
                             f"--classifier (classifier-free guidance), or guide an unconditional checkpoint such as mnist.")
        classifier = load_noisy_classifier(args.classifier, device=dev)
        builder = partial(classifier_guided_denoiser, loaded, classifier, guidance_scale=scale)
    elif conditional:
        builder = partial(classifier_free_denoiser, loaded, guidance_scale=scale)
    else:
        raise ValueError(f"{args.checkpoint} is an unconditional model, so --class-labels needs a noise-conditional "
                         f"classifier to guide it: add --classifier mnist-noisy-classifier, or sample the conditional model "
                         f"mnist-cfg.")
    builder(labels[:1])  # refuse a bad scale or a mismatched schedule now, not after the first batch
    return labels, builder


def _cmd_info(args: argparse.Namespace) -> None:
    from .checkpoint import read_checkpoint, resolve_checkpoint

    print(json.dumps(read_checkpoint(resolve_checkpoint(args.checkpoint)).meta, indent=2, sort_keys=True))


def _cmd_benchmark(args: argparse.Namespace) -> None:
    from .benchmark import benchmark_preset
    from .devices import AdaptiveThreads

    if args.threads == "auto":
        AdaptiveThreads().update()  # one measure (0.25 s) of the other processes' load, before any timing
    elif args.threads is not None:
        torch.set_num_threads(args.threads)
    for name in args.preset:
        result = benchmark_preset(name, device=args.device, train_steps=args.train_steps)
        print(json.dumps({**result, "threads": torch.get_num_threads()}), flush=True)


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


def _write_json(path: str, result: dict) -> None:
    """``result`` as indented JSON at ``path``, its folder created if missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


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


def _cmd_train_noisy_classifier(args: argparse.Namespace) -> None:
    from .checkpoint import export_noisy_classifier, load_model, load_noisy_classifier
    from .data import load_mnist
    from .training.noisy_classifier import NoisyClassifierTrainConfig, noisy_accuracy, train_noisy_classifier

    schedule = load_model(args.checkpoint).schedule
    config = NoisyClassifierTrainConfig(epochs=args.epochs, seed=args.seed)
    command = _command_line()
    path = train_noisy_classifier(config, schedule, args.out, device=args.device, progress=not args.no_progress,
                                  meta={"command": command, "guides": str(args.checkpoint)})
    ts = [1, 100, 250, 500, 750, 900, 1000]
    accuracy = noisy_accuracy(load_noisy_classifier(path).model, schedule, *load_mnist("test"), [t for t in ts if t <= schedule.T])
    print("test accuracy on noised digits: " + ", ".join(f"t = {t}: {a:.3f}" for t, a in accuracy.items()))
    if args.export:
        test = {"accuracy_at_t": {str(t): a for t, a in accuracy.items()}, "noise_seed": 0}
        print(f"weights: {export_noisy_classifier(path, args.export, test, command)}")
    print(f"checkpoint: {path}")


def _fingerprint(method: str, *checkpoints: str | None) -> str:
    """The method and the checkpoints' names with the first 12 hex digits of each file's SHA-256 (for a sweep's cache)."""
    import hashlib

    from .checkpoint import resolve_checkpoint

    parts = [method] + [f"{c}:{hashlib.sha256(resolve_checkpoint(c).read_bytes()).hexdigest()[:12]}" for c in checkpoints if c]
    return " ".join(parts)


def _cmd_guidance_sweep(args: argparse.Namespace) -> None:
    from functools import partial

    from .checkpoint import load_classifier, load_model, load_noisy_classifier
    from .devices import pick_device
    from .evaluation.guidance_tradeoff import guidance_sweep
    from .sampling.guided import classifier_free_denoiser, classifier_guided_denoiser

    dev = pick_device(args.device)
    loaded = load_model(args.checkpoint, device=dev)
    conditional = loaded.model.config.num_classes is not None
    if conditional == (args.classifier is not None):
        raise ValueError("guidance-sweep runs classifier-free guidance on a conditional model (mnist-cfg, no "
                         "--classifier) or classifier guidance on an unconditional one (mnist with --classifier "
                         "mnist-noisy-classifier); got " + ("a conditional model and a classifier." if conditional else
                                                            "an unconditional model without a classifier."))
    if not all(0 <= g < float("inf") for g in args.scales):
        raise ValueError(f"--scales are guidance scales g = w + 1, finite and >= 0; got {args.scales}.")
    if conditional:
        method, guide = "classifier-free", lambda g: partial(classifier_free_denoiser, loaded, guidance_scale=g)
    else:
        classifier = load_noisy_classifier(args.classifier, device=dev)
        method, guide = "classifier", lambda g: partial(classifier_guided_denoiser, loaded, classifier, guidance_scale=g)
    table = guidance_sweep(loaded, load_classifier(args.evaluator), guide, args.scales, n=args.n, sampler=args.sampler,
                           steps=args.steps, seed=args.seed, batch_size=args.batch_size, n_bootstrap=args.bootstrap,
                           cache=args.cache, guide_name=_fingerprint(method, args.checkpoint, args.classifier))
    result = {"checkpoint": str(args.checkpoint), "classifier": args.classifier, "method": method,
              "command": _command_line(), **table}
    if args.out:
        _write_json(args.out, result)
    print(f"{method} guidance, {table['sampler']} with {table['steps']} steps, n = {table['n']}; "
          f"floor = {table['floor']:.2f} +- {table['floor_sd']:.2f} (sd)")
    print(f"{'g':>5} {'w':>5} {'accuracy':>15} {'FD ratio':>13} {'diversity':>13} {'s':>7}")
    for r in table["rows"]:
        print(f"{r['guidance_scale']:5g} {r['w']:5g} {r['accuracy']:8.3f} +- {r['accuracy_se']:.3f} "
              f"{r['fd_ratio']:6.2f} +- {r['fd_ratio_se']:.2f} {r['diversity']:6.3f} +- {r['diversity_se']:.3f} {r['seconds']:7.0f}")


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
    if args.fixed_variances and "nll" not in metrics:
        raise SystemExit("error: --fixed-variances changes the ELBO only: add nll to --metrics, or drop the flag.")
    dev = pick_device(args.device)
    loaded = load_model(args.checkpoint, device=dev)
    test_images = load_mnist("test")[0]
    if args.limit is not None:
        if args.limit < 2:
            raise SystemExit("error: --limit must be >= 2.")
        test_images = test_images[: args.limit]
    result = {"checkpoint": str(args.checkpoint), "command": _command_line()}
    if "nll" in metrics:
        from .evaluation.elbo import with_fixed_variances

        result.update(elbo_bits_per_dim(with_fixed_variances(loaded) if args.fixed_variances else loaded, test_images,
                                        batch_size=args.batch_size, seed=args.seed, n_strata=args.strata))
        result["fixed_variances"] = bool(args.fixed_variances)
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
        _write_json(args.out, result)
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


def _threads(text: str) -> int | str:
    """An argparse type for ``--threads``: ``"auto"`` or an integer >= 1."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}") from None


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
    t.add_argument("--threads", type=_threads, default="auto",
                   help="torch intra-op CPU threads: an integer, or auto (the default): on the CPU, the cores other "
                   "processes leave free, measured at every log step (ddpm_lib.devices.AdaptiveThreads); on a GPU, "
                   "auto sets nothing")
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
    s.add_argument("--class-labels", help="digits to draw, as a list repeated over the images (3,3,7) or a range cycled "
                   "through (0-9); the npz then also holds `labels`. A conditional model (mnist-cfg) needs them; an "
                   "unconditional one needs --classifier with them")
    s.add_argument("--guidance-scale", type=float, help="guidance strength g = w + 1 (the guidance_scale of common libraries; "
                   "Ho & Salimans' w = g - 1): 1 (default) is the conditional model, 0 the unconditional one, > 1 guides. "
                   "Classifier-free for a conditional model; with --classifier, Dhariwal & Nichol's classifier scale s = g")
    s.add_argument("--classifier", help="a noise-conditional classifier (mnist-noisy-classifier, or a file from "
                   "train-noisy-classifier) to guide an unconditional model")
    s.set_defaults(func=_cmd_sample)

    i = sub.add_parser("info", help="print a checkpoint's JSON config")
    i.add_argument("checkpoint", help="a checkpoint path or a shipped name (see `pretrained`)")
    i.set_defaults(func=_cmd_info)

    b = sub.add_parser("benchmark", help="training and sampling throughput and peak memory of presets")
    b.add_argument("--preset", nargs="+", default=["mnist-cpu", "mnist"])
    b.add_argument("--device")
    b.add_argument("--train-steps", type=_positive_int, default=10)
    b.add_argument("--threads", type=_threads, help="torch intra-op threads: an integer, or auto (the cores other processes "
                   "leave free, measured once before the timing); default: torch's choice")
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

    nc = sub.add_parser("train-noisy-classifier", help="train (or resume) the noise-conditional classifier p(y | x_t, t) "
                        "that classifier guidance uses, on digits noised with a diffusion model's schedule")
    nc.add_argument("--checkpoint", default="mnist", help="the diffusion model to guide (its schedule noises the digits)")
    nc.add_argument("--out", required=True, help="the checkpoint file, rewritten after each epoch; an existing one is resumed")
    nc.add_argument("--epochs", type=_positive_int, default=6)
    nc.add_argument("--seed", type=int, default=0)
    nc.add_argument("--export", help="also write a slim weights file with the accuracies, e.g. ddpm_lib/weights/mnist-noisy-classifier.safetensors")
    nc.add_argument("--device")
    nc.add_argument("--no-progress", action="store_true")
    nc.set_defaults(func=_cmd_train_noisy_classifier)

    gs = sub.add_parser("guidance-sweep", help="label accuracy, FD ratio and within-class diversity against the guidance "
                        "scale: classifier-free (a conditional model) or classifier guidance (an unconditional model and "
                        "--classifier)")
    gs.add_argument("--checkpoint", required=True, help="mnist-cfg (classifier-free) or mnist (with --classifier)")
    gs.add_argument("--classifier", help="the noise-conditional classifier for classifier guidance (mnist-noisy-classifier)")
    gs.add_argument("--scales", type=float, nargs="+", required=True, help="guidance scales g = w + 1 (1: the conditional model)")
    gs.add_argument("--n", type=_positive_int, default=2000, help="images per scale, cycling through the digits")
    gs.add_argument("--sampler", choices=SAMPLERS, default="dpm-solver-2m")
    gs.add_argument("--steps", type=_positive_int, default=20)
    gs.add_argument("--evaluator", default="mnist-classifier", help="the evaluation classifier (accuracy and features)")
    gs.add_argument("--bootstrap", type=_positive_int, default=200)
    gs.add_argument("--seed", type=int, default=0)
    gs.add_argument("--batch-size", type=_positive_int, default=250)
    gs.add_argument("--cache", help="folder for each scale's images; a stopped sweep resumes from it")
    gs.add_argument("--device")
    gs.add_argument("--out", help="write the rows as JSON here too")
    gs.set_defaults(func=_cmd_guidance_sweep)

    ev = sub.add_parser("evaluate", help="the ELBO in bits/dim (nll) and the classifier-feature Frechet distance (fd)")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint path or a shipped name")
    ev.add_argument("--metrics", default="nll,fd", help="comma-separated: nll (the ELBO), ode-nll (the probability-flow ODE's bound, about 1.5 CPU-seconds per image), fd")
    ev.add_argument("--limit", type=int, help="use the first N test images (default: all 10,000)")
    ev.add_argument("--strata", type=int, help="nll: sum the terms t = 2..T by one draw per image from each of at most K "
                    "equal-width log-SNR groups (unbiased, about K + 1 network calls per image); default: every t, T calls")
    ev.add_argument("--fixed-variances", action="store_true", help="nll: set a network's learned variances aside and use "
                    "the fixed ones (tilde-beta_t; beta_1 for the decoder), to measure what the learned ones buy")
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
