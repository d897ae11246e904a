"""Training a small denoiser on 2-D toy data: Ho et al. (2020), Algorithm 1, on a density that can be sampled exactly.

The chapters "From KL divergence to mean squared error" and "Three (and four) parameterizations" train
several copies of :class:`~ddpm_lib.models.mlp.ToyDenoiser` on a Gaussian mixture with different
losses, targets or distributions of ``t``, and compare them with the mixture's exact posterior mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.forward import q_sample
from ..core.losses import LOSSES
from ..core.schedules import Schedule
from ..core.targets import get_target
from ..models.mlp import ToyDenoiser

__all__ = ["train_toy"]


def train_toy(
    sample_data: Callable[[int, torch.Generator], torch.Tensor],
    schedule: Schedule,
    target: str = "eps",
    loss: str = "simple",
    steps: int = 4000,
    batch: int = 512,
    seed: int = 1,
    lr: float = 2e-3,
    p_t: torch.Tensor | None = None,
    dim: int = 2,
) -> ToyDenoiser:
    """Train a :class:`~ddpm_lib.models.mlp.ToyDenoiser` on data drawn by ``sample_data``; return it in eval mode.

    Each step draws ``x0 = sample_data(batch, gen).float()``, then ``t`` (uniform on ``1..T``, or
    ``1 + k`` with ``k ~ p_t``, importance sampling as in the chapter "From KL divergence to mean squared error"), then
    ``eps ~ N(0, I)``, all from one generator seeded ``seed``; the loss ``LOSSES[loss]`` of the
    network's output at ``q_sample(x0, t, eps)`` for ``target`` takes an Adam step (learning rate
    ``lr``, cosine-annealed to 0 over ``steps``). The weights are initialised from ``seed`` with the
    global generator forked, so the caller's random state is left as it was.

    Args:
        sample_data: ``(n, generator) -> (n, d)`` samples, e.g. ``GaussianMixture.sample``.
        schedule: the noise schedule; the network is told ``t`` in ``1..T``.
        target: a name in :data:`~ddpm_lib.core.targets.TARGETS` (``"eps"``, ``"x0"``, ``"v"``, ``"score"``).
        loss: a name in :data:`~ddpm_lib.core.losses.LOSSES` (``"simple"`` or ``"vlb"``).
        p_t: probabilities of ``t = 1..T``, shape ``(T,)``, or ``None`` for uniform.
        dim: the data dimension ``d``.

    Raises:
        ValueError: for an unknown target or loss, or ``p_t`` of the wrong shape.
    """
    get_target(target)
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}.")
    T = schedule.T
    if p_t is not None and tuple(p_t.shape) != (T,):
        raise ValueError(f"p_t must hold the probabilities of t = 1..T, shape ({T},); got {tuple(p_t.shape)}.")
    loss_fn = LOSSES[loss]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ToyDenoiser(T, dim=dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = sample_data(batch, gen).float()
        t = torch.randint(1, T + 1, (batch,), generator=gen) if p_t is None else torch.multinomial(p_t, batch, True, generator=gen) + 1
        eps = torch.randn(batch, dim, generator=gen)
        out = loss_fn(model(q_sample(x0, t, eps, schedule), t), x0, eps, t, schedule, target)
        opt.zero_grad()
        out.backward()
        opt.step()
        cosine.step()
    return model.eval()
