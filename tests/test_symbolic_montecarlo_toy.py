"""The shared helpers: sympy Gaussians, Monte Carlo checks, the Gaussian-mixture toy."""

import math

import pytest
import sympy as sp
import torch

from ddpm_lib import linear_schedule
from ddpm_lib.core.montecarlo import mean_and_stderr, within_clt
from ddpm_lib.teaching.symbolic import (VacuousCheckError, complete_square, equal_at_random_points, gaussian_logpdf, is_equal, kl_gaussian,
                               kl_gaussian_diag, refuse_vacuous)
from ddpm_lib.toys.mixture import GaussianMixture

x, m, m2 = sp.symbols("x m m2", real=True)
v, v2 = sp.symbols("v v2", positive=True)


def test_gaussian_logpdf_is_the_log_of_the_density():
    # the density written from its formula, then its logarithm: a different construction from the helper's sum
    density = sp.exp(-((x - m) ** 2) / (2 * v)) / sp.sqrt(2 * sp.pi * v)
    assert is_equal(gaussian_logpdf(x, m, v), sp.log(density))
    assert not is_equal(gaussian_logpdf(x, m, sp.sqrt(v)), sp.log(density))  # planted: the standard deviation as the variance


def test_kl_gaussian_equals_the_expectation_of_the_log_ratio():
    # KL = E_{x~N(m,v)}[log N(x;m,v) - log N(x;m2,v2)], integrated by sympy: a different expression
    integrand = sp.exp(gaussian_logpdf(x, m, v)) * (gaussian_logpdf(x, m, v) - gaussian_logpdf(x, m2, v2))
    integral = sp.integrate(sp.expand(integrand), (x, -sp.oo, sp.oo))
    assert is_equal(integral, kl_gaussian(m, v, m2, v2))
    # planted mistake: a standard deviation where the variance belongs
    wrong = (sp.log(sp.sqrt(v2) / sp.sqrt(v)) + (sp.sqrt(v) + (m - m2) ** 2) / sp.sqrt(v2) - 1) / 2
    assert not is_equal(integral, wrong)


def test_kl_gaussian_diag_matches_the_multivariate_formula_and_checks_lengths():
    # kl_gaussian_diag sums kl_gaussian; the other side is the matrix formula (Luo 2022, eq. 87 form)
    # 1/2 (tr(S2^-1 S1) + d^T S2^-1 d - k + log(det S2 / det S1)) with diagonal S1, S2: a different construction
    m1, m2, n1, n2 = sp.symbols("m1 m2 n1 n2", real=True)
    v1, w1, w2 = sp.symbols("v1 w1 w2", positive=True)
    S1, S2 = sp.diag(v, v1), sp.diag(w1, w2)
    d = sp.Matrix([n1 - m1, n2 - m2])
    matrix_form = ((S2.inv() * S1).trace() + (d.T * S2.inv() * d)[0, 0] - 2 + sp.log(S2.det() / S1.det())) / 2
    assert is_equal(kl_gaussian_diag([m1, m2], [v, v1], [n1, n2], [w1, w2]), matrix_form)
    # planted: one dimension dropped; standard deviations where the variances belong
    assert not is_equal(kl_gaussian(m1, v, n1, w1), matrix_form)
    assert not is_equal(kl_gaussian_diag([m1, m2], [sp.sqrt(v), sp.sqrt(v1)], [n1, n2], [sp.sqrt(w1), sp.sqrt(w2)]), matrix_form)
    with pytest.raises(ValueError, match="same length"):
        kl_gaussian_diag([m], [v, v], [m2], [v2])


def test_complete_square_recovers_the_product_of_two_gaussians():
    # N(x; m, v) N(x; m2, v2) = N(m; m2, v + v2) N(x; m_post, v_post), written from the formula: the
    # precision adds, the mean is precision-weighted, and the constant is the log-normalizer of the
    # product. complete_square's simplified output is a different construction of each.
    p, mean, c = complete_square(gaussian_logpdf(x, m, v) + gaussian_logpdf(x, m2, v2), x)
    v_post = 1 / (1 / v + 1 / v2)
    assert is_equal(p, 1 / v + 1 / v2)
    assert is_equal(mean, v_post * (m / v + m2 / v2))
    assert is_equal(c, gaussian_logpdf(m, m2, v + v2) - sp.log(2 * sp.pi * v_post) / 2)
    # planted: the unweighted average of the means; the product of the variances for their sum
    assert not is_equal(mean, (m + m2) / 2)
    assert not is_equal(c, gaussian_logpdf(m, m2, v * v2) - sp.log(2 * sp.pi * v_post) / 2)
    with pytest.raises(ValueError, match="quadratic"):
        complete_square(x**3 + x, x)


def test_is_equal_rejects_different_expressions_and_uses_numeric_fallback(monkeypatch):
    a, b = sp.symbols("a b", positive=True)
    assert not is_equal(a * b, a + b)
    # sqrt(a + 2 sqrt(a) + 1) = sqrt(a) + 1 for a >= 0; SymPy builds them as different expressions
    denest_lhs, denest_rhs = sp.sqrt(a + 2 * sp.sqrt(a) + 1), sp.sqrt(a) + 1
    assert denest_lhs - denest_rhs != 0
    assert equal_at_random_points(denest_lhs, denest_rhs)
    assert not equal_at_random_points(sp.sqrt(a), a)
    # with simplify made useless, is_equal still decides by the random points: true identities pass
    # (arctan a + arctan(1/a) = pi/2 for a > 0), false ones fail
    monkeypatch.setattr(sp, "simplify", lambda expr, *args, **kwargs: expr)
    assert is_equal(sp.atan(a) + sp.atan(1 / a), sp.pi / 2)
    assert is_equal(denest_lhs, denest_rhs)
    assert not is_equal(sp.atan(a) + sp.atan(1 / a), sp.pi / 3)
    assert not is_equal(sp.sqrt(a + 2 * sp.sqrt(a) + 2), denest_rhs)


def test_the_guard_refuses_sides_that_sympy_built_into_one_expression():
    alpha_t, abar, ab_s, sigma = sp.symbols("alpha_t alphabar_{t-1} alphabar_s sigma", positive=True)
    expr = kl_gaussian(m, v, m2, v2)
    merged = {
        "sqrt of a product of positive symbols": (sp.sqrt(alpha_t * abar), sp.sqrt(alpha_t) * sp.sqrt(abar)),
        "a term added and subtracted": ((1 - ab_s - sigma**2) + sigma**2, 1 - ab_s),
        "one object on both sides": (expr, expr),
    }
    for name, (lhs, rhs) in merged.items():
        assert lhs - rhs == 0, name  # as built, before any simplification: what the guard sees
        for check in (is_equal, equal_at_random_points, refuse_vacuous):
            with pytest.raises(VacuousCheckError, match="cannot fail") as err:
                check(lhs, rhs)
            assert "Compare two different constructions" in str(err.value), name
    assert issubclass(VacuousCheckError, ValueError)
    # genuinely different constructions pass the guard, whether they are equal or not
    refuse_vacuous((x + 1) ** 2, x**2 + 2 * x + 1)
    assert is_equal((x + 1) ** 2, x**2 + 2 * x + 1) and equal_at_random_points((x + 1) ** 2, x**2 + 2 * x + 1)
    assert not is_equal((x + 1) ** 2, x**2 + 1)
    assert is_equal(sp.sqrt(alpha_t - alpha_t * abar), sp.sqrt(alpha_t) * sp.sqrt(1 - abar))  # the sum is not factored as built


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
