"""Throughput and memory of the training presets on one device (a measurement, not a test).

``python -m ddpm_lib benchmark [--preset NAME ...] [--device D]`` prints, per preset: training
images/s and step time (after warm-up steps), sampling images/s (one network evaluation per image
per step, i.e. per-step throughput of the DDIM loop), and peak memory (CUDA: the allocator's
peak; CPU: the process's peak resident set size, which includes everything loaded before).
"""

from __future__ import annotations

import resource
import sys
import time
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

from .data import to_model
from .devices import pick_device
from .sampling import ddim_step, ddim_timesteps, model_denoiser, sample
from .training.ddpm import PRESETS, batch_loss
from .models.unet import UNet

__all__ = ["benchmark_preset", "matmul_peak_tflops", "train_step"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def matmul_peak_tflops(
    device: str | torch.device = "cpu", n: int | None = None, repeats: int = 5, dtype: torch.dtype | None = None
) -> float:
    """The measured matrix-multiply rate of a device, TFLOP/s: the ceiling to compare training against.

    Times ``repeats`` products of two ``n x n`` matrices after one warm-up product, in ``dtype``:
    by default bfloat16 on CUDA (the dtype the presets train in there) and float32 elsewhere (pass
    ``torch.bfloat16`` for the CPU's bf16 rate, the ceiling of bf16 autocast there). The warm-up's FLOPs are
    counted by ``torch.utils.flop_counter`` (``2 n^3``), as the model's are in
    :func:`benchmark_preset`. ``n`` defaults to 8192 on CUDA and 1024 on other devices.

    Raises:
        ValueError: if ``n < 1`` or ``repeats < 1``.
    """
    dev = torch.device(device)
    n = n if n is not None else (8192 if dev.type == "cuda" else 1024)
    if n < 1 or repeats < 1:
        raise ValueError(f"matmul_peak_tflops needs n >= 1 and repeats >= 1, got n={n}, repeats={repeats}.")
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    with FlopCounterMode(display=False) as counter:
        a @ b
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(dev)
    return counter.get_total_flops() * repeats / (time.perf_counter() - t0) / 1e12


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x0: torch.Tensor, config, bf16: bool = False) -> torch.Tensor:
    """One optimizer step on the batch ``x0`` (Ho et al. 2020, Algorithm 1), as :func:`benchmark_preset` times it.

    Draws ``t`` uniform on ``1..T`` and ``eps = randn_like(x0)`` (so ``eps`` keeps ``x0``'s memory format)
    from the global generator, takes :func:`~ddpm_lib.training.ddpm.batch_loss` of ``net`` (any module
    ``(xt, t) -> output``, e.g. a compiled one) under ``config`` (bf16 autocast around the network if
    ``bf16``), then ``zero_grad``, ``backward`` and ``opt.step()``. Nothing is synchronised.

    Returns:
        The loss, detached (0-d float32).
    """
    t = torch.randint(1, config.schedule.T + 1, (x0.shape[0],), device=x0.device)
    loss = batch_loss(net, x0, t, torch.randn_like(x0), config, bf16)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def benchmark_preset(
    name: str, device: str | None = None, train_steps: int = 10, warmup: int = 3, sample_batch: int = 64, sample_steps: int = 10
) -> dict:
    """Measure one preset on random data shaped like MNIST.

    Returns:
        A dict with ``preset``, ``device``, ``params``, ``batch_size``, ``train_images_per_s``,
        ``train_step_ms``, ``sample_images_per_s`` (images x steps per second, i.e. network
        evaluations per second), ``peak_memory_mib``, ``forward_gflops_per_image`` (one forward pass,
        counted by ``torch.utils.flop_counter``), ``train_tflops_per_s`` (taking a training step
        as 3 forward passes, the usual estimate), ``matmul_peak_tflops_per_s`` (from
        :func:`matmul_peak_tflops` on the same device) and ``train_fraction_of_matmul_peak``.

    Raises:
        KeyError: for an unknown preset name.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    dev = pick_device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # seeded inside; the caller's generator untouched
        torch.manual_seed(0)
        return _measure(name, PRESETS[name], dev, train_steps, warmup, sample_batch, sample_steps)


def _measure(name: str, cfg, dev: torch.device, train_steps: int, warmup: int, sample_batch: int, sample_steps: int) -> dict:
    model = UNet(cfg.model).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    B = cfg.batch_size
    # random 8-bit pixels (on the grid, which the hybrid loss's decoder term requires), shaped like MNIST
    x0 = to_model(torch.randint(0, 256, (B, 28, 28), dtype=torch.uint8)).to(dev)
    use_bf16 = cfg.bf16 and dev.type == "cuda"
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    for _ in range(warmup):
        train_step(model, opt, x0, cfg, use_bf16)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(train_steps):
        train_step(model, opt, x0, cfg, use_bf16)
    _sync(dev)
    train_s = (time.perf_counter() - t0) / train_steps

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x0[:1], torch.ones(1, dtype=torch.long, device=dev))
    flops_forward = counter.get_total_flops()
    denoiser = model_denoiser(model, cfg.schedule, cfg.target)
    x_T = torch.randn(sample_batch, 1, 28, 28, device=dev)
    steps = ddim_timesteps(cfg.schedule.T, sample_steps)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
        sample(denoiser, cfg.schedule, partial(ddim_step, eta=0.0), x_T, steps[:2])
        _sync(dev)
        t0 = time.perf_counter()
        sample(denoiser, cfg.schedule, partial(ddim_step, eta=0.0), x_T, steps)
        _sync(dev)
    sample_s = time.perf_counter() - t0
    train_tflops = 3 * flops_forward * B / train_s / 1e12
    peak = matmul_peak_tflops(dev)
    return {
        "preset": name,
        "device": str(dev),
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": B,
        "train_images_per_s": round(B / train_s, 1),
        "train_step_ms": round(1000 * train_s, 1),
        "sample_images_per_s": round(sample_batch * len(steps) / sample_s, 1),
        "peak_memory_mib": round(_peak_mib(dev), 1),
        "forward_gflops_per_image": round(flops_forward / 1e9, 4),
        "train_tflops_per_s": round(train_tflops, 4),
        "matmul_peak_tflops_per_s": round(peak, 4),
        "train_fraction_of_matmul_peak": round(train_tflops / peak, 3),
        "torch_threads": torch.get_num_threads(),
    }
