"""Networks only: ``(x_t, t[, y]) -> output``. They know nothing of schedules or samplers.
"""

from __future__ import annotations

from .unet import (UNetConfig, UNet, timestep_embedding)
from .classifier import (ClassifierConfig, MnistClassifier)
from .noisy_classifier import (NoisyClassifierConfig, NoisyClassifier)
from .config import (DictConfig)
from .vae import (VAEConfig, VAE, ELBOTerms, reparameterize, kl_diag_gaussian_to_standard_normal, discretized_logistic_log_prob, elbo_terms, NUM_PIXELS)
from .mlp import (ToyDenoiser)
from .gamma import (MonotoneGamma)

__all__ = ['UNetConfig', 'UNet', 'timestep_embedding', 'ClassifierConfig', 'MnistClassifier', 'NoisyClassifierConfig', 'NoisyClassifier', 'DictConfig', 'VAEConfig', 'VAE', 'ELBOTerms', 'reparameterize', 'kl_diag_gaussian_to_standard_normal', 'discretized_logistic_log_prob', 'elbo_terms', 'NUM_PIXELS', 'ToyDenoiser', 'MonotoneGamma']
