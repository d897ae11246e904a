"""The terms of the DDPM evidence lower bound, per image, in nats.

Ho et al. (2020), eq. 5, with the discrete decoder of their §3.3 (eq. 13):

.. math::
   -\\log p_\\theta(x_0) \\le \\underbrace{D_\\mathrm{KL}(q(x_T\\mid x_0)\\,\\|\\,p(x_T))}_{L_T}
   + \\sum_{t=2}^{T} \\underbrace{D_\\mathrm{KL}(q(x_{t-1}\\mid x_t,x_0)\\,\\|\\,p_\\theta(x_{t-1}\\mid x_t))}_{L_{t-1}}
   \\underbrace{- \\log p_\\theta(x_0\\mid x_1)}_{L_0}.

The reverse steps are :math:`p_\\theta(x_{t-1}\\mid x_t) = \\mathcal N(\\tilde\\mu_t(x_t, \\hat x_0), \\sigma_t^2 I)`
for ``t >= 2``, and the decoder is a Gaussian of mean :math:`\\hat x_0(x_1)` and variance :math:`\\sigma_1^2`,
integrated over each pixel's bin (Ho et al. 2020, eq. 13). The variances are fixed, :math:`\\sigma_t^2 = \\tilde\\beta_t`
(the sampler of :func:`ddpm_lib.sampling.ddpm_step`) and :math:`\\sigma_1^2 = \\beta_1`, unless a network learns them
(``log_variance``; :mod:`ddpm_lib.core.variance`, Nichol & Dhariwal 2021). Pixels are the bin centres ``k / 127.5 - 1`` (:func:`ddpm_lib.data.to_model`; checked
by :func:`check_on_pixel_grid`), bins of width :data:`BIN_WIDTH` ``= 2/255``; the outermost bins
extend to infinity. Dividing the total by ``D ln 2`` (``D`` = 784 for MNIST; :func:`bits_per_dim`)
gives bits per dimension of the discrete 8-bit data. Book chapter "The variational diffusion model"
(the VDM ELBO) and "Training a DDPM on MNIST".
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal, kl_divergence

from .posterior import posterior_mean, posterior_variance
from .schedules import Schedule, gather

__all__ = ["prior_kl", "denoising_kl", "decoder_nll", "vlb_term", "BIN_WIDTH", "check_on_pixel_grid", "bits_per_dim"]

BIN_WIDTH = 2.0 / 255.0
"""Width of one 8-bit intensity level in the model's ``[-1, 1]`` range: pixel ``k`` is ``k / 127.5 - 1``
(``k = 0..255``, :func:`ddpm_lib.data.to_model`), so neighbouring values are ``2/255`` apart and the bin of
pixel ``x`` is ``[x - BIN_WIDTH / 2, x + BIN_WIDTH / 2]``."""

_GRID_ATOL = 1e-3
"""How far (in units of one level, ``k``) a value may sit from an integer level and still count as on the grid."""


def check_on_pixel_grid(x: torch.Tensor, name: str = "x") -> None:
    """Raise unless every entry of ``x`` is an 8-bit pixel in model range, ``k / 127.5 - 1`` with ``k`` in ``0..255``.

    The discrete decoders (:func:`decoder_nll` here, ``discretized_logistic_log_prob`` of
    :mod:`ddpm_lib.models.vae`) give a probability to each of the 256 levels, so they are only
    defined on this grid. A value counts as on the grid when ``(x + 1) * 127.5`` is within ``1e-3``
    of an integer and ``|x| <= 1 + 1e-6`` (float32 round-off of :func:`ddpm_lib.data.to_model` is
    about ``2e-5`` levels).

    Args:
        x: a floating-point tensor of any shape (e.g. ``(B, 1, 28, 28)``); it is not modified and
            no gradient flows through the check.
        name: what to call ``x`` in the message, e.g. ``"decoder_nll: x0"``.

    Raises:
        ValueError: if ``x`` is not floating point (uint8 images: convert with ``to_model``), or some
            entry is off the grid, outside ``[-1, 1]`` or NaN; the message names the first such value.
    """
    if not x.dtype.is_floating_point:
        problem = f"got dtype {x.dtype}"
    else:
        x = x.detach()
        k = (x + 1.0) * 127.5
        on_grid = (x.abs() <= 1.0 + 1e-6) & ((k - k.round()).abs() <= _GRID_ATOL)
        if bool(on_grid.all()):
            return
        problem = f"found {float(x[~on_grid].reshape(-1)[0])!r}"
    raise ValueError(
        f"{name} must be float pixels on the 8-bit grid k / 127.5 - 1 for k = 0..255, {problem}; "
        "convert uint8 images with ddpm_lib.data.to_model."
    )


def bits_per_dim(nats_per_image: torch.Tensor | float, num_dims: int = 784) -> torch.Tensor:
    """Convert a negative log-likelihood (or a negative ELBO) from nats per image to bits per dimension.

    :math:`\\text{bits/dim} = \\text{nats} / (D \\ln 2)` with ``D = num_dims`` (784 = 28 x 28 for MNIST,
    the default; 3072 for 32 x 32 RGB); book eq. ``vae-bits-per-dim``. Pass :math:`-\\mathrm{ELBO}` (a
    positive number) to get an upper bound on the negative log-likelihood in bits/dim. It is linear,
    so it also converts standard errors and single terms of a bound.

    Args:
        nats_per_image: a tensor of any shape, or a Python number (taken as a float64 0-d tensor).
        num_dims: the number of dimensions ``D`` of one image, an integer ``>= 1``.

    Returns:
        A tensor of the input's shape (0-d for a number) and dtype (float64 for a number); use
        ``float(...)`` for a Python number.

    Raises:
        ValueError: if ``num_dims < 1``.
    """
    if num_dims < 1:
        raise ValueError(f"bits_per_dim: num_dims must be >= 1, got {num_dims}.")
    nats = nats_per_image if isinstance(nats_per_image, torch.Tensor) else torch.tensor(float(nats_per_image), dtype=torch.float64)
    return nats / (num_dims * math.log(2.0))


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


def denoising_kl(
    x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor, schedule: Schedule,
    log_variance: torch.Tensor | None = None,
) -> torch.Tensor:
    """:math:`L_{t-1}` per image, nats, shape ``(B,)``, for ``t`` in ``2..T``.

    :math:`D_\\mathrm{KL}(\\mathcal N(\\tilde\\mu_t(x_t, x_0), \\tilde\\beta_t)\\,\\|\\,\\mathcal N(\\tilde\\mu_t(x_t, \\hat x_0), \\sigma_t^2))`.
    With the fixed :math:`\\sigma_t^2 = \\tilde\\beta_t` (``log_variance=None``) it equals
    :math:`\\|\\tilde\\mu_t(x_t,x_0) - \\tilde\\mu_t(x_t,\\hat x_0)\\|^2 / (2\\tilde\\beta_t)`
    (book eq. ``kl-to-mse``; Ho et al. 2020, eq. 8); computed here with ``torch.distributions``.

    Args:
        log_variance: ``None`` (the fixed :math:`\\tilde\\beta_t`) or a learned :math:`\\log\\sigma_t^2` of
            ``xt``'s shape (:func:`ddpm_lib.core.variance.learned_log_variance`; Nichol & Dhariwal 2021, eq. 15).

    Raises:
        ValueError: if some ``t < 2`` (use :func:`decoder_nll` at ``t = 1``).
    """
    if int(torch.as_tensor(t).min()) < 2:
        raise ValueError("denoising_kl is L_(t-1) for t in 2..T; at t = 1 use decoder_nll.")
    std = posterior_variance(t, schedule, xt).sqrt().expand_as(xt)
    p_std = std if log_variance is None else torch.exp(0.5 * log_variance)
    q = Normal(posterior_mean(x0, xt, t, schedule), std)
    p = Normal(posterior_mean(x0_hat, xt, t, schedule), p_std)
    return _per_image(kl_divergence(q, p))


def decoder_nll(x0: torch.Tensor, x0_hat: torch.Tensor, schedule: Schedule, log_variance: torch.Tensor | None = None) -> torch.Tensor:
    """:math:`L_0 = -\\log p_\\theta(x_0 \\mid x_1)` per image, nats, shape ``(B,)`` (Ho et al. 2020, eq. 13).

    Each pixel's probability is the mass of :math:`\\mathcal N(\\hat x_0, \\sigma_1^2)` (:math:`\\sigma_1^2 = \\beta_1` unless learned) on its bin
    ``[x - 1/255, x + 1/255]``, with the bins of ``-1`` and ``1`` extended to infinity.

    Args:
        x0: images on the 8-bit grid ``k / 127.5 - 1``, shape ``(B, ...)``.
        x0_hat: the model's prediction of ``x0`` from ``x1``, same shape.
        log_variance: ``None`` (the fixed variance :math:`\\beta_1`) or a learned log-variance of ``x0``'s
            shape (:func:`ddpm_lib.core.variance.learned_log_variance` at ``t = 1``): one width per pixel.

    Raises:
        ValueError: if ``x0`` is not on the 8-bit grid (:func:`check_on_pixel_grid`; convert with
            :func:`ddpm_lib.data.to_model`).
    """
    check_on_pixel_grid(x0, "decoder_nll: x0")
    std = math.sqrt(float(schedule.beta[1])) if log_variance is None else torch.exp(0.5 * log_variance)
    # the bin's ends in units of the width; every entry finite, so that no branch of the selections below
    # has an infinite or NaN gradient (the learned width is trained through this function)
    z_up, z_lo = (x0 + BIN_WIDTH / 2 - x0_hat) / std, (x0 - BIN_WIDTH / 2 - x0_hat) / std
    # an interior bin: log(cdf(z_up) - cdf(z_lo)), on the side of the mean where it does not cancel
    upper_tail = z_lo > 0
    a = torch.special.log_ndtr(torch.where(upper_tail, -z_lo, z_up))
    b = torch.special.log_ndtr(torch.where(upper_tail, -z_up, z_lo))
    log_mass = _log_diff_exp(a, b)
    # the outermost bins extend to infinity: the mass below the upper end of 0's bin, above the lower end of 255's
    log_mass = torch.where(x0 < -1 + 1e-6, torch.special.log_ndtr(z_up), log_mass)
    log_mass = torch.where(x0 > 1 - 1e-6, torch.special.log_ndtr(-z_lo), log_mass)
    return -_per_image(log_mass)


def vlb_term(
    x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor, schedule: Schedule,
    log_variance: torch.Tensor | None = None,
) -> torch.Tensor:
    """The bound's term at each image's own ``t`` (``t`` may mix 1 and larger): :math:`L_0` where ``t = 1``, else :math:`L_{t-1}`.

    :func:`decoder_nll` on the rows with ``t = 1`` and :func:`denoising_kl` on the others, per image, nats,
    shape ``(B,)``, in ``x0``'s dtype (book eq. ``elbo-ddpm-terms``).

    Args:
        x0: images on the 8-bit grid, ``(B, ...)``; xt, x0_hat: same shape; t: integers ``(B,)`` in ``1..T``.
        log_variance: ``None`` (fixed variances) or a learned log-variance of ``xt``'s shape.

    Raises:
        ValueError: from :func:`check_on_pixel_grid` (checked for every row, whatever ``t`` was drawn).
    """
    check_on_pixel_grid(x0, "vlb_term: x0")
    t = torch.as_tensor(t, device=x0.device)
    rows = lambda mask: mask.nonzero()[:, 0]  # noqa: E731
    lv = (lambda i: None) if log_variance is None else (lambda i: log_variance[i])  # noqa: E731
    terms = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    if bool((first := rows(t == 1)).numel()):
        terms = terms.index_put((first,), decoder_nll(x0[first], x0_hat[first], schedule, lv(first)).to(terms))
    if bool((later := rows(t >= 2)).numel()):
        terms = terms.index_put((later,), denoising_kl(x0[later], xt[later], t[later], x0_hat[later], schedule, lv(later)).to(terms))
    return terms


def _log_diff_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # log(exp(a) - exp(b)) for a >= b, stable; the factor 1 - exp(b - a) is floored at the dtype's smallest normal
    # number, so that the result and its gradient stay finite
    return a + torch.log((-torch.expm1((b - a).clamp(max=0))).clamp(min=torch.finfo(a.dtype).tiny))
