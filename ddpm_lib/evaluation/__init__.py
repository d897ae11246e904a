"""Evaluation: the ELBO in bits/dim, the classifier-feature Fréchet distance and the sampler table, the VAE's ELBO.
"""

from __future__ import annotations

from .elbo import (elbo_strata, elbo_bits_per_dim, with_fixed_variances)
from .frechet import (classifier_accuracy, ClassifierFeatures, classifier_features, frechet_distance, frechet_distances, frechet_bootstrap, random_real_sets, sampler_table)
from .guidance_tradeoff import (within_class_distance, guidance_sweep)
from .vae import (evaluate_vae, vae_test_metrics)

__all__ = ['elbo_strata', 'elbo_bits_per_dim', 'with_fixed_variances', 'classifier_accuracy', 'ClassifierFeatures', 'classifier_features', 'frechet_distance', 'frechet_distances', 'frechet_bootstrap', 'random_real_sets', 'sampler_table', 'within_class_distance', 'guidance_sweep', 'evaluate_vae', 'vae_test_metrics']
