"""Sampler steps: each method's update formula, and its step in the protocol that the shared loop runs.

An *update* is the method's formula, tensors in and tensors out: given ``x_t``, the denoiser's
``x0_hat`` (and the noise, for a stochastic method) it returns ``x_{t_prev}``. The chapters compare
these with their equations.

A *step* is one move of a sampler as the loop (:func:`ddpm_lib.sampling.loop.iterate`) calls it::

    step(denoiser, x, t, t_prev, schedule, generator, state) -> (x_prev, state)

It gets the denoiser, so it may call it as often as it needs (Heun twice); it draws its own noise
from ``generator`` (on the generator's device, then moved to ``x``'s: :func:`standard_normal`), and
only when it needs noise; ``state`` is whatever it carries from one step to the next (``None`` on the
first step; the multistep DPM-Solver++(2M) carries its previous ``(t, x0_hat)``, the others nothing).
Bind extra parameters (DDIM's ``eta``) with :func:`functools.partial`.

Every coefficient is formed in float64 from the schedule and cast to ``x``'s dtype at the end.
Book chapters "The Gaussian posterior" (eq. ``ddpm-step``), "Three (and four) parameterizations"
(eq. ``ddim-step``) and "Training a DDPM on MNIST".
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.posterior import posterior_mean
from ..core.schedules import Schedule, gather64
from ..core.targets import eps_from_x0
from .denoisers import Denoiser

__all__ = [
    "standard_normal",
    "ddpm_update",
    "ddim_update",
    "dpm_solver_2m_update",
    "ddpm_step",
    "ddim_step",
    "dpm_solver_2m_step",
    "heun_step",
]


def standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of ``like``'s shape, dtype and device, drawn on ``generator``'s device.

    torch refuses a generator of another device than the one it draws on ("Expected a 'cuda'
    device type for generator"), so the noise is drawn where the generator lives, then moved: a CPU
    generator gives the same noise whether the network runs on the CPU or a GPU. Without a
    generator, torch's default generator of ``like``'s device is used.
    """
    device = like.device if generator is None else generator.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


# --- the update formulas ----------------------------------------------------------------------------


def ddpm_update(
    xt: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, x0_hat: torch.Tensor, noise: torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    """One ancestral update :math:`x_{t-1} = \\tilde\\mu_t(x_t, \\hat x_0) + \\sqrt{\\tilde\\beta_t}\\, z`.

    Book eq. ``ddpm-step``; Ho et al. (2020), eqs. 6-7 with :math:`\\sigma_t^2 = \\tilde\\beta_t`
    (their Algorithm 2 written through :math:`\\hat x_0`). At ``t = 1`` the variance is 0 and the
    update returns ``x0_hat`` (to the round-off of ``xt``'s dtype).

    Args:
        xt, x0_hat, noise: shape ``(B, ...)``; ``noise`` is standard normal.
        t: integer tensor ``(B,)`` in ``1..T``; ``t_prev`` must equal ``t - 1``.

    Raises:
        ValueError: if ``t_prev != t - 1`` (DDPM cannot skip steps; use :func:`ddim_update`).
    """
    if not torch.equal(torch.as_tensor(t_prev), torch.as_tensor(t) - 1):
        raise ValueError("ddpm_step moves one step at a time (t_prev = t - 1); to skip steps use ddim_step.")
    # 1. the posterior mean with x0 replaced by the denoiser's estimate (eq. posterior-mean)
    mean = posterior_mean(x0_hat, xt, t, schedule)
    # 2. add noise with the posterior *standard deviation*, the square root of tilde-beta_t (in float64)
    std = gather64(schedule.posterior_variance, t, xt).sqrt()
    return mean + std.to(xt) * noise


def ddim_update(
    xt: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    x0_hat: torch.Tensor,
    noise: torch.Tensor | None,
    schedule: Schedule,
    eta: float = 0.0,
) -> torch.Tensor:
    """One DDIM update from ``t`` to any earlier ``t_prev`` (Song, Meng & Ermon 2021, eqs. 12 and 16).

    .. math:: x_{s} = \\sqrt{\\bar\\alpha_{s}}\\,\\hat x_0 + \\sqrt{1 - \\bar\\alpha_{s} - \\sigma^2}\\,\\hat\\epsilon + \\sigma z,
       \\quad \\sigma^2 = \\eta^2 \\frac{1 - \\bar\\alpha_s}{1 - \\bar\\alpha_t}\\Big(1 - \\frac{\\bar\\alpha_t}{\\bar\\alpha_s}\\Big)

    Book eq. ``ddim-step``. ``eta = 0`` is deterministic (``noise`` may then be ``None``); ``eta = 1``
    with ``t_prev = t - 1`` is the DDPM posterior step.

    Raises:
        ValueError: if ``eta < 0``, some ``t_prev >= t``, or ``eta > 0`` without ``noise``.
    """
    if eta < 0:
        raise ValueError(f"ddim_step: eta must be >= 0, got {eta}.")
    if bool((torch.as_tensor(t_prev) >= torch.as_tensor(t)).any()):
        raise ValueError("ddim_step: t_prev must be smaller than t.")
    if eta > 0 and noise is None:
        raise ValueError("ddim_update: eta > 0 adds noise; pass a standard normal `noise` of xt's shape.")
    ab = gather64(schedule.alpha_bar, t, xt)
    ab_prev = gather64(schedule.alpha_bar, t_prev, xt)
    # 1. the noise the denoiser implies (eq. x0-from-eps solved for eps)
    eps_hat = eps_from_x0(xt, t, x0_hat, schedule)
    # 2. the variance of the step, DDIM eq. 16
    var = eta**2 * (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)
    # 3. the step, DDIM eq. 12: predicted x0, the direction to x_t, and fresh noise
    c_x0, c_eps = ab_prev.sqrt().to(xt), (1.0 - ab_prev - var).clamp(min=0).sqrt().to(xt)
    out = c_x0 * x0_hat + c_eps * eps_hat
    return out if noise is None else out + var.sqrt().to(xt) * noise


def dpm_solver_2m_update(
    xt: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    x0_hat: torch.Tensor,
    schedule: Schedule,
    previous: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""One update of DPM-Solver++(2M), a second-order multistep solver of the probability-flow ODE.

    Lu et al. (2022), "DPM-Solver++", Algorithm 2 (data prediction): with
    :math:`\alpha = \sqrt{\bar\alpha}`, :math:`\sigma = \sqrt{1-\bar\alpha}`,
    :math:`\lambda = \log(\alpha/\sigma)` (half the log-SNR) and :math:`h = \lambda_s - \lambda_t`,

    .. math:: x_s = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s (e^{-h} - 1) D,\quad
       D = \Big(1 + \frac{1}{2r}\Big)\hat x_0 - \frac{1}{2r}\hat x_0^{\text{prev}},\quad r = \frac{h^{\text{prev}}}{h},

    and :math:`D = \hat x_0` on the first step (``previous`` is ``None``). Rows with ``t_prev = 0``
    (where :math:`\lambda = \infty`) return their ``x0_hat``, row by row.

    Args:
        xt, x0_hat: shape ``(B, ...)``.
        t, t_prev: integer tensors ``(B,)``, ``0 <= t_prev < t <= T``.
        previous: ``(t_last, x0_hat_last)`` of the step before, or ``None``.

    Returns:
        :math:`x_{t_\text{prev}}`, shape and dtype of ``xt``.

    Raises:
        ValueError: if some ``t_prev >= t``.
    """
    t, t_prev = torch.as_tensor(t), torch.as_tensor(t_prev)
    if bool((t_prev >= t).any()):
        raise ValueError("dpm_solver_2m_step: t_prev must be smaller than t.")
    last = t_prev == 0  # rows that step to the data
    if bool(last.all()):
        return x0_hat
    half_log_snr = schedule.log_snr / 2  # float64, lambda_0 = inf
    lam, lam_prev = gather64(half_log_snr, t, xt), gather64(half_log_snr, t_prev, xt)
    ab, ab_prev = gather64(schedule.alpha_bar, t, xt), gather64(schedule.alpha_bar, t_prev, xt)
    last = last.detach().cpu()
    if last.ndim:  # shaped (B, 1, ..., 1) like the gathered coefficients
        last = last.reshape(last.shape + (1,) * (xt.ndim - last.ndim))
    # 1. the step size in lambda (inf on the rows with t_prev = 0)
    h = lam_prev - lam
    # 2. the exponential-integrator coefficients: x_s = c_xt x_t + c_d D
    c_xt = ((1.0 - ab_prev) / (1.0 - ab)).sqrt()
    c_d = -ab_prev.sqrt() * torch.expm1(-h)
    # 3. D, the second-order estimate of x0 from this and the previous prediction:
    #    D = (1 + w) x0_hat - w x0_hat_prev with w = 1 / (2r) = h / (2 h_prev)
    if previous is None:
        out = c_xt.to(xt) * xt + c_d.to(xt) * x0_hat
    else:
        t_last, x0_hat_last = previous
        h_last = lam - gather64(half_log_snr, t_last, xt)
        w = torch.where(last, torch.zeros_like(h), h / (2 * h_last))
        out = c_xt.to(xt) * xt + (c_d * (1 + w)).to(xt) * x0_hat - (c_d * w).to(xt) * x0_hat_last
    return torch.where(last.to(xt.device), x0_hat, out)


# --- the steps (the loop's protocol) ----------------------------------------------------------------


def ddpm_step(
    denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, schedule: Schedule,
    generator: torch.Generator | None = None, state: Any = None,
) -> tuple[torch.Tensor, None]:
    """Ho et al. (2020), Algorithm 2, one step: one denoiser call, one noise draw, :func:`ddpm_update`.

    The noise is drawn at every step, ``t = 1`` included (where its coefficient is 0), so that a
    generator shared by several batches advances the same way at every step.

    Raises:
        ValueError: if ``t_prev != t - 1``.
    """
    x0_hat = denoiser(x, t)
    return ddpm_update(x, t, t_prev, x0_hat, standard_normal(x, generator), schedule), None


def ddim_step(
    denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, schedule: Schedule,
    generator: torch.Generator | None = None, state: Any = None, *, eta: float = 0.0,
) -> tuple[torch.Tensor, None]:
    """Song et al. (2021), one DDIM step (:func:`ddim_update`); draws noise only when ``eta > 0``.

    Raises:
        ValueError: if ``eta < 0`` or some ``t_prev >= t``.
    """
    x0_hat = denoiser(x, t)
    noise = standard_normal(x, generator) if eta > 0 else None
    return ddim_update(x, t, t_prev, x0_hat, noise, schedule, eta=eta), None


def dpm_solver_2m_step(
    denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, schedule: Schedule,
    generator: torch.Generator | None = None, state: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Lu et al. (2022), one DPM-Solver++(2M) step; the state is this step's ``(t, x0_hat)``, for the next.

    Deterministic: draws no noise. Raises ``ValueError`` if some ``t_prev >= t``.
    """
    x0_hat = denoiser(x, t)
    return dpm_solver_2m_update(x, t, t_prev, x0_hat, schedule, previous=state), (t, x0_hat)


def heun_step(
    denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, schedule: Schedule,
    generator: torch.Generator | None = None, state: Any = None, *, sigma_max: float = 80.0,
) -> tuple[torch.Tensor, None]:
    r"""One step of Heun's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1), in this schedule's terms.

    Karras et al. write the ODE for :math:`y = x/\sqrt{\bar\alpha}` against
    :math:`\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}` (their eq. 4 with :math:`s(t) = \sqrt{\bar\alpha}`):
    :math:`dy/d\sigma = (y - D(x; t))/\sigma`, and :math:`(y - D)/\sigma` is exactly the denoiser's
    :math:`\hat\epsilon` (book eq. ``x0-from-eps``). So, from ``t`` to ``s = t_prev``:

    1. Euler: :math:`\hat\epsilon_t` from :math:`D(x_t, t)`; :math:`y' = y_t + (\sigma_s - \sigma_t)\hat\epsilon_t`
       (this alone is the DDIM step with ``eta = 0``);
    2. correct with the slope at the end point:
       :math:`y_s = y_t + (\sigma_s - \sigma_t)(\hat\epsilon_t + \hat\epsilon'_s)/2`, with
       :math:`\hat\epsilon'_s` from :math:`D(\sqrt{\bar\alpha_s}\,y', s)`;
    3. :math:`x_s = \sqrt{\bar\alpha_s}\, y_s`.

    Rows that step to ``s = 0`` keep the Euler step, which there returns :math:`\hat x_0` (Algorithm 1,
    line 8). So do rows that start above ``sigma_max``: Karras et al. start their grids at
    :math:`\sigma_\max = 80`, while these schedules reach far higher at ``t = T`` (about :math:`2\cdot 10^4`
    for the cosine schedule, 157 for DDPM's linear one). The first interval of a strided grid then
    spans thousands in :math:`\sigma` however many steps are taken, and the trapezoid over it, averaging
    the slope at :math:`\sigma_T` with the slope at the far end, throws the sample off by a multiple of
    :math:`\sigma_T` (measured in tests/test_samplers_ode.py); the Euler step there is the DDIM step,
    exact for a denoiser that is constant along the interval.

    Two denoiser calls per corrected step, one otherwise. Deterministic. Second order in the step
    size on a grid that is smooth in :math:`\sigma` and stops short of :math:`\sigma = 0`:
    tests/test_samplers_ode.py measures a slope of 2 against the exact ODE solution for Gaussian data,
    on ``cosine_schedule(T, s=0)`` from ``t = 3T/4``. On the trailing grids of
    :func:`~ddpm_lib.sampling.loop.ddim_timesteps` the last step, Euler's to :math:`\sigma = 0`, errs by
    :math:`O(\sigma_1^2)`, and where :math:`\sigma^2` grows linearly near ``t = 0`` (both shipped
    schedules) that is :math:`O(1/\text{steps})`: the measured order falls from about 1.7 towards 1
    as the steps grow.

    Raises:
        ValueError: if some ``t_prev >= t``.
    """
    t, t_prev = torch.as_tensor(t), torch.as_tensor(t_prev)
    if bool((t_prev >= t).any()):
        raise ValueError("heun_step: t_prev must be smaller than t.")
    ab, ab_prev = gather64(schedule.alpha_bar, t, x), gather64(schedule.alpha_bar, t_prev, x)
    sigma, sigma_prev = ((1.0 - ab) / ab).sqrt(), ((1.0 - ab_prev) / ab_prev).sqrt()
    last = (t_prev.cpu() == 0).reshape(sigma.shape)  # rows that step to the data
    euler_only = last | (sigma > sigma_max)  # rows without the correction
    # 1. the Euler step (= DDIM with eta = 0)
    x0_hat = denoiser(x, t)
    eps_hat = eps_from_x0(x, t, x0_hat, schedule)
    y = x / ab.sqrt().to(x)
    x_next = ab_prev.sqrt().to(x) * (y + (sigma_prev - sigma).to(x) * eps_hat)
    if not bool(euler_only.all()):
        # 2. the slope at the end point (rows without the correction are evaluated at t, and their result
        #    discarded), and the average of the two slopes
        t_end = torch.where(euler_only.reshape(t.shape).to(t.device), t, t_prev)
        eps_end = eps_from_x0(x_next, t_end, denoiser(x_next, t_end), schedule)
        x_heun = ab_prev.sqrt().to(x) * (y + (sigma_prev - sigma).to(x) * (eps_hat + eps_end) / 2)
        # 3. back to x: the corrected step where it applies, the Euler step elsewhere
        x_next = torch.where(euler_only.to(x.device), x_next, x_heun)
    return torch.where(last.to(x.device), x0_hat, x_next), None
