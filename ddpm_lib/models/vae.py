"""A small variational autoencoder for MNIST: the network and the pure functions of its ELBO.

Book chapter "The variational autoencoder" (``notebooks/vae.ipynb``). The model follows Kingma &
Welling (2014): an encoder :math:`q_\\phi(z \\mid x) = \\mathcal N(\\mu_\\phi(x), \\operatorname{diag}\\sigma^2_\\phi(x))`,
the prior :math:`p(z) = \\mathcal N(0, I)` and a decoder :math:`p_\\theta(x \\mid z)`, trained by maximizing
the evidence lower bound

.. math::
   \\mathrm{ELBO}(x) = \\mathbb E_{q_\\phi(z \\mid x)}[\\log p_\\theta(x \\mid z)] - D_\\mathrm{KL}(q_\\phi(z \\mid x)\\,\\|\\,p(z))

(book eq. ``elbo-recon-prior``).

**Pixels and the likelihood.** The data are 8-bit images: each pixel is an integer
:math:`k \\in \\{0, \\dots, 255\\}`, mapped to the model range by ``ddpm_lib.data.to_model``,
:math:`x = k/127.5 - 1`. The decoder is a *discretized logistic* (Salimans et al. 2017; the same
construction as the discretized Gaussian decoder of Ho et al. 2020, Sec. 3.3): pixel ``k`` gets the
probability mass of the logistic density over the bin :math:`[x - 1/255, x + 1/255]`, with the
first and last bins extended to :math:`-\\infty` and :math:`+\\infty` (book eq. ``vae-discretized-logistic``).
The 256 masses of a pixel sum to 1, so :math:`p_\\theta(x \\mid z)` is a probability of the discrete
image, no dequantization is needed, and

.. math::
   \\text{bits/dim} = -\\mathrm{ELBO}(x) / (784 \\ln 2) \\ \\ge\\ -\\log_2 p_\\theta(x) / 784

is an upper bound on the model's negative log-likelihood of the 8-bit image, in bits per pixel
(book eq. ``vae-bits-per-dim``), comparable with the discrete decoder of a DDPM.

Layout: :class:`VAEConfig` and :class:`VAE` (only a network) and the pure functions
:func:`reparameterize`, :func:`kl_diag_gaussian_to_standard_normal`,
:func:`discretized_logistic_log_prob` and :func:`elbo_terms`. The pixel grid, its bin width and the
conversion to bits/dim are shared with the DDPM's decoder and live in :mod:`ddpm_lib.core.likelihood`
(``check_on_pixel_grid``, ``BIN_WIDTH``, ``bits_per_dim``); this module imports nothing else of
ddpm_lib but :mod:`ddpm_lib.core` and the config helper :mod:`ddpm_lib.models.config`. Training is ``ddpm_lib.training.train_vae`` (with
``VAETrainConfig``), evaluation ``ddpm_lib.evaluation.evaluate_vae``, loading
``ddpm_lib.checkpoint.load_vae`` (the shipped weights are ``load_vae("vae-mnist")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.likelihood import BIN_WIDTH, check_on_pixel_grid
from .config import DictConfig

__all__ = [
    "VAEConfig",
    "VAE",
    "ELBOTerms",
    "reparameterize",
    "kl_diag_gaussian_to_standard_normal",
    "discretized_logistic_log_prob",
    "elbo_terms",
    "NUM_PIXELS",
]

NUM_PIXELS = 28 * 28
"""Pixels of one image (28 x 28 MNIST): the width of the encoder's input and of the decoder's output."""

_HALF_BIN = BIN_WIDTH / 2  # 1/255: half the distance between neighbouring pixel values k/127.5 - 1


# --- the network -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig(DictConfig):
    """The VAE's architecture.

    Attributes:
        latent_dim: the dimension ``k`` of ``z``.
        hidden: widths of the hidden layers of the encoder (the decoder mirrors them).
        min_log_scale: lower clamp of the decoder's log-scale (the logistic's ``log s``), which
            keeps the likelihood finite early in training (Salimans et al. 2017 use -7).

    ``to_dict``/``from_dict`` (:class:`~ddpm_lib.models.config.DictConfig`) give its JSON form in checkpoints.

    Raises:
        ValueError: for a non-positive size.
    """

    latent_dim: int = 32
    hidden: tuple[int, ...] = (512, 256)
    min_log_scale: float = -7.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.latent_dim < 1 or not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"VAEConfig needs latent_dim >= 1 and positive hidden widths, got {self}.")


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Encoder and decoder MLPs for 28 x 28 images; only a network (the ELBO is :func:`elbo_terms`).

    * ``encode(x)``: ``x`` float ``(B, 1, 28, 28)`` in ``[-1, 1]`` -> ``(mean, logvar)``, each ``(B, k)``:
      the parameters of :math:`q_\\phi(z \\mid x)`; ``logvar`` is the log of the **variance**.
    * ``decode(z)``: ``z`` ``(B, k)`` -> ``(loc, log_scale)``, each ``(B, 1, 28, 28)``: the location
      (in model range) and the log-scale of each pixel's logistic.
    """

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = config
        k, h = config.latent_dim, list(config.hidden)
        self.encoder = _mlp([NUM_PIXELS, *h, 2 * k])
        self.decoder = _mlp([k, *reversed(h), 2 * NUM_PIXELS])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"VAE.encode expects images of shape (B, 1, 28, 28) in [-1, 1], got {tuple(x.shape)}.")
        mean, logvar = self.encoder(x.reshape(x.shape[0], -1)).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"VAE.decode expects z of shape (B, {self.config.latent_dim}), got {tuple(z.shape)}.")
        loc, log_scale = self.decoder(z).chunk(2, dim=1)
        shape = (z.shape[0], 1, 28, 28)
        return loc.reshape(shape), log_scale.clamp(min=self.config.min_log_scale).reshape(shape)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(mean, logvar, loc, log_scale)`` for images ``x`` and standard normal noise ``eps`` ``(B, k)``."""
        mean, logvar = self.encode(x)
        loc, log_scale = self.decode(reparameterize(mean, logvar, eps))
        return mean, logvar, loc, log_scale


# --- the ELBO's pieces (pure functions) --------------------------------------------------------


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The reparameterization trick: :math:`z = \\mu + \\sigma \\odot \\epsilon` with :math:`\\sigma = e^{\\text{logvar}/2}`.

    Kingma & Welling (2014), Sec. 2.4; book eq. ``vae-reparam``. ``logvar`` is the log of the
    **variance**, so the standard deviation is ``exp(logvar / 2)``; scaling ``eps`` by
    ``exp(logvar)`` (the variance) is the classic mistake.

    Args:
        mean, logvar, eps: tensors of one shape, e.g. ``(B, k)``; ``eps`` standard normal.

    Returns:
        ``z``, of that shape: a draw from :math:`\\mathcal N(\\mu, \\operatorname{diag} e^{\\text{logvar}})`
        that is differentiable in ``mean`` and ``logvar``.

    Raises:
        ValueError: if the shapes differ.
    """
    if not (mean.shape == logvar.shape == eps.shape):
        raise ValueError(f"reparameterize: mean {tuple(mean.shape)}, logvar {tuple(logvar.shape)} and eps {tuple(eps.shape)} must match.")
    return mean + torch.exp(0.5 * logvar) * eps


def kl_diag_gaussian_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """:math:`D_\\mathrm{KL}(\\mathcal N(\\mu, \\operatorname{diag}\\sigma^2)\\,\\|\\,\\mathcal N(0, I))` in nats, per row.

    :math:`\\tfrac12 \\sum_j (\\sigma_j^2 + \\mu_j^2 - 1 - \\log \\sigma_j^2)`: Kingma & Welling (2014),
    App. B; book eq. ``vae-kl-diag``.

    Args:
        mean, logvar: ``(B, k)``; ``logvar`` is :math:`\\log \\sigma^2` (log-variance).

    Returns:
        ``(B,)``, non-negative, in nats.

    Raises:
        ValueError: if the shapes differ or are not 2-D.
    """
    if mean.shape != logvar.shape or mean.ndim != 2:
        raise ValueError(f"kl_diag_gaussian_to_standard_normal expects two (B, k) tensors, got {tuple(mean.shape)} and {tuple(logvar.shape)}.")
    return 0.5 * (torch.exp(logvar) + mean**2 - 1.0 - logvar).sum(dim=1)


def discretized_logistic_log_prob(x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Log-probability (nats) of each 8-bit pixel under a logistic discretized to the 256 pixel bins.

    Pixel :math:`x = k/127.5 - 1` gets the mass :math:`F(x + 1/255) - F(x - 1/255)` of the
    logistic CDF :math:`F(y) = \\sigma((y - \\text{loc})/s)`, with :math:`F(x - 1/255)` replaced by 0
    for ``k = 0`` and :math:`F(x + 1/255)` by 1 for ``k = 255``; the 256 masses sum to 1. Salimans et
    al. (2017), Sec. 2.1 (one mixture component); book eq. ``vae-discretized-logistic``. Each difference of
    CDFs is computed in log space on the side of the tail (no cancellation, no approximation), so the
    result is accurate to the dtype's round-off in float32 and float64.

    Args:
        x: pixels in model range on the 8-bit grid, any shape (e.g. ``(B, 1, 28, 28)``).
        loc, log_scale: the logistic's location (model range) and :math:`\\log s`, same shape.

    Returns:
        Per-pixel log-probabilities (nats, at most 0), of ``x``'s shape.

    Raises:
        ValueError: if the shapes differ, or ``x`` is not on the grid ``k/127.5 - 1``
            (``ddpm_lib.core.likelihood.check_on_pixel_grid``; use ``ddpm_lib.data.to_model`` on uint8 images).
    """
    if not (x.shape == loc.shape == log_scale.shape):
        raise ValueError(f"discretized_logistic_log_prob: x {tuple(x.shape)}, loc {tuple(loc.shape)} and log_scale {tuple(log_scale.shape)} must match.")
    check_on_pixel_grid(x, "discretized_logistic_log_prob: x")
    centered = x - loc
    inv_s = torch.exp(-log_scale)
    plus_in = inv_s * (centered + _HALF_BIN)
    min_in = inv_s * (centered - _HALF_BIN)
    log_cdf_plus = F.logsigmoid(plus_in)            # log F(x + 1/255): the mass of bin 0
    log_sf_min = F.logsigmoid(-min_in)              # log (1 - F(x - 1/255)): the mass of bin 255
    # interior bins: F(x + 1/255) - F(x - 1/255), computed in the tail where it does not cancel:
    # left of loc as F(a) (1 - F(b)/F(a)), right of loc as (1 - F(b)) (1 - (1 - F(a))/(1 - F(b)))
    tiny = torch.finfo(x.dtype).tiny
    left = log_cdf_plus + torch.log((-torch.expm1(F.logsigmoid(min_in) - log_cdf_plus)).clamp(min=tiny))
    right = log_sf_min + torch.log((-torch.expm1(F.logsigmoid(-plus_in) - log_sf_min)).clamp(min=tiny))
    log_inner = torch.where(centered < 0, left, right)
    return torch.where(x < -1.0 + _HALF_BIN, log_cdf_plus, torch.where(x > 1.0 - _HALF_BIN, log_sf_min, log_inner))


class ELBOTerms(NamedTuple):
    """The ELBO of each image and its two terms, all ``(B,)`` in nats: ``elbo = reconstruction - kl``."""

    reconstruction: torch.Tensor
    kl: torch.Tensor
    elbo: torch.Tensor


def elbo_terms(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> ELBOTerms:
    """A one-sample estimate of the ELBO of each image, book eq. ``elbo-recon-prior``.

    The reconstruction term :math:`\\log p_\\theta(x \\mid z)` is evaluated at one
    :math:`z = \\mu + \\sigma\\epsilon` per image (an unbiased estimate of its expectation); the
    KL term is exact (:func:`kl_diag_gaussian_to_standard_normal`). Kingma & Welling (2014), Sec. 3 (the Gaussian example).

    Args:
        model: a :class:`VAE`.
        x: images ``(B, 1, 28, 28)`` in model range on the 8-bit grid (``to_model`` of uint8).
        eps: standard normal noise ``(B, k)``.

    Returns:
        :class:`ELBOTerms` in nats per image.

    Raises:
        ValueError: from the pieces, for wrong shapes or pixels off the 8-bit grid.
    """
    mean, logvar, loc, log_scale = model(x, eps)
    reconstruction = discretized_logistic_log_prob(x, loc, log_scale).reshape(x.shape[0], -1).sum(dim=1)
    kl = kl_diag_gaussian_to_standard_normal(mean, logvar)
    return ELBOTerms(reconstruction, kl, reconstruction - kl)

