"""Monte Carlo estimates with their standard errors, and the CLT-based check the book uses.

A check ``|mean - expected| <= k * standard_error`` with ``k = 5`` fails by chance with probability
about 5.7e-7 per comparison when the central limit theorem applies (two-sided normal tail), so a
chapter can make many such comparisons and still almost never fail by chance.
"""

from __future__ import annotations

import torch

__all__ = ["mean_and_stderr", "within_clt"]


def mean_and_stderr(samples: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and its standard error ``std / sqrt(n)`` along ``dim``.

    Raises:
        ValueError: with fewer than 2 samples.
    """
    n = samples.shape[dim]
    if n < 2:
        raise ValueError(f"mean_and_stderr needs at least 2 samples along dim {dim}, got {n}.")
    return samples.mean(dim), samples.std(dim) / n**0.5


def within_clt(samples: torch.Tensor, expected: torch.Tensor | float, k: float = 5.0, dim: int = 0) -> bool:
    """Whether every sample mean lies within ``k`` standard errors of ``expected``."""
    mean, se = mean_and_stderr(samples, dim)
    return bool(((mean - torch.as_tensor(expected, dtype=mean.dtype)).abs() <= k * se).all())
