"""Chapter "Energy-based models and Langevin dynamics": the library it uses, checked against exact answers, and
the numbers its prose and exercise solutions state.

Library: ``ddpm_lib.sampling.annealed`` (Langevin chains, annealed Langevin of Song & Ermon 2019, replica
exchange) and ``ddpm_lib.toys.energy`` (the Gaussian EBM, contrastive divergence and its fixed point,
noise-contrastive estimation, the grid references for one-dimensional ULA chains, the SDE's mean first passage
time). Each check compares two different constructions, and the planted mistakes next to them must fail.

Monte Carlo checks use 5 standard errors (two-sided normal tail 5.7e-7 per comparison) and fixed seeds.
"""

from __future__ import annotations

import json
import math
import re

import mpmath
import pytest
import torch

from ddpm_lib.sampling.annealed import annealed_langevin, langevin_chain, replica_exchange_langevin, swap_neighbours
from ddpm_lib.sampling.langevin import langevin_update
from ddpm_lib.toys.energy import (GaussianEBM, cd_fixed_point_precision, cd_gradient, langevin_mfpt_sde_1d,
                                  mean_hitting_steps, nce_fit_quadratic, nce_loss, stationary_on_grid, ula_kernel_1d,
                                  ula_stationary_covariance)
from ddpm_lib.toys.mixture import GaussianMixture

from prose import NOTEBOOKS, markdown, rounds_to, stated

F64 = torch.float64
Z = 5.0


def two_modes(a, sd=1.0, weights=(0.3, 0.7)):
    """The chapter's p_a = 0.3 N((-a, 0), sd^2 I) + 0.7 N((a, 0), sd^2 I) and its first-coordinate marginal."""
    w = torch.tensor(weights, dtype=F64)
    full = GaussianMixture(w, torch.tensor([[-a, 0.0], [a, 0.0]], dtype=F64), torch.full((2,), sd, dtype=F64))
    line = GaussianMixture(w, torch.tensor([[-a], [a]], dtype=F64), torch.full((2,), sd, dtype=F64))
    return full, line


def line_score(line):
    return lambda t: line.score(t[:, None])[:, 0]


def line_density(line):
    return lambda t: line.log_prob(t[:, None]).exp()


MODEL = GaussianEBM(torch.tensor([0.5, -0.3]), torch.tensor([[1.3, -0.7], [-0.7, 1.9]]))


# --- GaussianEBM ---------------------------------------------------------------------------------------------------


def test_gaussian_ebm_against_torch_distributions_and_autograd():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    mvn = torch.distributions.MultivariateNormal(MODEL.mean, precision_matrix=MODEL.precision)
    assert torch.allclose(MODEL.log_prob(x), mvn.log_prob(x), rtol=0, atol=1e-12)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mvn.log_prob(xg).sum(), xg)
    assert torch.allclose(MODEL.score(x), grad, rtol=0, atol=1e-12)
    # the parameter gradient of f = -E, against autograd on the mean and the (unconstrained) precision entries
    mean = MODEL.mean.clone().requires_grad_(True)
    prec = MODEL.precision.clone().requires_grad_(True)
    r = x - mean
    f_mean = -0.5 * ((r @ prec) * r).sum(1).mean()
    g_mean, g_prec = torch.autograd.grad(f_mean, (mean, prec))
    mine_mean, mine_prec = MODEL.mean_grad_f(x)
    assert torch.allclose(mine_mean, g_mean, atol=1e-12) and torch.allclose(mine_prec, g_prec, atol=1e-12)
    assert not torch.allclose(mine_prec, -g_prec, atol=1e-3)  # planted sign slip differs


def test_gaussian_ebm_samples_have_the_model_moments():
    n = 100_000
    x = MODEL.sample(n, torch.Generator().manual_seed(1))
    cov = torch.linalg.inv(MODEL.precision)
    se_mean = (torch.diag(cov) / n).sqrt()
    assert bool(((x.mean(0) - MODEL.mean).abs() < Z * se_mean).all())
    centred = x - MODEL.mean
    emp = centred.T @ centred / n
    se_cov = ((torch.diag(cov)[:, None] * torch.diag(cov)[None, :] + cov**2) / n).sqrt()  # Var of x_i x_j products
    assert bool(((emp - cov).abs() < Z * se_cov).all())
    assert not bool(((emp - MODEL.precision).abs() < Z * se_cov).all())  # the precision is not the covariance


def test_gaussian_ebm_refuses_bad_parameters():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianEBM(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianEBM(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="do not match"):
        GaussianEBM(torch.zeros(3), torch.eye(2))


# --- contrastive divergence ----------------------------------------------------------------------------------------


def test_cd_gradient_is_the_difference_of_the_two_phases():
    gen = torch.Generator().manual_seed(2)
    data, neg = torch.randn(40, 2, generator=gen, dtype=F64), torch.randn(30, 2, generator=gen, dtype=F64) + 1
    g_mean, g_prec = cd_gradient(MODEL, data, neg)
    d_mean, d_prec = MODEL.mean_grad_f(data)
    n_mean, n_prec = MODEL.mean_grad_f(neg)
    assert torch.allclose(g_mean, d_mean - n_mean, atol=1e-14) and torch.allclose(g_prec, d_prec - n_prec, atol=1e-14)
    zero_mean, zero_prec = cd_gradient(MODEL, data, data)  # negatives equal to the data: nothing to learn
    assert float(zero_mean.abs().max()) == 0.0 and float(zero_prec.abs().max()) == 0.0
    with pytest.raises(ValueError, match="must be"):
        cd_gradient(MODEL, data, torch.zeros(3, 3))


def test_ula_stationary_covariance_against_the_recursion_and_the_1d_formula():
    delta = 0.4
    a_map = torch.eye(2, dtype=F64) - delta * MODEL.precision
    cov = torch.zeros(2, 2, dtype=F64)
    for _ in range(3000):
        cov = a_map @ cov @ a_map.T + 2 * delta * torch.eye(2, dtype=F64)
    assert torch.allclose(ula_stationary_covariance(MODEL.precision, delta), cov, rtol=0, atol=1e-12)
    lam = 2.5  # 1-D: 1 / (lambda (1 - delta lambda / 2))
    assert abs(float(ula_stationary_covariance(torch.tensor([[lam]]), 0.3)) - 1 / (lam * (1 - 0.15 * lam))) < 1e-14
    assert not torch.allclose(cov, torch.linalg.inv(MODEL.precision), atol=1e-2)  # planted "no bias"
    with pytest.raises(ValueError, match="step"):
        ula_stationary_covariance(MODEL.precision, 2 / float(torch.linalg.eigvalsh(MODEL.precision).max()))


def test_cd_fixed_point_is_where_the_data_covariance_is_stationary():
    data_cov = torch.tensor([[1.0, 0.4], [0.4, 0.7]], dtype=F64)
    delta = 0.1
    lam = cd_fixed_point_precision(data_cov, delta)
    assert torch.allclose(ula_stationary_covariance(lam, delta), data_cov, rtol=0, atol=1e-12)
    # one ULA step of the linear map from data of covariance S returns covariance S at the fixed point
    a_map = torch.eye(2, dtype=F64) - delta * lam
    assert torch.allclose(a_map @ data_cov @ a_map.T + 2 * delta * torch.eye(2, dtype=F64), data_cov, atol=1e-12)
    # the small-step limit is maximum likelihood
    assert torch.allclose(cd_fixed_point_precision(data_cov, 1e-7), torch.linalg.inv(data_cov), atol=1e-5)
    with pytest.raises(ValueError, match="step"):
        cd_fixed_point_precision(data_cov, 1.0)


def test_cd_direction_vanishes_on_average_at_the_fixed_point_and_not_at_the_mle():
    # 400 independent one-step negatives from the same 2000 data points, at both candidate models
    gen = torch.Generator().manual_seed(3)
    data = MODEL.sample(2000, gen)
    centred = data - data.mean(0)
    s = centred.T @ centred / len(data)
    delta = 0.1

    def mean_direction(precision):
        model = GaussianEBM(data.mean(0), precision)
        rows = []
        for _ in range(400):
            neg = langevin_chain(model.score, data, delta, 1, gen)
            rows.append(cd_gradient(model, data, neg)[1].flatten())
        rows = torch.stack(rows)
        return rows.mean(0), rows.std(0) / math.sqrt(len(rows))

    g_cd, se_cd = mean_direction(cd_fixed_point_precision(s, delta))
    g_mle, se_mle = mean_direction(torch.linalg.inv(s))
    assert bool((g_cd.abs() < Z * se_cd).all())
    assert bool((g_mle.abs() > Z * se_mle).any())  # maximum likelihood is not CD's resting point


# --- noise-contrastive estimation ----------------------------------------------------------------------------------


def test_nce_loss_is_binary_cross_entropy():
    gen = torch.Generator().manual_seed(4)
    gd, gn = torch.randn(100, generator=gen, dtype=F64) * 3, torch.randn(80, generator=gen, dtype=F64) * 3
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(gd, torch.ones_like(gd)) + bce(gn, torch.zeros_like(gn))
    assert abs(float(nce_loss(gd, gn)) - float(expected)) < 1e-12
    assert abs(float(nce_loss(gn, gd)) - float(expected)) > 1e-3  # labels swapped differ


NOISE_SD = 2.0


def noise_log_prob(x):
    return -(x**2).sum(1) / (2 * NOISE_SD**2) - x.shape[1] * math.log(2 * math.pi * NOISE_SD**2) / 2


def test_nce_fit_is_a_stationary_point_of_the_nce_loss():
    gen = torch.Generator().manual_seed(5)
    data, noise = MODEL.sample(3000, gen), NOISE_SD * torch.randn(3000, 2, generator=gen, dtype=F64)
    model, c = nce_fit_quadratic(data, noise, noise_log_prob)
    mean = model.mean.clone().requires_grad_(True)
    prec = model.precision.clone().requires_grad_(True)
    cc = c.clone().requires_grad_(True)

    def logit(x):
        r = x - mean
        return -0.5 * ((r @ prec) * r).sum(1) + cc - noise_log_prob(x)

    grads = torch.autograd.grad(nce_loss(logit(data), logit(noise)), (mean, prec, cc))
    assert max(float(g.abs().max()) for g in grads) < 1e-9


def test_nce_recovers_the_model_and_its_normalizer():
    # n = 40,000 of each. The sd of one fit's entries at this n, measured over 48 fits of this setting (seed 100):
    # mu 0.009 and 0.006, Lambda 0.012, 0.011 and 0.019, c + log Z 0.006; with positives from N(0, I), Lambda 0.010
    # at most. The tolerance 0.1 is over 5 of them for every entry (a planted sign of c moves it by 0.7).
    gen = torch.Generator().manual_seed(6)
    n = 40_000
    model, c = nce_fit_quadratic(MODEL.sample(n, gen), NOISE_SD * torch.randn(n, 2, generator=gen, dtype=F64), noise_log_prob)
    assert float((model.mean - MODEL.mean).abs().max()) < 0.1
    assert float((model.precision - MODEL.precision).abs().max()) < 0.1
    assert abs(float(c + model.log_partition())) < 0.1
    # the notes' slip: positives drawn from a model N(0, I) give back N(0, I), not the data's law
    wrong, _ = nce_fit_quadratic(GaussianEBM(torch.zeros(2), torch.eye(2)).sample(n, gen),
                                 NOISE_SD * torch.randn(n, 2, generator=gen, dtype=F64), noise_log_prob)
    assert float((wrong.precision - torch.eye(2, dtype=F64)).abs().max()) < 0.1
    assert float((wrong.precision - MODEL.precision).abs().max()) > 0.5  # the truth is 0.9 away from I


# --- grid references for 1-D ULA chains ---------------------------------------------------------------------------


def test_grid_stationary_law_of_ula_on_a_gaussian():
    delta = 0.2
    y = torch.linspace(-10, 10, 401, dtype=F64)
    kernel = ula_kernel_1d(lambda t: -t, y, delta)
    assert torch.allclose(kernel.sum(1), torch.ones(401, dtype=F64), atol=1e-12)
    pi = stationary_on_grid(kernel)
    assert abs(float((pi * y**2).sum()) - 1 / (1 - delta / 2)) < 1e-10
    assert abs(float((pi * y**2).sum()) - 1.0) > 0.1  # planted "no bias"
    assert float((pi @ kernel - pi).abs().max()) < 1e-14


def test_grid_kernel_refuses_bad_grids():
    with pytest.raises(ValueError, match="coarser"):
        ula_kernel_1d(lambda t: -t, torch.linspace(-5, 5, 11, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="uniformly"):
        ula_kernel_1d(lambda t: -t, torch.tensor([0.0, 0.1, 0.3, 0.35], dtype=F64), 1.0)
    with pytest.raises(ValueError, match="positive"):
        ula_kernel_1d(lambda t: -t, torch.linspace(-5, 5, 101, dtype=F64), 0.0)


def test_mean_hitting_steps_on_a_chain_solved_by_hand():
    # 0 <-> 1 -> 2: T1 = 1 + T0 / 2, T0 = 1 + T0 / 2 + T1 / 2, so T1 = 4 and T0 = 6
    p = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0]], dtype=F64)
    steps = mean_hitting_steps(p, torch.tensor([False, False, True]))
    assert torch.allclose(steps, torch.tensor([6.0, 4.0, 0.0], dtype=F64), atol=1e-12)
    with pytest.raises(ValueError, match="subset"):
        mean_hitting_steps(p, torch.tensor([False, False, False]))


def test_sde_mfpt_against_an_independent_quadrature():
    # p = N(0, 1) from -1 to 1: T = int_{-1}^{1} Phi(y) / phi(y) dy, by mpmath
    exact = float(mpmath.quad(lambda y: mpmath.ncdf(y) / mpmath.npdf(y), [-1, 1]))
    mine = langevin_mfpt_sde_1d(lambda t: torch.exp(-t**2 / 2) / math.sqrt(2 * math.pi), -1.0, 1.0, lower=-12.0)
    assert abs(mine / exact - 1) < 1e-8
    with pytest.raises(ValueError, match="lower < start < end"):
        langevin_mfpt_sde_1d(lambda t: torch.ones_like(t), 1.0, 0.0, lower=-1.0)


def test_ula_first_passage_tends_to_the_sde_as_the_step_shrinks():
    _, line = two_modes(2.0)
    sde = langevin_mfpt_sde_1d(line_density(line), -2.0, 2.0, lower=-14.0)
    gaps = []
    for delta in (0.1, 0.025):
        y = torch.arange(-400, 401, dtype=F64) * 0.025
        steps = mean_hitting_steps(ula_kernel_1d(line_score(line), y, delta), y >= 2.0)
        gaps.append(float(steps[int((y + 2.0).abs().argmin())]) * delta / sde - 1)
    assert 0 < gaps[1] < gaps[0] < 0.1


def test_grid_first_passage_matches_simulation():
    # the library's chain (langevin_update, 2-D mixture score) against the grid's exact mean first-passage time, a = 2
    full, line = two_modes(2.0)
    delta, n = 0.1, 400
    y = torch.arange(-400, 401, dtype=F64) * 0.025
    exact = float(mean_hitting_steps(ula_kernel_1d(line_score(line), y, delta), y >= 2.0)[int((y + 2.0).abs().argmin())]) * delta
    gen = torch.Generator().manual_seed(7)
    x = torch.stack([torch.full((n,), -2.0, dtype=F64), torch.randn(n, generator=gen, dtype=F64)], 1)
    arrival = torch.zeros(n, dtype=F64)
    active = torch.arange(n)
    k = 0
    while len(active) and k < 100_000:
        k += 1
        xa = langevin_update(x[active], full.score(x[active]), delta, torch.randn(len(active), 2, generator=gen, dtype=F64))
        x[active] = xa
        arrived = xa[:, 0] >= 2.0
        arrival[active[arrived]] = k * delta
        active = active[~arrived]
    assert len(active) == 0
    assert abs(float(arrival.mean()) - exact) < Z * float(arrival.std()) / math.sqrt(n)


# --- samplers ------------------------------------------------------------------------------------------------------


def test_langevin_chain_is_the_loop_of_langevin_updates():
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    seen = []
    out = langevin_chain(MODEL.score, x0, 0.05, 20, torch.Generator().manual_seed(9), observe=lambda k, x: seen.append(k))
    gen = torch.Generator().manual_seed(9)
    ref = x0
    for _ in range(20):
        ref = langevin_update(ref, MODEL.score(ref), 0.05, torch.randn(ref.shape, generator=gen, dtype=F64))
    assert torch.equal(out, ref) and seen == list(range(1, 21))
    assert torch.equal(langevin_chain(MODEL.score, x0, 0.05, 0), x0)
    with pytest.raises(ValueError, match="n_steps"):
        langevin_chain(MODEL.score, x0, 0.05, -1)


def _annealed_variance(sigmas, eps, steps, v0, step_of=lambda alpha: alpha / 2):
    # target N(0, 1): p_sigma = N(0, 1 + sigma^2); ULA on it maps the variance v to (1 - d / (1 + s^2))^2 v + 2 d exactly
    v = v0
    for s in sigmas:
        d = step_of(eps * (s / sigmas[-1]) ** 2)
        for _ in range(steps):
            v = (1 - d / (1 + s**2)) ** 2 * v + 2 * d
    return v


def test_annealed_langevin_matches_the_exact_variance_recursion():
    sigmas, eps, steps, n = [3.0, 1.5, 0.7, 0.3], 0.02, 30, 200_000
    gen = torch.Generator().manual_seed(10)
    x0 = 2 * torch.randn(n, 1, generator=gen, dtype=F64)
    calls = []
    out = annealed_langevin(lambda x, s: -x / (1 + s**2), x0, sigmas, eps, steps, gen,
                            observe=lambda i, t, x: calls.append((i, t)))
    assert calls == [(i, t) for i in range(4) for t in range(1, steps + 1)]
    var = float(out.var())
    exact = _annealed_variance(sigmas, eps, steps, 4.0)
    se = exact * math.sqrt(2 / (n - 1))
    assert abs(var - exact) < Z * se and abs(float(out.mean())) < Z * math.sqrt(exact / n)
    # planted: the paper's alpha_i used as delta (a factor 2 in the step) predicts a variance the chain does not have
    assert abs(var - _annealed_variance(sigmas, eps, steps, 4.0, step_of=lambda alpha: alpha)) > Z * se


def test_annealed_langevin_refuses_bad_schedules():
    x = torch.zeros(3, 1)
    for sigmas in ([1.0, 2.0], [1.0, 1.0], [1.0, -0.5], []):
        with pytest.raises(ValueError, match="decreasing"):
            annealed_langevin(lambda x, s: -x, x, sigmas, 0.1, 5)
    with pytest.raises(ValueError, match="eps"):
        annealed_langevin(lambda x, s: -x, x, [2.0, 1.0], 0.0, 5)


def test_swap_acceptance_probability():
    # two levels, log p(x_0) = -3, log p(x_1) = -1: log ratio (1 - 0.5)(-1 - (-3)) = 1 > 0, always accepted;
    # reversed: exp(-1) = 0.368 of the time
    betas = torch.tensor([1.0, 0.5], dtype=F64)
    x = torch.tensor([[[0.0]] * 100_000, [[1.0]] * 100_000], dtype=F64)
    gen = torch.Generator().manual_seed(11)
    lp_up = torch.tensor([[-3.0] * 100_000, [-1.0] * 100_000], dtype=F64)
    x_new, lp_new, acc = swap_neighbours(x, lp_up, betas, 0, gen)
    assert bool(acc.all()) and bool((x_new[0] == 1.0).all()) and bool((lp_new[0] == -1.0).all())
    _, _, acc = swap_neighbours(x, lp_up.flip(0), betas, 0, gen)
    rate, p = float(acc.to(F64).mean()), math.exp(-1)
    assert abs(rate - p) < Z * math.sqrt(p * (1 - p) / 100_000)
    _, _, none = swap_neighbours(x, lp_up, betas, 1, gen)  # parity 1 has no pair among two levels
    assert none.shape == (0, 100_000)
    with pytest.raises(ValueError, match="decreasing"):
        swap_neighbours(x, lp_up, betas.flip(0), 0, gen)


def test_swaps_keep_each_level_at_its_tempered_law():
    # target N(0, 1); level j holds exact draws of p^beta_j = N(0, 1 / beta_j); swaps must leave every level's variance
    betas = torch.tensor([1.0, 0.25, 0.0625], dtype=F64)
    n = 200_000
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(3, n, 1, generator=gen, dtype=F64) / betas.sqrt()[:, None, None]
    log_p = lambda pts: -(pts**2).sum(-1) / 2
    out, lp, _ = swap_neighbours(x, log_p(x), betas, 0, gen)
    out, lp, _ = swap_neighbours(out, lp, betas, 1, gen)
    var, expected = out.var(1)[:, 0], 1 / betas
    assert bool(((var - expected).abs() < Z * expected * math.sqrt(2 / n)).all())
    assert torch.allclose(lp, log_p(out))
    # planted: the exponent's sign flipped (beta_{j+1} - beta_j) drags the cold level towards the hot ones' states
    log_ratio = (betas[1] - betas[0]) * (log_p(x[1]) - log_p(x[0]))
    bad = torch.where((torch.log(torch.rand(n, generator=gen, dtype=F64)) < log_ratio)[:, None], x[1], x[0])
    assert float(bad.var()) - 1 > Z * math.sqrt(2 / n)


def test_replica_exchange_with_one_level_is_a_langevin_chain():
    x0 = torch.randn(1, 32, 2, generator=torch.Generator().manual_seed(13), dtype=F64)
    out, acc = replica_exchange_langevin(MODEL.score, MODEL.log_prob, x0, [1.0], 0.05, 15, torch.Generator().manual_seed(14))
    ref = langevin_chain(MODEL.score, x0[0], 0.05, 15, torch.Generator().manual_seed(14))
    assert torch.equal(out[0], ref) and math.isnan(acc)
    with pytest.raises(ValueError, match="decreasing"):
        replica_exchange_langevin(MODEL.score, MODEL.log_prob, x0.expand(2, 32, 2), [0.5, 1.0], 0.05, 1)


def test_replica_exchange_reaches_the_far_mode_where_plain_ula_does_not():
    full, line = two_modes(4.0)
    n, steps = 100, 600
    gen = torch.Generator().manual_seed(15)
    x = torch.zeros(4, n, 2, dtype=F64)
    x[..., 0] = -4.0
    reached = torch.zeros(n, dtype=torch.bool)
    replica_exchange_langevin(full.score, full.log_prob, x, [1.0, 0.4, 0.16, 0.064], 0.05, steps, gen,
                              observe=lambda k, xs: reached.logical_or_(xs[0, :, 0] >= 4.0))
    alone = torch.zeros(n, dtype=torch.bool)
    langevin_chain(full.score, x[0], 0.05, steps, gen, observe=lambda k, xs: alone.logical_or_(xs[:, 0] >= 4.0))
    # plain ULA: mean first passage about 2100 time units against 30 here, so P(arrive) is about 1.4% per chain
    assert float(reached.to(F64).mean()) > 0.9 and float(alone.to(F64).mean()) < 0.1


# --- numbers stated in the chapter's prose and solutions -----------------------------------------------------------


def test_prose_cd_gap_and_student_tail():
    text = markdown("energy_langevin")
    low = stated(text, r"off from maximum likelihood by ([0-9]+)% to [0-9]+% entry by entry")
    high = stated(text, r"off from maximum likelihood by [0-9]+% to ([0-9]+)% entry by entry")
    data_law = GaussianEBM(torch.tensor([0.5, -0.3]), torch.linalg.inv(torch.tensor([[1.0, 0.4], [0.4, 0.7]], dtype=F64)))
    x = data_law.sample(1000, torch.Generator().manual_seed(2))
    centred = x - x.mean(0)
    s = centred.T @ centred / len(x)
    gap = ((cd_fixed_point_precision(s, 0.1) - torch.linalg.inv(s)) / torch.linalg.inv(s)).abs()
    assert rounds_to(100 * float(gap.min()), low) and rounds_to(100 * float(gap.max()), high)
    tail = stated(text, r"probability\s+\$([0-9.]+) \\cdot 10\^\{-4\}\$ per entry \(Student's \$t\$\)")
    p = float(mpmath.betainc(7.5, 0.5, 0, 15 / (15 + 25), regularized=True))  # P(|t_15| > 5)
    assert rounds_to(p * 1e4, tail)


def test_prose_grid_spacing_and_annealing_target():
    text = markdown("energy_langevin")
    spacing = stated(text, r"The grid's spacing, ([0-9.]+), is below a tenth of the kernel's standard\s+deviation at the smallest step")
    assert float(spacing) == 0.015 and float(spacing) < 0.1 * math.sqrt(2 * 0.0125)
    target = stated(text, r"\(([0-9.]+) for \$p_\{\\sigma_L\}\$")
    _, line = two_modes(4.0, math.sqrt(1 + 0.5**2))
    assert rounds_to(float((line.weights * torch.special.ndtr(line.means[:, 0] / math.sqrt(1.25))).sum()), target)


def _annealed_heavy_fraction(steps_each, n_levels=10):
    # the exact law of the first coordinate through the chapter's annealed run (uniform start on [-8, 8], 10 levels
    # 8 -> 0.5, eps = 0.025), on the chapter's grid; the heavy-mode fraction at the end
    grid = torch.arange(-600, 601, dtype=F64) * 0.05
    law = (grid.abs() <= 8).to(F64)
    law = law / law.sum()
    sigmas = torch.logspace(math.log10(8.0), math.log10(0.5), n_levels, dtype=F64).tolist()
    for sigma in sigmas:
        _, line = two_modes(4.0, math.sqrt(1 + sigma**2))
        kernel = ula_kernel_1d(line_score(line), grid, 0.025 * (sigma / sigmas[-1]) ** 2 / 2)
        for _ in range(steps_each):
            law = law @ kernel
    return float(law[grid > 0].sum() + 0.5 * law[grid == 0].sum())


def test_prose_annealing_gap_shrinks_with_more_steps():
    text = markdown("energy_langevin")
    written = stated(text, r"with \$T = 400\$ the exact fraction is ([0-9.]+)\)")
    at_100, at_400 = _annealed_heavy_fraction(100), _annealed_heavy_fraction(400)
    assert rounds_to(at_400, written) and abs(at_400 - 0.7) < abs(at_100 - 0.7)
    assert re.search(r"\(with \$T = 400\$ the exact fraction is [0-9.]+\), as do more levels", text)
    assert abs(_annealed_heavy_fraction(100, n_levels=20) - 0.7) < abs(at_100 - 0.7)  # "as do more levels"


def _barrier(line, a):
    # max of U = -log p between the light mode's local minimum and the heavy mode, minus that minimum (fine grid)
    u = torch.linspace(-a - 1, a, 200_001, dtype=F64)
    pot = -line.log_prob(u[:, None])
    local_min = (pot[1:-1] < pot[:-2]) & (pot[1:-1] < pot[2:]) & (u[1:-1] < 0)
    i_min = int(torch.nonzero(local_min)[0]) + 1
    return float(pot[i_min:].max() - pot[i_min])


def _kramers_time(line, a):
    # 2 pi / sqrt(U''(x_min) |U''(x_max)|) e^{Delta U}; the curvatures by central differences of U = -log p (not the
    # chapter's closed form), at the light mode's minimum and the barrier's top located on a fine grid
    u = torch.linspace(-a - 1, a, 200_001, dtype=F64)
    pot = -line.log_prob(u[:, None])
    local_min = (pot[1:-1] < pot[:-2]) & (pot[1:-1] < pot[2:]) & (u[1:-1] < 0)
    i_min = int(torch.nonzero(local_min)[0]) + 1
    i_max = i_min + int(pot[i_min:].argmax())
    eps = 1e-4

    def curvature(x):
        pts = torch.tensor([[x - eps], [x], [x + eps]], dtype=F64)
        v = -line.log_prob(pts)
        return float((v[0] - 2 * v[1] + v[2]) / eps**2)

    return 2 * math.pi / math.sqrt(curvature(float(u[i_min])) * abs(curvature(float(u[i_max])))) * math.exp(float(pot[i_max] - pot[i_min]))


def _chain_time(line, a, spacing=0.0125, delta=0.1):
    y = torch.arange(-round(10 / spacing), round(10 / spacing) + 1, dtype=F64) * spacing
    steps = mean_hitting_steps(ula_kernel_1d(line_score(line), y, delta), y >= a)
    return float(steps[int((y + a).abs().argmin())]) * delta


def test_prose_mode_switch_growth():
    # "the barrier is a tenth of a nat" (a = 1.5); from a = 2 to 3 "the barrier rises by about 2.5 nats and the chain's
    # time grows 7.1-fold, the diffusion's 7.3-fold, somewhat less than e^{Delta U} (12-fold)", Kramers "predicts a
    # 7.2-fold rise", its absolute times "only 0.66 to 0.70 of the exact ones"
    text = markdown("energy_langevin")
    assert re.search(r"At \$a = 1\.5\$ the barrier is a tenth of a nat", text)
    rise = stated(text, r"the barrier rises by about ([0-9.]+) nats")
    fold_chain = stated(text, r"the chain's time grows ([0-9.]+)-fold")
    fold_sde = stated(text, r"the diffusion's ([0-9.]+)-fold, somewhat\s+less than")
    fold_exp = stated(text, r"less than \$e\^\{\\Delta U\}\$ \(([0-9]+)-fold\)")
    fold_kramers = stated(text, r"the formula predicts a ([0-9.]+)-fold rise")
    ratio_lo = stated(text, r"absolute times are only ([0-9.]+) to [0-9.]+ of the exact ones")
    ratio_hi = stated(text, r"absolute times are only [0-9.]+ to ([0-9.]+) of the exact ones")
    chain, sde, kramers, barriers = {}, {}, {}, {}
    for a in (1.5, 2.0, 2.5, 3.0):
        _, line = two_modes(a)
        barriers[a] = _barrier(line, a)
        chain[a] = _chain_time(line, a)
        sde[a] = langevin_mfpt_sde_1d(line_density(line), -a, a, lower=-a - 12)
        kramers[a] = _kramers_time(line, a)
    assert 0.05 < barriers[1.5] < 0.15 and kramers[1.5] > sde[1.5]  # no barrier to speak of: Kramers overshoots
    assert rounds_to(barriers[3.0] - barriers[2.0], rise)
    assert rounds_to(chain[3.0] / chain[2.0], fold_chain) and rounds_to(sde[3.0] / sde[2.0], fold_sde)
    assert rounds_to(math.exp(barriers[3.0] - barriers[2.0]), fold_exp)
    assert rounds_to(kramers[3.0] / kramers[2.0], fold_kramers)
    ratios = [kramers[a] / sde[a] for a in (2.0, 2.5, 3.0)]
    assert rounds_to(min(ratios), ratio_lo) and rounds_to(max(ratios), ratio_hi)


def test_prose_discrete_monitoring_shares():
    # the diffusion's time to the level moved out by kappa sqrt(2 delta), kappa = -zeta(1/2) / sqrt(2 pi) ~ 0.5826, accounts
    # for the chain's extra time "at a <= 2.5 (the printed shares run from 0.8 to 1.1), but for only a quarter of it at a = 3"
    text = markdown("energy_langevin")
    kappa_w = stated(text, r"\\kappa = -\\zeta\(1/2\)/\\sqrt\{2\\pi\} \\approx ([0-9.]+)\$")
    lo_w = stated(text, r"\(the printed shares run from ([0-9.]+) to [0-9.]+\), but for only a quarter")
    hi_w = stated(text, r"\(the printed shares run from [0-9.]+ to ([0-9.]+)\), but for only a quarter")
    kappa = float(-mpmath.zeta(0.5) / mpmath.sqrt(2 * mpmath.pi))
    assert rounds_to(kappa, kappa_w)
    shares = {}
    for a in (1.5, 2.0, 2.5, 3.0):
        _, line = two_modes(a)
        sde = langevin_mfpt_sde_1d(line_density(line), -a, a, lower=-a - 12)
        moved = langevin_mfpt_sde_1d(line_density(line), -a, a + kappa * math.sqrt(0.2), lower=-a - 12)
        shares[a] = (moved - sde) / (_chain_time(line, a) - sde)
    small = [shares[a] for a in (1.5, 2.0, 2.5)]
    assert rounds_to(min(small), lo_w) and rounds_to(max(small), hi_w)
    assert 0.2 < shares[3.0] < 0.3  # "a quarter"


def test_prose_bias_ratios_and_miss_probability():
    # "the printed ratio stays at 0.16" (TV / delta); the bias ratio "rises from 0.72 at the smallest step to 0.94 at
    # delta = 0.4"; a simulation 8 se out falls below 5 se "with probability below Phi(-3) = 1.3 10^-3"
    text = markdown("energy_langevin")
    tv_w = stated(text, r"\(the printed ratio stays at ([0-9.]+)\)")
    lo_w = stated(text, r"its ratio to \$\\delta\$ rises from ([0-9.]+) at the smallest step")
    hi_w = stated(text, r"at the smallest step to ([0-9.]+) at \$\\delta = 0\.4\$")
    miss_w = stated(text, r"\\Phi\(-3\) = ([0-9.]+) \\cdot 10\^\{-3\}")
    _, line = two_modes(2.0)
    y = torch.linspace(-9, 9, 1201, dtype=F64)
    p_cells = line.log_prob(y[:, None]).exp() * float(y[1] - y[0])
    tv_ratios, bias_ratios = [], []
    for delta in (0.0125, 0.4):
        pi = stationary_on_grid(ula_kernel_1d(line_score(line), y, delta))
        tv_ratios.append(0.5 * float((pi - p_cells).abs().sum()) / delta)
        bias = float((pi * y**2).sum()) + 1 / (1 - delta / 2) - 6.0  # E x1^2 on the grid, E x2^2 in closed form
        bias_ratios.append(bias / delta)
    assert all(rounds_to(r, tv_w) for r in tv_ratios)
    assert rounds_to(bias_ratios[0], lo_w) and rounds_to(bias_ratios[1], hi_w)
    assert rounds_to(float(mpmath.ncdf(-3)) * 1e3, miss_w)


def _stored_output(cell_id):
    cells = json.loads((NOTEBOOKS / "energy_langevin.ipynb").read_text())["cells"]
    (cell,) = [c for c in cells if c["id"] == cell_id]
    return "".join("".join(o.get("text", "")) for o in cell["outputs"])


def test_prose_ks_power_and_cd_resolution_match_the_stored_outputs():
    # the summary's "about 4% of the weight" and "a resolution of about 0.01" are the printed w and 5 se; the KS text's
    # family-wise rate "below 3 10^-4" is three directions at alpha = 10^-4
    text = markdown("energy_langevin")
    w_printed = float(re.search(r"once w >= ([0-9.]+)", _stored_output("cell-20")).group(1))
    assert rounds_to(100 * w_printed, stated(text, r"sure\s+to catch a transfer of about ([0-9]+)% of the weight"))
    res_printed = float(re.search(r"are at most ([0-9.]+) in a precision entry", _stored_output("cell-16")).group(1))
    assert rounds_to(res_printed, stated(text, r"a resolution of about ([0-9.]+) in the precision"))
    alpha = stated(text, r"with \$\\alpha = 10\^\{(-[0-9]+)\}\$ per\s+direction")
    family = stated(text, r"a false alarm anywhere has probability below \$3 \\cdot 10\^\{(-[0-9]+)\}\$")
    assert alpha == family


def test_quartic_cd_rests_at_a_k_dependent_point():
    # f = -theta x^4 / 4, data N(0, 1), ULA with delta = 0.1: CD-k rests where k steps from the data keep E x^4 = 3;
    # CD-1 rests below theta_ML = 1/3, CD-10 above it (the chapter's counterexample to "for any model and any k")
    y = torch.arange(-350, 351, dtype=F64) * 0.02
    data = torch.exp(-y**2 / 2)
    data = data / data.sum()
    m4 = float((data * y**4).sum())

    def moment_after(theta, k):
        kernel, law = ula_kernel_1d(lambda t: -theta * t**3, y, 0.1), data
        for _ in range(k):
            law = law @ kernel
        return float((law * y**4).sum())

    for k, below in ((1, True), (10, False)):
        assert (moment_after(1 / 3, k) < m4) == below  # E x_k^4 falls with theta: a root below 1/3 iff it is < m4 at 1/3
    # the Gaussian EBM, by contrast, rests at the same place for every k (test_exercise_cd_any_k)


def test_exercise_step_choice():
    text = markdown("energy_langevin")
    written = stated(text, r"= 2v/101 \\approx ([0-9.]+)\\, v")
    delta = 2 / 101
    assert rounds_to(delta, written)
    assert abs(float(ula_stationary_covariance(torch.eye(1, dtype=F64), delta)) - 1.01) < 1e-12


def test_exercise_cd_any_k():
    text = markdown("energy_langevin")
    lam_w = stated(text, r"\(1 - \\sqrt\{1 - 2\\delta/v\}\)/\\delta = ([0-9.]+)\$ for \$v = 1\$")
    pct = stated(text, r"\$\\delta = 0\.1\$: ([0-9.]+)% above the\s+maximum-likelihood precision")
    lam = float(cd_fixed_point_precision(torch.ones(1, 1, dtype=F64), 0.1))
    assert rounds_to(lam, lam_w) and rounds_to(100 * (lam - 1), pct)
    assert abs(float(ula_stationary_covariance(torch.tensor([[lam]], dtype=F64), 0.1)) - 1) < 1e-12
    # the fixed point does not depend on k: 1, 3 and 10 steps of the variance map from v = 1 return 1
    for k in (1, 3, 10):
        v = 1.0
        for _ in range(k):
            v = (1 - 0.1 * lam) ** 2 * v + 0.2
        assert abs(v - 1) < 1e-12


def test_exercise_mfpt_growth():
    text = markdown("energy_langevin")
    t4_w = stated(text, r"About ([0-9]+) time units for \$a = 4\$")
    steps4_w = stated(text, r"\(([0-9]+),000 steps of \$\\delta = 0\.05\$\)")
    t5_w = stated(text, r"about ([0-9]+),000 for \$a = 5\$")
    steps5_w = stated(text, r"\(([0-9.]+) million\s+steps\)")
    ratio_w = stated(text, r"The ratio, ([0-9]+), is close to")
    growth_w = stated(text, r"\$e\^\{\(25 - 16\)/2\} = ([0-9]+)\$")
    nats_w = stated(text, r"the barrier grows by\s+([0-9.]+) nats")
    pref_w = stated(text, r"\\sqrt\{15/24\} \\approx ([0-9]+)\$")
    t = {}
    for a in (4.0, 5.0):
        _, line = two_modes(a)
        t[a] = langevin_mfpt_sde_1d(line_density(line), -a, a, lower=-a - 12)
    assert abs(t[4.0] / float(t4_w) - 1) < 0.02 and rounds_to(t[4.0] / 0.05 / 1000, steps4_w)
    assert rounds_to(t[5.0] / 1000, t5_w) and rounds_to(t[5.0] / 0.05 / 1e6, steps5_w)
    assert rounds_to(t[5.0] / t[4.0], ratio_w) and rounds_to(math.exp(4.5), growth_w)
    barrier_gain = _barrier(two_modes(5.0)[1], 5.0) - _barrier(two_modes(4.0)[1], 4.0)
    assert rounds_to(barrier_gain, nats_w)
    assert rounds_to(math.exp(4.5) * math.sqrt(15 / 24), pref_w)
