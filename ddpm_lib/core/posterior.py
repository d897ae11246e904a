"""The Gaussian posterior :math:`q(x_{t-1} \\mid x_t, x_0)` of the forward process.

Book chapter "The Gaussian posterior" (``notebooks/posterior.ipynb``), eqs. ``posterior-mean`` and
``posterior-variance``; Ho et al. (2020), eqs. 6-7:

.. math::
   \\tilde\\mu_t(x_t, x_0) = \\frac{\\sqrt{\\bar\\alpha_{t-1}}\\,\\beta_t}{1 - \\bar\\alpha_t} x_0
        + \\frac{\\sqrt{\\alpha_t}\\,(1 - \\bar\\alpha_{t-1})}{1 - \\bar\\alpha_t} x_t,
   \\qquad
   \\tilde\\beta_t = \\frac{1 - \\bar\\alpha_{t-1}}{1 - \\bar\\alpha_t} \\beta_t .

Written with the noise, the mean is :math:`(x_t - \\beta_t\\,\\epsilon / \\sqrt{1 - \\bar\\alpha_t}) / \\sqrt{\\alpha_t}`
(book eq. ``posterior-mean-eps``; Ho et al. 2020, eq. 11): the factor is :math:`1/\\sqrt{\\alpha_t}`, one
step's worth, not :math:`1/\\sqrt{\\bar\\alpha_t}`.
"""

from __future__ import annotations

import torch

from .schedules import Schedule, gather, gather64

__all__ = ["posterior_mean_coefs", "posterior_mean", "posterior_variance"]


def _check_t(t: torch.Tensor, name: str) -> None:
    t = torch.as_tensor(t)
    if t.numel() and int(t.min()) < 1:
        raise ValueError(f"{name}: q(x_(t-1) | x_t, x_0) is defined for t in 1..T; got t = {int(t.min())}.")


def posterior_mean_coefs(t: torch.Tensor, schedule: Schedule, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The coefficients ``(c_x0, c_xt)`` with :math:`\\tilde\\mu_t = c_{x_0} x_0 + c_{x_t} x_t`.

    Book eq. ``posterior-mean``; Ho et al. (2020), eq. 7. Both have shape ``(B, 1, ..., 1)``
    (broadcasting against ``like``) and ``like``'s dtype and device. They are formed in float64 and
    cast at the end, so at ``t = 1`` they are ``(1, 0)`` to ``like``'s round-off: cast first, float32
    would give ``c_x0(1) = beta_1 / (1 - float32(alpha_bar_1)) = 0.99983`` for DDPM's linear schedule.

    Raises:
        ValueError: if some ``t`` is 0.
        IndexError: if some ``t`` exceeds ``T``.
    """
    _check_t(t, "posterior_mean_coefs")
    ab = gather64(schedule.alpha_bar, t, like)
    ab_prev = gather64(schedule.alpha_bar, torch.as_tensor(t) - 1, like)
    beta = gather64(schedule.beta, t, like)
    c_x0 = ab_prev.sqrt() * beta / (1.0 - ab)
    c_xt = (1.0 - beta).sqrt() * (1.0 - ab_prev) / (1.0 - ab)
    return c_x0.to(like), c_xt.to(like)


def posterior_mean(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Mean :math:`\\tilde\\mu_t(x_t, x_0)` of :math:`q(x_{t-1} \\mid x_t, x_0)`.

    Book eq. ``posterior-mean``; Ho et al. (2020), eq. 7.

    Args:
        x0: clean data (or a prediction of it), shape ``(B, ...)``.
        xt: the noisy sample at step ``t``, same shape.
        t: integer timesteps, shape ``(B,)``, entries in ``1..T``.

    Returns:
        A tensor of ``xt``'s shape and dtype. At ``t = 1`` it equals ``x0``.

    Raises:
        ValueError: if ``x0`` and ``xt`` differ in shape, or some ``t`` is 0.
        IndexError: if some ``t`` exceeds ``T``.
    """
    if x0.shape != xt.shape:
        raise ValueError(f"posterior_mean: x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} must have one shape.")
    c_x0, c_xt = posterior_mean_coefs(t, schedule, xt)
    return c_x0 * x0 + c_xt * xt


def posterior_variance(t: torch.Tensor, schedule: Schedule, like: torch.Tensor) -> torch.Tensor:
    """Variance :math:`\\tilde\\beta_t` of :math:`q(x_{t-1} \\mid x_t, x_0)`, shaped to broadcast against ``like``.

    A variance, not a standard deviation (book eq. ``posterior-variance``; Ho et al. 2020, eq. 7).

    Raises:
        ValueError: if some ``t`` is 0.
        IndexError: if some ``t`` exceeds ``T``.
    """
    _check_t(t, "posterior_variance")
    return gather(schedule.posterior_variance, t, like)
