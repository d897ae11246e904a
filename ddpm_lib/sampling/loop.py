"""The one sampling loop that runs every step, the timestep grids, and the named samplers.

:func:`iterate` runs any step of the protocol in :mod:`ddpm_lib.sampling.steps` from ``x_T`` down to
``x_0``, handing it the denoiser and the generator; :func:`sample` runs it to the end under
``torch.no_grad()`` (a guidance wrapper that needs gradients turns them back on inside itself with
``torch.enable_grad()``). :func:`sampler_plan` maps the command line's sampler names to a step and
its timesteps. Book chapter "Training a DDPM on MNIST".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from ..core.schedules import Schedule
from .denoisers import Denoiser, check_schedule
from .steps import ddim_step, ddpm_step, dpm_solver_2m_step, euler_maruyama_step, heun_step, pc_step

__all__ = ["Step", "SamplerState", "iterate", "sample", "count_nfe", "ddim_timesteps", "SAMPLERS", "PC_DEFAULTS", "sampler_plan"]

Step = Callable[..., tuple[torch.Tensor, Any]]
"""``step(denoiser, x, t, t_prev, schedule, generator, state) -> (x_prev, state)``."""


@dataclass(frozen=True)
class SamplerState:
    """One point of a trajectory.

    Attributes:
        t: the timestep (an int; 0 for the final state).
        xt: the sample at ``t``, shape ``(B, ...)``.
        x0_hat: the denoiser's first evaluation in the step from ``t`` (its estimate of ``x_0`` at
            ``(xt, t)``); the final state repeats ``xt``.
        nfe: the network evaluations so far, this step's included.
    """

    t: int
    xt: torch.Tensor
    x0_hat: torch.Tensor
    nfe: int


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
        step: a step of :mod:`ddpm_lib.sampling.steps` (``eta`` and the like bound by ``functools.partial``).
        x_T: the starting noise, shape ``(B, ...)``.
        timesteps: decreasing integers in ``1..T``; the loop then steps to ``t = 0``.
        generator: handed to every step for its noise (drawn on the generator's device and moved
            to ``x_T``'s, so the samples do not depend on where the network runs).

    Yields:
        ``SamplerState(t, xt, x0_hat, nfe)`` for each step (after it is taken), then
        ``SamplerState(0, x0, x0, nfe)`` last.

    Raises:
        ValueError: if ``timesteps`` is empty, not strictly decreasing, or outside ``1..T``; or if the
            denoiser carries another schedule than ``schedule`` (:func:`~ddpm_lib.sampling.denoisers.check_schedule`).
        RuntimeError: if a step returns without calling the denoiser.
    """
    check_schedule(denoiser, schedule)
    if not timesteps or any(a <= b for a, b in zip(timesteps, timesteps[1:])):
        raise ValueError("timesteps must be a non-empty, strictly decreasing list.")
    if timesteps[0] > schedule.T or timesteps[-1] < 1:
        raise ValueError(f"timesteps must lie in 1..T = 1..{schedule.T}.")
    x, state, nfe = x_T, None, 0
    B = x.shape[0]
    for t_now, t_next in zip(timesteps, list(timesteps[1:]) + [0]):
        t = torch.full((B,), t_now, dtype=torch.long, device=x.device)
        t_prev = torch.full((B,), t_next, dtype=torch.long, device=x.device)
        calls: list[torch.Tensor] = []

        def counted(xt: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            calls.append(denoiser(xt, tt))
            return calls[-1]

        x_prev, state = step(counted, x, t, t_prev, schedule, generator, state)
        if not calls:
            raise RuntimeError(f"the step {getattr(step, '__name__', step)!r} returned without calling the denoiser.")
        nfe += len(calls)
        yield SamplerState(t_now, x, calls[0], nfe)
        x = x_prev
    yield SamplerState(0, x, x, nfe)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    schedule: Schedule,
    step: Step,
    x_T: torch.Tensor,
    timesteps: list[int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run :func:`iterate` to the end and return ``x_0`` (shape and dtype of ``x_T``)."""
    state = None
    for state in iterate(denoiser, schedule, step, x_T, timesteps, generator):
        pass
    return state.xt


def count_nfe(step: Step, schedule: Schedule, timesteps: list[int]) -> int:
    """The number of network evaluations ``step`` makes on ``timesteps`` (it may depend on the schedule, as Heun's does).

    Counted, not assumed: the loop runs once with a stand-in denoiser (``x0_hat = 0``) on a single
    float64 number, and :class:`SamplerState` counts the calls.

    Raises:
        ValueError: as :func:`iterate`.
    """
    state = None
    for state in iterate(lambda x, t: torch.zeros_like(x), schedule, step, torch.zeros(1, 1, dtype=torch.float64),
                         timesteps, torch.Generator().manual_seed(0)):
        pass
    return state.nfe


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


SAMPLERS = ("ddpm", "ddpm-strided", "ddim", "dpm-solver-2m", "heun", "euler-maruyama", "pc")
"""Sampler names accepted by :func:`sampler_plan` and the command line."""

PC_DEFAULTS = {"predictor": "ancestral", "n_corrector": 1, "snr": 0.16, "norms": "batch"}
"""The sampler ``pc``: :func:`~ddpm_lib.sampling.steps.pc_step` with these arguments: the predictor-corrector sampler of Song
et al. (2021) with the ancestral predictor, one Langevin corrector step after each predictor step, ``snr`` = 0.16 and the
step size from the batch's mean norms, as in their released code. Their released configurations are not this combination:
those for DDPM models use the ancestral predictor with *no* corrector, and 0.16 is their default ``snr`` (used with the
Langevin corrector of their CIFAR-10 VE-SDE samplers; some configurations set 0.17, 0.15 or 0.075); their code also
corrects *before* each predictor step, ``t = T`` included, where ``pc_step`` corrects after it. Their Algorithm 3, for the
VP-SDE, has the reverse-diffusion predictor (``predictor="reverse-diffusion"``): on a strided grid it overestimates the
variance at every step, most on the first from ``t = T`` (twice the variance there; 1.4 to 1.5 times still at the last
grid point of ten steps on the shipped cosine schedule, for Gaussian data), and its ten-step digits are visibly distorted:
book chapter "Stochastic differential equations"."""


def sampler_plan(sampler: str, T: int, steps: int | None = None, eta: float = 0.0) -> tuple[Step, list[int]]:
    """The step function and timesteps of a named sampler.

    ``ddpm`` takes all ``T`` steps (``steps`` must be ``None`` or ``T``); ``ddim`` (with ``eta``),
    ``ddpm-strided``, ``dpm-solver-2m`` and ``heun`` take ``steps`` (default 50) trailing timesteps
    (:func:`ddim_timesteps`). ``ddpm-strided`` is the ancestral sampler on that shorter chain, the
    DDIM step with ``eta = 1`` (Song et al. 2021, eq. 16; the strided sampling of Nichol & Dhariwal
    2021, §4); it ignores ``eta``. ``heun`` evaluates the network twice per step, but once on the
    last step and on steps that start above ``sigma_max`` (:func:`~ddpm_lib.sampling.steps.heun_step`),
    so ``steps`` Heun steps cost at most ``2 steps - 1`` evaluations; :func:`count_nfe` counts them.
    ``euler-maruyama`` (:func:`~ddpm_lib.sampling.steps.euler_maruyama_step`) solves the reverse-time SDE,
    one evaluation per step; it is a hybrid, taking the ancestral step where sigma_t > 80 (the first step
    from ``t = T`` on the cosine schedule; ``t >= 931`` on the linear one). ``pc``
    (:func:`~ddpm_lib.sampling.steps.pc_step` with :data:`PC_DEFAULTS`) adds a Langevin corrector step after each
    predictor step but the last, so ``steps`` steps cost ``2 steps - 1`` evaluations. Both ignore ``eta``. Book
    chapter "Stochastic differential equations".

    Returns:
        ``(step, timesteps)`` for :func:`sample`.

    Raises:
        ValueError: for an unknown sampler or a step count it cannot take.
    """
    if sampler == "ddpm":
        if steps not in (None, T):
            raise ValueError(f"the ddpm sampler takes all T = {T} steps; use ddpm-strided, ddim or dpm-solver-2m for fewer.")
        return ddpm_step, list(range(T, 0, -1))
    strided = {"ddim": partial(ddim_step, eta=eta), "ddpm-strided": partial(ddim_step, eta=1.0),
               "dpm-solver-2m": dpm_solver_2m_step, "heun": heun_step,
               "euler-maruyama": euler_maruyama_step, "pc": partial(pc_step, **PC_DEFAULTS)}
    if sampler not in strided:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}.")
    return strided[sampler], ddim_timesteps(T, 50 if steps is None else steps)
