"""A learned noise schedule: a monotone network :math:`\\gamma_\\eta(t)` with :math:`\\mathrm{SNR}(t) = e^{-\\gamma_\\eta(t)}`.

Book chapter "The forward process and noise schedules" (``notebooks/forward_process.ipynb``), eqs.
``gamma-schedule`` and ``vlb-continuous-gamma``; Kingma et al. (2021), §3.2 and App. H (the monotone
network) and §5 (the continuous-time loss and the minimization of its variance).

Time is continuous here, ``t`` in ``[0, 1]``. A strictly increasing function :math:`\\gamma(t)` (for example the network
:class:`ddpm_lib.models.MonotoneGamma`) defines
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
from torch import nn

from .schedules import Schedule

__all__ = [
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


def schedule_from_gamma(gamma: Callable[[torch.Tensor], torch.Tensor], T: int, name: str = "learned") -> Schedule:
    """The discrete :class:`~ddpm_lib.core.schedules.Schedule` with :math:`\\bar\\alpha_i = \\sigma(-\\gamma(i/T))`, ``i = 1..T``.

    Timestep ``i`` of the book's convention is time ``i / T``; ``alpha_bar[0] = 1`` as always (the
    data), whatever :math:`\\gamma(0)` is. Built with :meth:`Schedule.from_alpha_bar`, which checks
    that :math:`\\bar\\alpha` strictly decreases, i.e. that :math:`\\gamma` strictly increases on the
    grid (book eq. ``gamma-schedule``).

    Args:
        gamma: a callable (e.g. a :class:`~ddpm_lib.models.gamma.MonotoneGamma`) mapping float64 times ``(T,)`` in
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
