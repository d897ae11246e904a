"""The forward (noising) process :math:`q(x_t \\mid x_0)`.

Book chapter "The forward process" (``notebooks/forward_process.ipynb``), eq. ``q-xt-x0``;
Ho et al. (2020), eq. 4:

.. math:: q(x_t \\mid x_0) = \\mathcal N\\big(x_t;\\ \\sqrt{\\bar\\alpha_t}\\, x_0,\\ (1 - \\bar\\alpha_t) I\\big).
"""

from __future__ import annotations

import torch

from .schedules import Schedule, check_timestep_shape, gather64

__all__ = ["q_mean_var", "q_sample", "q_step_sample"]


def q_mean_var(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of :math:`q(x_t \\mid x_0)` (book eq. ``q-xt-x0``; Ho et al. 2020, eq. 4).

    Args:
        x0: clean data, shape ``(B, ...)``, floating dtype, pixels in ``[-1, 1]`` for images.
        t: integer timesteps, shape ``(B,)``, entries in ``0..T``.
        schedule: the noise schedule.

    Returns:
        ``(mean, var)``: ``mean`` has ``x0``'s shape; ``var`` has shape ``(B, 1, ..., 1)`` and is a
        variance (not a standard deviation). Both have ``x0``'s dtype and device.

    The coefficients are formed in float64 and cast to ``x0``'s dtype at the end, so in float32 the
    variance at ``t = 1`` is :math:`\beta_1` to float32 round-off.

    Raises:
        ValueError: if ``t`` is neither 0-d nor of shape ``(B,)`` (:func:`check_timestep_shape`).
        IndexError: if some ``t`` is outside ``0..T``.
    """
    check_timestep_shape(t, x0, "q_mean_var")
    ab = gather64(schedule.alpha_bar, t, x0)
    return ab.sqrt().to(x0) * x0, (1.0 - ab).to(x0)


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Draw :math:`x_t = \\sqrt{\\bar\\alpha_t}\\, x_0 + \\sqrt{1 - \\bar\\alpha_t}\\, \\epsilon`.

    The reparameterized sample of :math:`q(x_t \\mid x_0)` (book eq. ``q-sample``; Ho et al. 2020,
    eq. 4 and Algorithm 1). The noise is passed in, so the function is pure.

    Args:
        x0: clean data, shape ``(B, ...)``.
        t: integer timesteps, shape ``(B,)``, entries in ``0..T``; ``t = 0`` returns ``x0``.
        eps: standard normal noise, same shape as ``x0``.

    Returns:
        ``xt``, same shape and dtype as ``x0``.

    Raises:
        ValueError: if ``eps`` and ``x0`` differ in shape, or ``t`` is neither 0-d nor of shape ``(B,)``.
        IndexError: if some ``t`` is outside ``0..T``.
    """
    check_timestep_shape(t, x0, "q_sample")
    if eps.shape != x0.shape:
        raise ValueError(f"q_sample: eps must have x0's shape {tuple(x0.shape)}, got {tuple(eps.shape)}.")
    ab = gather64(schedule.alpha_bar, t, x0)  # coefficients in float64, cast at the end
    return ab.sqrt().to(x0) * x0 + (1.0 - ab).sqrt().to(x0) * eps


def q_step_sample(x_prev: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """One forward step :math:`x_t = \\sqrt{1 - \\beta_t}\\, x_{t-1} + \\sqrt{\\beta_t}\\, \\epsilon`.

    The kernel :math:`q(x_t \\mid x_{t-1}) = \\mathcal N(\\sqrt{1-\\beta_t}\\, x_{t-1}, \\beta_t I)`
    (book eq. ``forward-kernel``; Ho et al. 2020, eq. 2). Note the noise is scaled by
    :math:`\\sqrt{\\beta_t}`, the standard deviation, not by :math:`\\beta_t`.

    Args:
        x_prev: :math:`x_{t-1}`, shape ``(B, ...)``.
        t: integer timesteps, shape ``(B,)``, entries in ``1..T``.
        eps: standard normal noise, same shape as ``x_prev``.

    Returns:
        :math:`x_t`, same shape and dtype as ``x_prev``.

    Raises:
        ValueError: if ``eps`` and ``x_prev`` differ in shape, ``t`` is neither 0-d nor of shape ``(B,)``,
            or some ``t`` is 0.
    """
    check_timestep_shape(t, x_prev, "q_step_sample")
    if eps.shape != x_prev.shape:
        raise ValueError(f"q_step_sample: eps must have shape {tuple(x_prev.shape)}, got {tuple(eps.shape)}.")
    if int(torch.as_tensor(t).min()) < 1:
        raise ValueError("q_step_sample: a forward step needs t in 1..T (x_0 is the data).")
    beta = gather64(schedule.beta, t, x_prev)  # coefficients in float64, cast at the end
    return (1.0 - beta).sqrt().to(x_prev) * x_prev + beta.sqrt().to(x_prev) * eps
