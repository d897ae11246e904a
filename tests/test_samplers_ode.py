"""The probability-flow ODE solvers: DPM-Solver++(2M) against DDIM (eta = 0) on Gaussian data.

For data N(m, s^2) the probability-flow ODE is linear, and its exact solution from x_T at t = T to
t = 0 is the affine map x_0 = m + s (x_T - sqrt(ab_T) m) / sqrt(ab_T s^2 + 1 - ab_T): it sends each
quantile of q(x_T) to the same quantile of the data. Both solvers, given the exact denoiser, must
approach that map as the number of steps grows, the second-order one faster.
"""

import functools
import math

import pytest
import torch

from ddpm_lib.samplers import ddim_step, ddim_timesteps, dpm_solver_2m_step, sample
from ddpm_lib.schedules import cosine_schedule, linear_schedule

M, S = 0.7, 0.5


def exact_denoiser(schedule):
    def denoiser(xt, t):
        ab = schedule.alpha_bar[t].to(xt.dtype).reshape(-1, 1)
        gain = ab.sqrt() * S**2 / (ab * S**2 + 1 - ab)
        return M + gain * (xt - ab.sqrt() * M)

    return denoiser


def flow_map(x_T, schedule):
    ab = schedule.alpha_bar[-1].item()
    return M + S * (x_T - math.sqrt(ab) * M) / math.sqrt(ab * S**2 + 1 - ab)


def max_error(step, schedule, steps):
    x_T = torch.linspace(-3, 3, 61, dtype=torch.float64).reshape(-1, 1)
    x0 = sample(exact_denoiser(schedule), schedule, step, x_T, ddim_timesteps(schedule.T, steps))
    return (x0 - flow_map(x_T, schedule)).abs().max().item()


@pytest.mark.parametrize("schedule", [linear_schedule(1000), cosine_schedule(1000)], ids=["linear", "cosine"])
def test_dpm_solver_2m_beats_ddim_and_converges(schedule):
    ddim = functools.partial(ddim_step, eta=0.0)
    e_ddim = [max_error(ddim, schedule, k) for k in (10, 20, 50)]
    e_dpm = [max_error(dpm_solver_2m_step, schedule, k) for k in (10, 20, 50)]
    # both converge as the steps grow; the second-order solver is more accurate at each budget
    assert e_ddim[0] > e_ddim[1] > e_ddim[2]
    assert e_dpm[0] > e_dpm[2]
    assert all(a < b for a, b in zip(e_dpm, e_ddim)), (e_dpm, e_ddim)
    # at 1000 steps (every timestep) both are within 1e-3 of the exact map (discretization of T)
    assert max_error(dpm_solver_2m_step, schedule, 1000) < 1e-3


def test_dpm_solver_first_step_equals_ddim_and_last_returns_x0_hat():
    sch = linear_schedule(100)
    xt = torch.randn(4, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0_hat = torch.randn(4, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, t_prev = torch.full((4,), 80), torch.full((4,), 60)
    noise = torch.zeros_like(xt)
    # with no previous prediction the first-order DPM-Solver++ step is exactly the DDIM (eta = 0) step
    a = dpm_solver_2m_step(xt, t, t_prev, x0_hat, noise, sch)
    b = ddim_step(xt, t, t_prev, x0_hat, noise, sch, eta=0.0)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)  # float64 round-off
    assert torch.equal(dpm_solver_2m_step(xt, t, torch.zeros(4, dtype=torch.long), x0_hat, noise, sch), x0_hat)
    with pytest.raises(ValueError, match="smaller"):
        dpm_solver_2m_step(xt, t_prev, t, x0_hat, noise, sch)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dpm_solver_rows_stepping_to_zero_are_handled_per_row(dtype):
    """A batch may mix rows with t_prev = 0 (which return x0_hat) and rows with t_prev >= 1.

    Each row of the mixed batch must equal the same row stepped alone, and nothing may be NaN: with
    a previous prediction, the guard on the batch's largest t_prev let lambda_0 = inf into the
    second-order weights of the rows stepping to 0 (inf - inf).
    """
    from ddpm_lib.samplers import SamplerState

    sch = linear_schedule(100)
    gen = torch.Generator().manual_seed(2)
    xt, x0_hat, x0_prev = (torch.randn(4, 1, 3, generator=gen, dtype=dtype) for _ in range(3))
    noise = torch.zeros_like(xt)
    t = torch.tensor([40, 40, 40, 40])
    t_prev = torch.tensor([0, 20, 0, 39])
    for previous in (None, SamplerState(60, xt, x0_prev)):
        mixed = dpm_solver_2m_step(xt, t, t_prev, x0_hat, noise, sch, previous=previous)
        assert mixed.dtype == dtype and not bool(mixed.isnan().any()), mixed
        for i in range(4):
            prev_i = None if previous is None else SamplerState(60, xt[i : i + 1], x0_prev[i : i + 1])
            alone = dpm_solver_2m_step(xt[i : i + 1], t[i : i + 1], t_prev[i : i + 1], x0_hat[i : i + 1], noise[i : i + 1], sch,
                                       previous=prev_i)
            assert torch.equal(mixed[i : i + 1], alone), (i, previous is None)
        assert torch.equal(mixed[0], x0_hat[0]) and torch.equal(mixed[2], x0_hat[2])
