"""Two Gaussian facts in float64: the 1-D KL divergence and the expected log-density of a Gaussian residual.

Core math (torch only). Used by the linear-Gaussian toys (:mod:`ddpm_lib.toys.linear_gaussian`) and the
1-D variational diffusion model (:mod:`ddpm_lib.core.vdm`). Variances are always called ``var``; a
standard deviation is never passed where a variance belongs.
"""

from __future__ import annotations

import math

import torch

__all__ = ["gaussian_kl", "expected_gaussian_log_prob", "as_float64", "check_variance"]

def as_float64(x) -> torch.Tensor:
    """``x`` as a float64 tensor (a copy only when needed)."""
    return torch.as_tensor(x, dtype=torch.float64)


def check_variance(name: str, var: torch.Tensor) -> None:
    """Refuse a variance that is not positive and finite.

    Raises:
        ValueError: naming ``name``, if some entry of ``var`` is <= 0, inf or nan.
    """
    if bool((var <= 0).any()) or not bool(torch.isfinite(var).all()):
        raise ValueError(f"{name} must be a positive, finite variance (not a log-variance), got {var}.")


def gaussian_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """:math:`D_\\mathrm{KL}(\\mathcal N(\\mu_1, v_1)\\,\\|\\,\\mathcal N(\\mu_2, v_2))` in nats, elementwise (1-D Gaussians).

    :math:`\\tfrac12\\big(\\log(v_2/v_1) + (v_1 + (\\mu_1 - \\mu_2)^2)/v_2 - 1\\big)`: Kingma & Welling
    (2014), App. B; book eq. ``vae-kl-1d``. Arguments broadcast; ``var1`` and ``var2`` are
    **variances**.

    Raises:
        ValueError: if a variance is not positive.
    """
    mean1, var1, mean2, var2 = map(as_float64, (mean1, var1, mean2, var2))
    check_variance("gaussian_kl: var1", var1)
    check_variance("gaussian_kl: var2", var2)
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def expected_gaussian_log_prob(resid_mean, resid_var, var) -> torch.Tensor:
    """:math:`\\mathbb E[\\log \\mathcal N(r; 0, v)]` for a Gaussian residual :math:`r \\sim \\mathcal N(m_r, v_r)`, in nats.

    :math:`-\\tfrac12\\log(2\\pi v) - (v_r + m_r^2)/(2v)`, because :math:`\\mathbb E[r^2] = v_r + m_r^2`
    (book eq. ``vdm-expected-log-gauss``). Used with :math:`r = y - a z - c` for jointly Gaussian
    :math:`(y, z)`, it gives :math:`\\mathbb E[\\log \\mathcal N(y; az + c, v)]`. Arguments broadcast.

    Raises:
        ValueError: if ``var`` is not positive or ``resid_var`` is negative.
    """
    resid_mean, resid_var, var = map(as_float64, (resid_mean, resid_var, var))
    check_variance("expected_gaussian_log_prob: var", var)
    if bool((resid_var < 0).any()):
        raise ValueError(f"expected_gaussian_log_prob: resid_var is a variance and must be >= 0, got {resid_var}.")
    return -0.5 * torch.log(2 * math.pi * var) - (resid_var + resid_mean**2) / (2 * var)
