"""Parameterizations, checks not in test_parameterizations.py or test_samplers.py:

* Tweedie's formula with the library: score_from_eps(E[eps | x_t]) is the marginal score of a Gaussian
  mixture, and the planted "Tweedie without 1/sqrt(alphabar_t)" is caught;
* the conditional score -eps/sqrt(1 - ab) equals the marginal score only in conditional mean:
  E[(eps/sqrt(1 - ab) + score(x_t)) h(x_t)] = 0 for test functions h (5 standard errors), while the
  planted score with the variance for the standard deviation fails;
* the four forms of the posterior mean agree (SymPy), and an unweighted loss on eps / v / score is the
  x0 loss weighted by SNR, 1 + SNR, SNR (1 + SNR) (SymPy, and simple_loss numerically);
* a v with swapped coefficients does not invert;
* the DDIM update: the library against its eq. 12 for any eta and any earlier s, and its marginal
  q(x_s | x_0) by Monte Carlo; a planted step without room for its noise fails.
"""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from ddpm_lib.core.forward import q_sample
from ddpm_lib.core.losses import simple_loss
from ddpm_lib.core.targets import eps_from_x0, score_from_eps, target_from_x0_eps, x0_from_v
from ddpm_lib.sampling import ddim_update
from ddpm_lib.core.schedules import cosine_schedule, linear_schedule
from ddpm_lib.teaching.symbolic import is_equal
from ddpm_lib.toys.mixture import GaussianMixture

pytestmark = pytest.mark.usefixtures("single_thread")

K_SE = 5.0
MIX = GaussianMixture(
    torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
    torch.tensor([[-0.8, 0.0], [0.8, 0.4], [0.0, -0.8]], dtype=torch.float64),
    torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64),
)
SCH = linear_schedule(1000)


def noisy(t: int, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return eps, q_sample(MIX.sample(n, gen), torch.full((n,), t), eps, SCH)


@pytest.mark.parametrize("t", [1, 20, 300, 1000])
def test_score_from_eps_of_the_denoiser_is_the_marginal_score(t):
    _, xt = noisy(t, 500, seed=t)
    tt = torch.full((500,), t)
    score = MIX.noised(t, SCH).score(xt)
    lib = score_from_eps(eps_from_x0(xt, tt, MIX.posterior_mean_x0(xt, t, SCH), SCH), tt, SCH)
    # float64: the denoiser and the score are computed by different routes; eps_from_x0 divides by
    # sqrt(1 - ab) (>= 0.01) and score_from_eps again: round-off stays below 1e-9 of the score's size
    assert float((lib - score).abs().max()) <= 1e-9 * float(score.abs().max())
    ab = SCH.alpha_bar[t]
    planted = xt + (1 - ab) * score  # Tweedie without the division by sqrt(alphabar_t)
    assert float((planted - MIX.posterior_mean_x0(xt, t, SCH)).abs().max()) > 1e-6


def orthogonality_z(score_fn, t: int, n: int = 100_000) -> float:
    eps, xt = noisy(t, n, seed=100 + t)
    ab = SCH.alpha_bar[t]
    r = eps / (1 - ab).sqrt() + score_fn(xt)
    tests = [torch.ones(n, dtype=torch.float64), xt[:, 0], xt[:, 1], torch.tanh(3 * xt[:, 0])]
    prods = torch.stack([r[:, j] * h for h in tests for j in range(2)], dim=1)
    return float((prods.mean(0) / (prods.std(0) / math.sqrt(n))).abs().max())


@pytest.mark.parametrize("t", [10, 200])
def test_conditional_score_is_the_marginal_score_in_conditional_mean(t):
    ab = SCH.alpha_bar[t]
    marginal = MIX.noised(t, SCH)
    assert orthogonality_z(marginal.score, t) < K_SE
    planted = lambda x: marginal.score(x) / (1 - ab).sqrt()  # -E[eps|x_t] / (1 - ab): variance for std  # noqa: E731
    assert orthogonality_z(planted, t) > K_SE


# --- SymPy: posterior means and target weights --------------------------------------------------------------

X0, XT = sp.symbols("x_0 x_t", real=True)
A, ABP = sp.symbols("alpha_t alphabar_{t-1}", positive=True)
BETA, AB = 1 - A, A * ABP
EPS = (XT - sp.sqrt(AB) * X0) / sp.sqrt(1 - AB)
MEAN_X0 = sp.sqrt(ABP) * BETA / (1 - AB) * X0 + sp.sqrt(A) * (1 - ABP) / (1 - AB) * XT


def test_score_and_v_forms_of_the_posterior_mean():
    score = -EPS / sp.sqrt(1 - AB)
    v = sp.sqrt(AB) * EPS - sp.sqrt(1 - AB) * X0
    assert is_equal((XT + BETA * score) / sp.sqrt(A), MEAN_X0)
    assert is_equal(sp.sqrt(A) * XT - sp.sqrt(ABP) * BETA / sp.sqrt(1 - AB) * v, MEAN_X0)
    assert not is_equal((XT + BETA * score) / sp.sqrt(AB), MEAN_X0)  # the 1/sqrt(alphabar_t) slip again


def test_target_weights_symbolic():
    ab, x0h = sp.Symbol("alphabar_t", positive=True), sp.Symbol("xhat_0", real=True)
    eps_of = lambda x: (XT - sp.sqrt(ab) * x) / sp.sqrt(1 - ab)  # noqa: E731
    snr = ab / (1 - ab)
    sq = (X0 - x0h) ** 2
    assert is_equal((eps_of(X0) - eps_of(x0h)) ** 2, snr * sq)
    v_of = lambda x: sp.sqrt(ab) * eps_of(x) - sp.sqrt(1 - ab) * x  # noqa: E731
    assert is_equal((v_of(X0) - v_of(x0h)) ** 2, (1 + snr) * sq)
    s_of = lambda x: -eps_of(x) / sp.sqrt(1 - ab)  # noqa: E731
    assert is_equal((s_of(X0) - s_of(x0h)) ** 2, snr * (1 + snr) * sq)
    assert not is_equal((v_of(X0) - v_of(x0h)) ** 2, snr * sq)


@pytest.mark.parametrize(
    "target,weight",
    [("x0", lambda s: 1 + 0 * s), ("eps", lambda s: s), ("v", lambda s: 1 + s), ("score", lambda s: s * (1 + s))],
)
def test_simple_loss_is_the_snr_weighted_x0_error(target, weight):
    gen = torch.Generator().manual_seed(7)
    t = torch.randint(1, 1001, (3000,), generator=gen)
    x0 = 2 * torch.rand(3000, 2, generator=gen, dtype=torch.float64) - 1
    eps = torch.randn(3000, 2, generator=gen, dtype=torch.float64)
    xt = q_sample(x0, t, eps, SCH)
    x0_hat = x0 + 0.05 * torch.randn(3000, 2, generator=gen, dtype=torch.float64)
    out = target_from_x0_eps(x0_hat, eps_from_x0(xt, t, x0_hat, SCH), t, SCH, target)
    snr = SCH.snr[t][:, None]
    ref = float((weight(snr) * (x0 - x0_hat) ** 2).mean())
    assert math.isclose(float(simple_loss(out, x0, eps, t, SCH, target)), ref, rel_tol=1e-9)


def test_swapped_v_does_not_invert():
    gen = torch.Generator().manual_seed(8)
    t = torch.randint(1, 1001, (100,), generator=gen)
    x0 = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    xt = q_sample(x0, t, eps, SCH)
    a, s = SCH.alpha_bar[t][:, None].sqrt(), (1 - SCH.alpha_bar[t][:, None]).sqrt()
    assert torch.allclose(x0_from_v(xt, t, a * eps - s * x0, SCH), x0, atol=1e-9)
    assert not torch.allclose(x0_from_v(xt, t, s * eps - a * x0, SCH), x0, atol=1e-3)


# --- DDIM ------------------------------------------------------------------------------------------------------


def ddim_inline(xt, t, s, x0_hat, z, schedule, eta):
    """Song et al. (2021), eqs. 12 and 16, written out."""
    ab_t, ab_s = schedule.alpha_bar[t][:, None], schedule.alpha_bar[s][:, None]
    var = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    eps_hat = (xt - ab_t.sqrt() * x0_hat) / (1 - ab_t).sqrt()
    return ab_s.sqrt() * x0_hat + (1 - ab_s - var).sqrt() * eps_hat + var.sqrt() * z


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_update_is_eq_12_for_any_earlier_step(eta):
    sch = cosine_schedule(1000)
    gen = torch.Generator().manual_seed(9)
    t = torch.randint(2, 1001, (400,), generator=gen)
    s = (t.double() * torch.rand(400, generator=gen, dtype=torch.float64)).long()
    xt, x0_hat, z = (torch.randn(400, 2, generator=gen, dtype=torch.float64) for _ in range(3))
    got = ddim_update(xt, t, s, x0_hat, z, sch, eta=eta)
    assert torch.allclose(got, ddim_inline(xt, t, s, x0_hat, z, sch, eta), rtol=1e-12, atol=1e-12)


def planted_ddim(xt, t, s, x0_hat, z, schedule, eta):
    """Planted: sqrt(1 - ab_s) in front of eps_hat, no room left for the fresh noise."""
    ab_t, ab_s = schedule.alpha_bar[t][:, None], schedule.alpha_bar[s][:, None]
    var = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    eps_hat = (xt - ab_t.sqrt() * x0_hat) / (1 - ab_t).sqrt()
    return ab_s.sqrt() * x0_hat + (1 - ab_s).sqrt() * eps_hat + var.sqrt() * z


def marginal_z(step, t: int, s: int, eta: float, n: int = 200_000):
    """With the true x0, x_s from a DDIM step must be N(sqrt(ab_s) x0, 1 - ab_s): z of mean and variance."""
    gen = torch.Generator().manual_seed(t + s)
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    tt, ss = torch.full((n,), t), torch.full((n,), s)
    xt = q_sample(x0, tt, torch.randn(n, 1, generator=gen, dtype=torch.float64), SCH)
    xs = step(xt, tt, ss, x0, torch.randn(n, 1, generator=gen, dtype=torch.float64), SCH, eta)[:, 0]
    ab_s = float(SCH.alpha_bar[s])
    mean, var = math.sqrt(ab_s) * 0.7, 1 - ab_s
    return (float(xs.mean()) - mean) / math.sqrt(var / n), (float(xs.var()) - var) / (var * math.sqrt(2 / (n - 1)))


@pytest.mark.parametrize("t,s,eta", [(800, 300, 0.0), (800, 300, 1.0), (400, 399, 0.5)])
def test_ddim_keeps_the_marginal(t, s, eta):
    z = marginal_z(lambda *a: ddim_update(*a[:6], eta=a[6]), t, s, eta)
    assert max(map(abs, z)) < K_SE, z


def test_ddim_marginal_check_catches_the_planted_step():
    z = marginal_z(planted_ddim, 800, 300, 1.0)
    assert abs(z[1]) > K_SE, z
