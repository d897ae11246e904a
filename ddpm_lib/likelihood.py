"""The terms of the DDPM evidence lower bound, per image, in nats.

Ho et al. (2020), eq. 5, with the discrete decoder of their §3.3 (eq. 13):

.. math::
   -\\log p_\\theta(x_0) \\le \\underbrace{D_\\mathrm{KL}(q(x_T\\mid x_0)\\,\\|\\,p(x_T))}_{L_T}
   + \\sum_{t=2}^{T} \\underbrace{D_\\mathrm{KL}(q(x_{t-1}\\mid x_t,x_0)\\,\\|\\,p_\\theta(x_{t-1}\\mid x_t))}_{L_{t-1}}
   \\underbrace{- \\log p_\\theta(x_0\\mid x_1)}_{L_0}.

The reverse steps are :math:`p_\\theta(x_{t-1}\\mid x_t) = \\mathcal N(\\tilde\\mu_t(x_t, \\hat x_0), \\tilde\\beta_t I)`
for ``t >= 2`` (the sampler of :func:`ddpm_lib.samplers.ddpm_step`), and the decoder is a Gaussian of
mean :math:`\\hat x_0(x_1)` and variance :math:`\\beta_1`, integrated over each pixel's bin (Ho et al.
2020, eq. 13). Pixels are the bin centres ``k / 127.5 - 1`` (:func:`ddpm_lib.data.to_model`), bins of
width ``2/255``; the outermost bins extend to infinity. Dividing the total by ``D ln 2`` (``D`` =
784 for MNIST) gives bits per dimension of the discrete 8-bit data. Book chapter "The variational
diffusion model" (the VDM ELBO) and "Training a DDPM on MNIST".
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal, kl_divergence

from .posterior import posterior_mean, posterior_variance
from .schedules import Schedule, gather

__all__ = ["prior_kl", "denoising_kl", "decoder_nll", "BIN_WIDTH"]

BIN_WIDTH = 2.0 / 255.0
"""Width of one 8-bit intensity level in the model's ``[-1, 1]`` range."""


def _per_image(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


def prior_kl(x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`L_T = D_\\mathrm{KL}(q(x_T \\mid x_0)\\,\\|\\,\\mathcal N(0, I))` per image, nats, shape ``(B,)``.

    Args:
        x0: clean images ``(B, ...)`` in ``[-1, 1]``.
    """
    t = torch.full((x0.shape[0],), schedule.T, dtype=torch.long)
    ab = gather(schedule.alpha_bar, t, x0)
    q = Normal(ab.sqrt() * x0, (1.0 - ab).sqrt().expand_as(x0))
    p = Normal(torch.zeros_like(x0), torch.ones_like(x0))
    return _per_image(kl_divergence(q, p))


def denoising_kl(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`L_{t-1}` per image, nats, shape ``(B,)``, for ``t`` in ``2..T``.

    :math:`D_\\mathrm{KL}(\\mathcal N(\\tilde\\mu_t(x_t, x_0), \\tilde\\beta_t)\\,\\|\\,\\mathcal N(\\tilde\\mu_t(x_t, \\hat x_0), \\tilde\\beta_t))`,
    which equals :math:`\\|\\tilde\\mu_t(x_t,x_0) - \\tilde\\mu_t(x_t,\\hat x_0)\\|^2 / (2\\tilde\\beta_t)`
    (book eq. ``kl-to-mse``; Ho et al. 2020, eq. 8); computed here with ``torch.distributions``.

    Raises:
        ValueError: if some ``t < 2`` (use :func:`decoder_nll` at ``t = 1``).
    """
    if int(torch.as_tensor(t).min()) < 2:
        raise ValueError("denoising_kl is L_(t-1) for t in 2..T; at t = 1 use decoder_nll.")
    std = posterior_variance(t, schedule, xt).sqrt().expand_as(xt)
    q = Normal(posterior_mean(x0, xt, t, schedule), std)
    p = Normal(posterior_mean(x0_hat, xt, t, schedule), std)
    return _per_image(kl_divergence(q, p))


def decoder_nll(x0: torch.Tensor, x0_hat: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`L_0 = -\\log p_\\theta(x_0 \\mid x_1)` per image, nats, shape ``(B,)`` (Ho et al. 2020, eq. 13).

    Each pixel's probability is the mass of :math:`\\mathcal N(\\hat x_0, \\beta_1)` on its bin
    ``[x - 1/255, x + 1/255]``, with the bins of ``-1`` and ``1`` extended to infinity.

    Args:
        x0: images on the 8-bit grid ``k / 127.5 - 1``, shape ``(B, ...)``.
        x0_hat: the model's prediction of ``x0`` from ``x1``, same shape.

    Raises:
        ValueError: if ``x0`` is not on the 8-bit grid (convert with :func:`ddpm_lib.data.to_model`).
    """
    k = (x0 + 1.0) * 127.5
    if not torch.allclose(k, k.round(), atol=1e-3) or float(x0.min()) < -1 - 1e-6 or float(x0.max()) > 1 + 1e-6:
        raise ValueError("decoder_nll needs x0 on the 8-bit grid k / 127.5 - 1 (k = 0..255); use ddpm_lib.data.to_model.")
    std = math.sqrt(float(schedule.beta[1]))
    upper = torch.where(x0 > 1 - 1e-6, torch.full_like(x0, math.inf), x0 + BIN_WIDTH / 2)
    lower = torch.where(x0 < -1 + 1e-6, torch.full_like(x0, -math.inf), x0 - BIN_WIDTH / 2)
    # log(cdf(upper) - cdf(lower)), computed on the side of the mean where it does not cancel
    z_up, z_lo = (upper - x0_hat) / std, (lower - x0_hat) / std
    upper_tail = z_lo > 0
    log_mass = torch.where(
        upper_tail,
        _log_diff_exp(torch.special.log_ndtr(-z_lo), torch.special.log_ndtr(-z_up)),
        _log_diff_exp(torch.special.log_ndtr(z_up), torch.special.log_ndtr(z_lo)),
    )
    return -_per_image(log_mass)


def _log_diff_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # log(exp(a) - exp(b)) for a >= b, stable; the mass is floored at 1e-300 to stay finite
    return a + torch.log(-torch.expm1((b - a).clamp(max=0))).clamp(min=-690.0)
