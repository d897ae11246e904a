"""The forward process q(x_t | x_0) (ddpm_lib.core.forward), checked by Monte Carlo against its moments.

The statistical checks use a CLT bound: a sample mean of N draws with variance v lies within
K = 5 standard errors sqrt(v/N) of the true mean except with probability ~6e-7; a Gaussian sample
variance has standard error v sqrt(2/(N-1)). The generators are seeded, so the tests are
deterministic; the 5-SE bound says the seeds were not cherry-picked. Each check is also applied to a
planted wrong implementation and must reject it.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib.core.forward import q_mean_var, q_sample, q_step_sample
from ddpm_lib.core.schedules import Schedule, linear_schedule

pytestmark = pytest.mark.usefixtures("single_thread")

N = 20_000  # Monte Carlo draws per x0 value
K_SE = 5.0  # standard errors allowed (two-sided tail ~6e-7 per comparison)
X0_VALUES = torch.tensor([-1.0, -0.3, 0.0, 0.8], dtype=torch.float64)  # one column per x0 value
T_CHECK = [1, 10, 100, 250]  # steps where 1 - alpha_bar_t and its square root differ by >> 5 SE


@pytest.fixture(scope="module")
def schedule() -> Schedule:
    return linear_schedule(1000)


def loop_alpha_bar(schedule: Schedule, t: int) -> float:
    out = 1.0
    for s in range(1, t + 1):
        out *= 1.0 - schedule.beta[s].item()
    return out


def moments_match(samples: torch.Tensor, mean: torch.Tensor, var: float) -> tuple[bool, str]:
    """Do the per-column sample mean and variance of ``samples`` (N, D) match ``mean`` (D,) and ``var``?

    CLT bound: |sample mean - mean| <= K_SE * sqrt(var / N) and
    |sample var - var| <= K_SE * var * sqrt(2 / (N - 1)) (the Gaussian standard error of a variance).
    """
    n = samples.shape[0]
    m_hat = samples.mean(dim=0)
    v_hat = samples.var(dim=0, unbiased=True)
    se_mean = math.sqrt(var / n)
    se_var = var * math.sqrt(2.0 / (n - 1))
    z_mean = ((m_hat - mean).abs() / se_mean).max().item()
    z_var = ((v_hat - var).abs() / se_var).max().item()
    return z_mean <= K_SE and z_var <= K_SE, f"mean off by {z_mean:.1f} SE, variance off by {z_var:.1f} SE"


def _x0_batch() -> torch.Tensor:
    return X0_VALUES.expand(N, -1).clone()


# --- q_sample: one shot ------------------------------------------------------------------------------


def check_q_sample(q_sample_fn, schedule: Schedule, t: int, seed: int) -> tuple[bool, str]:
    """Draw x_t = q_sample_fn(x0, t, eps) N times per x0 value and compare with N(sqrt(ab) x0, 1 - ab)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = _x0_batch()
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    xt = q_sample_fn(x0, torch.full((N,), t, dtype=torch.long), eps, schedule)
    ab = loop_alpha_bar(schedule, t)  # independent of the library's cumprod
    return moments_match(xt, math.sqrt(ab) * X0_VALUES, 1.0 - ab)


def wrong_q_sample_sqrt_as_variance(x0, t, eps, schedule):
    """Planted mistake: treats sqrt(1 - alpha_bar) as the *variance*, so the noise std is (1 - ab)^(1/4)."""
    ab = schedule.alpha_bar[t].reshape(-1, 1)
    wrong_var = (1.0 - ab).sqrt()
    return ab.sqrt() * x0 + wrong_var.sqrt() * eps


@pytest.mark.parametrize("t", T_CHECK + [1000])
def test_q_sample_moments(schedule, t):
    ok, msg = check_q_sample(q_sample, schedule, t, seed=t)
    assert ok, msg


@pytest.mark.parametrize("t", T_CHECK)
def test_q_sample_check_rejects_sqrt_as_variance(schedule, t):
    ok, msg = check_q_sample(wrong_q_sample_sqrt_as_variance, schedule, t, seed=t)
    assert not ok, f"the planted mistake passed the moment check: {msg}"


def test_q_mean_var_is_a_variance(schedule):
    x0 = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 10, 1000])
    mean, var = q_mean_var(x0, t, schedule)
    assert mean.shape == x0.shape and var.shape == (3, 1, 1)
    for i, ti in enumerate(t.tolist()):
        ab = loop_alpha_bar(schedule, ti)
        # alpha_bar from a Python loop vs torch.cumprod: <= t ulps relative (t multiplications);
        # 1 - ab then has that absolute error, relative to 1 - ab >= beta_1 = 1e-4 -> < 3e-9.
        assert math.isclose(var[i].item(), 1.0 - ab, rel_tol=ti * 2.3e-16 / (1.0 - ab) + 1e-15)
        assert torch.allclose(mean[i], math.sqrt(ab) * x0[i], rtol=1e-12, atol=0.0)


# --- q_step_sample iterated: the induction ----------------------------------------------------------


def correct_kernel(x_prev, t, eps, schedule):
    return q_step_sample(x_prev, t, eps, schedule)


def wrong_kernel_beta_not_sqrt(x_prev, t, eps, schedule):
    """Planted mistake: scales the noise by beta_t instead of its square root."""
    beta = schedule.beta[t].reshape(-1, 1)
    return (1.0 - beta).sqrt() * x_prev + beta * eps


def check_iterated_kernel(kernel, schedule: Schedule, seed: int) -> dict[int, tuple[bool, str]]:
    """Apply ``kernel`` for t = 1..max(T_CHECK) and compare x_t with q(x_t | x_0) at each t in T_CHECK.

    By induction x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps: sqrt(alpha_t)^2 (1 - ab_{t-1}) + beta_t = 1 - ab_t.
    """
    gen = torch.Generator().manual_seed(seed)
    x = _x0_batch()
    results = {}
    for t in range(1, max(T_CHECK) + 1):
        eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        x = kernel(x, torch.full((N,), t, dtype=torch.long), eps, schedule)
        if t in T_CHECK:
            ab = loop_alpha_bar(schedule, t)
            results[t] = moments_match(x, math.sqrt(ab) * X0_VALUES, 1.0 - ab)
    return results


def test_iterated_kernel_matches_marginal(schedule):
    for t, (ok, msg) in check_iterated_kernel(correct_kernel, schedule, seed=1).items():
        assert ok, f"t = {t}: {msg}"


def test_iterated_kernel_check_rejects_beta_instead_of_sqrt(schedule):
    for t, (ok, msg) in check_iterated_kernel(wrong_kernel_beta_not_sqrt, schedule, seed=1).items():
        assert not ok, f"t = {t}: the planted mistake passed: {msg}"


# --- edges and errors --------------------------------------------------------------------------------


def test_t0_returns_x0(schedule):
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 1, 3, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 5, 0, 1000])
    xt = q_sample(x0, t, eps, schedule)
    # alpha_bar_0 = 1 exactly, so sqrt(1) x0 + sqrt(0) eps is x0 bit for bit
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], x0[2])
    assert not torch.equal(xt[1], x0[1])


def test_per_example_timesteps(schedule):
    """A batch with different t per example equals the examples computed one at a time."""
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([7, 300, 999])
    batch = q_sample(x0, t, eps, schedule)
    for i in range(3):
        one = q_sample(x0[i : i + 1], t[i : i + 1], eps[i : i + 1], schedule)
        assert torch.equal(batch[i : i + 1], one)


def test_dtype_is_preserved(schedule):
    x0 = torch.zeros(2, 3, dtype=torch.float32)
    out = q_sample(x0, torch.tensor([1, 2]), torch.ones_like(x0), schedule)
    assert out.dtype == torch.float32
    out = q_step_sample(x0, torch.tensor([1, 2]), torch.ones_like(x0), schedule)
    assert out.dtype == torch.float32


def test_shape_mismatch_raises(schedule):
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"eps must have"):
        q_sample(x0, torch.tensor([1, 2]), torch.zeros(2, 4), schedule)
    with pytest.raises(ValueError, match=r"eps must have"):
        q_step_sample(x0, torch.tensor([1, 2]), torch.zeros(3, 3), schedule)


def test_q_step_sample_rejects_t0(schedule):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"t in 1\.\.T"):
        q_step_sample(x, torch.tensor([0, 1]), torch.zeros_like(x), schedule)


def test_out_of_range_t_raises(schedule):
    x0 = torch.zeros(1, 3)
    with pytest.raises(IndexError):
        q_sample(x0, torch.tensor([1001]), torch.zeros_like(x0), schedule)
