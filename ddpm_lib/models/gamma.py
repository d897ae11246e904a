"""The monotone network :math:`\\gamma_\\eta(t)` of a learned noise schedule (Kingma et al. 2021, App. H).

A network only: it maps continuous time ``t`` in ``[0, 1]`` to the negative log-SNR. The schedule it
defines, and the continuous-time loss, are core mathematics (:mod:`ddpm_lib.core.learned_schedule`).
Book chapter "The forward process and noise schedules", eq. ``gamma-schedule``.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MonotoneGamma"]


class MonotoneGamma(nn.Module):
    """A strictly increasing :math:`\\gamma_\\eta: [0, 1] \\to [\\gamma_{\\min}, \\gamma_{\\max}]`.

    The network of Kingma et al. (2021), App. H, in a small form: with :math:`\\mathrm{sp}` the
    softplus, every weight is :math:`\\mathrm{sp}(\\cdot) > 0`, and

    .. math::
       g(t) = a\\,t + b^\\top \\sigma(W t + c), \\qquad a > 0,\\ b > 0,\\ W > 0
       \\ (\\text{entrywise}),

    so :math:`g'(t) = a + \\sum_k b_k W_k \\sigma'(W_k t + c_k) \\ge a > 0`: :math:`g` is strictly
    increasing for *every* value of the parameters, and training cannot break monotonicity. The
    end points are then pinned, as in Kingma et al. (2021), §5.1:

    .. math::
       \\gamma(t) = \\gamma_{\\min} + (\\gamma_{\\max} - \\gamma_{\\min})\\,\\frac{g(t) - g(0)}{g(1) - g(0)} .

    Pinning matters: in continuous time the diffusion loss depends on the schedule only through
    :math:`\\gamma(0)` and :math:`\\gamma(1)` (Kingma et al. 2021, §5.1), so with fixed ends only
    the *variance* of its Monte Carlo estimate is left to learn (§5.3).

    Args:
        gamma_min: :math:`\\gamma(0)`, the negative log-SNR at ``t = 0`` (nats; e.g. ``-10``,
            i.e. :math:`\\bar\\alpha(0) = \\sigma(10) \\approx 1 - 4.5\\cdot 10^{-5}`).
        gamma_max: :math:`\\gamma(1)`, must exceed ``gamma_min`` (e.g. ``10``).
        hidden: number of sigmoid units ``K >= 1``.
        generator: optional ``torch.Generator`` for the initial weights (reproducible).

    At initialization :math:`a = 1`, the slopes :math:`W_k` are log-uniform in ``[2, 50]``, the
    centres :math:`-c_k / W_k` uniform in ``[0, 1]`` and :math:`b_k = 0.01`, so :math:`\\gamma` starts
    close to linear in ``t`` (a linear log-SNR schedule) while every unit can still learn.

    Raises:
        ValueError: if ``gamma_min >= gamma_max``, either is not finite, or ``hidden < 1``.
    """

    def __init__(
        self,
        gamma_min: float = -10.0,
        gamma_max: float = 10.0,
        hidden: int = 32,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not (math.isfinite(gamma_min) and math.isfinite(gamma_max)) or not gamma_min < gamma_max:
            raise ValueError(f"MonotoneGamma needs finite gamma_min < gamma_max, got {gamma_min}, {gamma_max}.")
        if isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral) or hidden < 1:
            raise ValueError(f"MonotoneGamma: hidden must be an integer >= 1, got {hidden!r}.")
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)
        u = torch.rand(2, hidden, generator=generator)
        w = torch.exp(math.log(2.0) + (math.log(50.0) - math.log(2.0)) * u[0])
        # raw parameters: the weights used are softplus(raw) > 0; softplus^-1(y) = log(expm1(y))
        self.raw_a = nn.Parameter(torch.log(torch.expm1(torch.tensor(1.0))))
        self.raw_w = nn.Parameter(torch.log(torch.expm1(w)))
        self.c = nn.Parameter(-w * u[1])
        self.raw_b = nn.Parameter(torch.full((hidden,), math.log(math.expm1(0.01))))

    def raw(self, t: torch.Tensor) -> torch.Tensor:
        """The unpinned :math:`g(t)`, strictly increasing; ``t`` of any shape, result of ``t``'s shape."""
        a = F.softplus(self.raw_a)
        w = F.softplus(self.raw_w)
        b = F.softplus(self.raw_b)
        h = torch.sigmoid(t[..., None] * w + self.c)  # (..., K)
        return a * t + (h * b).sum(-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """:math:`\\gamma(t)`, strictly increasing from ``gamma_min`` at 0 to ``gamma_max`` at 1.

        Args:
            t: floating tensor of any shape with values in ``[0, 1]`` (continuous time).

        Returns:
            :math:`\\gamma(t)`, shape of ``t``, dtype of the parameters (float32 unless converted).
            Differentiable in ``t`` and in the parameters.

        Raises:
            TypeError: if ``t`` is not a floating-point tensor.
            ValueError: if some ``t`` lies outside ``[0, 1]``.
        """
        if not torch.is_tensor(t) or not t.dtype.is_floating_point:
            raise TypeError(f"t must be a floating-point tensor, got {type(t).__name__} {getattr(t, 'dtype', '')}.")
        if t.numel() and (bool((t < 0).any()) or bool((t > 1).any())):
            raise ValueError(f"MonotoneGamma: time t must lie in [0, 1], got values in "
                             f"[{float(t.min())}, {float(t.max())}].")
        t = t.to(self.raw_a.dtype)
        ends = self.raw(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        unit = (self.raw(t) - ends[0]) / (ends[1] - ends[0])
        return self.gamma_min + (self.gamma_max - self.gamma_min) * unit
