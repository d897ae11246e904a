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
(eq. ``ddim-step``), "Training a DDPM on MNIST" and "Stochastic differential equations" (eqs.
``em-step``, ``reverse-diffusion-step`` and ``snr-rule``: Euler-Maruyama on the reverse VP-SDE and the
predictor-corrector sampler).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core.posterior import posterior_mean
from ..core.schedules import Schedule, gather64
from ..core.sde import vp_diffusion_squared
from ..core.targets import eps_from_x0, score_from_x0
from .denoisers import Denoiser
from .langevin import langevin_update

__all__ = [
    "standard_normal",
    "ddpm_update",
    "ddim_update",
    "dpm_solver_2m_update",
    "ddpm_step",
    "ddim_step",
    "dpm_solver_2m_step",
    "heun_step",
    "euler_maruyama_update",
    "reverse_diffusion_update",
    "snr_step_size",
    "euler_maruyama_step",
    "pc_step",
    "PREDICTORS",
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

    Their Algorithm 1 is written for any noise level :math:`\sigma(t)` and signal scale :math:`s(t)`; with
    :math:`s = \sqrt{\bar\alpha(u)}` and the time ``u`` it would be Heun's method in ``(x, u)``, another method.
    This step uses their own choice :math:`\sigma(t) = t`, :math:`s(t) = 1` (their Table 1), applied to the rescaled state
    :math:`y = x/\sqrt{\bar\alpha}` with the time variable :math:`\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}`: there
    their eq. 4 reads :math:`dy/d\sigma = (y - D(x; t))/\sigma`, and :math:`(y - D)/\sigma` is exactly the denoiser's
    :math:`\hat\epsilon` (book eq. ``x0-from-eps``). So, from ``t`` to ``s = t_prev``:

    1. Euler: :math:`\hat\epsilon_t` from :math:`D(x_t, t)`; :math:`y' = y_t + (\sigma_s - \sigma_t)\hat\epsilon_t`
       (this alone is the DDIM step with ``eta = 0``);
    2. correct with the slope at the end point:
       :math:`y_s = y_t + (\sigma_s - \sigma_t)(\hat\epsilon_t + \hat\epsilon'_s)/2`, with
       :math:`\hat\epsilon'_s` from :math:`D(\sqrt{\bar\alpha_s}\,y', s)`;
    3. :math:`x_s = \sqrt{\bar\alpha_s}\, y_s`.

    Rows that step to ``s = 0`` keep the Euler step, which there returns :math:`\hat x_0` (Algorithm 1 applies
    the correction only where :math:`\sigma(t_{i+1}) \ne 0`). So do rows that start above ``sigma_max``: Karras
    et al. start their grids at :math:`\sigma_\max = 80`, while these schedules reach far higher at ``t = T``
    (about :math:`2\cdot 10^4` for the cosine schedule, 157 for DDPM's linear one). The first interval of a strided grid then
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


# --- the reverse-time SDE: Euler-Maruyama and predictor-corrector (Song et al. 2021) ------------------------------


def _check_earlier(t: torch.Tensor, t_prev: torch.Tensor, name: str, T: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, t_prev)`` as integer tensors broadcast to one shape, after checking ``0 <= t_prev < t`` (and ``t <= T`` if given)."""
    t, t_prev = torch.broadcast_tensors(torch.as_tensor(t), torch.as_tensor(t_prev))
    if bool((t_prev >= t).any()) or bool((t_prev < 0).any()):
        raise ValueError(f"{name}: t_prev must be smaller than t (and >= 0).")
    if T is not None and bool((t > T).any()):
        raise ValueError(f"{name}: t must lie in 1..T = 1..{T}.")
    return t, t_prev


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row boolean ``(B,)`` (or 0-d) shaped ``(B, 1, ..., 1)`` on ``like``'s device, for ``torch.where``."""
    mask = mask.detach()
    if mask.ndim:
        mask = mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))
    return mask.to(like.device)


def euler_maruyama_update(
    xt: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, x0_hat: torch.Tensor, noise: torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    r"""One Euler-Maruyama step of the reverse-time VP-SDE, from :math:`u = t/T` down to :math:`u' = t_\text{prev}/T`.

    Book eq. ``em-step``: with :math:`\Delta u = u - u'`, :math:`\beta = \beta(u)` (``schedule.beta_at``, the rate
    of the step that ends at ``t``) and the score :math:`s = (\sqrt{\bar\alpha_t}\,\hat x_0 - x_t)/(1-\bar\alpha_t)`
    that the denoiser implies (Tweedie, book eq. ``tweedie``),

    .. math:: x_{u'} = x_u - \Delta u\,\big[f(x_u, u) - \beta\,s\big] + \sqrt{\beta\,\Delta u}\;z
       = \big(1 + \tfrac12\beta\Delta u\big)x_u + \beta\Delta u\,s + \sqrt{\beta\,\Delta u}\;z ,

    the reverse drift of :func:`ddpm_lib.core.sde.vp_reverse_drift` (Song et al. 2021, eqs. 6 and 11) held at
    its value at the start, and the noise's variance :math:`g^2 \Delta u`. The coefficients of :math:`x_t` and
    :math:`\hat x_0` are formed in float64 and cast at the end. First order (weak and strong, the noise being
    additive) as :math:`\beta\Delta u \to 0`; tests/test_sde.py measures the weak order on Gaussian data. Every row
    takes this formula, the rows with ``t_prev = 0`` included; :func:`euler_maruyama_step` adds the rules a
    sampler needs.

    Args:
        xt, x0_hat, noise: shape ``(B, ...)``; ``noise`` standard normal.
        t, t_prev: integer tensors ``(B,)``, ``0 <= t_prev < t <= T``.

    Returns:
        :math:`x_{t_\text{prev}}`, shape and dtype of ``xt``.

    Raises:
        ValueError: if some ``t_prev >= t``, ``t_prev < 0`` or ``t > T``.
    """
    t, t_prev = _check_earlier(t, t_prev, "euler_maruyama_update", schedule.T)
    ab = gather64(schedule.alpha_bar, t, xt)  # float64, shaped (B, 1, ..., 1) like every coefficient below
    t_cpu, t_prev_cpu = t.detach().cpu().to(torch.float64), t_prev.detach().cpu().to(torch.float64)
    du = ((t_cpu - t_prev_cpu) / schedule.T).reshape(ab.shape)
    g2 = vp_diffusion_squared(t_cpu / schedule.T, schedule).reshape(ab.shape)  # g(u)^2 = beta(u) at u = t / T
    # x' = (1 + beta du / 2) x + beta du s + sqrt(beta du) z, with s = (sqrt(ab) x0_hat - x) / (1 - ab)
    c_score = g2 * du / (1.0 - ab)
    c_xt = 1.0 + 0.5 * g2 * du - c_score
    c_x0 = c_score * ab.sqrt()
    return c_xt.to(xt) * xt + c_x0.to(xt) * x0_hat + (g2 * du).sqrt().to(xt) * noise


def reverse_diffusion_update(
    xt: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, x0_hat: torch.Tensor, noise: torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    r"""The reverse-diffusion predictor of Song et al. (2021), App. G, Algorithm 3 (PC sampling, VP-SDE), from ``t`` to any earlier ``t_prev``.

    Book eq. ``reverse-diffusion-step``. With :math:`b = 1 - \bar\alpha_t/\bar\alpha_{t_\text{prev}}` (the variance
    of the forward jump from ``t_prev`` to ``t``; :math:`\beta_t` when ``t_prev = t - 1``, as in the paper) and the
    score :math:`s` the denoiser implies,

    .. math:: x_{t_\text{prev}} = \big(2 - \sqrt{1 - b}\big)\,x_t + b\,s + \sqrt{b}\;z .

    It undoes the forward discretization :math:`x_t = \sqrt{1-b}\,x_{t_\text{prev}} + \sqrt b\,z` by reversing its
    drift :math:`(\sqrt{1-b} - 1)x` and adding :math:`b\,s` (their App. E); to first order in :math:`b` it is the
    ancestral step. Its error is second order in :math:`b`, which is small on the chain's own steps but not on a
    strided grid, where every step overestimates the variance: for data :math:`\mathcal N(0, I)` (every marginal
    :math:`\mathcal N(0, I)`, :math:`s = -x`) one step maps the variance 1 to
    :math:`(2 - \sqrt{1-b} - b)^2 + b = 1 + b^2/2 + O(b^3)`, 2 at :math:`b = 1` (book chapter "Stochastic
    differential equations" measures the ten-step sampler). Coefficients in float64.

    Args:
        xt, x0_hat, noise: shape ``(B, ...)``; ``noise`` standard normal.
        t, t_prev: integer tensors ``(B,)``, ``0 <= t_prev < t <= T`` (at ``t_prev = 0``, :math:`b = 1 - \bar\alpha_t`).

    Returns:
        :math:`x_{t_\text{prev}}`, shape and dtype of ``xt``.

    Raises:
        ValueError: if some ``t_prev >= t``, ``t_prev < 0`` or ``t > T``.
    """
    t, t_prev = _check_earlier(t, t_prev, "reverse_diffusion_update", schedule.T)
    ab, ab_prev = gather64(schedule.alpha_bar, t, xt), gather64(schedule.alpha_bar, t_prev, xt)
    b = 1.0 - ab / ab_prev
    c_score = b / (1.0 - ab)  # s = (sqrt(ab) x0_hat - x) / (1 - ab)
    c_xt = 2.0 - (1.0 - b).sqrt() - c_score
    return c_xt.to(xt) * xt + (c_score * ab.sqrt()).to(xt) * x0_hat + b.sqrt().to(xt) * noise


def snr_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float, alpha: torch.Tensor | float = 1.0,
                  norms: str = "batch") -> torch.Tensor:
    r"""The Langevin corrector's step size by the signal-to-noise rule, :math:`\delta = 2\alpha\,(r\,\|z\|/\|s\|)^2`, per row.

    Song et al. (2021), Algorithms 4 (VE, :math:`\alpha = 1`) and 5 (VP, :math:`\alpha = \alpha_i = 1 - \beta_i`);
    book eq. ``snr-rule``. In the update :math:`x + \delta s + \sqrt{2\delta}\,z`
    (:func:`~ddpm_lib.sampling.langevin.langevin_update`) it makes the ratio of the drift's norm to the noise's,
    :math:`\|\delta s\| / \|\sqrt{2\delta}\,z\|`, equal to :math:`\sqrt\alpha\, r`: ``snr`` is the update's
    signal-to-noise ratio. With ``norms="row"`` the norms are each row's (over every dimension but the
    first), as the algorithms write them; with ``norms="batch"`` (the default) they are the means of the rows'
    norms over the batch, as in Song et al.'s released code, and every row gets the same step.

    The difference is not cosmetic. A step size that depends on the state, :math:`\delta(x)`, changes what the
    Langevin update samples: the diffusion :math:`dx = \delta(x)\nabla\log p\,ds + \sqrt{2\delta(x)}\,dW` leaves
    :math:`p/\delta` invariant, not :math:`p` (book chapter "Stochastic differential equations", eq.
    ``state-dependent-langevin``). The row rule's :math:`\delta \propto \|z\|^2/\|s(x)\|^2` depends on the state
    and on the noise; in the limit of small steps, in ``d`` dimensions, it leaves :math:`p^{d/(d+2)}\|s\|^2`
    invariant, which for a standard normal target has the variance :math:`((d+2)/d)^2` per coordinate: 13% too
    much in 32 dimensions, 0.5% in MNIST's 784 (measured for 8 and 32 in tests/test_sde.py). That limit is no
    guide in one or two dimensions: where :math:`\|s\|` is small the step is huge (for a standard normal target a
    sample near 0 jumps to a distance of about :math:`2r\|z\|^2/\|x\|`), and the chain's mean square does not settle
    but keeps growing (measured in tests/test_sde.py and the book chapter). The batch rule is a constant step for a
    large batch; its price is that a sample depends on its batch.

    Args:
        score: :math:`s`, shape ``(B, ...)``; no row may be all zeros.
        noise: :math:`z`, the standard normal noise the same Langevin step will use, shape of ``score``.
        snr: :math:`r > 0`. Song et al.'s released configurations default to 0.16 (used with their CIFAR-10
            VE-SDE samplers' Langevin corrector); some set 0.17, 0.15 or 0.075.
        alpha: a float, 0-d, or ``(B,)`` tensor (broadcast per row), in ``(0, 1]``. :func:`pc_step` passes
            :math:`1 - \beta_{t_\text{prev}}` of the schedule's ``T``-step chain.
        norms: ``"row"`` or ``"batch"``.

    Returns:
        :math:`\delta > 0`, shape ``(B, 1, ..., 1)``, dtype of ``score`` (formed in float64).

    Raises:
        ValueError: for ``snr <= 0``, an ``alpha`` outside ``(0, 1]`` (or of another shape), mismatched shapes, an
            unknown ``norms``, or a row whose score is exactly 0 (its step would be infinite).
    """
    if norms not in ("row", "batch"):
        raise ValueError(f"snr_step_size: norms must be 'row' or 'batch', got {norms!r}.")
    if not snr > 0:
        raise ValueError(f"snr_step_size: the signal-to-noise ratio r must be > 0, got {snr}.")
    if noise.shape != score.shape or score.ndim < 1:
        raise ValueError(f"snr_step_size: score {tuple(score.shape)} and noise {tuple(noise.shape)} must have one shape (B, ...).")
    s_norm = score.detach().to(torch.float64).flatten(1).norm(dim=1).cpu()
    z_norm = noise.detach().to(torch.float64).flatten(1).norm(dim=1).cpu()
    if bool((s_norm == 0).any()):
        raise ValueError("snr_step_size: a row's score is exactly 0, so its step size 2 alpha (r |z| / |s|)^2 would be infinite.")
    if norms == "batch":
        s_norm, z_norm = s_norm.mean().expand_as(s_norm), z_norm.mean().expand_as(z_norm)
    alpha = torch.as_tensor(alpha, dtype=torch.float64).detach().cpu()
    if alpha.ndim > 1 or (alpha.ndim == 1 and alpha.shape[0] not in (1, score.shape[0])):
        raise ValueError(f"snr_step_size: alpha must be a number or one per row ({score.shape[0]},); got shape {tuple(alpha.shape)}.")
    if not bool(((alpha > 0) & (alpha <= 1)).all()):
        raise ValueError("snr_step_size: alpha must lie in (0, 1] (1 - beta for the VP-SDE, 1 for the VE-SDE).")
    delta = 2.0 * alpha * (snr * z_norm / s_norm) ** 2  # (B,)
    return delta.reshape((-1,) + (1,) * (score.ndim - 1)).to(device=score.device, dtype=score.dtype)


def euler_maruyama_step(
    denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, schedule: Schedule,
    generator: torch.Generator | None = None, state: Any = None, *, sigma_max: float = 80.0,
    max_beta_du: float = math.inf,
) -> tuple[torch.Tensor, None]:
    r"""One step of the sampler ``euler-maruyama``: Euler-Maruyama on the reverse-time VP-SDE, with the ancestral step where the noise is extreme.

    One denoiser call, one noise draw; :func:`euler_maruyama_update` (Song et al. 2021, the Euler-Maruyama solver of
    their §4.1, a predictor of their §4.2) with rules applied row by row, as in :func:`heun_step`. The sampler is
    therefore a *hybrid*:

    * a row with ``t_prev = 0`` returns the denoiser's :math:`\hat x_0` (the final "denoising" step, Tweedie's
      formula; Song et al. likewise return the noise-free mean at the end), which the formula would leave with
      noise of variance :math:`\beta(u)\,u`;
    * a row whose :math:`\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}` exceeds ``sigma_max`` (Karras et al.'s
      largest noise level, 80) takes the ancestral step instead (:func:`ddim_update` with ``eta = 1``), which
      samples the reverse SDE *exactly* when the denoiser is constant along the step (it is then the time
      reversal of :math:`q(x_u \mid x_0 = \hat x_0)`, whose transitions are the posteriors). On the cosine schedule
      that is ``t >= 992`` (:math:`\sigma_T \approx 2\cdot 10^4`): the first step from ``t = T``; on DDPM's linear
      schedule (:math:`\sigma_T = 157`) ``t >= 931``. The reason is stability: near
      :math:`p_u \approx \mathcal N(0, I)` Euler-Maruyama multiplies :math:`x` by about
      :math:`1 - \tfrac12\beta(u)\Delta u` per step, and the cosine schedule's clipped last rate is
      :math:`\beta(1) = -T\log(1 - 0.999) \approx 6900`: its first step from ``t = T`` multiplies :math:`x` by
      about -344 at ten steps (more, the fewer), and the next network evaluation sees an input hundreds of times
      larger than any it was trained on (``sigma_max=math.inf`` turns the rule off; measured in tests/test_sde.py).

    The rule mends the first step only. Near ``u = 1`` the cosine schedule's rate behaves like
    :math:`\beta(u) \approx 2/(1-u)`, so the ``j``-th of ``k`` equal steps from ``t = T`` has
    :math:`\beta\Delta u \approx 2/(j-1)` whatever ``k``, and Euler-Maruyama is not in its small-step regime there.
    The second step (:math:`\beta\Delta u \approx 2`) multiplies :math:`x` by about
    :math:`1 + \tfrac12\beta\Delta u - \beta\Delta u \approx 0` and adds noise of variance about 2: for Gaussian data
    it leaves about twice the variance of :math:`p_u` (2.12, 2.01, 1.96, 1.91 times at ``k`` = 10, 20, 50, 100), and
    the excess decays over the following steps (measured in tests/test_sde.py). ``max_beta_du`` (off by default) is
    an opt-in third rule: a row whose :math:`\beta(u)\Delta u` exceeds it takes the ancestral step too.

    The noise is drawn at every step, the last included, like :func:`ddpm_step`.

    Raises:
        ValueError: if some ``t_prev >= t``, ``t_prev < 0`` or ``t > T``, or ``max_beta_du <= 0``.
    """
    t, t_prev = _check_earlier(t, t_prev, "euler_maruyama_step", schedule.T)
    if not max_beta_du > 0:
        raise ValueError(f"euler_maruyama_step: max_beta_du must be > 0 (math.inf: off), got {max_beta_du}.")
    x0_hat = denoiser(x, t)
    noise = standard_normal(x, generator)
    out = euler_maruyama_update(x, t, t_prev, x0_hat, noise, schedule)
    ab = schedule.alpha_bar[t.detach().cpu()]  # float64, one per row
    steep = ((1.0 - ab) / ab).sqrt() > sigma_max  # rows that take the ancestral step
    if max_beta_du < math.inf:  # the opt-in rule: beta(u) du above max_beta_du
        t_cpu = t.detach().cpu().to(torch.float64)
        beta_du = vp_diffusion_squared(t_cpu / schedule.T, schedule) * (t_cpu - t_prev.detach().cpu()) / schedule.T
        steep = steep | (beta_du > max_beta_du)
    if bool(steep.any()):
        out = torch.where(_rows(steep, x), ddim_update(x, t, t_prev, x0_hat, noise, schedule, eta=1.0), out)
    return torch.where(_rows(t_prev == 0, x), x0_hat, out), None


PREDICTORS = ("reverse-diffusion", "ancestral", "euler-maruyama")
"""The predictors :func:`pc_step` accepts."""


def pc_step(
    denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, schedule: Schedule,
    generator: torch.Generator | None = None, state: Any = None, *, predictor: str = "ancestral",
    n_corrector: int = 1, snr: float = 0.16, norms: str = "batch", sigma_max: float = 80.0,
) -> tuple[torch.Tensor, None]:
    r"""One predictor-corrector step (Song et al. 2021, §4.2 and App. G: Algorithms 2 and 3, with the corrector of Algorithms 4 and 5).

    1. **Predictor**, from ``t`` to ``t_prev``, one denoiser call and one noise draw: ``"ancestral"`` (the
       default: :func:`ddim_update` with ``eta = 1``, the DDPM step on a strided grid; Song et al.'s released
       configurations for DDPM models use it with *no* corrector), ``"reverse-diffusion"``
       (:func:`reverse_diffusion_update`, the predictor of their Algorithm 3, which overestimates the variance on
       every step of a strided grid) or ``"euler-maruyama"`` (:func:`euler_maruyama_step`'s, with its ``sigma_max``
       rule). Rows with ``t_prev = 0`` return :math:`\hat x_0`, as in every sampler here.
    2. **Corrector**, at ``t_prev >= 1``: ``n_corrector`` unadjusted Langevin steps
       :math:`x \leftarrow x + \delta s + \sqrt{2\delta}\,z` (:func:`~ddpm_lib.sampling.langevin.langevin_update`,
       book eq. ``ula-step``) on the marginal :math:`q(x_{t_\text{prev}})`, each with one denoiser call (the score
       :math:`s` at ``(x, t_prev)`` by Tweedie) and one noise draw :math:`z`, and the step size of the
       signal-to-noise rule :math:`\delta = 2\alpha_{t_\text{prev}}(r\|z\|/\|s\|)^2` (:func:`snr_step_size`,
       book eq. ``snr-rule``), from the batch's mean norms (``norms="batch"``, the default, as Song et al.'s
       released code) or each row's (``norms="row"``, as their Algorithms 4 and 5 write it, which biases the result:
       see :func:`snr_step_size`). The corrector moves the sample towards the marginal it should have,
       whatever error the predictor made; it changes nothing in the time grid.

    Where this differs from Song et al.'s released code (``pc_sampler``): there the corrector runs *before* the
    predictor at each time of the grid, ``t = T`` included; here it runs after the predictor, at the time the
    predictor lands on, so there is none at ``t = T`` and none after the step to 0. And
    :math:`\alpha_{t_\text{prev}}` is :math:`1 - \beta_{t_\text{prev}}` of the schedule's ``T``-step chain whatever
    the grid, where their code takes the :math:`\alpha` of its own ``N``-step discretization, which is its sampling
    grid. With ``norms="batch"`` on a batch whose rows step to different times (:func:`iterate` never makes one),
    the rows that step to 0 are still evaluated (at ``t``) and their norms enter the batch means, though their
    corrected values are discarded.

    Bind ``predictor``, ``n_corrector`` and ``snr`` with :func:`functools.partial`. Network evaluations:
    ``1 + n_corrector`` per step, 1 on the step to ``t = 0`` (no corrector there). ``n_corrector = 0`` is the
    predictor alone.

    Raises:
        ValueError: for an unknown predictor or ``norms``, ``n_corrector < 0``, ``snr <= 0``, some ``t_prev >= t``,
            ``t_prev < 0`` or ``t > T``.
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"pc_step: unknown predictor {predictor!r}; choose one of {PREDICTORS}.")
    if not (isinstance(n_corrector, int) and n_corrector >= 0):
        raise ValueError(f"pc_step: n_corrector must be an integer >= 0, got {n_corrector!r}.")
    if not snr > 0:
        raise ValueError(f"pc_step: the signal-to-noise ratio snr must be > 0, got {snr}.")
    if norms not in ("row", "batch"):
        raise ValueError(f"pc_step: norms must be 'row' or 'batch', got {norms!r}.")
    t, t_prev = _check_earlier(t, t_prev, "pc_step", schedule.T)
    # 1. the predictor
    if predictor == "euler-maruyama":
        x_next, _ = euler_maruyama_step(denoiser, x, t, t_prev, schedule, generator, sigma_max=sigma_max)
    else:
        x0_hat = denoiser(x, t)
        noise = standard_normal(x, generator)
        if predictor == "reverse-diffusion":
            x_next = reverse_diffusion_update(x, t, t_prev, x0_hat, noise, schedule)
        else:
            x_next = ddim_update(x, t, t_prev, x0_hat, noise, schedule, eta=1.0)
        x_next = torch.where(_rows(t_prev == 0, x), x0_hat, x_next)
    # 2. the corrector, on the rows that land at t_prev >= 1 (the others evaluate at t and are discarded)
    last = t_prev == 0
    if n_corrector == 0 or bool(last.all()):
        return x_next, None
    t_corr = torch.where(last, t, t_prev)
    alpha = schedule.alpha[t_corr.detach().cpu()]  # alpha_{t_prev} = 1 - beta_{t_prev}, float64, one per row (or 0-d)
    keep = _rows(last, x)
    for _ in range(n_corrector):
        score = score_from_x0(x_next, t_corr, denoiser(x_next, t_corr), schedule)
        z = standard_normal(x_next, generator)
        delta = snr_step_size(score, z, snr, alpha, norms)
        x_next = torch.where(keep, x_next, langevin_update(x_next, score, delta, z))
    return x_next, None
