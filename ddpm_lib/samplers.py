"""Samplers: one step function per method and one shared loop.

A *denoiser* is any callable ``denoiser(xt, t) -> x0_hat`` (shape of ``xt``), with ``t`` an
integer tensor of shape ``(B,)``; :func:`model_denoiser` makes one from a network. A *step* is
``step(xt, t, t_prev, x0_hat, noise, schedule, previous=None) -> x_prev``, where ``previous`` is
the loop's :class:`SamplerState` of the step before (multistep solvers use it; others ignore it). :func:`iterate` runs any step from
``x_T`` down to ``x_0``; guidance (a later chapter) wraps the denoiser, so every sampler gets it.

Book chapters "The Gaussian posterior" (eq. ``ddpm-step``) and "Three (and four) parameterizations"
(eq. ``ddim-step``); training and sampling on MNIST come in the chapter "Training a DDPM on MNIST".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch

from .parameterizations import eps_from_x0, x0_eps_from_output
from .posterior import posterior_mean
from .schedules import Schedule, gather64

__all__ = [
    "Denoiser",
    "model_denoiser",
    "clip_denoiser",
    "ddpm_step",
    "ddim_step",
    "dpm_solver_2m_step",
    "ddim_timesteps",
    "SamplerState",
    "iterate",
    "sample",
    "SAMPLERS",
    "sampler_plan",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Step = Callable[..., torch.Tensor]


def model_denoiser(model: torch.nn.Module, schedule: Schedule, target: str) -> Denoiser:
    """Wrap a network ``model(xt, t) -> output`` trained for ``target`` into a denoiser returning ``x0_hat``."""

    def denoiser(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0_hat, _ = x0_eps_from_output(model(xt, t), xt, t, schedule, target)
        return x0_hat

    return denoiser


def clip_denoiser(denoiser: Denoiser, lo: float = -1.0, hi: float = 1.0) -> Denoiser:
    """Clamp a denoiser's ``x0_hat`` to ``[lo, hi]``, the data range (Ho et al. 2020, §3.3 and their code)."""

    def clipped(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser(xt, t).clamp(lo, hi)

    return clipped


def ddpm_step(
    xt: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    x0_hat: torch.Tensor,
    noise: torch.Tensor,
    schedule: Schedule,
    previous: SamplerState | None = None,
) -> torch.Tensor:
    """One ancestral step :math:`x_{t-1} \\sim \\mathcal N(\\tilde\\mu_t(x_t, \\hat x_0), \\tilde\\beta_t I)`.

    Book eq. ``ddpm-step``; Ho et al. (2020), eqs. 6-7 with :math:`\\sigma_t^2 = \\tilde\\beta_t`
    (their Algorithm 2 written through :math:`\\hat x_0`). At ``t = 1`` the variance is 0 and the
    step returns ``x0_hat`` (to the round-off of ``xt``'s dtype: the coefficients are formed in
    float64 and cast at the end).

    Args:
        xt, x0_hat, noise: shape ``(B, ...)``; ``noise`` is standard normal.
        t: integer tensor ``(B,)`` in ``1..T``; ``t_prev`` must equal ``t - 1``.

    Raises:
        ValueError: if ``t_prev != t - 1`` (DDPM cannot skip steps; use :func:`ddim_step`).
    """
    if not torch.equal(torch.as_tensor(t_prev), torch.as_tensor(t) - 1):
        raise ValueError("ddpm_step moves one step at a time (t_prev = t - 1); to skip steps use ddim_step.")
    # 1. the posterior mean with x0 replaced by the denoiser's estimate (eq. posterior-mean)
    mean = posterior_mean(x0_hat, xt, t, schedule)
    # 2. add noise with the posterior *standard deviation*, the square root of tilde-beta_t (in float64)
    std = gather64(schedule.posterior_variance, t, xt).sqrt()
    return mean + std.to(xt) * noise


def ddim_step(
    xt: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    x0_hat: torch.Tensor,
    noise: torch.Tensor,
    schedule: Schedule,
    previous: SamplerState | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """One DDIM step from ``t`` to any earlier ``t_prev`` (Song, Meng & Ermon 2021, eq. 12 and 16).

    .. math:: x_{s} = \\sqrt{\\bar\\alpha_{s}}\\,\\hat x_0 + \\sqrt{1 - \\bar\\alpha_{s} - \\sigma^2}\\,\\hat\\epsilon + \\sigma z,
       \\quad \\sigma^2 = \\eta^2 \\frac{1 - \\bar\\alpha_s}{1 - \\bar\\alpha_t}\\Big(1 - \\frac{\\bar\\alpha_t}{\\bar\\alpha_s}\\Big)

    Book eq. ``ddim-step``. ``eta = 0`` is deterministic; ``eta = 1`` with ``t_prev = t - 1`` is the
    DDPM posterior step. The coefficients are formed in float64 and cast to ``xt``'s dtype at the end.

    Raises:
        ValueError: if ``eta < 0`` or some ``t_prev >= t``.
    """
    if eta < 0:
        raise ValueError(f"ddim_step: eta must be >= 0, got {eta}.")
    if bool((torch.as_tensor(t_prev) >= torch.as_tensor(t)).any()):
        raise ValueError("ddim_step: t_prev must be smaller than t.")
    ab = gather64(schedule.alpha_bar, t, xt)
    ab_prev = gather64(schedule.alpha_bar, t_prev, xt)
    # 1. the noise the denoiser implies (eq. x0-from-eps solved for eps)
    eps_hat = eps_from_x0(xt, t, x0_hat, schedule)
    # 2. the variance of the step, DDIM eq. 16
    var = eta**2 * (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)
    # 3. the step, DDIM eq. 12: predicted x0, the direction to x_t, and fresh noise
    c_x0, c_eps, c_noise = (c.to(xt) for c in (ab_prev.sqrt(), (1.0 - ab_prev - var).clamp(min=0).sqrt(), var.sqrt()))
    return c_x0 * x0_hat + c_eps * eps_hat + c_noise * noise


def dpm_solver_2m_step(
    xt: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    x0_hat: torch.Tensor,
    noise: torch.Tensor,
    schedule: Schedule,
    previous: SamplerState | None = None,
) -> torch.Tensor:
    r"""One step of DPM-Solver++(2M), a second-order multistep solver of the probability-flow ODE.

    Lu et al. (2022), "DPM-Solver++", Algorithm 2 (data prediction): with
    :math:`\alpha = \sqrt{\bar\alpha}`, :math:`\sigma = \sqrt{1-\bar\alpha}`,
    :math:`\lambda = \log(\alpha/\sigma)` (half the log-SNR) and :math:`h = \lambda_s - \lambda_t`,

    .. math:: x_s = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s (e^{-h} - 1) D,\quad
       D = \Big(1 + \frac{1}{2r}\Big)\hat x_0 - \frac{1}{2r}\hat x_0^{\text{prev}},\quad r = \frac{h^{\text{prev}}}{h},

    and :math:`D = \hat x_0` on the first step (no ``previous``). Rows with ``t_prev = 0`` (where
    :math:`\lambda = \infty`) return their ``x0_hat``, row by row, so a batch may mix them with rows
    that step to ``t_prev >= 1``. Deterministic: ``noise`` is ignored. The coefficients are formed in
    float64 and cast to ``xt``'s dtype at the end.

    Args:
        xt, x0_hat: shape ``(B, ...)``; ``previous.x0_hat`` (if given) too.
        t, t_prev: integer tensors ``(B,)``, ``0 <= t_prev < t <= T``.

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
        h_last = lam - gather64(half_log_snr, torch.full_like(t, previous.t), xt)
        w = torch.where(last, torch.zeros_like(h), h / (2 * h_last))
        out = c_xt.to(xt) * xt + (c_d * (1 + w)).to(xt) * x0_hat - (c_d * w).to(xt) * previous.x0_hat
    return torch.where(last.to(xt.device), x0_hat, out)


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps ``T, T - T/steps, ..., T/steps`` (rounded); the loop then steps to 0.

    The "trailing" spacing (Lin et al. 2024, Table 2): it starts at ``T`` and leaves the last
    interval, from about ``T/steps`` to the data, to the final step. With ``steps = T`` it is
    ``T, T-1, ..., 1``, every timestep.

    Raises:
        ValueError: if ``steps`` is not in ``1..T``.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"the number of sampling steps must be in 1..T = 1..{T}, got {steps}.")
    return sorted({int(round(T - i * T / steps)) for i in range(steps)}, reverse=True)


@dataclass(frozen=True)
class SamplerState:
    """One point of a trajectory: ``xt`` at timestep ``t`` and the denoiser's ``x0_hat`` there."""

    t: int
    xt: torch.Tensor
    x0_hat: torch.Tensor


def iterate(
    denoiser: Denoiser,
    schedule: Schedule,
    step: Step,
    x_T: torch.Tensor,
    timesteps: list[int],
    generator: torch.Generator | None = None,
) -> Iterator[SamplerState]:
    """The shared sampling loop, as a generator of :class:`SamplerState` from ``t = timesteps[0]`` to 0.

    Args:
        denoiser: ``(xt, t) -> x0_hat``.
        step: :func:`ddpm_step`, :func:`ddim_step` (``eta`` bound by ``functools.partial``) or
            :func:`dpm_solver_2m_step`.
        x_T: the starting noise, shape ``(B, ...)``.
        timesteps: decreasing integers in ``1..T``; the loop then steps to ``t = 0``.
        generator: the source of the per-step noise, for reproducible samples. It may live on
            another device than ``x_T`` (the usual case: a CPU generator, ``x_T`` on a GPU): the
            noise is drawn on the generator's device and then moved to ``x_T``'s, so the samples
            do not depend on where the network runs. Without one, torch's default generator of
            ``x_T``'s device is used.

    Yields:
        ``SamplerState(t, xt, x0_hat)`` before each step, then ``SamplerState(0, x0, x0)`` last.

    Raises:
        ValueError: if ``timesteps`` is empty, not strictly decreasing, or outside ``1..T``.
    """
    if not timesteps or any(a <= b for a, b in zip(timesteps, timesteps[1:])):
        raise ValueError("timesteps must be a non-empty, strictly decreasing list.")
    if timesteps[0] > schedule.T or timesteps[-1] < 1:
        raise ValueError(f"timesteps must lie in 1..T = 1..{schedule.T}.")
    x = x_T
    B = x.shape[0]
    previous = None
    for t_now, t_next in zip(timesteps, list(timesteps[1:]) + [0]):
        t = torch.full((B,), t_now, dtype=torch.long, device=x.device)
        t_prev = torch.full((B,), t_next, dtype=torch.long, device=x.device)
        state = SamplerState(t_now, x, denoiser(x, t))
        yield state
        noise = _standard_normal(x, generator)
        x = step(x, t, t_prev, state.x0_hat, noise, schedule, previous=previous)
        previous = state
    yield SamplerState(0, x, x)


def _standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of ``like``'s shape, dtype and device, drawn on ``generator``'s device.

    torch refuses a generator of another device than the one it draws on ("Expected a 'cuda'
    device type for generator"), so draw where the generator is, then move.
    """
    device = like.device if generator is None else generator.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    schedule: Schedule,
    step: Step,
    x_T: torch.Tensor,
    timesteps: list[int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run :func:`iterate` to the end and return ``x_0`` (shape of ``x_T``)."""
    state = None
    for state in iterate(denoiser, schedule, step, x_T, timesteps, generator):
        pass
    return state.xt


SAMPLERS = ("ddpm", "ddpm-strided", "ddim", "dpm-solver-2m")
"""Sampler names accepted by :func:`sampler_plan` and the command line."""


def sampler_plan(sampler: str, T: int, steps: int | None = None, eta: float = 0.0) -> tuple:
    """The step function and timesteps of a named sampler.

    ``ddpm`` takes all ``T`` steps (``steps`` must be ``None`` or ``T``); ``ddim`` (with ``eta``),
    ``ddpm-strided`` and ``dpm-solver-2m`` take ``steps`` (default 50) trailing timesteps
    (:func:`~ddpm_lib.samplers.ddim_timesteps`). ``ddpm-strided`` is the ancestral sampler on that
    shorter chain, the DDIM step with ``eta = 1`` (Song et al. 2021, eq. 16; the strided sampling of
    Nichol & Dhariwal 2021, §4); it ignores ``eta``.

    Returns:
        ``(step, timesteps)`` for :func:`ddpm_lib.samplers.sample`.

    Raises:
        ValueError: for an unknown sampler or a step count it cannot take.
    """
    if sampler == "ddpm":
        if steps not in (None, T):
            raise ValueError(f"the ddpm sampler takes all T = {T} steps; use ddpm-strided, ddim or dpm-solver-2m for fewer.")
        return ddpm_step, list(range(T, 0, -1))
    if sampler == "ddim":
        return partial(ddim_step, eta=eta), ddim_timesteps(T, 50 if steps is None else steps)
    if sampler == "ddpm-strided":
        return partial(ddim_step, eta=1.0), ddim_timesteps(T, 50 if steps is None else steps)
    if sampler == "dpm-solver-2m":
        return dpm_solver_2m_step, ddim_timesteps(T, 50 if steps is None else steps)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}.")
