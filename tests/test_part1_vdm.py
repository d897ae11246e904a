"""Part I, chapter "Hierarchical VAEs to the variational diffusion model": both forms of the VDM ELBO.

Every step of the derivation is checked exactly (float64 closed forms, SymPy) or by Monte Carlo, and
each check is shown to reject a planted mistake: sqrt(alpha_bar_t) for alpha_bar_t, a term dropped
from the telescoping sum, factors cancelled one by one (a literal reading of Luo 2022, eq. 53), and
Luo's eq. 45 as printed.
"""

import math

import pytest
import sympy as sp
import torch

from ddpm_lib import Schedule
from ddpm_lib.teaching.checkers import check_telescoping, telescoping_symbols
from ddpm_lib.teaching.symbolic import is_equal_polynomial
from ddpm_lib.core import (ESTIMATORS, LinearGaussianReverse, bridge_mean_var, conditional_mutual_information,
                           expected_gaussian_log_prob, forward_trajectory_moments, gaussian_kl, log_q_marginal,
                           log_q_posterior, log_q_step, optimal_linear_reverse, sample_forward_trajectory,
                           vdm_elbo_estimates, vdm_elbo_exact, vdm_log_evidence, vdm_terms_consistency,
                           vdm_terms_consistency_as_printed, vdm_terms_denoising)
from ddpm_lib.core.montecarlo import mean_and_stderr
from ddpm_lib.teaching.symbolic import gaussian_logpdf, is_equal

Z = 5.0
EXACT = 1e-12
F64 = torch.float64
T = 5
SCHEDULE = Schedule.from_alpha_bar(torch.exp(-3.0 * torch.arange(1, T + 1, dtype=F64) / T))
OPTIMAL = optimal_linear_reverse(SCHEDULE, 0.5, 0.3)
PARTLY = LinearGaussianReverse(0.8 * OPTIMAL.coef, OPTIMAL.shift + 0.1, 1.5 * OPTIMAL.var)
X0 = torch.tensor([-0.7, 0.2, 0.8, 1.9], dtype=F64)


def _eps(n, seed, T_=T):
    return torch.randn(n, T_, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_trajectory_moments_and_expected_log_gauss():
    n = 100_000
    mean, cov = forward_trajectory_moments(torch.tensor([0.8], dtype=F64), SCHEDULE)  # eq. vdm-trajectory-cov
    traj = sample_forward_trajectory(torch.full((n,), 0.8, dtype=F64), SCHEDULE, _eps(n, 1))
    c = traj - mean
    worst = max(abs(float(mean_and_stderr(c[:, s] * c[:, t])[0] - cov[s, t])) / float(mean_and_stderr(c[:, s] * c[:, t])[1])
                for s in range(1, T + 1) for t in range(s, T + 1))
    assert worst < Z
    # planted: the covariance without the square root (alpha_bar_t / alpha_bar_s) fails
    ab = SCHEDULE.alpha_bar
    wrong = float(ab[5] / ab[2] * (1 - ab[2]))
    est, se = mean_and_stderr(c[:, 2] * c[:, 5])
    assert abs(float(est) - wrong) > Z * float(se)
    r, mr, vr, v = sp.Symbol("r", real=True), sp.Symbol("m_r", real=True), sp.Symbol("v_r", positive=True), sp.Symbol("v", positive=True)
    integral = sp.integrate(sp.expand(sp.exp(gaussian_logpdf(r, mr, vr)) * gaussian_logpdf(r, 0, v)), (r, -sp.oo, sp.oo))
    assert is_equal(integral, -sp.log(2 * sp.pi * v) / 2 - (vr + mr**2) / (2 * v))  # eq. vdm-expected-log-gauss
    assert float(expected_gaussian_log_prob(0.3, 0.2, 0.5)) == pytest.approx(-0.5 * math.log(math.pi) - 0.29 / 1.0, abs=1e-14)


def test_optimal_reverse_is_the_true_reverse_conditional():
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x0 = 0.5 + math.sqrt(0.3) * torch.randn(n, generator=g, dtype=F64)
    traj = sample_forward_trajectory(x0, SCHEDULE, torch.randn(n, T, generator=g, dtype=F64))
    for t in range(1, T + 1):
        resid = traj[:, t - 1] - OPTIMAL.coef[t] * traj[:, t] - OPTIMAL.shift[t]  # eq. vdm-optimal-reverse
        for stat in (resid, resid * (traj[:, t] - traj[:, t].mean()), resid**2 - OPTIMAL.var[t]):
            m, se = mean_and_stderr(stat)
            assert abs(float(m)) < Z * float(se)
    # planted: the regression coefficient without the square root of alpha_t leaves a correlation
    t = 2
    wrong_coef = SCHEDULE.alpha[t] * OPTIMAL.coef[t] / SCHEDULE.alpha[t].sqrt()
    resid = traj[:, t - 1] - wrong_coef * traj[:, t]
    m, se = mean_and_stderr((resid - resid.mean()) * (traj[:, t] - traj[:, t].mean()))
    assert abs(float(m)) > Z * float(se)


def test_exact_elbo_matches_monte_carlo_and_is_below_the_evidence():
    for rev in (OPTIMAL, PARTLY):
        exact = vdm_elbo_exact(X0, SCHEDULE, rev)  # eq. vdm-elbo-def
        assert bool((exact <= vdm_log_evidence(X0, rev)).all())
        for i in (0, 3):
            est, se = mean_and_stderr(vdm_elbo_estimates(X0[i].expand(50_000), SCHEDULE, rev, _eps(50_000, 10 + i), "trajectory"))
            assert abs(float(est - exact[i])) < Z * float(se)


def test_denoising_form_equals_the_definition_and_catches_sqrt_alpha_bar():
    for rev in (OPTIMAL, PARTLY):
        terms = vdm_terms_denoising(X0, SCHEDULE, rev)  # eq. vdm-elbo-denoising
        exact = vdm_elbo_exact(X0, SCHEDULE, rev)
        assert float((terms.elbo - exact).abs().max()) < EXACT
        ab = SCHEDULE.alpha_bar[T]
        slip = terms.reconstruction - gaussian_kl(ab.sqrt() * X0, 1 - ab.sqrt(), 0.0, 1.0) - terms.matching.sum(-1)
        assert float((slip - exact).abs().min()) > 1e-3  # planted: sqrt(alpha_bar_T) for alpha_bar_T
        dropped = terms.reconstruction - terms.prior_matching - terms.matching[:, :-1].sum(-1)
        assert float((dropped - exact).abs().min()) > 1e-3  # planted: a denoising term dropped
        # source note 001 calls the prior-matching term "equal to 0": it is small, not 0 (alpha_bar_T > 0)
        assert float(terms.prior_matching.min()) > 1e-3


def test_consistency_form_corrected_vs_as_printed():
    for rev in (OPTIMAL, PARTLY):
        exact = vdm_elbo_exact(X0, SCHEDULE, rev)
        assert float((vdm_terms_consistency(X0, SCHEDULE, rev).elbo - exact).abs().max()) < EXACT  # eq. vdm-elbo-consistency
        printed = vdm_terms_consistency_as_printed(X0, SCHEDULE, rev).elbo  # Luo 2022, eq. 45
        assert float((printed - exact).abs().min()) > 0.1
    off_opt = vdm_terms_consistency_as_printed(X0[:1], SCHEDULE, OPTIMAL).elbo - vdm_elbo_exact(X0[:1], SCHEDULE, OPTIMAL)
    off_part = vdm_terms_consistency_as_printed(X0[:1], SCHEDULE, PARTLY).elbo - vdm_elbo_exact(X0[:1], SCHEDULE, PARTLY)
    assert abs(float(off_opt - off_part)) > 0.1  # not a constant offset: a different objective
    # brute force of eq. 45 as written (x_t drawn independently of x_{t+1}) matches our closed form of it
    n, g = 100_000, torch.Generator().manual_seed(3)
    x0 = torch.tensor(0.8, dtype=F64)
    traj = sample_forward_trajectory(x0.expand(n), SCHEDULE, torch.randn(n, T, generator=g, dtype=F64))
    printed_terms = vdm_terms_consistency_as_printed(x0[None], SCHEDULE, PARTLY).matching[0]
    for t in range(1, T):
        xt = SCHEDULE.alpha[t].sqrt() * traj[:, t - 1] + (1 - SCHEDULE.alpha[t]).sqrt() * torch.randn(n, generator=g, dtype=F64)
        est, se = mean_and_stderr(log_q_step(xt, traj[:, t - 1], t, SCHEDULE) - PARTLY.log_prob(xt, traj[:, t + 1], t + 1))
        assert abs(float(est - printed_terms[t - 1])) < Z * float(se)


def test_bridge_and_conditional_mutual_information():
    xp, xt, xn = sp.symbols("x_prev x_t x_next", real=True)
    a0, a1 = sp.symbols("alpha_t alpha_tp1", positive=True)
    bayes = (gaussian_logpdf(xt, sp.sqrt(a0) * xp, 1 - a0) + gaussian_logpdf(xn, sp.sqrt(a1) * xt, 1 - a1)
             - gaussian_logpdf(xn, sp.sqrt(a0 * a1) * xp, a1 * (1 - a0) + 1 - a1))
    var = 1 / (1 / (1 - a0) + a1 / (1 - a1))
    mean = var * (sp.sqrt(a0) * xp / (1 - a0) + sp.sqrt(a1) * xn / (1 - a1))
    assert is_equal_polynomial(bayes, gaussian_logpdf(xt, mean, var), [xp, xt, xn])  # eq. vdm-bridge
    assert not is_equal_polynomial(bayes, gaussian_logpdf(xt, mean, 1 - a0), [xp, xt, xn])  # the forward step's variance
    m, v = bridge_mean_var(torch.tensor(0.3, dtype=F64), torch.tensor(-0.2, dtype=F64), 2, SCHEDULE)
    sub = {a0: float(SCHEDULE.alpha[2]), a1: float(SCHEDULE.alpha[3]), xp: 0.3, xn: -0.2}
    assert abs(float(mean.subs(sub)) - float(m)) < 1e-12 and abs(float(var.subs(sub)) - float(v)) < 1e-12
    n = 100_000
    traj = sample_forward_trajectory(torch.full((n,), 0.8, dtype=F64), SCHEDULE, _eps(n, 2))
    for t in range(1, T):
        a_t, a_n = SCHEDULE.alpha[t], SCHEDULE.alpha[t + 1]
        two = torch.distributions.Normal((a_t * a_n).sqrt() * traj[:, t - 1], (a_n * (1 - a_t) + 1 - a_n).sqrt())
        est, se = mean_and_stderr(log_q_step(traj[:, t + 1], traj[:, t], t + 1, SCHEDULE) - two.log_prob(traj[:, t + 1]))
        assert abs(float(est - conditional_mutual_information(t, SCHEDULE))) < Z * float(se)  # eq. vdm-cmi
        wrong = 0.5 * math.log((float(SCHEDULE.beta[t]) + float(SCHEDULE.beta[t + 1])) / float(SCHEDULE.beta[t + 1]))
        assert abs(float(est) - wrong) > Z * float(se)  # planted: alpha_(t+1) forgotten in the two-step variance


def test_bayes_rule_for_the_posterior_and_the_source_note_slips():
    x0, xt, xp = sp.symbols("x_0 x_t x_tm1", real=True)
    al, abp = sp.symbols("alpha_t alphabar_tm1", positive=True)
    ab = al * abp
    pm = sp.sqrt(abp) * (1 - al) / (1 - ab) * x0 + sp.sqrt(al) * (1 - abp) / (1 - ab) * xt
    pv = (1 - abp) / (1 - ab) * (1 - al)
    lhs = gaussian_logpdf(xt, sp.sqrt(al) * xp, 1 - al)

    def rhs(marg):
        return gaussian_logpdf(xp, pm, pv) + marg - gaussian_logpdf(xp, sp.sqrt(abp) * x0, 1 - abp)

    variables = [x0, xt, xp]
    assert is_equal_polynomial(lhs, rhs(gaussian_logpdf(xt, sp.sqrt(ab) * x0, 1 - ab)), variables)  # eq. vdm-bayes
    assert not is_equal_polynomial(lhs, rhs(gaussian_logpdf(xt, sp.sqrt(al) * x0, 1 - ab)), variables)  # source note 001
    assert not is_equal_polynomial(lhs, rhs(gaussian_logpdf(xt, sp.sqrt(ab) * x0, 1 - sp.sqrt(ab))), variables)  # sqrt(alpha_bar)


def test_telescoping_sum_and_its_slips():
    for T_ in range(2, 7):
        Q = telescoping_symbols(T_)
        total = sp.Add(*[sp.log(Q[t - 2] / Q[t - 1]) for t in range(2, T_ + 1)])
        assert is_equal(total, sp.log(Q[0]) - sp.log(Q[-1]))  # eq. vdm-telescoping
        assert not is_equal(total, sp.Integer(0))  # factors cancelled one by one
        if T_ >= 3:
            assert not is_equal(sp.Add(*[sp.log(Q[t - 2] / Q[t - 1]) for t in range(2, T_)]), sp.log(Q[0]) - sp.log(Q[-1]))
    Q = telescoping_symbols(5)
    assert check_telescoping(sp.log(Q[0]) - sp.log(Q[4]), 5).ok
    assert "dropped" in check_telescoping(sp.log(Q[0]) - sp.log(Q[3]), 5).message


def test_derivation_pointwise_and_the_literal_eq53():
    n, x0 = 5000, torch.tensor(0.8, dtype=F64)
    X = list(sample_forward_trajectory(x0.expand(n), SCHEDULE, _eps(n, 4)).unbind(1))
    rev = PARTLY
    L1 = rev.log_prior(X[T]) + sum(rev.log_prob(X[t - 1], X[t], t) - log_q_step(X[t], X[t - 1], t, SCHEDULE) for t in range(1, T + 1))
    post = sum(rev.log_prob(X[t - 1], X[t], t) - log_q_posterior(X[t - 1], X[t], x0, t, SCHEDULE) for t in range(2, T + 1))
    tele = sum(log_q_marginal(X[t - 1], x0, t - 1, SCHEDULE) - log_q_marginal(X[t], x0, t, SCHEDULE) for t in range(2, T + 1))
    head = rev.log_prior(X[T]) + rev.log_prob(X[0], X[1], 1)
    L2 = head - log_q_marginal(X[1], x0, 1, SCHEDULE) + post + tele
    L3 = head - log_q_marginal(X[T], x0, T, SCHEDULE) + post
    assert float((L1 - L2).abs().max()) < EXACT and float((L2 - L3).abs().max()) < EXACT
    literal_53 = L2 - tele
    gap, se = mean_and_stderr(literal_53 - L1)
    expected = -0.5 * math.log((1 - float(SCHEDULE.alpha_bar[T])) / (1 - float(SCHEDULE.alpha_bar[1])))
    assert abs(float(gap) - expected) < Z * float(se) and abs(expected) > 0.1


def test_denoising_form_has_lower_variance_than_consistency_form():
    for rev in (OPTIMAL, PARTLY):
        eps = _eps(20_000, 5)
        x0 = torch.full((20_000,), 0.8, dtype=F64)
        c = vdm_elbo_estimates(x0, SCHEDULE, rev, eps, "consistency")
        d = vdm_elbo_estimates(x0, SCHEDULE, rev, eps, "denoising")
        diff, se = mean_and_stderr((c - c.mean()) ** 2 - (d - d.mean()) ** 2)
        assert float(diff) > Z * float(se)
        exact = float(vdm_elbo_exact(x0[:1], SCHEDULE, rev)[0])
        for est in (c, d):
            m, s = mean_and_stderr(est)
            assert abs(float(m) - exact) < Z * float(s)


def test_errors():
    with pytest.raises(ValueError, match="form must be one of"):
        vdm_elbo_estimates(X0, SCHEDULE, OPTIMAL, _eps(4, 0), "bogus")
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        sample_forward_trajectory(X0, SCHEDULE, _eps(4, 0, T_=3))
    with pytest.raises(ValueError, match="T = "):
        vdm_elbo_exact(X0, Schedule.from_beta(torch.tensor([0.1, 0.2])), OPTIMAL)
    with pytest.raises(ValueError, match="positive, finite variance"):
        LinearGaussianReverse(torch.ones(3), torch.zeros(3), torch.tensor([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="1 <= t <= T - 1"):
        bridge_mean_var(X0, X0, T, SCHEDULE)
    with pytest.raises(ValueError, match="variance"):
        gaussian_kl(0.0, 0.0, 0.0, 1.0)
    assert set(ESTIMATORS) == {"trajectory", "consistency", "consistency-as-printed", "denoising"}
