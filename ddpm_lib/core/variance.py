"""Learned reverse variances: the network interpolates between :math:`\\log\\tilde\\beta_t` and :math:`\\log\\beta_t`.

Nichol & Dhariwal (2021), §3.1, eq. 15, in the form of their code (``LEARNED_RANGE``): a network with a
second output :math:`v` (one value per pixel) sets the variance of :math:`p_\\theta(x_{t-1}\\mid x_t)` to

.. math::
   \\Sigma_\\theta(x_t, t) = \\exp\\big(f \\log\\beta_t + (1 - f)\\log\\tilde\\beta_t\\big), \\qquad f = (v + 1)/2,

(the paper's :math:`v` is :math:`f` here, so a network whose output starts at zero starts at the geometric
mean of the two ends), so ``v = -1`` is the posterior's :math:`\\tilde\\beta_t` and ``v = 1`` is :math:`\\beta_t` (Ho et al. 2020
found these two the extremes that sample equally well). ``v`` is not clamped: like Nichol & Dhariwal's
code, the network may extrapolate beyond the two (at ``t = 1`` it must, to make the decoder narrower
than a pixel bin). At ``t = 1``, where :math:`\\tilde\\beta_1 = 0`, the lower end is :math:`\\tilde\\beta_2`,
as in their code. Book chapter "Training a DDPM on MNIST", eq. ``learned-variance``.

The variance is trained through the variational bound alone, with the mean held fixed (a stop-gradient):
the hybrid loss :math:`L_\\text{simple} + \\lambda L_\\text{vlb}`, :math:`\\lambda = 0.001` (their eq. 16),
:func:`ddpm_lib.core.losses.hybrid_loss`.
"""

from __future__ import annotations

import torch

from .schedules import Schedule, gather64

__all__ = ["log_variance_bounds", "learned_log_variance", "split_output"]


def log_variance_bounds(t: torch.Tensor, schedule: Schedule, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two ends :math:`(\\log\\tilde\\beta_t, \\log\\beta_t)` that a learned variance interpolates (float64, cast at the end).

    :math:`\\tilde\\beta_1 = 0` is replaced by :math:`\\tilde\\beta_2` (Nichol & Dhariwal 2021, their code's
    "clipped" posterior log-variance), so both ends are finite at every ``t``.

    Args:
        t: integer timesteps ``(B,)`` in ``1..T``.
        like: the tensor the result broadcasts against, e.g. ``(B, C, H, W)``.

    Returns:
        Two tensors of shape ``(B, 1, ..., 1)`` with ``like``'s dtype and device.

    Raises:
        ValueError: if some ``t`` is outside ``1..T`` or ``T < 2``.
    """
    t = torch.as_tensor(t)
    if t.numel() and (int(t.min()) < 1 or int(t.max()) > schedule.T):
        raise ValueError(f"learned variances are defined for t in 1..T = {schedule.T}; got t in [{int(t.min())}, {int(t.max())}].")
    if schedule.T < 2:
        raise ValueError("learned variances need T >= 2 (the lower end at t = 1 is tilde-beta_2).")
    beta_tilde = schedule.posterior_variance.double().clone()
    beta_tilde[1] = beta_tilde[2]
    lo = torch.log(gather64(beta_tilde, t, like))
    hi = torch.log(gather64(schedule.beta, t, like))
    return lo.to(like), hi.to(like)


def learned_log_variance(v: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`\\log\\Sigma_\\theta = f\\log\\beta_t + (1 - f)\\log\\tilde\\beta_t` with :math:`f = (v + 1)/2` (a log *variance*).

    Nichol & Dhariwal (2021), eq. 15 with their code's :math:`f = (v + 1)/2` for the paper's :math:`v`; book eq.
    ``learned-variance``.

    Args:
        v: the network's variance output, shape ``(B, ...)``, any real value (``-1`` gives
            :math:`\\tilde\\beta_t`, ``1`` gives :math:`\\beta_t`; beyond them it extrapolates).
        t: integer timesteps ``(B,)`` in ``1..T``.

    Returns:
        The log-variance, ``v``'s shape and dtype (natural log of a variance, not of a standard deviation).

    Raises:
        ValueError: from :func:`log_variance_bounds`.
    """
    lo, hi = log_variance_bounds(t, schedule, v)
    f = (v + 1.0) / 2.0
    return f * hi + (1.0 - f) * lo


def split_output(output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a network's output ``(B, C_out, ...)`` into the target's ``channels`` and the variance's (if any).

    A network with fixed variances returns ``channels`` channels; one with learned variances
    (:class:`~ddpm_lib.models.unet.UNetConfig` ``learn_variance=True``) returns ``2 * channels``: the
    prediction of its target first, then ``v`` of :func:`learned_log_variance`.

    Returns:
        ``(prediction, v)``, with ``v = None`` for a network of ``channels`` output channels.

    Raises:
        ValueError: if ``C_out`` is neither ``channels`` nor ``2 * channels``.
    """
    if output.shape[1] == channels:
        return output, None
    if output.shape[1] == 2 * channels:
        return output[:, :channels], output[:, channels:]
    raise ValueError(f"a network's output has the image's {channels} channels (fixed variances) or twice as many "
                     f"(learned variances), got {output.shape[1]}.")
