"""Two DDPMs trained on MNIST for the same CPU time on the same machine, then scored by the same evaluators.

What it measures. In one process, on one thread, it trains

(a) ``ddpm_lib``: the U-Net and recipe of a preset (``--preset``, default ``mnist-cpu``; ``--target``,
    default ``v``): its :class:`~ddpm_lib.training.ddpm.TrainConfig` (schedule, batch size, AdamW's
    learning rate and weight decay, linear warm-up, gradient clipping, EMA decay) and its loss,
    :func:`~ddpm_lib.training.ddpm.batch_loss`;
(b) the recipe of the Hugging Face diffusion course (Unit 1): diffusers' ``UNet2DModel`` with the course's
    block types (``DownBlock2D, AttnDownBlock2D, AttnDownBlock2D``, two layers per block, widths
    ``(c, 2c, 2c)``) at MNIST's native 28 x 28, as in the course's MNIST notebook, ``DDPMScheduler(
    num_train_timesteps=1000)`` (linear betas 1e-4..0.02, epsilon prediction), the MSE between the
    network's output and ``eps``, and AdamW with torch's defaults but the learning rate. The width ``c``
    is the multiple of 4 whose parameter count is nearest to (a)'s (both are printed;
    ``norm_num_groups = gcd(c, 32)``). Learning rate 1e-3: the value of the course's MNIST notebook
    and of the ``mnist-cpu`` preset, so that the learning rate is not one of the differences. As in
    the course, no warm-up and no gradient clipping. Same batch size and the same EMA decay as (a)
    (the course keeps no EMA; the evaluation uses EMA weights for both).

Fairness: ``torch.set_num_threads(1)``; the two are interleaved, each iteration taking one training
step of whichever model has used less training time so far (each step timed with
``time.perf_counter``: batch draw, forward, backward, optimizer, EMA), until both have used
``--budget-s`` seconds; so a background load slows both alike. Both read the training images in
the same order (:func:`~ddpm_lib.training.runs.batch_indices` with the preset's seed) and draw ``t``
and ``eps`` from generators seeded alike. Recorded per model: steps, images/s, and GFLOP/s from the
FLOPs of one full-batch training step (forward + backward, counted once by
``torch.utils.flop_counter.FlopCounterMode`` on a copy of the network, with attention forced onto
PyTorch's math kernel so that its matrix products are counted; element-wise operations, the
optimizer and the EMA are not counted).

Resumption: every ``--checkpoint-every-s`` seconds (and when training ends or is stopped by Ctrl-C
or SIGTERM, which take effect between two steps) both models' weights, EMA weights, AdamW states,
warm-up state, steps, images seen, time used and generator states go to ``--out DIR/side_by_side.pt``
(torch.save, written atomically by :func:`ddpm_lib.checkpoint.write_atomic`: temporary file, fsync,
``os.replace``). A run started with the same ``--out`` resumes from it (the settings must match;
``--budget-s`` may grow) and never starts a step past the budget (a model may overshoot it by its last step). Each finished evaluation is cached in ``DIR/eval.json``, so
a stopped evaluation resumes at the next metric.

Evaluation (EMA weights of both, after training):

* the negative ELBO in bits/dim, :func:`ddpm_lib.evaluation.elbo_bits_per_dim`, on the first
  ``--elbo-images`` MNIST test images with ``n_strata=25`` (at most 26 network calls per image; the
  empty strata are dropped: 20 remain for the cosine schedule of ``mnist-cpu``). Model (b)
  is wrapped as ``forward(xt, t) -> eps`` with diffusers' timestep ``t - 1`` for ddpm_lib's
  ``t`` in ``1..T``, inside a :class:`~ddpm_lib.checkpoint.LoadedModel` with
  ``linear_schedule(1000)`` and target ``"eps"``, so that both get the same decoder and terms; the
  script first asserts that diffusers' ``alphas_cumprod[k]`` equals ``alpha_bar[k + 1]`` of
  ``linear_schedule(1000)`` to 1e-6 relative (measured: 3.6e-7, diffusers computes in float32);
* the Fréchet distance in the MNIST classifier's features of ``--n`` samples drawn with
  DPM-Solver++(2M) in 20 steps, against the N-matched floor of random training digits (5 disjoint
  sets) and with a bootstrap standard error: :func:`ddpm_lib.evaluation.sampler_table`, as
  ``python -m ddpm_lib sampler-table`` computes it, with one row.

Everything goes to ``--results FILE.json`` (written atomically). Run (``--budget-s`` of training per
model, so twice that in all, plus the evaluation):

    OMP_NUM_THREADS=1 python scripts/side_by_side.py --budget-s 3600 --out runs/side-by-side \\
        --results benchmarks/side-by-side.json

How long: ``2 * --budget-s`` of training, then the evaluation. At the defaults (10,000 ELBO images, N = 2000),
extrapolated from a run with ``--elbo-images 200 --n 200`` on a shared 2-core AMD EPYC (load average 2-4):
model (a) about 17 minutes (ELBO 0.07 s/image: 11 min; FD: 20-step sampling 0.12 s/image, 4 min, plus
about 1.5 min of floor, features and bootstrap), model (b) about an hour (ELBO 0.27 s/image: 46 min;
FD: sampling 0.33 s/image, 11 min, plus 1.5 min). The results record each metric's seconds
(``elbo_seconds``, ``fd_seconds``). A test at a tiny size takes about 3 to 6 minutes:

    OMP_NUM_THREADS=1 python scripts/side_by_side.py --budget-s 20 --elbo-images 200 --n 200 \\
        --out /tmp/sbs --results /tmp/sbs.json
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import platform
import shlex
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lib.checkpoint import LoadedModel, load_classifier, write_atomic
from ddpm_lib.core.schedules import linear_schedule
from ddpm_lib.core.targets import TARGETS
from ddpm_lib.data import load_mnist, to_model
from ddpm_lib.evaluation import elbo_bits_per_dim, sampler_table
from ddpm_lib.models.unet import UNet
from ddpm_lib.training.ddpm import PRESETS, TrainConfig, batch_loss
from ddpm_lib.training.runs import batch_indices

CHECKPOINT = "side_by_side.pt"
EVAL_CACHE = "eval.json"
DIFFUSERS_LR = 1e-3
DIFFUSERS_T = 1000
COURSE_DOWN = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
COURSE_UP = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise SystemExit("error: this benchmark needs diffusers: pip install 'ddpm_lib[benchmark]' (or diffusers>=0.30).") from None
    return diffusers


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def diffusers_unet_kwargs(width: int) -> dict:
    """The course's UNet2DModel at 28 x 28 with widths ``(c, 2c, 2c)``."""
    return {"sample_size": 28, "in_channels": 1, "out_channels": 1, "layers_per_block": 2,
            "block_out_channels": [width, 2 * width, 2 * width], "norm_num_groups": math.gcd(width, 32),
            "down_block_types": list(COURSE_DOWN), "up_block_types": list(COURSE_UP)}


def matching_width(target_params: int) -> int:
    """The multiple of 4 whose course-shaped UNet2DModel has the parameter count nearest ``target_params``."""
    UNet2DModel = _diffusers().UNet2DModel
    best, best_gap, width = None, math.inf, 4
    while True:
        gap = n_params(UNet2DModel(**diffusers_unet_kwargs(width))) / target_params - 1
        if abs(gap) < best_gap:
            best, best_gap = width, abs(gap)
        if gap > 0.5 or width >= 512:  # past it: the count grows with the width
            return best
        width += 4


class EpsFromDiffusers(torch.nn.Module):
    """A diffusers ``UNet2DModel`` as ddpm_lib's ``model(xt, t) -> eps``: ddpm_lib's ``t`` in ``1..T`` is diffusers' ``t - 1``."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(xt, t - 1).sample


class Trainee:
    """One model under training: network, EMA, optimizer (and warm-up), generator, and the counters."""

    def __init__(self, name: str, model: torch.nn.Module, loss_fn, T: int, lr: float, weight_decay: float | None,
                 ema_decay: float, warmup_steps: int | None, grad_clip: float | None, seed: int, batch_size: int):
        self.name, self.model, self.loss_fn, self.T, self.grad_clip = name, model, loss_fn, T, grad_clip
        self.batch_size = batch_size
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        kwargs = {} if weight_decay is None else {"weight_decay": weight_decay}  # None: torch's default
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, **kwargs)
        self.sched = (None if warmup_steps is None else
                      torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warmup_steps)))
        self.gen = torch.Generator().manual_seed(seed)
        self.step, self.seen, self.time_s, self.flops_per_step = 0, 0, 0.0, None
        self.loss_sum, self.loss_count = 0.0, 0

    def train_step(self, data: torch.Tensor, seed: int) -> None:
        t0 = time.perf_counter()
        self.model.train()
        batch = batch_indices(data.shape[0], self.seen, self.batch_size, seed)
        t = torch.randint(1, self.T + 1, (batch.numel(),), generator=self.gen)
        eps = torch.randn((batch.numel(), *data.shape[1:]), generator=self.gen)
        loss = self.loss_fn(self.model, data[batch], t, eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        self.seen += batch.numel()
        self.time_s += time.perf_counter() - t0
        self.loss_sum += float(loss.detach())
        self.loss_count += 1

    def count_flops(self, data: torch.Tensor) -> int:
        """FLOPs of one full-batch training step's forward and backward, on a copy of the network (the run is untouched)."""
        batch_size = self.batch_size
        probe = copy.deepcopy(self.model).train()
        gen = torch.Generator().manual_seed(12345)
        t = torch.randint(1, self.T + 1, (batch_size,), generator=gen)
        eps = torch.randn((batch_size, *data.shape[1:]), generator=gen)
        with torch.random.fork_rng(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            self.loss_fn(probe, data[:batch_size], t, eps).backward()
        return counter.get_total_flops()

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "sched": None if self.sched is None else self.sched.state_dict(), "gen": self.gen.get_state(),
                "step": self.step, "seen": self.seen, "time_s": self.time_s}

    def load(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.ema.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        if self.sched is not None:
            self.sched.load_state_dict(s["sched"])
        self.gen.set_state(s["gen"])
        self.step, self.seen, self.time_s = s["step"], s["seen"], s["time_s"]

    def summary(self) -> dict:
        ips = self.seen / self.time_s if self.time_s > 0 else None
        flops_per_image = self.flops_per_step / self.batch_size
        return {"params": n_params(self.model), "steps": self.step, "images_seen": self.seen,
                "train_time_s": round(self.time_s, 3), "images_per_s": None if ips is None else round(ips, 2),
                "train_gflop_per_step": round(self.flops_per_step / 1e9, 4),
                "gflop_per_s": None if ips is None else round(flops_per_image * ips / 1e9, 3)}


def build_ddpm_lib(config: TrainConfig) -> Trainee:
    torch.manual_seed(config.seed)
    model = UNet(config.model)

    def loss_fn(net, x0, t, eps):
        return batch_loss(net, x0, t, eps, config)

    return Trainee("ddpm_lib", model, loss_fn, config.schedule.T, config.lr, config.weight_decay, config.ema_decay,
                   config.warmup_steps, config.grad_clip, config.seed, config.batch_size)


def build_diffusers(config: TrainConfig, width: int) -> tuple[Trainee, object]:
    d = _diffusers()
    torch.manual_seed(config.seed)
    unet = d.UNet2DModel(**diffusers_unet_kwargs(width))
    scheduler = d.DDPMScheduler(num_train_timesteps=DIFFUSERS_T)

    def loss_fn(net, x0, t, eps):
        k = t - 1  # diffusers' timesteps are 0..T-1
        return F.mse_loss(net(scheduler.add_noise(x0, eps, k), k).sample, eps)

    return Trainee("diffusers", unet, loss_fn, DIFFUSERS_T, DIFFUSERS_LR, None, config.ema_decay, None, None,
                   config.seed, config.batch_size), scheduler


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def atomic_json(path: Path, obj: dict) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def save(path: Path, settings: dict, trainees: list[Trainee]) -> None:
    buf = io.BytesIO()
    torch.save({"settings": settings, "torch_rng": torch.get_rng_state(),
                **{tr.name: tr.state() for tr in trainees}}, buf)
    write_atomic(path, buf.getvalue())


def train(args, settings: dict, trainees: list[Trainee], data: torch.Tensor, config: TrainConfig, ckpt: Path) -> None:
    budget = args.budget_s
    last_save = last_log = time.perf_counter()
    trained = False
    # Ctrl-C or SIGTERM stops the loop between two steps (never inside one), writes the checkpoint and exits
    stop: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: stop.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop:
            left = [tr for tr in trainees if tr.time_s < budget]
            if not left:
                break
            tr = min(left, key=lambda x: x.time_s)
            tr.train_step(data, config.seed)
            trained = True
            now = time.perf_counter()
            if now - last_log >= args.log_every_s:
                print("  ".join(f"{x.name}: step {x.step}, {x.time_s:.0f}/{budget:.0f} s, loss "
                                + (f"{x.loss_sum / x.loss_count:.4f}" if x.loss_count else "-") for x in trainees), flush=True)
                for x in trainees:
                    x.loss_sum, x.loss_count = 0.0, 0
                last_log = now
            if now - last_save >= args.checkpoint_every_s:
                save(ckpt, settings, trainees)
                last_save = time.perf_counter()
        if trained or not ckpt.exists():
            save(ckpt, settings, trainees)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if stop:
        print(f"stopped by signal {stop[0]}: checkpoint written to {ckpt} (" +
              ", ".join(f"{tr.name} step {tr.step}, {tr.time_s:.1f} s" for tr in trainees) +
              "); run the same command to resume.", file=sys.stderr, flush=True)
        raise SystemExit(128 + stop[0])
    if not trained:
        print(f"both models already used their budget of {budget:g} s (resumed from {ckpt}): no training.", flush=True)


def check_schedules(scheduler) -> float:
    """diffusers' ``alphas_cumprod[k]`` against ``linear_schedule(1000).alpha_bar[k + 1]``: the largest relative gap (asserted <= 1e-6)."""
    ours = linear_schedule(DIFFUSERS_T).alpha_bar[1:]
    theirs = scheduler.alphas_cumprod.to(torch.float64)
    gap = float(((theirs - ours).abs() / ours).max())
    assert theirs.shape == ours.shape and gap <= 1e-6, f"diffusers' alphas_cumprod differ from linear_schedule(1000): {gap:.3g}"
    return gap


def evaluate(args, loaded: dict[str, LoadedModel], cache_path: Path, cache_key: dict) -> dict:
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if cache.get("key") != cache_key:
        cache = {"key": cache_key}
    test = load_mnist("test")[0][: args.elbo_images]
    classifier = load_classifier("mnist-classifier")
    for name, lm in loaded.items():
        entry = cache.setdefault(name, {})
        if "elbo" not in entry:
            t0 = time.perf_counter()
            elbo = elbo_bits_per_dim(lm, test, batch_size=100, seed=0, progress=True, n_strata=25)
            elbo.pop("denoising_bpd_by_t")  # one entry per t, mostly empty with 25 strata
            entry["elbo"], entry["elbo_seconds"] = elbo, round(time.perf_counter() - t0, 1)
            atomic_json(cache_path, cache)
        print(f"{name}: ELBO {entry['elbo']['bits_per_dim']:.4f} +- {entry['elbo']['bits_per_dim_stderr']:.4f} bits/dim "
              f"({entry['elbo']['n_images']} test images, {entry['elbo_seconds']} s)", flush=True)
        if "fd" not in entry:
            t0 = time.perf_counter()
            table = sampler_table(lm, classifier, args.n, [20], samplers=("dpm-solver-2m",), seed=0, batch_size=250,
                                  floor_sets=5, n_bootstrap=200)
            row = table.pop("rows")[0]
            entry["fd"] = {**{k: v for k, v in table.items() if k not in ("threads", "device")}, **row}
            entry["fd_seconds"] = round(time.perf_counter() - t0, 1)
            atomic_json(cache_path, cache)
        fd = entry["fd"]
        print(f"{name}: FD {fd['fd']:.3f} +- {fd['fd_se']:.3f}, floor {fd['floor']:.3f} +- {fd['floor_sd']:.3f} (sd), "
              f"ratio {fd['fd_ratio']:.3f} +- {fd['fd_ratio_se']:.3f} (N = {fd['n']}, {fd['sampler']} {fd['steps']} steps, "
              f"{entry['fd_seconds']} s)", flush=True)
    return cache


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="mnist-cpu", help="ddpm_lib's preset (model (a))")
    p.add_argument("--target", default="v", choices=list(TARGETS), help="model (a)'s target (default v)")
    p.add_argument("--budget-s", type=float, required=True, help="training seconds per model")
    p.add_argument("--checkpoint-every-s", type=float, default=300.0)
    p.add_argument("--log-every-s", type=float, default=60.0)
    p.add_argument("--elbo-images", type=int, default=10000, help="first N MNIST test images for the ELBO")
    p.add_argument("--n", type=int, default=2000, help="samples for the Fréchet distance (and real digits per floor set)")
    p.add_argument("--out", required=True, help="folder for the checkpoint and the evaluation cache; resumed from")
    p.add_argument("--results", required=True, help="the JSON file of results")
    args = p.parse_args()
    if args.preset not in PRESETS:
        raise SystemExit(f"error: unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}.")
    config = replace(PRESETS[args.preset], target=args.target)
    if config.model.num_classes is not None or config.init_from is not None:
        raise SystemExit(f"error: {args.preset} is conditional or fine-tuned; compare an unconditional preset from scratch.")
    if not 2 <= args.elbo_images <= 10000 or args.n < 2 or args.budget_s < 0:
        raise SystemExit("error: need 2 <= --elbo-images <= 10000, --n >= 2 and --budget-s >= 0.")
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only allowed before any inter-op work; the training uses none
        pass
    d = _diffusers()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT

    a = build_ddpm_lib(config)
    params_a = n_params(a.model)
    width = matching_width(params_a)
    b, scheduler = build_diffusers(config, width)
    gap = check_schedules(scheduler)  # before anything is trained or evaluated
    params_b = n_params(b.model)
    print(f"parameters: ddpm_lib {args.preset} {params_a:,}; diffusers UNet2DModel widths "
          f"{diffusers_unet_kwargs(width)['block_out_channels']} {params_b:,} ({params_b / params_a - 1:+.1%})", flush=True)
    settings = {"preset": args.preset, "target": args.target, "train": config.to_json(), "model": config.model.to_dict(),
                "diffusers_unet": diffusers_unet_kwargs(width), "diffusers_lr": DIFFUSERS_LR}
    settings["train"].pop("steps")  # not used: the budget is time
    trainees = [a, b]
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        if state["settings"] != settings:
            raise SystemExit(f"error: {ckpt} was written with other settings; use the same --preset/--target or a new --out.")
        for tr in trainees:
            tr.load(state[tr.name])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {ckpt}: " + ", ".join(f"{tr.name} step {tr.step} ({tr.time_s:.1f} s)" for tr in trainees), flush=True)

    data = to_model(load_mnist("train")[0])
    for tr in trainees:
        tr.flops_per_step = tr.count_flops(data)
    train(args, settings, trainees, data, config, ckpt)
    for tr in trainees:
        s = tr.summary()
        print(f"{tr.name}: {s['steps']} steps in {s['train_time_s']:.1f} s, {s['images_per_s']} images/s, "
              f"{s['train_gflop_per_step']} GFLOP/step, {s['gflop_per_s']} GFLOP/s", flush=True)

    loaded = {"ddpm_lib": LoadedModel(a.ema.module, config.schedule, config.target, {}),
              "diffusers": LoadedModel(EpsFromDiffusers(b.ema.module), linear_schedule(DIFFUSERS_T), "eps", {})}
    cache_key = {"steps": {tr.name: tr.step for tr in trainees}, "elbo_images": args.elbo_images, "n": args.n}
    evals = evaluate(args, loaded, out / EVAL_CACHE, cache_key)

    result = {
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
        "budget_s": args.budget_s, "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "diffusers": d.__version__,
        "preset": args.preset, "elbo_images": args.elbo_images, "elbo_n_strata": 25,
        "fd": {"n": args.n, "sampler": "dpm-solver-2m", "steps": 20, "floor_sets": 5, "n_bootstrap": 200},
        "alphas_cumprod_max_rel_gap": gap,
        "flops_note": "forward + backward of one full-batch step, torch.utils.flop_counter with the math attention "
                      "kernel; GFLOP/s = FLOPs per image x images/s",
        "models": {
            "ddpm_lib": {"recipe": f"preset {args.preset}, target {args.target}, schedule {config.schedule.name}, AdamW lr "
                                   f"{config.lr} wd {config.weight_decay}, warm-up {config.warmup_steps}, clip "
                                   f"{config.grad_clip}, EMA {config.ema_decay}, batch {config.batch_size}",
                         "unet": config.model.to_dict(), **a.summary(), **evals["ddpm_lib"]},
            "diffusers": {"recipe": f"UNet2DModel + DDPMScheduler({DIFFUSERS_T}) linear, eps, MSE, AdamW lr {DIFFUSERS_LR} "
                                    f"(torch defaults otherwise), no warm-up, no clip, EMA {config.ema_decay}, batch "
                                    f"{config.batch_size}",
                          "unet": diffusers_unet_kwargs(width), **b.summary(), **evals["diffusers"]},
        },
    }
    atomic_json(Path(args.results), result)
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
