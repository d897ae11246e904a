"""Toy problems with exact answers, for checking the library: a 2-D Gaussian mixture with exact noised
densities, scores and posterior means, and a linear-Gaussian latent model with an exact posterior.
"""

from __future__ import annotations

from .mixture import (GaussianMixture)
from .linear_gaussian import (LinearGaussianModel)

__all__ = ['GaussianMixture', 'LinearGaussianModel']
