"""Toy problems with exact answers, for checking the library: a 2-D Gaussian mixture with exact noised
densities, scores and posterior means, and a linear-Gaussian latent model with an exact posterior.
"""

from __future__ import annotations

from .mixture import (GaussianMixture)
from .linear_gaussian import (LinearGaussianModel)
from .energy import (GaussianEBM, cd_gradient, ula_stationary_covariance, cd_fixed_point_precision, nce_loss, nce_fit_quadratic, ula_kernel_1d, stationary_on_grid, mean_hitting_steps, langevin_mfpt_sde_1d)

__all__ = ['GaussianMixture', 'LinearGaussianModel', 'GaussianEBM', 'cd_gradient', 'ula_stationary_covariance', 'cd_fixed_point_precision', 'nce_loss', 'nce_fit_quadratic', 'ula_kernel_1d', 'stationary_on_grid', 'mean_hitting_steps', 'langevin_mfpt_sde_1d']
