"""A learned noise schedule: a monotone network :math:`\\gamma_\\eta(t)` with :math:`\\mathrm{SNR}(t) = e^{-\\gamma_\\eta(t)}`.

Book chapter "The forward process and noise schedules" (``notebooks/forward_process.ipynb``), eqs.
``gamma-schedule`` and ``vlb-continuous-gamma``; Kingma et al. (2021), §3.2 and App. H (the monotone
network) and §5 (the continuous-time loss and the minimization of its variance).

Time is continuous here, ``t`` in ``[0, 1]``. A strictly increasing function :math:`\\gamma(t)` defines
the variance-preserving forward process through

.. math::
   \\mathrm{SNR}(t) = e^{-\\gamma(t)}, \\qquad
   \\bar\\alpha(t) = \\sigma(-\\gamma(t)), \\qquad
   1 - \\bar\\alpha(t) = \\sigma(\\gamma(t)),

so :math:`\\gamma = -\\lambda` is the negative log-SNR of the notation page. A discrete
:class:`~ddpm_lib.core.schedules.Schedule` with ``T`` steps is read off at ``t = i / T`` by
:func:`schedule_from_gamma` (timestep ``i`` of the book's convention is time ``i / T``).

Imports torch only (and :mod:`ddpm_lib.core.schedules`).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .schedules import Schedule

__all__ = [
    "MonotoneGamma",
    "alpha_bar_from_gamma",
    "snr_from_gamma",
    "schedule_from_gamma",
    "continuous_vlb_integrand",
]


def _check_float(x: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(x) or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}.")


def alpha_bar_from_gamma(gamma: torch.Tensor) -> torch.Tensor:
    """:math:`\\bar\\alpha = \\sigma(-\\gamma)`, elementwise (book eq. ``gamma-schedule``; Kingma et al. 2021, eq. 4).

    Args:
        gamma: floating tensor of any shape, the negative log-SNR in nats.

    Returns:
        A tensor of ``gamma``'s shape and dtype with values in ``(0, 1)`` (``1`` or ``0`` only by
        float round-off for ``|gamma|`` beyond about 37 in float64).

    Raises:
        TypeError: if ``gamma`` is not a floating-point tensor.
    """
    _check_float(gamma, "gamma")
    return torch.sigmoid(-gamma)


def snr_from_gamma(gamma: torch.Tensor) -> torch.Tensor:
    """:math:`\\mathrm{SNR} = e^{-\\gamma}`, elementwise (book eq. ``gamma-schedule``; Kingma et al. 2021, eq. 5).

    Raises:
        TypeError: if ``gamma`` is not a floating-point tensor.
    """
    _check_float(gamma, "gamma")
    return torch.exp(-gamma)


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
        _check_float(t, "t")
        if t.numel() and (bool((t < 0).any()) or bool((t > 1).any())):
            raise ValueError(f"MonotoneGamma: time t must lie in [0, 1], got values in "
                             f"[{float(t.min())}, {float(t.max())}].")
        t = t.to(self.raw_a.dtype)
        ends = self.raw(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        unit = (self.raw(t) - ends[0]) / (ends[1] - ends[0])
        return self.gamma_min + (self.gamma_max - self.gamma_min) * unit


def schedule_from_gamma(gamma: Callable[[torch.Tensor], torch.Tensor], T: int, name: str = "learned") -> Schedule:
    """The discrete :class:`~ddpm_lib.core.schedules.Schedule` with :math:`\\bar\\alpha_i = \\sigma(-\\gamma(i/T))`, ``i = 1..T``.

    Timestep ``i`` of the book's convention is time ``i / T``; ``alpha_bar[0] = 1`` as always (the
    data), whatever :math:`\\gamma(0)` is. Built with :meth:`Schedule.from_alpha_bar`, which checks
    that :math:`\\bar\\alpha` strictly decreases, i.e. that :math:`\\gamma` strictly increases on the
    grid (book eq. ``gamma-schedule``).

    Args:
        gamma: a callable (e.g. a :class:`MonotoneGamma`) mapping float64 times ``(T,)`` in
            ``[0, 1]`` to :math:`\\gamma` values of the same shape.
        T: number of steps, an integer >= 1.

    Returns:
        The schedule; its tensors are float64 and carry no gradient.

    Raises:
        ValueError: if ``T < 1`` or the values do not give a strictly decreasing
            :math:`\\bar\\alpha` in ``(0, 1)`` (a non-monotone or saturated :math:`\\gamma`).
    """
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"the number of steps T must be an integer >= 1, got {T!r}.")
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    if isinstance(gamma, nn.Module):  # evaluate a float64 copy; the caller's module is left as it is
        gamma = copy.deepcopy(gamma).double()
    with torch.no_grad():
        g = gamma(t)
    g = torch.as_tensor(g, dtype=torch.float64).detach().reshape(-1)
    return Schedule.from_alpha_bar(torch.sigmoid(-g), name=name)


def continuous_vlb_integrand(
    x0: torch.Tensor, x0_hat: torch.Tensor, gamma: torch.Tensor, dgamma_dt: torch.Tensor
) -> torch.Tensor:
    """One Monte Carlo sample of the continuous-time diffusion loss, in nats per example.

    .. math:: \\mathcal L_\\infty(x_0) = -\\tfrac12\\,\\mathbb E_{t \\sim U(0,1),\\,\\epsilon}
              \\big[\\mathrm{SNR}'(t)\\,\\|x_0 - \\hat x_0(x_t, t)\\|^2\\big]
              = \\tfrac12\\,\\mathbb E\\big[\\gamma'(t)\\,e^{-\\gamma(t)}\\,\\|x_0 - \\hat x_0\\|^2\\big]

    (book eqs. ``vlb-continuous`` and ``vlb-continuous-gamma``; Kingma et al. 2021, §5). The
    function returns the quantity inside the expectation for given ``t`` (through ``gamma`` and
    ``dgamma_dt``); its mean over ``t ~ U(0, 1)`` and the noise estimates the loss.

    Args:
        x0: clean data, shape ``(B, ...)``, floating.
        x0_hat: the denoiser's estimate of ``x0`` from ``x_t``, same shape.
        gamma: :math:`\\gamma(t)` per example, shape ``(B,)``.
        dgamma_dt: :math:`\\gamma'(t) > 0` per example, shape ``(B,)``.

    Returns:
        Shape ``(B,)``: ``0.5 * dgamma_dt * exp(-gamma) * ||x0 - x0_hat||^2`` summed over the
        non-batch dimensions. Non-negative whenever :math:`\\gamma' \\ge 0`.

    Raises:
        TypeError: for non-floating inputs.
        ValueError: for mismatched shapes.
    """
    for name, v in (("x0", x0), ("x0_hat", x0_hat), ("gamma", gamma), ("dgamma_dt", dgamma_dt)):
        _check_float(v, name)
    if x0.shape != x0_hat.shape:
        raise ValueError(f"continuous_vlb_integrand: x0 {tuple(x0.shape)} and x0_hat {tuple(x0_hat.shape)} differ.")
    if gamma.shape != (x0.shape[0],) or dgamma_dt.shape != (x0.shape[0],):
        raise ValueError(f"continuous_vlb_integrand: gamma and dgamma_dt must have shape ({x0.shape[0]},), "
                         f"got {tuple(gamma.shape)} and {tuple(dgamma_dt.shape)}.")
    sq = ((x0 - x0_hat) ** 2).reshape(x0.shape[0], -1).sum(dim=1)
    return 0.5 * dgamma_dt * torch.exp(-gamma) * sq
