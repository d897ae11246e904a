"""Toy problems with exact answers, for checking the library: a 2-D Gaussian mixture with exact noised
densities, scores and posterior means, its class-conditional version (one mixture per class: exact class
posteriors, conditional and guided scores, and exact draws of the tilted distribution), and a linear-Gaussian
latent model with an exact posterior.
"""

from __future__ import annotations

from .mixture import (GaussianMixture)
from .conditional_mixture import (ConditionalGaussianMixture)
from .linear_gaussian import (LinearGaussianModel)
from .energy import (GaussianEBM, cd_gradient, ula_stationary_covariance, cd_fixed_point_precision, nce_loss, nce_fit_quadratic, ula_kernel_1d, stationary_on_grid, mean_hitting_steps, langevin_mfpt_sde_1d)

__all__ = ['GaussianMixture', 'ConditionalGaussianMixture', 'LinearGaussianModel', 'GaussianEBM', 'cd_gradient', 'ula_stationary_covariance', 'cd_fixed_point_precision', 'nce_loss', 'nce_fit_quadratic', 'ula_kernel_1d', 'stationary_on_grid', 'mean_hitting_steps', 'langevin_mfpt_sde_1d']
