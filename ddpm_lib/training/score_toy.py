"""Training a small score network on toy data by denoising score matching (Vincent 2011; Song & Ermon 2019).

The chapter "Score matching" (``notebooks/score_matching.ipynb``) trains a
:class:`~ddpm_lib.models.mlp.ToyDenoiser` whose output is read directly as the score
:math:`s_\\theta(x_t, t) \\approx \\nabla_{x_t}\\log q(x_t)` of the noised marginal, with
:func:`~ddpm_lib.core.score_matching.dsm_loss` on the book's forward process, and compares it with the
exact score of a Gaussian mixture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.forward import q_sample
from ..core.schedules import Schedule
from ..core.score_matching import dsm_loss
from ..models.mlp import ToyDenoiser

__all__ = ["WEIGHTINGS", "train_score_toy"]

WEIGHTINGS = ("sigma2", "none")
"""The per-step weights :func:`train_score_toy` knows: ``"sigma2"``, :math:`\\lambda_t = 1 - \\bar\\alpha_t` (the
kernel's variance, Song & Ermon 2019, eq. 6), and ``"none"``, :math:`\\lambda_t = 1`."""


def train_score_toy(
    sample_data: Callable[[int, torch.Generator], torch.Tensor],
    schedule: Schedule,
    weighting: str = "sigma2",
    steps: int = 3000,
    batch: int = 512,
    seed: int = 1,
    lr: float = 2e-3,
    dim: int = 2,
    width: int = 128,
) -> ToyDenoiser:
    """Train a score network by denoising score matching over all steps ``t``; return it in eval mode.

    Each step draws ``x0 = sample_data(batch, gen).float()``, ``t`` uniform on ``1..T`` and
    ``eps ~ N(0, I)``, all from one generator seeded ``seed``, forms ``xt = q_sample(x0, t, eps)``
    (book eq. ``q-sample``), and takes an Adam step (learning rate ``lr``, cosine-annealed to 0 over
    ``steps``) on :func:`~ddpm_lib.core.score_matching.dsm_loss` of the network's output with the kernel
    :math:`\\alpha = \\sqrt{\\bar\\alpha_t}`, :math:`\\sigma = \\sqrt{1-\\bar\\alpha_t}` (book eq. ``dsm-loss``)
    and the per-row weight of ``weighting``. With ``"sigma2"`` this is the loss of Song & Ermon (2019),
    eq. 6, for the book's noise levels, and equals half of :math:`L_\\text{simple}` of
    :math:`\\hat\\epsilon = -\\sqrt{1-\\bar\\alpha_t}\\, s_\\theta` (Ho et al. 2020, eq. 14). The weights are
    initialised from ``seed`` with the global generator forked, so the caller's random state is left as it was.

    Args:
        sample_data: ``(n, generator) -> (n, d)`` samples, e.g. ``GaussianMixture.sample``.
        schedule: the noise schedule; the network is told ``t`` in ``1..T``.
        weighting: a name in :data:`WEIGHTINGS`.
        steps, batch, lr: the optimisation's length, batch size and initial learning rate.
        dim: the data dimension ``d``; width: the network's hidden units per layer.

    Returns:
        A float32 :class:`~ddpm_lib.models.mlp.ToyDenoiser` ``(xt, t) -> score``, shape ``(B, d)``, in
        units of 1 / ``x``.

    Raises:
        ValueError: for an unknown weighting or a non-positive ``steps`` or ``batch``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}.")
    if steps < 1 or batch < 1:
        raise ValueError(f"train_score_toy needs positive steps and batch, got steps={steps}, batch={batch}.")
    T = schedule.T
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ToyDenoiser(T, width=width, dim=dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = sample_data(batch, gen).float()
        t = torch.randint(1, T + 1, (batch,), generator=gen)
        eps = torch.randn(batch, dim, generator=gen)
        xt = q_sample(x0, t, eps, schedule)
        ab = schedule.alpha_bar[t]  # float64; dsm_loss casts its coefficients at the end
        weight = 1.0 - ab if weighting == "sigma2" else None
        loss = dsm_loss(model(xt, t), xt, x0, sigma=(1.0 - ab).sqrt(), alpha=ab.sqrt(), weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        cosine.step()
    return model.eval()
