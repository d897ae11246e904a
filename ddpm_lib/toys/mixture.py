"""Toy data with exact answers: an isotropic Gaussian mixture in ``d`` dimensions.

Under the forward process :math:`x_t = \\sqrt{\\bar\\alpha_t} x_0 + \\sqrt{1-\\bar\\alpha_t}\\epsilon`, a
mixture :math:`\\sum_k \\pi_k \\mathcal N(\\mu_k, s_k^2 I)` stays a mixture with means
:math:`\\sqrt{\\bar\\alpha_t}\\mu_k` and variances :math:`\\bar\\alpha_t s_k^2 + 1 - \\bar\\alpha_t`, so the
score :math:`\\nabla \\log q(x_t)` and the denoiser :math:`\\mathbb E[x_0 \\mid x_t]` are closed-form.
Chapters use it to check Tweedie's formula (Efron 2011) and samplers against exact answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.schedules import Schedule, gather

__all__ = ["GaussianMixture"]


@dataclass(frozen=True)
class GaussianMixture:
    """:math:`\\sum_k \\pi_k \\mathcal N(\\mu_k, s_k^2 I_d)`.

    Attributes:
        weights: ``(K,)``, positive, summing to 1.
        means: ``(K, d)``.
        stds: ``(K,)``, positive standard deviations (not variances).

    Raises:
        ValueError: for mismatched shapes, non-positive stds or weights that do not sum to 1.
    """

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    def __post_init__(self) -> None:
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        m = torch.as_tensor(self.means, dtype=torch.float64)
        s = torch.as_tensor(self.stds, dtype=torch.float64)
        if m.ndim == 1:
            m = m[:, None]
        if not (w.ndim == 1 and s.shape == w.shape and m.shape[0] == w.shape[0]):
            raise ValueError(f"GaussianMixture: weights {tuple(w.shape)}, means {tuple(m.shape)}, stds {tuple(s.shape)} do not match.")
        if bool((s <= 0).any()) or bool((w <= 0).any()) or abs(float(w.sum()) - 1) > 1e-9:
            raise ValueError("GaussianMixture: stds and weights must be positive and the weights must sum to 1.")
        for name, v in (("weights", w), ("means", m), ("stds", s)):
            object.__setattr__(self, name, v)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` float64 samples, shape ``(n, d)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    def noised(self, t: int, schedule: Schedule) -> "GaussianMixture":
        """The marginal :math:`q(x_t)` of the forward process, itself a mixture (``t`` in ``0..T``)."""
        ab = schedule.alpha_bar[t]
        return GaussianMixture(self.weights, ab.sqrt() * self.means, (ab * self.stds**2 + 1 - ab).sqrt())

    def _log_resp(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        var = self.stds**2  # (K,)
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (n, K)
        logp = torch.log(self.weights) - 0.5 * self.dim * torch.log(2 * torch.pi * var) - sq / (2 * var)
        return logp, torch.logsumexp(logp, dim=1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior probabilities of the components, :math:`r_k(x) = \\pi_k \\mathcal N(x; \\mu_k, s_k^2 I) / p(x)`.

        Args:
            x: ``(n, d)``, any float dtype (computed in float64).

        Returns:
            float64 ``(n, K)``, each row non-negative and summing to 1 (to round-off); the argmax of a row
            is the component most probable at that point.
        """
        logp, total = self._log_resp(x.to(torch.float64))
        return torch.exp(logp - total[:, None])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density in nats, shape ``(n,)`` for ``x`` of shape ``(n, d)``."""
        return self._log_resp(x.to(torch.float64))[1]

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla_x \\log p(x)`, shape ``(n, d)``."""
        x = x.to(torch.float64)
        logp, total = self._log_resp(x)
        r = torch.exp(logp - total[:, None])  # responsibilities (n, K)
        return (r[:, :, None] * (self.means[None] - x[:, None, :]) / (self.stds**2)[None, :, None]).sum(1)

    def posterior_mean_x0(self, xt: torch.Tensor, t: int, schedule: Schedule) -> torch.Tensor:
        """The exact denoiser :math:`\\mathbb E[x_0 \\mid x_t]` for this mixture as data, shape of ``xt``.

        Per component, conjugate Gaussian algebra gives
        :math:`\\mathbb E[x_0 \\mid x_t, k] = \\mu_k + \\frac{\\sqrt{\\bar\\alpha_t} s_k^2}{\\bar\\alpha_t s_k^2 + 1 - \\bar\\alpha_t}(x_t - \\sqrt{\\bar\\alpha_t}\\mu_k)`,
        weighted by the responsibilities of :meth:`noised`.
        """
        xt = xt.to(torch.float64)
        ab = schedule.alpha_bar[t]
        marginal = self.noised(t, schedule)
        logp, total = marginal._log_resp(xt)
        r = torch.exp(logp - total[:, None])
        gain = ab.sqrt() * self.stds**2 / (ab * self.stds**2 + 1 - ab)  # (K,)
        per = self.means[None] + gain[None, :, None] * (xt[:, None, :] - ab.sqrt() * self.means[None])
        return (r[:, :, None] * per).sum(1)
