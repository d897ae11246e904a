"""ddpm_lib.toys.ConditionalGaussianMixture, each quantity against an independent construction, in float64.

* densities against torch.distributions (the Gaussian density written by another library), Bayes' rule's
  posteriors summing to 1;
* the scores and the class posterior's gradient against autograd of the log-densities and against central
  finite differences; the guided score's ends (gamma = 0, 1) are the unconditional and conditional scores;
* the noised toy against quadrature of the forward kernel over a grid of x_0 (the class density and the
  denoiser E[x_0 | x_t, y]);
* the tilted sampler against quadrature of the tilted density's mean and second moments (Monte Carlo, 5 standard
  errors), and its acceptance rate against Z_gamma / pi_y;
* the quadrature of the noised tilted density: at gamma = 1 it is the noised class density, at gamma = 0 the
  noised marginal;
* refusals: bad priors, classes of different dimensions, bad labels, gamma < 1 for the sampler, mixed timesteps.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib.core.schedules import cosine_schedule
from ddpm_lib.sampling import denoiser_from_score
from ddpm_lib.toys import ConditionalGaussianMixture, GaussianMixture

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
SCHEDULE = cosine_schedule(1000)
Z = 5.0  # Monte Carlo tolerance, in standard errors


def toy() -> ConditionalGaussianMixture:
    # two classes of two components each, overlapping (the chapter's toy has the same structure)
    c0 = GaussianMixture(torch.tensor([0.6, 0.4], dtype=F64), torch.tensor([[-1.0, 0.0], [0.3, 1.0]], dtype=F64),
                         torch.tensor([0.4, 0.3], dtype=F64))
    c1 = GaussianMixture(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([[1.0, 0.0], [-0.3, -1.0]], dtype=F64),
                         torch.tensor([0.4, 0.3], dtype=F64))
    return ConditionalGaussianMixture((c0, c1), torch.tensor([0.45, 0.55], dtype=F64))


def points(n=50, seed=0, scale=1.5):
    return scale * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def torch_class_log_prob(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    # log sum_k w_k N(x; mu_k, s_k^2 I), the Gaussian from torch.distributions
    comps = [torch.distributions.MultivariateNormal(m, covariance_matrix=s**2 * torch.eye(2, dtype=F64))
             for m, s in zip(mixture.means, mixture.stds)]
    return torch.logsumexp(torch.stack([w.log() + c.log_prob(x) for w, c in zip(mixture.weights, comps)], 1), 1)


def autograd(f, x):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(f(x).sum(), x)[0]


def central_difference(f, x, h=1e-5):
    cols = []
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = h
        cols.append((f(x + e) - f(x - e)) / (2 * h))
    return torch.stack(cols, 1)


# --- densities and scores ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 50, 300, 1000])
def test_densities_and_bayes_rule_against_torch_distributions(t):
    m = toy().noised(t, SCHEDULE)
    x = points()
    want_class = torch.stack([torch_class_log_prob(c, x) for c in m.classes], 1)
    assert torch.allclose(m.class_log_probs(x), want_class, rtol=0, atol=1e-12)
    want_marginal = torch.logsumexp(want_class + m.priors.log(), 1)
    assert torch.allclose(m.log_prob(x), want_marginal, rtol=0, atol=1e-12)
    assert torch.allclose(m.marginal().log_prob(x), want_marginal, rtol=0, atol=1e-12)
    post = m.class_log_posterior(x).exp()
    assert torch.allclose(post.sum(1), torch.ones(len(x), dtype=F64), rtol=0, atol=1e-14)
    assert torch.allclose(post, (want_class + m.priors.log() - want_marginal[:, None]).exp(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("t", [0, 50, 300, 1000])
def test_scores_against_autograd_and_finite_differences(t):
    m = toy().noised(t, SCHEDULE)
    x = points(seed=1)
    scale = m.score(x).abs().max()
    # round-off of float64 scores of O(1..10): 1e-10 relative to the largest; the central difference with h = 1e-5
    # has truncation error O(h^2 * third derivative) and round-off O(1e-16 / h), both below 1e-6 here
    assert torch.allclose(m.score(x), autograd(m.log_prob, x), rtol=0, atol=1e-10 * scale)
    for y in (0, 1):
        assert torch.allclose(m.class_score(x, y), autograd(lambda z: m.classes[y].log_prob(z), x), rtol=0, atol=1e-10 * scale)
        logpost = lambda z, y=y: m.class_log_posterior(z)[:, y]
        grad = m.class_log_posterior_grad(x, y)
        assert torch.allclose(grad, autograd(logpost, x), rtol=0, atol=1e-10 * scale)
        assert torch.allclose(grad, central_difference(logpost, x), rtol=0, atol=1e-6 * scale)
        # the guided score: gamma = 0 unconditional, gamma = 1 conditional (bayes-score), linear in gamma
        assert torch.allclose(m.guided_score(x, y, 0.0), m.score(x), rtol=0, atol=1e-12 * scale)
        assert torch.allclose(m.guided_score(x, y, 1.0), m.class_score(x, y), rtol=0, atol=1e-10 * scale)
        assert torch.allclose(m.guided_score(x, y, 3.0), autograd(lambda z: m.log_prob(z) + 3 * logpost(z), x),
                              rtol=0, atol=1e-10 * scale)


def test_per_row_labels_pick_each_row_s_class():
    m = toy()
    x = points(6)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    for f in (m.class_score, m.class_log_posterior_grad):
        want = torch.stack([f(x[i:i + 1], int(y[i]))[0] for i in range(6)])
        assert torch.equal(f(x, y), want)


@pytest.mark.parametrize("t", [20, 200, 700])
def test_the_noised_toy_is_the_forward_kernel_integrated_over_the_data(t):
    # p_t(x | y) = int p(x0 | y) N(x; sqrt(ab) x0, (1 - ab) I) dx0 and E[x0 | x_t, y], by the trapezoid rule on a grid
    # of step 0.01 on [-4, 4]^2 (below a tenth of every standard deviation involved, and 7.5 of them from the nearest
    # mean to the border: exact to ~1e-13; [-3, 3]^2 cuts off a tail of 3e-7)
    m = toy()
    ab = SCHEDULE.alpha_bar[t]
    axis = torch.linspace(-4, 4, 801, dtype=F64)
    w = torch.full((801,), float(axis[1] - axis[0]), dtype=F64)
    w[[0, -1]] /= 2
    g1, g2 = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([g1.reshape(-1), g2.reshape(-1)], 1)
    weights = (w[:, None] * w[None, :]).reshape(-1)
    xt = points(8, seed=2, scale=1.0)
    kernel = torch.exp(-((xt[:, None] - ab.sqrt() * grid[None]) ** 2).sum(-1) / (2 * (1 - ab))) / (2 * math.pi * (1 - ab))
    for y in (0, 1):
        joint = torch.exp(torch_class_log_prob(m.classes[y], grid)) * weights * kernel  # (8, m)
        density = joint.sum(1)
        assert torch.allclose(m.noised(t, SCHEDULE).class_log_probs(xt)[:, y], density.log(), rtol=0, atol=1e-8)
        mean = joint @ grid / density[:, None]
        assert torch.allclose(m.posterior_mean_x0(xt, t, SCHEDULE, y), mean, rtol=0, atol=1e-8)
    uncond = sum(p * torch.exp(torch_class_log_prob(c, grid)) for p, c in zip(m.priors, m.classes)) * weights * kernel
    assert torch.allclose(m.posterior_mean_x0(xt, t, SCHEDULE), uncond @ grid / uncond.sum(1)[:, None], rtol=0, atol=1e-8)


def test_the_time_dependent_callables():
    m = toy()
    x = points(10, seed=3)
    t = torch.full((10,), 400)
    noised = m.noised(400, SCHEDULE)
    assert torch.equal(m.score_fn(SCHEDULE)(x, t), noised.score(x))
    assert torch.equal(m.score_fn(SCHEDULE, 1)(x, t), noised.class_score(x, 1))
    assert torch.equal(m.score_fn(SCHEDULE, 1, 2.5)(x, t), noised.guided_score(x, 1, 2.5))
    assert torch.equal(m.class_log_posterior_grad_fn(SCHEDULE, 0)(x, t), noised.class_log_posterior_grad(x, 0))
    # an exact denoiser from the score (Tweedie) is the conjugate-algebra posterior mean
    den = denoiser_from_score(m.score_fn(SCHEDULE, 0), SCHEDULE)
    assert torch.allclose(den(x, t), m.posterior_mean_x0(x, 400, SCHEDULE, 0), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="one timestep per call"):
        m.score_fn(SCHEDULE)(x, torch.arange(10) + 1)
    with pytest.raises(ValueError, match="needs the class"):
        m.score_fn(SCHEDULE, gamma=2.0)


# --- the tilted distribution ---------------------------------------------------------------------------------------


def _tilted_moments_by_quadrature(m, y, gamma):
    axis = torch.linspace(-4, 4, 801, dtype=F64)
    g1, g2 = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([g1.reshape(-1), g2.reshape(-1)], 1)
    dens = m.tilted_log_prob_unnormalized(grid, y, gamma).exp()
    z = dens.sum() * float(axis[1] - axis[0]) ** 2  # the integrand is ~0 at the border: the sum is the trapezoid rule
    p = dens / dens.sum()
    return z, p @ grid, p @ grid**2


@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_tilted_draws_have_the_tilted_moments(gamma):
    m = toy()
    n = 40_000
    gen = torch.Generator().manual_seed(5)
    x = m.sample_tilted(n, 0, gamma, gen)
    assert x.shape == (n, 2) and x.dtype == F64
    z, mean, second = _tilted_moments_by_quadrature(m, 0, gamma)
    for stat, exact in ((x, mean), (x**2, second)):
        se = stat.std(0) / math.sqrt(n)
        assert bool(((stat.mean(0) - exact).abs() <= Z * se).all()), (gamma, stat.mean(0), exact)
    # the acceptance rate is Z_gamma / pi_y: the mean acceptance probability p(y | x)^(gamma - 1) over proposals
    trials = m.sample_class(n, 0, torch.Generator().manual_seed(6))
    accept = ((gamma - 1) * m.class_log_posterior(trials)[:, 0]).exp()
    rate, se = float(accept.mean()), float(accept.std() / math.sqrt(n))
    assert abs(rate - float(z / m.priors[0])) <= Z * se + 1e-12


def test_tilted_at_gamma_one_is_the_class():
    m = toy()
    a = m.sample_tilted(1024, 1, 1.0, torch.Generator().manual_seed(0))  # one batch of proposals
    b = m.sample_class(1024, 1, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)  # every proposal accepted: the same draws


def test_the_noised_tilted_density_at_gamma_zero_and_one():
    m = toy()
    x = points(20, seed=4, scale=1.0)
    for t in (30, 300):
        noised = m.noised(t, SCHEDULE)
        one = m.noised_tilted_log_prob(x, 0, 1.0, t, SCHEDULE)
        assert torch.allclose(one, noised.class_log_probs(x)[:, 0], rtol=0, atol=1e-7)
        zero = m.noised_tilted_log_prob(x, 0, 0.0, t, SCHEDULE)
        assert torch.allclose(zero, noised.log_prob(x), rtol=0, atol=1e-7)
        # its score by autograd, at gamma = 1: the class score
        assert torch.allclose(autograd(lambda z: m.noised_tilted_log_prob(z, 0, 1.0, t, SCHEDULE), x),
                              noised.class_score(x, 0), rtol=0, atol=1e-6)
        # at gamma = 3 it differs from the guided score (book eq. tilted-noised-score): Jensen's gap
        tilted = autograd(lambda z: m.noised_tilted_log_prob(z, 0, 3.0, t, SCHEDULE), x)
        assert (tilted - noised.guided_score(x, 0, 3.0)).abs().max() > 0.1


# --- refusals ------------------------------------------------------------------------------------------------------


def test_refusals():
    m = toy()
    c = m.classes[0]
    with pytest.raises(ValueError, match="summing to 1"):
        ConditionalGaussianMixture((c, c), torch.tensor([0.5, 0.6], dtype=F64))
    with pytest.raises(ValueError, match="summing to 1"):
        ConditionalGaussianMixture((c, c), torch.tensor([1.0], dtype=F64))
    with pytest.raises(ValueError, match="at least two"):
        ConditionalGaussianMixture((c,), torch.tensor([1.0], dtype=F64))
    with pytest.raises(ValueError, match="positive"):
        ConditionalGaussianMixture((c, c), torch.tensor([1.2, -0.2], dtype=F64))
    one_d = GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 1, dtype=F64), torch.ones(1, dtype=F64))
    with pytest.raises(ValueError, match="different dimensions"):
        ConditionalGaussianMixture((c, one_d), torch.tensor([0.5, 0.5], dtype=F64))
    x = points(4)
    with pytest.raises(ValueError, match="outside"):
        m.class_score(x, 2)
    with pytest.raises(ValueError, match="one label per row"):
        m.class_score(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="gamma >= 1"):
        m.sample_tilted(10, 0, 0.5)
    with pytest.raises(ValueError, match="1..T"):
        m.noised_tilted_log_prob(x, 0, 2.0, 0, SCHEDULE)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="gamma >= 1"):
            m.sample_tilted(10, 0, bad)
    # one batch of 5000 proposals accepts fewer than 5000 at gamma = 3 (rate Z_3 / pi_0 ~ 0.9): the cap is hit
    with pytest.raises(ValueError, match="acceptance too low"):
        m.sample_tilted(5000, 0, 3.0, torch.Generator().manual_seed(0), max_proposals=5000)
    three_d = GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 3, dtype=F64), torch.ones(1, dtype=F64))
    with pytest.raises(ValueError, match="d <= 2"):
        ConditionalGaussianMixture((three_d, three_d), torch.tensor([0.5, 0.5], dtype=F64)).noised_tilted_log_prob(
            torch.zeros(2, 3, dtype=F64), 0, 2.0, 10, SCHEDULE)


def test_shapes_dtypes_and_float32_inputs():
    # the class docstring: points of any float dtype are computed with in float64, every result is float64
    m = toy().noised(100, SCHEDULE)
    x64 = points(7, seed=5)
    x32 = x64.float()
    x = x32.double()  # the same points, exactly, in float64
    for f in (m.log_prob, m.class_log_probs, m.class_log_posterior, m.score, lambda z: m.class_score(z, 1),
              lambda z: m.class_log_posterior_grad(z, 0), lambda z: m.guided_score(z, 0, 2.0),
              lambda z: m.tilted_log_prob_unnormalized(z, 0, 2.0),
              lambda z: toy().posterior_mean_x0(z, 100, SCHEDULE, 0),
              lambda z: toy().noised_tilted_log_prob(z, 0, 2.0, 100, SCHEDULE, n_grid=101)):
        got = f(x32)
        assert got.dtype == F64 and torch.equal(got, f(x))
    assert m.class_log_probs(x).shape == (7, 2) and m.score(x).shape == (7, 2) and m.log_prob(x).shape == (7,)
    xs, ys = toy().sample(300, torch.Generator().manual_seed(0))
    assert xs.shape == (300, 2) and xs.dtype == F64 and ys.shape == (300,) and ys.dtype == torch.int64
    assert set(ys.tolist()) == {0, 1}
    assert toy().sample_tilted(0, 0, 3.0).shape == (0, 2)
