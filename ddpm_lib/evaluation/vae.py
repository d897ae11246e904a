"""The VAE of Part I evaluated: one-sample ELBO estimates on images (chapter "The variational autoencoder")."""

from __future__ import annotations

import math

import torch

from ..core.likelihood import bits_per_dim
from ..data import to_model
from ..devices import eval_mode
from ..models.vae import VAE, ELBOTerms, elbo_terms

__all__ = ["evaluate_vae", "vae_test_metrics"]


@torch.no_grad()
def evaluate_vae(model: VAE, images: torch.Tensor, seed: int = 0, batch_size: int = 1000) -> ELBOTerms:
    """One-sample ELBO estimates of a :class:`~ddpm_lib.models.vae.VAE` for uint8 ``images`` ``(N, 28, 28)``.

    Runs the model (which must be on the CPU) in eval mode, leaving its mode as it was, in batches of ``batch_size``; one
    ``z = mean + sigma * eps`` per image (:func:`ddpm_lib.models.vae.elbo_terms`). The noise comes from
    ``torch.Generator().manual_seed(seed)``, so the result is reproducible.

    Returns:
        :class:`~ddpm_lib.models.vae.ELBOTerms` of ``(N,)`` tensors in nats per image.
    """
    gen = torch.Generator().manual_seed(seed)
    parts = []
    with eval_mode(model):  # the caller's model keeps its mode
        for start in range(0, images.shape[0], batch_size):
            x = to_model(images[start : start + batch_size])
            eps = torch.randn((x.shape[0], model.config.latent_dim), generator=gen)
            parts.append(elbo_terms(model, x, eps))
    return ELBOTerms(*(torch.cat([getattr(p, f) for p in parts]) for f in ELBOTerms._fields))


def vae_test_metrics(model: VAE, images: torch.Tensor, seed: int = 0) -> dict:
    """The negative ELBO of ``images`` (uint8 ``(N, 28, 28)``) in bits/dim with its standard error, as shipped files store it.

    One-sample estimates (:func:`evaluate_vae`, seeded); the mean and the standard error across
    images, in bits/dim (:func:`ddpm_lib.core.likelihood.bits_per_dim`), rounded to 5 decimals.

    Returns:
        ``{"images", "eval_seed", "bits_per_dim", "bits_per_dim_stderr"}``.
    """
    nll = -evaluate_vae(model, images, seed=seed).elbo
    return {"images": int(images.shape[0]), "eval_seed": seed,
            "bits_per_dim": round(float(bits_per_dim(nll.mean())), 5),
            "bits_per_dim_stderr": round(float(bits_per_dim(nll.std() / math.sqrt(nll.numel()))), 5)}
