"""Training the VAE of Part I (chapter "The variational autoencoder"; the network and its ELBO are :mod:`ddpm_lib.models.vae`)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import read_checkpoint, remove_stale_temp_files, save_checkpoint
from ..data import load_mnist, to_model
from ..core.likelihood import bits_per_dim
from ..models.vae import VAE, VAEConfig, elbo_terms
from .runs import CHECKPOINT_NAME, batch_indices, check_not_past, comparable, flatten_optimizer, run_folder, unflatten_optimizer

__all__ = ["VAETrainConfig", "train_vae"]


@dataclass(frozen=True)
class VAETrainConfig:
    """Settings of a VAE training run, stored in its checkpoint's JSON.

    Attributes:
        model: the architecture.
        steps: optimizer steps in all.
        batch_size: images per step.
        lr: Adam's peak learning rate.
        lr_decay_steps: the learning rate follows a half cosine from ``lr`` to ``lr / 10`` over
            this many steps, then stays at ``lr / 10``. It does not depend on ``steps``, so that a run
            extended with a larger ``--steps`` continues the same schedule.
        seed: seeds the weights and the generator of batch order and ``eps``.
        checkpoint_every: steps between checkpoints.

    Raises:
        ValueError: for a non-positive setting.
    """

    model: VAEConfig = VAEConfig()
    steps: int = 12000
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay_steps: int = 12000
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "lr_decay_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"VAETrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ValueError(f"VAETrainConfig.lr must be > 0, got {self.lr}.")

    def to_json(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


def _lr_at(step: int, config: VAETrainConfig) -> float:
    return config.lr * (0.55 + 0.45 * math.cos(math.pi * min(step, config.lr_decay_steps) / config.lr_decay_steps))


def train_vae(
    config: VAETrainConfig,
    out_dir: str | Path,
    steps: int | None = None,
    images: torch.Tensor | None = None,
    progress: bool = True,
    command: str = "",
) -> Path:
    """Train (or resume) the VAE on uint8 ``images`` (default: the 60,000 MNIST training images), on the CPU.

    Each step draws a batch (a fresh permutation per epoch), ``eps ~ N(0, I)``, and takes an Adam step
    on the negative ELBO in nats per image (:func:`ddpm_lib.models.vae.elbo_terms`). The checkpoint
    ``out_dir/checkpoint.safetensors`` (written atomically by ``ddpm_lib.checkpoint.save_checkpoint``)
    holds the weights, Adam's moments and the generator's state, so a stopped run resumes where it
    stopped. Its JSON holds the config, the step, the wall time and ``command``.

    Args:
        config: the run's settings; when resuming, must equal the stored ones (but for ``steps``).
        out_dir: the run folder.
        steps: total steps, overriding ``config.steps``.
        images: uint8 ``(N, 28, 28)`` training images.
        progress: show a tqdm bar.
        command: the command line that started the run (stored in the JSON).

    The weights are initialised from ``config.seed`` with the global generator forked (the caller's
    is left as it was). Shipping a trained VAE with its test bits/dim is the command line's
    ``train-vae --export``: :func:`ddpm_lib.evaluation.vae_test_metrics`, then
    :func:`ddpm_lib.checkpoint.export_vae`.

    Returns:
        The path of the checkpoint.

    Raises:
        ValueError: if ``out_dir`` is a file or holds a checkpoint of another configuration or one
            already past ``steps``.
    """
    if steps is not None:
        config = replace(config, steps=steps)
    out = run_folder(out_dir)
    path = out / CHECKPOINT_NAME
    remove_stale_temp_files(path, legacy=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = VAE(config.model)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    step, wall = 0, 0.0
    if path.exists():
        ckpt = read_checkpoint(path)
        stored, mine = ckpt.meta["train"], config.to_json()
        if comparable(stored) != comparable(mine):
            raise ValueError(f"{path} was written by another configuration ({stored} vs {mine}); use a new --out folder.")
        model.load_state_dict(ckpt.prefixed("model"))
        opt.load_state_dict(unflatten_optimizer(ckpt.prefixed("optim"), ckpt.meta["optim"]))
        gen.set_state(ckpt.tensors["rng.generator"])
        step, wall = ckpt.meta["state"]["step"], ckpt.meta["state"]["wall_s"]
        check_not_past(path, step, config.steps)

    def save() -> None:
        opt_tensors, groups = flatten_optimizer(opt)
        tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors, "rng.generator": gen.get_state()}
        meta = {"kind": "vae", "model": config.model.to_dict(), "train": config.to_json(), "optim": groups,
                "state": {"step": step, "wall_s": round(wall, 2)}, "command": command}
        save_checkpoint(path, tensors, meta)

    data = to_model(load_mnist("train")[0] if images is None else images)
    n = data.shape[0]
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train-vae", unit="step")
    while step < config.steps:
        t0 = time.perf_counter()
        model.train()
        x = data[batch_indices(n, step * config.batch_size, config.batch_size, config.seed)]
        eps = torch.randn((x.shape[0], config.model.latent_dim), generator=gen)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        loss = -elbo_terms(model, x, eps).elbo.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        wall += time.perf_counter() - t0
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(bits_per_dim=f"{float(bits_per_dim(loss.item())):.3f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
    bar.close()
    if not path.exists():
        save()
    return path
