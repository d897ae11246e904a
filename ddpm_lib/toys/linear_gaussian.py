"""A linear-Gaussian latent model with an exact posterior and evidence: the toy of "The evidence lower bound".

:math:`p(z) = \\mathcal N(0, I_k)`, :math:`p(x \\mid z) = \\mathcal N(Wz + b, \\sigma^2 I_d)`. Its evidence
:math:`\\log p(x)` and posterior :math:`p(z \\mid x)` are Gaussian and closed-form (Tipping & Bishop's
probabilistic PCA), so the identity :math:`\\log p(x) = \\mathrm{ELBO} + D_\\mathrm{KL}(q\\,\\|\\,p(z\\mid x))`
(book eq. ``elbo-identity``) can be checked to float64 precision for any Gaussian :math:`q`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import MultivariateNormal, kl_divergence

from ..core.gaussian import as_float64 as _f64

__all__ = ["LinearGaussianModel"]

_F64 = torch.float64


@dataclass(frozen=True, eq=False)
class LinearGaussianModel:
    """:math:`p(z) = \\mathcal N(0, I_k)`, :math:`p(x \\mid z) = \\mathcal N(Wz + b, \\sigma^2 I_d)`: a latent model with an exact posterior.

    Book eq. ``elbo-lg-model``; the probabilistic PCA model of Tipping & Bishop (1999).

    Attributes:
        weight: :math:`W`, shape ``(d, k)``.
        bias: :math:`b`, shape ``(d,)``.
        noise_var: :math:`\\sigma^2 > 0`, the **variance** of the observation noise.

    All tensors are float64. Data ``x`` have shape ``(..., d)``; latents ``z`` shape ``(..., k)``.

    Raises:
        ValueError: for mismatched shapes or a non-positive ``noise_var``.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    noise_var: float

    def __post_init__(self) -> None:
        w = _f64(self.weight)
        if w.ndim == 1:
            w = w[:, None]
        b = _f64(self.bias).reshape(-1)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"LinearGaussianModel: weight must be (d, k) and bias (d,), got {tuple(w.shape)} and {tuple(b.shape)}.")
        if not float(self.noise_var) > 0:
            raise ValueError(f"LinearGaussianModel: noise_var is a variance and must be > 0, got {self.noise_var}.")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "noise_var", float(self.noise_var))

    @property
    def data_dim(self) -> int:
        return self.weight.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.weight.shape[1]

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        x = _f64(x)
        if x.shape[-1:] != (self.data_dim,):
            raise ValueError(f"x must have shape (..., {self.data_dim}), got {tuple(x.shape)}.")
        return x

    def prior(self) -> MultivariateNormal:
        """:math:`p(z) = \\mathcal N(0, I_k)`."""
        k = self.latent_dim
        return MultivariateNormal(torch.zeros(k, dtype=_F64), torch.eye(k, dtype=_F64))

    def likelihood(self, z: torch.Tensor) -> MultivariateNormal:
        """:math:`p(x \\mid z) = \\mathcal N(Wz + b, \\sigma^2 I)` for ``z`` of shape ``(..., k)``."""
        loc = _f64(z) @ self.weight.T + self.bias
        return MultivariateNormal(loc, self.noise_var * torch.eye(self.data_dim, dtype=_F64))

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x, z) = \\log p(x \\mid z) + \\log p(z)` in nats, shape ``(...)``."""
        return self.likelihood(z).log_prob(self._check_x(x)) + self.prior().log_prob(_f64(z))

    def marginal(self) -> MultivariateNormal:
        """:math:`p(x) = \\mathcal N(b, WW^\\top + \\sigma^2 I)`, book eq. ``elbo-lg-evidence``."""
        cov = self.weight @ self.weight.T + self.noise_var * torch.eye(self.data_dim, dtype=_F64)
        return MultivariateNormal(self.bias, cov)

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x)` in nats, shape ``(...)`` (book eq. ``elbo-lg-evidence``)."""
        return self.marginal().log_prob(self._check_x(x))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact posterior :math:`p(z \\mid x) = \\mathcal N(M^{-1}W^\\top(x - b),\\ \\sigma^2 M^{-1})`, :math:`M = W^\\top W + \\sigma^2 I`.

        Book eq. ``elbo-lg-posterior``; Tipping & Bishop (1999), who call :math:`M` the same.

        Returns:
            ``(mean, cov)``: ``(..., k)`` and ``(k, k)`` (the posterior covariance does not depend on ``x``).
        """
        x = self._check_x(x)
        k = self.latent_dim
        m = self.weight.T @ self.weight + self.noise_var * torch.eye(k, dtype=_F64)
        m_inv = torch.linalg.inv(m)
        mean = (x - self.bias) @ self.weight @ m_inv.T
        return mean, self.noise_var * m_inv

    def reconstruction(self, x: torch.Tensor, q_mean: torch.Tensor, q_cov: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathbb E_{q}[\\log p(x \\mid z)]` for :math:`q = \\mathcal N(m, S)`, in nats.

        :math:`-\\tfrac d2 \\log(2\\pi\\sigma^2) - \\big(\\|x - Wm - b\\|^2 + \\operatorname{tr}(W S W^\\top)\\big)/(2\\sigma^2)`,
        the expected squared error of a Gaussian split into bias and variance (book eq. ``elbo-lg-recon``).

        Args:
            x: ``(..., d)``; q_mean: ``(..., k)``; q_cov: ``(k, k)`` or ``(..., k, k)``, a covariance.
        """
        x, q_mean, q_cov = self._check_x(x), _f64(q_mean), _f64(q_cov)
        resid = x - q_mean @ self.weight.T - self.bias
        trace = torch.einsum("ij,...jk,ik->...", self.weight, q_cov, self.weight)
        d = self.data_dim
        return -0.5 * d * math.log(2 * math.pi * self.noise_var) - ((resid**2).sum(-1) + trace) / (2 * self.noise_var)

    def elbo(self, x: torch.Tensor, q_mean: torch.Tensor, q_cov: torch.Tensor) -> torch.Tensor:
        """The ELBO of a Gaussian :math:`q(z \\mid x) = \\mathcal N(m, S)`, exactly, in nats.

        Reconstruction minus prior matching, book eq. ``elbo-recon-prior``:
        :meth:`reconstruction` :math:`- D_\\mathrm{KL}(q\\,\\|\\,p(z))`.

        Raises:
            ValueError: for wrong shapes; ``S`` must be a valid covariance (torch raises otherwise).
        """
        q = MultivariateNormal(_f64(q_mean), _f64(q_cov))
        return self.reconstruction(x, q_mean, q_cov) - kl_divergence(q, self.prior())

    def posterior_kl(self, x: torch.Tensor, q_mean: torch.Tensor, q_cov: torch.Tensor) -> torch.Tensor:
        """:math:`D_\\mathrm{KL}(q(z \\mid x)\\,\\|\\,p(z \\mid x))` in nats: the gap of book eq. ``elbo-identity``."""
        mean, cov = self.posterior(x)
        return kl_divergence(MultivariateNormal(_f64(q_mean), _f64(q_cov)), MultivariateNormal(mean, cov))
