"""The command line: ``python -m ddpm_lib {train,sample,info,benchmark} ...`` (the only place that parses arguments)."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch


def _cmd_train(args: argparse.Namespace) -> None:
    from .training import PRESETS, train

    if args.preset not in PRESETS:
        raise SystemExit(f"error: unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}.")
    path = train(PRESETS[args.preset], args.out, device=args.device, steps=args.steps, progress=not args.no_progress)
    print(f"checkpoint: {path}\nsamples: {Path(args.out) / 'samples.png'}\nmetrics: {Path(args.out) / 'metrics.jsonl'}")


def _cmd_sample(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .data import save_grid, to_uint8
    from .samplers import clip_denoiser, ddim_step, ddim_timesteps, ddpm_step, model_denoiser, sample
    from .training import pick_device

    if args.n < 1:
        raise SystemExit("error: --n must be >= 1.")
    out = Path(args.out)
    if out.suffix != ".npz":
        raise SystemExit(f"error: --out must end in .npz, got {out}.")
    dev = pick_device(args.device)
    loaded = load_model(args.checkpoint, device=dev)
    T = loaded.schedule.T
    if args.sampler == "ddpm":
        if args.steps not in (None, T):
            raise SystemExit(f"error: the ddpm sampler takes all T = {T} steps; use --sampler ddim for fewer.")
        step, timesteps = ddpm_step, list(range(T, 0, -1))
    else:
        steps = args.steps or 50
        if not 1 <= steps <= T:
            raise SystemExit(f"error: --steps must be in 1..{T}, got {steps}.")
        step, timesteps = partial(ddim_step, eta=args.eta), ddim_timesteps(T, steps)
    denoiser = clip_denoiser(model_denoiser(loaded.model, loaded.schedule, loaded.target))
    gen = torch.Generator().manual_seed(args.seed)
    images = []
    for start in range(0, args.n, args.batch_size):
        b = min(args.batch_size, args.n - start)
        x_T = torch.randn((b, 1, 28, 28), generator=gen).to(dev)
        images.append(to_uint8(sample(denoiser, loaded.schedule, step, x_T, timesteps, gen)))
    images = torch.cat(images).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images)
    png = save_grid(images[:256], out.with_suffix(".png"))
    print(f"images: {out} {images.shape} {images.dtype}\ngrid: {png}")


def _cmd_info(args: argparse.Namespace) -> None:
    from .checkpoint import read_checkpoint

    print(json.dumps(read_checkpoint(args.checkpoint).meta, indent=2, sort_keys=True))


def _cmd_benchmark(args: argparse.Namespace) -> None:
    from .benchmark import benchmark_preset

    for name in args.preset:
        print(json.dumps(benchmark_preset(name, device=args.device, train_steps=args.train_steps)), flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddpm_lib", description="Train and sample DDPMs on MNIST.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (or resume) a preset; writes checkpoint, samples.png, metrics.jsonl")
    t.add_argument("--preset", required=True, help="mnist (GPU-sized) or mnist-cpu (about 10 minutes on 2 CPU cores)")
    t.add_argument("--out", required=True, help="run folder; an existing checkpoint there is resumed")
    t.add_argument("--steps", type=int, help="total optimizer steps (overrides the preset)")
    t.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: CUDA, else MPS, else CPU)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="draw images from a checkpoint into an .npz (uint8, (N, 28, 28)) and a PNG grid")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    s.add_argument("--steps", type=int, help="ddim: number of steps (default 50); ddpm: must be T")
    s.add_argument("--eta", type=float, default=0.0, help="ddim's eta (0: deterministic; 1: DDPM-like)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--device")
    s.add_argument("--out", required=True, help="FILE.npz; the grid goes to FILE.png")
    s.set_defaults(func=_cmd_sample)

    i = sub.add_parser("info", help="print a checkpoint's JSON config")
    i.add_argument("checkpoint")
    i.set_defaults(func=_cmd_info)

    b = sub.add_parser("benchmark", help="training and sampling throughput and peak memory of presets")
    b.add_argument("--preset", nargs="+", default=["mnist-cpu", "mnist"])
    b.add_argument("--device")
    b.add_argument("--train-steps", type=int, default=10)
    b.set_defaults(func=_cmd_benchmark)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
