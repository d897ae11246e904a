"""Part I, chapter "The evidence lower bound": ddpm_lib.toys.LinearGaussianModel and the identities."""

import math

import pytest
import sympy as sp
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from ddpm_lib.teaching.checkers import b, check_elbo_gap, s2, w, x
from ddpm_lib.toys import LinearGaussianModel
from ddpm_lib.core.montecarlo import mean_and_stderr
from ddpm_lib.teaching.symbolic import complete_square, gaussian_logpdf, is_equal, kl_gaussian

Z = 5.0
F64 = torch.float64


@pytest.fixture(scope="module")
def model():
    g = torch.Generator().manual_seed(1)
    return LinearGaussianModel(torch.randn(3, 2, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64), noise_var=0.5)


def test_posterior_and_evidence_match_gaussian_conditioning(model):
    # reference: condition the joint Gaussian of (z, x) with plain linear algebra
    W, bias, s = model.weight, model.bias, model.noise_var
    Sxx = W @ W.T + s * torch.eye(3, dtype=F64)
    x0 = torch.tensor([0.8, -1.1, 0.4], dtype=F64)
    mean_ref = W.T @ torch.linalg.solve(Sxx, x0 - bias)
    cov_ref = torch.eye(2, dtype=F64) - W.T @ torch.linalg.solve(Sxx, W)
    mean, cov = model.posterior(x0)
    assert torch.allclose(mean, mean_ref, atol=1e-12) and torch.allclose(cov, cov_ref, atol=1e-12)
    assert torch.allclose(model.log_evidence(x0), MultivariateNormal(bias, Sxx).log_prob(x0), atol=1e-12)


def test_evidence_by_quadrature_in_one_dimension():
    m1d = LinearGaussianModel(torch.tensor([[1.5]], dtype=F64), torch.tensor([0.3], dtype=F64), noise_var=0.5)
    z = torch.linspace(-12, 12, 20001, dtype=F64)[:, None]
    x1 = torch.tensor([1.2], dtype=F64)
    integrand = torch.exp(m1d.log_joint(x1, z))
    assert abs(math.log(float(torch.trapezoid(integrand, z[:, 0]))) - float(m1d.log_evidence(x1))) < 1e-10


def test_identity_elbo_plus_kl_is_log_evidence(model):
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        xi = 2 * torch.randn(3, generator=g, dtype=F64)
        mi = torch.randn(2, generator=g, dtype=F64)
        a = torch.randn(2, 2, generator=g, dtype=F64)
        ci = a @ a.T + 0.1 * torch.eye(2, dtype=F64)
        gap = model.elbo(xi, mi, ci) + model.posterior_kl(xi, mi, ci) - model.log_evidence(xi)
        assert abs(float(gap)) < 1e-12  # float64 round-off
        assert check_elbo_gap(float(model.elbo(xi, mi, ci)), float(model.posterior_kl(xi, mi, ci)), float(model.log_evidence(xi))).ok
    # planted: the KL subtracted instead of added is rejected by the checker
    res = check_elbo_gap(float(model.elbo(xi, mi, ci)), -float(model.posterior_kl(xi, mi, ci)), float(model.log_evidence(xi)))
    assert not res.ok
    mean, cov = model.posterior(xi)
    assert float(model.posterior_kl(xi, mean, cov)) < 1e-12 and abs(float(model.elbo(xi, mean, cov) - model.log_evidence(xi))) < 1e-12


def test_closed_form_elbo_matches_monte_carlo_and_jensen(model):
    x0 = torch.tensor([0.8, -1.1, 0.4], dtype=F64)
    qm, qc = torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=F64)
    q = MultivariateNormal(qm, qc)
    torch.manual_seed(3)
    z = q.sample((100_000,))
    log_ratio = model.log_joint(x0, z) - q.log_prob(z)
    est, se = mean_and_stderr(log_ratio)
    assert abs(float(est - model.elbo(x0, qm, qc))) < Z * float(se)
    r, r_se = mean_and_stderr(torch.exp(log_ratio))  # importance weights: unbiased for p(x)
    assert abs(float(r) - float(torch.exp(model.log_evidence(x0)))) < Z * float(r_se)
    assert float(est) + Z * float(se) < float(model.log_evidence(x0))  # Jensen: strictly below here
    # planted: a reconstruction term that forgets the trace (variance) part is caught by the same check
    resid = x0 - qm @ model.weight.T - model.bias
    no_trace = -1.5 * math.log(2 * math.pi * 0.5) - (resid**2).sum() / 1.0 - kl_divergence(q, model.prior())
    assert abs(float(est - no_trace)) > Z * float(se)


def test_gradient_of_elbo_is_minus_gradient_of_kl(model):
    x0 = torch.tensor([0.8, -1.1, 0.4], dtype=F64)
    p = torch.tensor([0.3, -0.2, 0.7, 0.1, 0.5], dtype=F64, requires_grad=True)

    def q_of(p):
        L = torch.zeros(2, 2, dtype=F64).index_put((torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])), p[2:])
        return p[:2], L @ L.T

    (ge,) = torch.autograd.grad(model.elbo(x0, *q_of(p)), p)
    (gk,) = torch.autograd.grad(model.posterior_kl(x0, *q_of(p)), p)
    assert float((ge + gk).abs().max()) < 1e-12
    assert float((ge - gk).abs().max()) > 1e-3  # planted: the gradients are opposite, not equal


def test_symbolic_identity_and_the_std_for_variance_posterior():
    z, m = sp.Symbol("z", real=True), sp.Symbol("m", real=True)
    v = sp.Symbol("v", positive=True)
    log_joint = gaussian_logpdf(z, 0, 1) + gaussian_logpdf(x, w * z + b, s2)
    prec, post_mean, const = complete_square(log_joint, z)
    # log N(x; b, w^2 + s2), eq. elbo-lg-evidence, written from the formula rather than with gaussian_logpdf
    def log_normal_x(var):
        return -sp.log(2 * sp.pi * var) / 2 - (x - b) ** 2 / (2 * var)

    evidence = log_normal_x(w**2 + s2)
    assert is_equal(const + sp.log(2 * sp.pi / prec) / 2, evidence)
    assert not is_equal(const + sp.log(2 * sp.pi / prec) / 2, log_normal_x(w**2 + sp.sqrt(s2)))  # planted: the noise std
    q = sp.exp(gaussian_logpdf(z, m, v))
    elbo = sp.integrate(sp.expand(q * (log_joint - gaussian_logpdf(z, m, v))), (z, -sp.oo, sp.oo))
    assert is_equal(elbo + kl_gaussian(m, v, post_mean, 1 / prec), evidence)  # eq. elbo-identity
    assert not is_equal(elbo + kl_gaussian(m, v, post_mean, sp.sqrt(s2) / (w**2 + sp.sqrt(s2))), evidence)
    recon = -sp.log(2 * sp.pi * s2) / 2 - ((x - w * m - b) ** 2 + w**2 * v) / (2 * s2)  # eq. elbo-lg-recon
    prior_kl = (v + m**2 - 1 - sp.log(v)) / 2  # KL(N(m, v) || N(0, 1)), eq. vae-kl-diag with one dimension
    assert is_equal(elbo, recon - prior_kl)  # eq. elbo-recon-prior
    assert not is_equal(elbo, recon + prior_kl)  # planted: the prior KL added


def test_other_factorization_and_the_sign_slip_of_the_source_note(model):
    x0 = torch.tensor([0.8, -1.1, 0.4], dtype=F64)
    qm, qc = torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=F64)
    q = MultivariateNormal(qm, qc)
    post = MultivariateNormal(*model.posterior(x0))
    H = q.entropy()
    CE = H + kl_divergence(q, post)  # -E_q[log p(z|x)]
    elbo = model.elbo(x0, qm, qc)
    assert abs(float(-CE + H + model.log_evidence(x0) - elbo)) < 1e-12  # eq. elbo-other-factorization
    assert abs(float(CE - H + model.log_evidence(x0) - elbo)) > 0.1  # the note's signs


def test_data_average_identity(model):
    g = torch.Generator().manual_seed(3)
    dm, Ld = torch.randn(3, generator=g, dtype=F64), torch.randn(3, 3, generator=g, dtype=F64)
    dc = Ld @ Ld.T + 0.5 * torch.eye(3, dtype=F64)
    A, c = 0.3 * torch.randn(2, 3, generator=g, dtype=F64), 0.1 * torch.randn(2, generator=g, dtype=F64)
    S = torch.tensor([[0.4, 0.05], [0.05, 0.2]], dtype=F64)
    W, bias, s = model.weight, model.bias, model.noise_var
    qj = MultivariateNormal(torch.cat([dm, A @ dm + c]), torch.cat([torch.cat([dc, dc @ A.T], 1), torch.cat([A @ dc, A @ dc @ A.T + S], 1)]))
    pj = MultivariateNormal(torch.cat([bias, torch.zeros(2, dtype=F64)]),
                            torch.cat([torch.cat([W @ W.T + s * torch.eye(3, dtype=F64), W], 1), torch.cat([W.T, torch.eye(2, dtype=F64)], 1)]))
    lhs = kl_divergence(qj, pj)
    # the data-average of KL(q(z|x) || p(z|x)) by Monte Carlo over x (with its standard error)
    xs = MultivariateNormal(dm, dc).sample((20_000,))
    pm, pc = model.posterior(xs)
    per_x = kl_divergence(MultivariateNormal(xs @ A.T + c, S), MultivariateNormal(pm, pc))
    avg, se = mean_and_stderr(per_x)
    rhs = kl_divergence(MultivariateNormal(dm, dc), model.marginal()) + avg
    assert abs(float(lhs - rhs)) < Z * float(se)  # eq. elbo-data-average
    # planted: without the average posterior KL (or with the note's term, which is not even defined
    # here: q(z|x) lives on R^2 and p(x|z) on R^3) the identity fails
    assert abs(float(lhs - rhs + avg)) > Z * float(se)


def test_bad_input_raises_clear_errors(model):
    with pytest.raises(ValueError, match="variance"):
        LinearGaussianModel(torch.ones(2, 1), torch.zeros(2), noise_var=0.0)
    with pytest.raises(ValueError, match=r"\(d, k\)"):
        LinearGaussianModel(torch.ones(2, 1), torch.zeros(3), noise_var=1.0)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        model.log_evidence(torch.zeros(2))
