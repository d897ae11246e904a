"""The Gaussian posterior q(x_{t-1} | x_t, x_0) (ddpm_lib.core.posterior).

Two independent routes to the closed form of Ho et al. (2020), eqs. 6-7:

1. numbers: the joint of (x_{t-1}, x_t) given x_0 is Gaussian, so condition it with the textbook
   formula mu_1 + S12/S22 (x_t - mu_2), S11 - S12^2/S22;
2. symbols: complete the square of log q(x_t|x_{t-1}) + log q(x_{t-1}|x_0) in x_{t-1} with sympy.
"""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from ddpm_lib.core.posterior import posterior_mean, posterior_mean_coefs, posterior_variance
from ddpm_lib.core.schedules import Schedule, cosine_schedule, linear_schedule
from ddpm_lib.teaching.symbolic import is_equal

pytestmark = pytest.mark.usefixtures("single_thread")

# Tolerance of the float64 comparisons. alpha_bar_t carries <= t ulps of absolute error from its t
# multiplications (the library's cumprod and the Python loop below may round differently), so
# 1 - alpha_bar_t carries a relative error <= t * 2.2e-16 / (1 - alpha_bar_t) <= 2.2e-16 / min beta;
# min beta >= 4e-5 for these schedules -> <= 6e-12. The formulas combine a few such factors: 1e-10.
RTOL = 1e-10

SCHEDULES = {"linear": linear_schedule(1000), "cosine": cosine_schedule(1000), "linear-T10": linear_schedule(10, 0.05, 0.3)}


def loop_alpha_bar(beta: list[float]) -> list[float]:
    out = [1.0]
    for b in beta[1:]:
        out.append(out[-1] * (1.0 - b))
    return out


def conditioned_gaussian(schedule: Schedule, t: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor):
    """Mean and variance of x_{t-1} | x_t, x_0 by conditioning the joint Gaussian (per example, Python floats).

    x_{t-1} = sqrt(ab_{t-1}) x0 + sqrt(1 - ab_{t-1}) e1 and x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) e2, so
    Var(x_{t-1}) = 1 - ab_{t-1}, Var(x_t) = 1 - ab_t, Cov = sqrt(alpha_t)(1 - ab_{t-1}).
    """
    beta = schedule.beta.tolist()
    ab = loop_alpha_bar(beta)
    means, variances = [], []
    for i, ti in enumerate(t.tolist()):
        s11 = 1.0 - ab[ti - 1]
        s22 = 1.0 - ab[ti]
        s12 = math.sqrt(1.0 - beta[ti]) * (1.0 - ab[ti - 1])
        mu1 = math.sqrt(ab[ti - 1]) * x0[i]
        mu2 = math.sqrt(ab[ti]) * x0[i]
        means.append(mu1 + s12 / s22 * (xt[i] - mu2))
        variances.append(s11 - s12**2 / s22)
    return torch.stack(means), torch.tensor(variances, dtype=torch.float64)


def random_case(schedule: Schedule, seed: int, t_min: int = 1, batch: int = 64):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(t_min, schedule.T + 1, (batch,), generator=gen)
    x0 = 2 * torch.rand(batch, 3, generator=gen, dtype=torch.float64) - 1
    xt = 2 * torch.randn(batch, 3, generator=gen, dtype=torch.float64)
    return t, x0, xt


def mean_matches_conditioning(mean_fn, schedule: Schedule, t, x0, xt) -> torch.Tensor:
    """Per example: does ``mean_fn(x0, xt, t, schedule)`` equal the conditioned Gaussian mean within RTOL?

    The mean is c0 x0 + c1 xt with coefficients carrying RTOL relative error, so the absolute error is
    bounded by RTOL (|c0 x0| + |c1 xt|) <= RTOL (|x0| + |xt|) (both coefficients are <= 1).
    """
    ref, _ = conditioned_gaussian(schedule, t, x0, xt)
    got = mean_fn(x0, xt, t, schedule)
    tol = RTOL * (x0.abs() + xt.abs()) + 1e-300
    return ((got - ref).abs() <= tol).all(dim=1)


def eps_form_posterior_mean(x0, xt, t, schedule):
    """Ho et al. (2020), eq. 11: mu = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t), eps from x_t and x_0."""
    ab = schedule.alpha_bar[t].reshape(-1, 1)
    beta = schedule.beta[t].reshape(-1, 1)
    eps = (xt - ab.sqrt() * x0) / (1.0 - ab).sqrt()
    return (xt - beta / (1.0 - ab).sqrt() * eps) / (1.0 - beta).sqrt()


def wrong_eps_form_posterior_mean(x0, xt, t, schedule):
    """Planted mistake: divides by sqrt(alpha_bar_t) instead of sqrt(alpha_t)."""
    ab = schedule.alpha_bar[t].reshape(-1, 1)
    beta = schedule.beta[t].reshape(-1, 1)
    eps = (xt - ab.sqrt() * x0) / (1.0 - ab).sqrt()
    return (xt - beta / (1.0 - ab).sqrt() * eps) / ab.sqrt()


# --- numbers: Gaussian conditioning ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_posterior_mean_is_gaussian_conditioning(name):
    schedule = SCHEDULES[name]
    t, x0, xt = random_case(schedule, seed=0)
    ok = mean_matches_conditioning(posterior_mean, schedule, t, x0, xt)
    assert bool(ok.all()), f"mismatch at t = {t[~ok].tolist()}"


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_posterior_variance_is_gaussian_conditioning(name):
    schedule = SCHEDULES[name]
    t, x0, xt = random_case(schedule, seed=1)
    _, ref = conditioned_gaussian(schedule, t, x0, xt)
    got = posterior_variance(t, schedule, xt)
    assert got.shape == (len(t), 1)
    # S11 - S12^2/S22 cancels: its absolute round-off is a few ulps of S11 = 1 - ab_{t-1}, on top of
    # the RTOL relative error of the 1 - ab factors (see RTOL).
    s11 = torch.tensor([1.0 - loop_alpha_bar(schedule.beta.tolist())[ti - 1] for ti in t.tolist()], dtype=torch.float64)
    tol = RTOL * ref + 16 * 2.2e-16 * s11
    assert bool(((got[:, 0] - ref).abs() <= tol).all())


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_eps_form_of_the_posterior_mean_passes(name):
    """Ho et al. eq. 11 (the eps form) is the same mean: a second correct implementation must pass too."""
    schedule = SCHEDULES[name]
    t, x0, xt = random_case(schedule, seed=2)
    assert bool(mean_matches_conditioning(eps_form_posterior_mean, schedule, t, x0, xt).all())


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_check_rejects_sqrt_alpha_bar_in_eps_form(name):
    schedule = SCHEDULES[name]
    # for t >= 2: at t = 1 alpha_bar_1 = alpha_1 and the planted mistake coincides with the truth.
    t, x0, xt = random_case(schedule, seed=3, t_min=2)
    ok = mean_matches_conditioning(wrong_eps_form_posterior_mean, schedule, t, x0, xt)
    assert not bool(ok.any()), f"the planted mistake passed at t = {t[ok].tolist()}"


def test_t1_posterior_is_the_point_mass_at_x0():
    schedule = SCHEDULES["linear"]
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    xt = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    t = torch.ones(5, dtype=torch.long)
    # c_x0 = sqrt(ab_0) beta_1 / (1 - ab_1) = beta_1 / beta_1 = 1 up to round-off: ab_1 = fl(1 - beta_1)
    # is off by <= half an ulp of 1 (1.1e-16), a relative error of 1.1e-16 / beta_1 in 1 - ab_1 (the
    # subtraction itself is exact by Sterbenz); plus a few ulps. c_xt has the factor 1 - ab_0 = 0 exactly.
    rtol = 1.1e-16 / schedule.beta[1].item() + 4 * 2.2e-16
    assert torch.allclose(posterior_mean(x0, xt, t, schedule), x0, rtol=rtol, atol=0.0)
    assert bool((posterior_variance(t, schedule, xt) == 0).all())


def test_coefs_broadcast_and_batch_consistency():
    schedule = SCHEDULES["linear"]
    like = torch.zeros(3, 1, 4, 4, dtype=torch.float32)
    c0, c1 = posterior_mean_coefs(torch.tensor([1, 500, 1000]), schedule, like)
    assert c0.shape == c1.shape == (3, 1, 1, 1)
    assert c0.dtype == c1.dtype == torch.float32


# --- symbols: completing the square --------------------------------------------------------------------


def test_sympy_completing_the_square_gives_the_closed_form():
    y, xt, x0 = sp.symbols("x_{t-1} x_t x_0", real=True)
    a, abp = sp.symbols("alpha_t abar_{t-1}", positive=True)  # alpha_t and alpha_bar_{t-1} in (0, 1)
    beta = 1 - a
    ab = a * abp  # alpha_bar_t = alpha_t * alpha_bar_{t-1}
    # log q(x_t | x_{t-1}) + log q(x_{t-1} | x_0), dropping terms without x_{t-1}
    log_joint = -((xt - sp.sqrt(a) * y) ** 2) / (2 * beta) - (y - sp.sqrt(abp) * x0) ** 2 / (2 * (1 - abp))
    # a quadratic in y: -precision/2 y^2 + linear y + const; its mean is linear / precision
    poly = sp.Poly(sp.expand(log_joint), y)
    assert poly.degree() == 2
    precision = -2 * poly.coeff_monomial(y**2)
    mean_derived = poly.coeff_monomial(y) / precision

    # the closed form of Ho et al. (2020), eq. 7, written in the same symbols
    var_closed = (1 - abp) / (1 - ab) * beta
    mean_closed = sp.sqrt(abp) * beta / (1 - ab) * x0 + sp.sqrt(a) * (1 - abp) / (1 - ab) * xt

    # the coefficients read off the expanded polynomial against eq. 7: different constructions
    assert is_equal(1 / precision, var_closed)
    assert is_equal(mean_derived, mean_closed)
    assert not is_equal(1 / precision, (1 - ab) / (1 - abp) * beta)  # planted: the ratio of (1 - alpha_bar)s inverted
    # and the completed square is exact: log_joint + (y - mean)^2 / (2 var) does not depend on y
    remainder = log_joint + (y - mean_closed) ** 2 / (2 * var_closed)
    assert is_equal(sp.diff(remainder, y), 0)
    assert not is_equal(sp.diff(log_joint + (y - mean_closed) ** 2 / (2 * beta), y), 0)  # planted: beta_t as the variance

    # the derived expressions, evaluated, agree with the library (float64 round-off: RTOL)
    schedule = SCHEDULES["linear"]
    f_mean = sp.lambdify((xt, x0, a, abp), mean_derived, "math")
    f_var = sp.lambdify((a, abp), 1 / precision, "math")
    ab_list = loop_alpha_bar(schedule.beta.tolist())
    for t, x0_v, xt_v in [(2, 0.3, -0.7), (37, -1.0, 0.2), (999, 0.9, 1.4)]:
        a_v, abp_v = 1.0 - schedule.beta[t].item(), ab_list[t - 1]
        lib_mean = posterior_mean(
            torch.tensor([[x0_v]], dtype=torch.float64), torch.tensor([[xt_v]], dtype=torch.float64), torch.tensor([t]), schedule
        ).item()
        lib_var = posterior_variance(torch.tensor([t]), schedule, torch.zeros(1, 1, dtype=torch.float64)).item()
        assert math.isclose(lib_mean, f_mean(xt_v, x0_v, a_v, abp_v), rel_tol=0, abs_tol=RTOL * (abs(x0_v) + abs(xt_v)))
        assert math.isclose(lib_var, f_var(a_v, abp_v), rel_tol=RTOL)


def test_sympy_check_rejects_the_planted_mean():
    """The same symbolic comparison tells the planted 1/sqrt(alpha_bar_t) eps form apart from eq. 7."""
    xt, x0 = sp.symbols("x_t x_0", real=True)
    a, abp = sp.symbols("alpha_t abar_{t-1}", positive=True)
    beta, ab = 1 - a, a * abp
    eps = (xt - sp.sqrt(ab) * x0) / sp.sqrt(1 - ab)
    right = (xt - beta / sp.sqrt(1 - ab) * eps) / sp.sqrt(a)
    wrong = (xt - beta / sp.sqrt(1 - ab) * eps) / sp.sqrt(ab)
    mean_closed = sp.sqrt(abp) * beta / (1 - ab) * x0 + sp.sqrt(a) * (1 - abp) / (1 - ab) * xt
    assert is_equal(right, mean_closed)
    assert not is_equal(wrong, mean_closed)  # is_equal: simplify, and random points before a False


# --- errors ------------------------------------------------------------------------------------------------


def test_t0_raises():
    schedule = SCHEDULES["linear"]
    x = torch.zeros(2, 3)
    t = torch.tensor([0, 4])
    with pytest.raises(ValueError, match=r"t in 1\.\.T"):
        posterior_mean(x, x, t, schedule)
    with pytest.raises(ValueError, match=r"t in 1\.\.T"):
        posterior_variance(t, schedule, x)
    with pytest.raises(ValueError, match=r"t in 1\.\.T"):
        posterior_mean_coefs(t, schedule, x)


def test_t_above_T_raises():
    schedule = SCHEDULES["linear"]
    x = torch.zeros(1, 3)
    with pytest.raises(IndexError):
        posterior_mean(x, x, torch.tensor([1001]), schedule)


def test_shape_mismatch_raises():
    schedule = SCHEDULES["linear"]
    with pytest.raises(ValueError, match=r"must have one shape"):
        posterior_mean(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([1, 2]), schedule)
