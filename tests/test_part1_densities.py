"""Part I, chapter "Densities, likelihood and KL": the checks of the notebook, run outside it.

Each derivation step is checked against a *different* expression, and each check is shown to reject
a planted mistake.
"""

import math

import numpy as np
import sympy as sp
import torch

from ddpm_lib.teaching.checkers import check_kl_gaussian, m1, m2, v1, v2
from ddpm_lib.core.montecarlo import mean_and_stderr
from ddpm_lib.teaching.symbolic import gaussian_logpdf, is_equal, kl_gaussian
from ddpm_lib.toys.mixture import GaussianMixture

Z = 5.0  # 5 standard errors: false alarm 5.7e-7 per comparison under the CLT


def test_counting_identities_and_the_missing_bin_width():
    # eqs. dens-joint, dens-marginal, dens-conditional, dens-factorization, written in counts for a strip
    # of three cells with counts n_1, n_2, n_3. The marginal is built both ways of eq. dens-marginal: from
    # the strip's count n(x) = n_1 + n_2 + n_3, and as the sum of the joint densities times Delta_y. (With
    # a single count n_x for the strip, both sides of each identity are monomials, which SymPy builds into
    # one expression: a check that cannot fail.)
    n, dx, dy = sp.symbols("n Delta_x Delta_y", positive=True)
    cells = sp.symbols("n_1:4", positive=True)
    n_strip = sp.Add(*cells)
    p_joint = [(c / n) / (dx * dy) for c in cells]             # eq. dens-joint, one per cell
    p_marg_counts = (n_strip / n) / dx                         # eq. dens-marginal, left form
    p_marg = sp.Add(*[pj * dy for pj in p_joint])              # eq. dens-marginal, right form
    p_cond_counts = (cells[0] / n_strip) / dy                  # eq. dens-conditional, left form
    assert is_equal(p_marg_counts, p_marg)
    assert is_equal(p_cond_counts, p_joint[0] / p_marg)
    assert is_equal(p_marg * p_cond_counts, p_joint[0])
    assert not is_equal(cells[0] / n_strip, p_joint[0] / p_marg)  # planted: no division by Delta_y
    assert not is_equal(p_marg_counts, sp.Add(*p_joint))          # planted: the sum without the bin width Delta_y


def test_histogram_matches_exact_cell_probabilities():
    model = GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
                            torch.tensor([[-1.5, -1.0], [1.5, 0.5], [0.0, 2.0]]), torch.tensor([0.6, 0.8, 0.5]))
    n = 50_000
    pts = model.sample(n, torch.Generator().manual_seed(1)).numpy()
    edges = np.arange(-6.0, 6.0 + 1e-9, 0.5)
    counts, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], bins=[edges, edges])
    assert counts.sum() == n  # nothing outside the grid
    # marginal by summing the joint counts == counting the strips directly (exact, integers)
    assert (np.histogram(pts[:, 0], bins=edges)[0] == counts.sum(axis=1)).all()
    e = torch.tensor(edges)
    P = sum(wk * torch.diff(torch.special.ndtr((e - mk[0]) / sk))[:, None] * torch.diff(torch.special.ndtr((e - mk[1]) / sk))[None, :]
            for wk, mk, sk in zip(model.weights, model.means, model.stds)).numpy()
    ok = n * P >= 20
    z = (counts[ok] - n * P[ok]) / np.sqrt(n * P[ok] * (1 - P[ok]))
    assert np.abs(z).max() < Z
    # the check bites: the counts compared with a model whose components are 10% wider fail
    wider = sum(wk * torch.diff(torch.special.ndtr((e - mk[0]) / (1.1 * sk)))[:, None] * torch.diff(torch.special.ndtr((e - mk[1]) / (1.1 * sk)))[None, :]
                for wk, mk, sk in zip(model.weights, model.means, model.stds)).numpy()
    z_wrong = (counts[ok] - n * wider[ok]) / np.sqrt(n * wider[ok] * (1 - wider[ok]))
    assert np.abs(z_wrong).max() > Z
    # the conditional expectation in a strip is the average over the strip's points (exact for this mixture)
    strip = (pts[:, 0] >= 0.0) & (pts[:, 0] < 0.5)
    mean, se = mean_and_stderr(torch.tensor(pts[strip, 1]))
    lo, hi = torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    r = model.weights * (torch.special.ndtr((hi - model.means[:, 0]) / model.stds) - torch.special.ndtr((lo - model.means[:, 0]) / model.stds))
    exact = float((r / r.sum() * model.means[:, 1]).sum())
    assert abs(float(mean) - exact) < Z * float(se)
    unweighted = float((model.weights * model.means[:, 1]).sum())  # planted: the unconditional mean of y
    assert abs(float(mean) - unweighted) > Z * float(se)


def test_mle_is_minimum_kl_and_the_gaussian_mle():
    x, m, mu = sp.symbols("x m mu", real=True)
    s, v = sp.symbols("s v", positive=True)
    p = sp.exp(gaussian_logpdf(x, m, s))
    entropy = -sp.integrate(sp.expand(p * gaussian_logpdf(x, m, s)), (x, -sp.oo, sp.oo))
    cross = sp.integrate(sp.expand(p * gaussian_logpdf(x, mu, v)), (x, -sp.oo, sp.oo))
    assert is_equal(-entropy - cross, kl_gaussian(m, s, mu, v))  # eq. mle-kl
    assert not is_equal(entropy - cross, kl_gaussian(m, s, mu, v))  # planted: entropy with the wrong sign
    data = sp.symbols("x_1:4", real=True)
    L = sum(gaussian_logpdf(xi, mu, v) for xi in data) / 3
    grad = [sp.diff(L, mu), sp.diff(L, v)]
    sols = sp.solve(grad, [mu, v], dict=True)
    assert len(sols) == 1  # one stationary point
    xbar = sum(data) / 3
    v_mle = sum((xi - xbar) ** 2 for xi in data) / 3  # (1/n) sum (x_i - xbar)^2, as in the text
    assert is_equal(sols[0][v], v_mle)  # solve returns the expanded polynomial
    # The mean: every construction of a linear form in the x_i builds into the same sum, so solve's
    # sol[mu] and xbar are one expression and comparing them could not fail. Instead the text's
    # (xbar, v_mle) must make both derivatives of L vanish: with the single stationary point, that
    # is solve's solution.
    assert all(is_equal(g.subs({mu: xbar, v: v_mle}), 0) for g in grad)
    assert not is_equal(grad[0].subs({mu: data[1], v: v_mle}), 0)  # planted: the middle point is not the MLE mean
    assert not is_equal(sols[0][v], sum((xi - xbar) ** 2 for xi in data) / 2)  # the unbiased estimator is not the MLE
    assert not is_equal(grad[1].subs({mu: xbar, v: sum((xi - xbar) ** 2 for xi in data) / 2}), 0)


def test_sample_log_likelihood_estimates_the_kl_curve():
    g = torch.Generator().manual_seed(2)
    sample = 1.0 + 0.5 * torch.randn(4000, generator=g, dtype=torch.float64)
    H = 0.5 * math.log(2 * math.pi * math.e * 0.25)
    mus = torch.linspace(-0.5, 2.5, 13, dtype=torch.float64)
    logp = -0.5 * math.log(2 * math.pi * 0.25) - (sample[None] - mus[:, None]) ** 2 / 0.5
    L, se = mean_and_stderr(logp, dim=1)
    kl = torch.tensor([float(kl_gaussian(1.0, 0.25, float(a), 0.25)) for a in mus])
    assert float((((-L - H) - kl) / se).abs().max()) < Z
    kl_std = torch.tensor([float(kl_gaussian(1.0, 0.5, float(a), 0.5)) for a in mus])  # planted: stds as variances
    assert float((((-L - H) - kl_std) / se).abs().max()) > Z


def _normal_rule(N):
    u = torch.linspace(-12.0, 12.0, N, dtype=torch.float64)
    w = torch.full((N,), 24.0 / (N - 1), dtype=torch.float64)
    w[0] = w[-1] = 12.0 / (N - 1)
    return u, w * torch.exp(-u**2 / 2) / math.sqrt(2 * math.pi)


def test_mode_covering_forward_vs_reverse_kl():
    bimodal = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([-2.0, 2.0]), torch.tensor([0.5, 0.5]))
    E1, E2, mu = sp.symbols("E1 E2 mu", real=True)
    v = sp.Symbol("v", positive=True)
    # E_p[log q] for q = N(mu, v), in the moments E1 = E_p[x], E2 = E_p[x^2]; its stationary point
    expected_log_q = -sp.log(2 * sp.pi * v) / 2 - (E2 - 2 * mu * E1 + mu**2) / (2 * v)
    sols = sp.solve([sp.diff(expected_log_q, mu), sp.diff(expected_log_q, v)], [mu, v], dict=True)
    assert len(sols) == 1
    # solve returns E1 and E2 - E1^2, the same expressions as the text's formula as SymPy builds them.
    # So compare for a two-component mixture with symbolic weight, means and variance: the solution
    # evaluated at its raw moments, against the mixture's mean and its variance written by the law of
    # total variance (within-component + between-component), eq. mle-moment-matching.
    pi1, s = sp.symbols("pi_1 s", positive=True)
    a, b = sp.symbols("a b", real=True)
    raw = {E1: pi1 * a + (1 - pi1) * b, E2: pi1 * (a**2 + s) + (1 - pi1) * (b**2 + s)}
    mu_star, v_star = sols[0][mu].subs(raw), sols[0][v].subs(raw)
    assert is_equal(mu_star, b + pi1 * (a - b))
    assert is_equal(v_star, s + pi1 * (1 - pi1) * (a - b) ** 2)
    assert not is_equal(v_star, raw[E2])  # planted: the raw second moment is not the variance
    assert not is_equal(v_star, s)  # planted: the within-component variance alone
    # the chapter's mixture, 1/2 N(-2, 1/4) + 1/2 N(2, 1/4): exact rationals (values, not an identity)
    bimodal_values = {pi1: sp.Rational(1, 2), a: -2, b: 2, s: sp.Rational(1, 4)}
    assert (mu_star.subs(bimodal_values), v_star.subs(bimodal_values)) == (0, sp.Rational(17, 4))
    u, w = _normal_rule(4001)

    def reverse_kl(p):
        xq = p[0] + torch.exp(0.5 * p[1]) * u
        return (w * (-0.5 * (math.log(2 * math.pi) + p[1]) - 0.5 * u**2 - bimodal.log_prob(xq[:, None]))).sum()

    p = torch.tensor([0.7, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([p], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = reverse_kl(p)
        loss.backward()
        return loss

    opt.step(closure)
    mu_r, v_r = float(p[0].detach()), float(torch.exp(p[1].detach()))
    assert abs(mu_r - 2) < 0.05 and abs(v_r - 0.25) < 0.05  # reverse KL: one mode
    moment = torch.tensor([0.0, math.log(4.25)], dtype=torch.float64)
    assert float(reverse_kl(moment)) > float(reverse_kl(p.detach())) + 1.0  # the MLE fit is worse in reverse KL
    # quadrature converged: 4001 vs 8001 points
    u2, w2 = _normal_rule(8001)
    xq = moment[0] + torch.exp(0.5 * moment[1]) * u2
    fine = (w2 * (-0.5 * (math.log(2 * math.pi) + moment[1]) - 0.5 * u2**2 - bimodal.log_prob(xq[:, None]))).sum()
    assert abs(float(fine - reverse_kl(moment))) < 1e-9


def test_kl_checker_catches_the_std_for_variance_slip():
    right = (sp.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1) / 2
    wrong = (sp.log(sp.sqrt(v2) / sp.sqrt(v1)) + (sp.sqrt(v1) + (m1 - m2) ** 2) / sp.sqrt(v2) - 1) / 2
    assert check_kl_gaussian(right).ok
    res = check_kl_gaussian(wrong)
    assert not res.ok and "standard deviation" in res.message
