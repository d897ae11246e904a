"""The shared helpers: sympy Gaussians, Monte Carlo checks, the Gaussian-mixture toy."""

import math

import pytest
import sympy as sp
import torch

from ddpm_lib import linear_schedule
from ddpm_lib.montecarlo import mean_and_stderr, within_clt
from ddpm_lib.symbolic import complete_square, equal_at_random_points, gaussian_logpdf, is_equal, kl_gaussian, kl_gaussian_diag
from ddpm_lib.toy import GaussianMixture

x, m, m2 = sp.symbols("x m m2", real=True)
v, v2 = sp.symbols("v v2", positive=True)


def test_kl_gaussian_equals_the_expectation_of_the_log_ratio():
    # KL = E_{x~N(m,v)}[log N(x;m,v) - log N(x;m2,v2)], integrated by sympy: a different expression
    integrand = sp.exp(gaussian_logpdf(x, m, v)) * (gaussian_logpdf(x, m, v) - gaussian_logpdf(x, m2, v2))
    integral = sp.integrate(sp.expand(integrand), (x, -sp.oo, sp.oo))
    assert is_equal(integral, kl_gaussian(m, v, m2, v2))
    # planted mistake: a standard deviation where the variance belongs
    wrong = (sp.log(sp.sqrt(v2) / sp.sqrt(v)) + (sp.sqrt(v) + (m - m2) ** 2) / sp.sqrt(v2) - 1) / 2
    assert not is_equal(integral, wrong)


def test_kl_gaussian_diag_is_a_sum_and_checks_lengths():
    assert is_equal(kl_gaussian_diag([m, 0], [v, 1], [m2, 0], [v2, 1]), kl_gaussian(m, v, m2, v2))
    with pytest.raises(ValueError, match="same length"):
        kl_gaussian_diag([m], [v, v], [m2], [v2])


def test_complete_square_recovers_a_gaussian():
    p, mean, c = complete_square(gaussian_logpdf(x, m, v), x)
    assert is_equal(p, 1 / v) and is_equal(mean, m)
    assert is_equal(c, -sp.log(2 * sp.pi * v) / 2)
    with pytest.raises(ValueError, match="quadratic"):
        complete_square(x**3 + x, x)


def test_is_equal_rejects_different_expressions_and_uses_numeric_fallback():
    a, b = sp.symbols("a b", positive=True)
    assert not is_equal(a * b, a + b)
    assert equal_at_random_points(sp.sqrt(a) * sp.sqrt(b), sp.sqrt(a * b))
    assert not equal_at_random_points(sp.sqrt(a), a)


def test_within_clt():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(10000, 3, generator=g, dtype=torch.float64) + 2.0
    mean, se = mean_and_stderr(s)
    assert torch.allclose(se, torch.full((3,), 0.01, dtype=torch.float64), rtol=0.05)  # std 1 / sqrt(1e4); 5% covers the std estimate
    assert within_clt(s, 2.0)
    assert not within_clt(s, 2.1)  # 10 standard errors away
    with pytest.raises(ValueError, match="at least 2"):
        mean_and_stderr(s[:1])


def test_mixture_score_matches_autograd_and_tweedie_matches_denoiser():
    gm = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-2.0, 0.0], [1.5, 1.0]]), torch.tensor([0.5, 0.3]))
    sch = linear_schedule(100)
    xt = gm.noised(40, sch).sample(64, torch.Generator().manual_seed(1)).requires_grad_(True)
    marginal = gm.noised(40, sch)
    (grad,) = torch.autograd.grad(marginal.log_prob(xt).sum(), xt)
    xt = xt.detach()
    assert torch.allclose(marginal.score(xt), grad, atol=1e-10)  # float64 round-off
    ab = sch.alpha_bar[40]
    tweedie = (xt + (1 - ab) * marginal.score(xt)) / ab.sqrt()
    assert torch.allclose(gm.posterior_mean_x0(xt, 40, sch), tweedie, atol=1e-10)


def test_mixture_sampling_moments_and_errors():
    gm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([-1.0, 1.0]), torch.tensor([0.5, 0.5]))
    s = gm.sample(20000, torch.Generator().manual_seed(2))
    assert within_clt(s, 0.0)
    assert within_clt(s**2, 1.25)  # E[x^2] = mean^2 + var = 1 + 0.25
    assert math.isclose(float(gm.log_prob(torch.zeros(1, 1))), math.log(math.exp(-2) / math.sqrt(2 * math.pi * 0.25)), rel_tol=1e-12)
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(torch.tensor([0.5, 0.6]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]))
