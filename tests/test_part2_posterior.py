"""The Gaussian posterior, checks not in test_posterior.py: Bayes' rule by quadrature, the normalization of
the completed square, and the simulated chain, each with the planted mistakes it must catch.

* Brute-force Bayes: q(x_t | x_{t-1}) q(x_{t-1} | x_0) on a grid of x_{t-1}, normalized by the trapezoidal
  rule. For a Gaussian integrand sampled at <= 1% of its standard deviation and truncated >= 10 standard
  deviations out, the quadrature error is far below float64 round-off (Poisson summation), so the
  tolerance 1e-9 is set by round-off alone.
* The remainder of the completed square must be the log-normalizer -log(2 pi / p) / 2; this is the
  check that sees the denominator q(x_t | x_0) of Bayes' rule (planted: sqrt(alpha_t) for
  sqrt(alphabar_t) in its mean, a slip in circulating notes).
* The residual r = x_{t-1} - posterior_mean(x0, x_t) of the simulated chain has mean 0, variance
  tilde_beta_t and no correlation with x_t (5 standard errors).
"""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from ddpm_lib.core.forward import q_sample, q_step_sample
from ddpm_lib.core.posterior import posterior_mean, posterior_variance
from ddpm_lib.core.schedules import Schedule, cosine_schedule, linear_schedule
from ddpm_lib.teaching.symbolic import complete_square, gaussian_logpdf, is_equal

pytestmark = pytest.mark.usefixtures("single_thread")

K_SE = 5.0
SCHEDULES = {"linear": linear_schedule(1000), "cosine": cosine_schedule(1000)}


# --- brute-force Bayes on a grid ---------------------------------------------------------------------------


def posterior_on_grid(t: int, x0: float, xt: float, schedule: Schedule, n: int = 20_001, width: float = 14.0):
    beta, abp = float(schedule.beta[t]), float(schedule.alpha_bar[t - 1])
    centre, sd = math.sqrt(abp) * x0, math.sqrt(1 - abp)
    y = torch.linspace(centre - width * sd, centre + width * sd, n, dtype=torch.float64)
    log_num = (-(xt - math.sqrt(1 - beta) * y) ** 2 / (2 * beta) - math.log(2 * math.pi * beta) / 2
               - (y - centre) ** 2 / (2 * sd**2) - math.log(2 * math.pi * sd**2) / 2)
    num = torch.exp(log_num)
    norm = torch.trapezoid(num, y)
    mean = torch.trapezoid(y * num, y) / norm
    var = torch.trapezoid((y - mean) ** 2 * num, y) / norm
    return float(norm), float(mean), float(var)


def cases(schedule: Schedule, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for t in (2, 3, 10, 100, 500, 1000):
        x0 = 2 * torch.rand(1, 1, generator=gen, dtype=torch.float64) - 1
        xt = q_sample(x0, torch.tensor([t]), torch.randn(1, 1, generator=gen, dtype=torch.float64), schedule)
        yield t, x0, xt


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_library_posterior_matches_bayes_on_a_grid(name):
    sch = SCHEDULES[name]
    for t, x0, xt in cases(sch, seed=1):
        norm, mean, var = posterior_on_grid(t, float(x0), float(xt), sch)
        ab = float(sch.alpha_bar[t])
        evidence = math.exp(-(float(xt) - math.sqrt(ab) * float(x0)) ** 2 / (2 * (1 - ab))) / math.sqrt(2 * math.pi * (1 - ab))
        lib_mean = float(posterior_mean(x0, xt, torch.tensor([t]), sch))
        lib_var = float(posterior_variance(torch.tensor([t]), sch, x0))
        assert abs(norm / evidence - 1) < 1e-9, t
        assert abs(mean - lib_mean) < 1e-9 * math.sqrt(lib_var), t
        assert abs(var / lib_var - 1) < 1e-9, t


def test_grid_check_rejects_the_planted_precision_without_beta():
    """Planted: precision alpha_t + 1/(1 - alphabar_{t-1}) (alpha_t not divided by beta_t)."""
    sch = SCHEDULES["linear"]
    for t, x0, xt in cases(sch, seed=2):
        _, _, var = posterior_on_grid(t, float(x0), float(xt), sch)
        planted = 1 / ((1 - float(sch.beta[t])) + 1 / (1 - float(sch.alpha_bar[t - 1])))
        assert abs(planted / var - 1) > 0.5, t


# --- the completed square is normalized ------------------------------------------------------------------------

Y, XT, X0 = sp.symbols("x_{t-1} x_t x_0", real=True)
A, ABP = sp.symbols("alpha_t alphabar_{t-1}", positive=True)


def completed(denominator_mean):
    log_post = (gaussian_logpdf(XT, sp.sqrt(A) * Y, 1 - A) + gaussian_logpdf(Y, sp.sqrt(ABP) * X0, 1 - ABP)
                - gaussian_logpdf(XT, denominator_mean, 1 - A * ABP))
    return complete_square(log_post, Y)


def test_completed_square_is_a_normalized_gaussian():
    p, m, c = completed(sp.sqrt(A * ABP) * X0)
    assert is_equal(1 / p, (1 - ABP) / (1 - A * ABP) * (1 - A))
    assert is_equal(c, -sp.log(2 * sp.pi / p) / 2)


def test_normalization_check_catches_the_planted_denominator():
    """Planted (from circulating notes): q(x_t | x_0) with mean sqrt(alpha_t) x_0. Mean and variance are
    unchanged (the denominator has no x_{t-1}), so only the normalization check can see it."""
    p, m, c = completed(sp.sqrt(A) * X0)
    # precision and mean still those of eq. 7, written here from the text: alpha_t / beta_t + 1 / (1 - alphabar_{t-1})
    # and (sqrt(alphabar_{t-1}) beta_t x_0 + sqrt(alpha_t) (1 - alphabar_{t-1}) x_t) / (1 - alphabar_t). (Comparing
    # with completed() of the right denominator instead would compare one expression with itself: SymPy
    # builds both the same, because the denominator has no x_{t-1}.)
    assert is_equal(p, A / (1 - A) + 1 / (1 - ABP))
    assert is_equal(m, (sp.sqrt(ABP) * (1 - A) * X0 + sp.sqrt(A) * (1 - ABP) * XT) / (1 - A * ABP))
    assert not is_equal(p, A + 1 / (1 - ABP))  # planted: alpha_t not divided by beta_t
    assert not is_equal(c, -sp.log(2 * sp.pi / p) / 2)


# --- the simulated chain -------------------------------------------------------------------------------------------


def residual_z(mean_fn, schedule: Schedule, t: int, x0_value: float, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.full((n, 1), x0_value, dtype=torch.float64)
    tt = torch.full((n,), t)
    x_prev = q_sample(x0, tt - 1, torch.randn(n, 1, generator=gen, dtype=torch.float64), schedule)
    xt = q_step_sample(x_prev, tt, torch.randn(n, 1, generator=gen, dtype=torch.float64), schedule)
    r = (x_prev - mean_fn(x0, xt, tt, schedule))[:, 0]
    var = float(schedule.posterior_variance[t])
    corr = float(torch.corrcoef(torch.stack([r, xt[:, 0]]))[0, 1])
    return (float(r.mean()) / math.sqrt(var / n), (float(r.var()) - var) / (var * math.sqrt(2 / (n - 1))), corr * math.sqrt(n))


def planted_eps_form(x0, xt, t, schedule):
    """Planted (from circulating notes): the eps form of the mean with 1/sqrt(alphabar_t) for 1/sqrt(alpha_t)."""
    ab = schedule.alpha_bar[t].reshape(-1, 1)
    beta = schedule.beta[t].reshape(-1, 1)
    eps = (xt - ab.sqrt() * x0) / (1 - ab).sqrt()
    return (xt - beta / (1 - ab).sqrt() * eps) / ab.sqrt()


@pytest.mark.parametrize("t", [2, 50, 700])
def test_residual_of_the_simulated_chain(t):
    z = residual_z(posterior_mean, SCHEDULES["linear"], t, 0.6, 100_000, seed=t)
    assert max(map(abs, z)) < K_SE, z


@pytest.mark.parametrize("t", [50, 700])
def test_residual_check_catches_the_planted_eps_form(t):
    z = residual_z(planted_eps_form, SCHEDULES["linear"], t, 0.6, 100_000, seed=t)
    assert max(map(abs, z)) > K_SE, z
