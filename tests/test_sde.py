"""The SDE view (chapter "Stochastic differential equations"): ddpm_lib.core.sde and the reverse-SDE samplers.

Exact answers come from Gaussian data. For data x0 ~ N(M, S^2) every marginal of the VP-SDE is Gaussian,
p_u = N(sqrt(ab(u)) M, ab(u) S^2 + 1 - ab(u)), its score is affine in x, and so is every drift and every
sampler step: a step maps x to A x + B + C z. The law of a chain of such steps is then propagated *exactly*
(mean' = A mean + B, var' = A^2 var + C^2), without Monte Carlo, and compared with the exact marginals:

* the probability-flow ODE (core.sde.vp_probability_flow_drift), integrated finely, maps quantiles of p_1
  to the same quantiles of p_u at every u; the reverse SDE's moment equations reproduce p_u; the planted
  drifts (the score term's sign flipped, g in place of g^2, the 1/2 missing, the data's score in place of
  p_u's) do not;
* Euler-Maruyama (steps.euler_maruyama_update) is weakly first order (measured), and its two rules
  (x0_hat at t = 0, the ancestral step above sigma_max) hold; without the second it diverges from t = T, with it the
  second step still doubles the variance, the hybrid stays weakly first order from t = T, and the opt-in beta du rule
  takes the ancestral step where it should;
* the predictor-corrector step is rebuilt by hand from its parts (same generator), its signal-to-noise rule
  is checked, and its corrector's stationary law is measured: the batch rule samples the target, the row
  rule of the paper's pseudocode inflates a Gaussian's variance by ((d+2)/d)^2 for d = 8 and 32 (the small-step
  limit) and does not settle at all in one or two dimensions.

Numbers stated in the chapter's prose are pinned at the end (tests/prose.py).
"""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch

from ddpm_lib import cosine_schedule, linear_schedule
from ddpm_lib.core.sde import (probability_flow_drift, reverse_drift, ve_diffusion_squared, ve_sigma, vp_diffusion_squared,
                               vp_drift, vp_probability_flow_drift, vp_reverse_drift)
from ddpm_lib.core.targets import score_from_x0
from ddpm_lib.sampling import (PC_DEFAULTS, SAMPLERS, count_nfe, ddim_timesteps, ddim_update, euler_maruyama_step,
                               euler_maruyama_update, iterate, langevin_update, pc_step, reverse_diffusion_update, sample,
                               sampler_plan, snr_step_size)

from prose import markdown, rounds_to, stated  # noqa: E402  (tests/prose.py: numbers stated in the chapter)

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
M, S = 0.7, 0.5  # the data N(M, S^2)


def marginal(schedule, u: float) -> tuple[float, float]:
    """Mean and variance of p_u for data N(M, S^2): the VP-SDE's exact marginal (book eq. alpha-bar-continuous)."""
    ab = float(schedule.alpha_bar_at(u))
    return math.sqrt(ab) * M, ab * S**2 + 1 - ab


def gaussian_score(schedule, u: float):
    m, v = marginal(schedule, u)
    return lambda x: -(x - m) / v


def denoiser(schedule):
    """The exact E[x0 | x_t] for data N(M, S^2), at integer t (the loop's protocol)."""

    def d(x, t):
        ab = schedule.alpha_bar[t].to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return M + ab.sqrt() * S**2 / (ab * S**2 + 1 - ab) * (x - ab.sqrt() * M)

    return d


def ralston3(velocity, x, u_from: float, u_to: float, n: int):
    """Ralston's explicit third-order Runge-Kutta method from u_from to u_to in n equal steps.

    Its stages sit at the start, 1/2 and 3/4 of each step, never at the end: the schedule's rate beta(u) is
    piecewise constant and left-continuous, so a stage at the end of a step that ends on a grid point would read
    the next interval's rate. With n a multiple of the steps of the schedule, every stage reads the right one.
    """
    h = (u_to - u_from) / n
    u = u_from
    for _ in range(n):
        k1 = velocity(x, u)
        k2 = velocity(x + h / 2 * k1, u + h / 2)
        k3 = velocity(x + 3 * h / 4 * k2, u + 3 * h / 4)
        x = x + h * (2 * k1 + 3 * k2 + 4 * k3) / 9
        u = u + h
    return x


# --- the coefficients ---------------------------------------------------------------------------------------------


def test_vp_coefficients_are_the_schedules_rate():
    sch = cosine_schedule(100)
    u = torch.tensor([0.0, 0.013, 0.5, 0.99, 1.0], dtype=F64)
    assert torch.equal(vp_diffusion_squared(u, sch), sch.beta_at(u))
    x = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(0))  # float32 data, float64 coefficients
    f = vp_drift(x, u, sch)
    assert f.dtype == torch.float32 and f.shape == x.shape
    assert torch.equal(f, (-0.5 * sch.beta_at(u)).reshape(5, 1, 1).float() * x)
    # one u for the whole batch
    assert torch.equal(vp_drift(x, 0.5, sch), (-0.5 * sch.beta_at(0.5)).float() * x)
    # the rate reproduces the chain: over the step ((t-1)/T, t/T] the VP-SDE's mean factor exp(-beta/(2T)) is
    # sqrt(1 - beta_t) (book eq. alpha-bar-continuous), for every t
    t = torch.arange(1, 101)
    assert torch.allclose(torch.exp(-vp_diffusion_squared(t.double() / 100, sch) / 200), (1 - sch.beta[1:]).sqrt(), rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vp_drift(x, 1.5, sch)
    with pytest.raises(ValueError, match="one per row"):
        vp_drift(x, torch.full((4,), 0.5), sch)


def test_ve_coefficients():
    u = torch.linspace(0, 1, 11, dtype=F64)
    sig = ve_sigma(u, 0.01, 50.0)
    assert math.isclose(float(sig[0]), 0.01, rel_tol=1e-14) and math.isclose(float(sig[-1]), 50.0, rel_tol=1e-14)
    # g^2 = d sigma^2 / du, against a central difference (step 1e-5: truncation ~ (1e-5)^2 * (2 log 5000)^3 / 6 ~ 1e-7 relative)
    h = 1e-5
    uu = torch.tensor([0.2, 0.5, 0.8], dtype=F64)
    fd = (ve_sigma(uu + h) ** 2 - ve_sigma(uu - h) ** 2) / (2 * h)
    assert torch.allclose(ve_diffusion_squared(uu), fd, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        ve_sigma(0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ve_sigma(-0.1)


def test_the_two_drifts_and_their_refusals():
    gen = torch.Generator().manual_seed(1)
    x, s = torch.randn(4, 3, generator=gen, dtype=F64), torch.randn(4, 3, generator=gen, dtype=F64)
    g2 = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=F64)
    f = -0.25 * x
    # written out row by row, with hand-picked numbers: f - g^2 s and f - g^2 s / 2
    for i in range(4):
        assert torch.allclose(reverse_drift(f, g2, s)[i], f[i] - g2[i] * s[i], rtol=0, atol=1e-15)
        assert torch.allclose(probability_flow_drift(f, g2, s)[i], f[i] - g2[i] / 2 * s[i], rtol=0, atol=1e-15)
    # the VE-SDE: f = 0 as a number
    assert torch.equal(reverse_drift(0.0, 2.0, s), -2.0 * s)
    sch = linear_schedule(50)
    u = torch.full((4,), 0.3, dtype=F64)
    beta = float(sch.beta_at(0.3))
    assert torch.allclose(vp_reverse_drift(x, u, s, sch), -0.5 * beta * x - beta * s, rtol=0, atol=1e-14)
    assert torch.allclose(vp_probability_flow_drift(x, u, s, sch), -0.5 * beta * (x + s), rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match=">= 0"):
        reverse_drift(f, -1.0, s)
    with pytest.raises(ValueError, match="one shape"):
        probability_flow_drift(f[:2], 1.0, s)


# --- the probability-flow ODE and the reverse SDE have the forward marginals (Gaussian data, exact) ------------------

T_ODE = 40
SUB = 10  # Ralston substeps per step of the schedule


def pf_quantile_errors(drift_of) -> float:
    """Integrate the PF-ODE from u = 1 to 0 for two points of p_1 (its mean and mean + sd) and compare them with the same
    quantiles of the exact marginal at every grid point u = t/T: the flow of a linear ODE is affine, so two points
    determine it, and a flow with the right marginals maps quantiles to quantiles. Returns the largest error."""
    sch = linear_schedule(T_ODE, beta_start=2e-3, beta_end=0.4)  # T = 40 steps spanning the range of DDPM's 1000
    m1, v1 = marginal(sch, 1.0)
    x = torch.tensor([[m1], [m1 + math.sqrt(v1)]], dtype=F64)
    worst = 0.0
    for t in range(T_ODE, 0, -1):
        x = ralston3(lambda y, u: drift_of(sch, y, u), x, t / T_ODE, (t - 1) / T_ODE, SUB)
        m, v = marginal(sch, (t - 1) / T_ODE)
        worst = max(worst, abs(float(x[0]) - m), abs(float(x[1] - x[0]) - math.sqrt(v)))
    return worst


def correct_pf(sch, y, u):
    return vp_probability_flow_drift(y, u, gaussian_score(sch, u)(y), sch)


PLANTED_PF = {
    # the reverse SDE's drift used as an ODE: the 1/2 missing
    "missing 1/2": lambda sch, y, u: reverse_drift(vp_drift(y, u, sch), vp_diffusion_squared(u, sch), gaussian_score(sch, u)(y)),
    # g in place of g^2
    "g for g^2": lambda sch, y, u: probability_flow_drift(vp_drift(y, u, sch), vp_diffusion_squared(u, sch).sqrt(), gaussian_score(sch, u)(y)),
    # the score term's sign flipped
    "+ score": lambda sch, y, u: vp_drift(y, u, sch) + 0.5 * vp_diffusion_squared(u, sch) * gaussian_score(sch, u)(y),
    # the score of the data p_0 at every time (the slip of one of the source notes, "grad log p_theta(x)")
    "score of p_0": lambda sch, y, u: vp_probability_flow_drift(y, u, gaussian_score(sch, 0.0)(y), sch),
}


def test_the_probability_flow_ode_has_the_forward_marginals():
    # Ralston's third order with 400 steps: the discretization error is 2e-8 (measured), far below 1e-6
    assert pf_quantile_errors(correct_pf) < 1e-6


@pytest.mark.parametrize("name", sorted(PLANTED_PF))
def test_planted_probability_flow_drifts_miss_the_marginals(name):
    assert pf_quantile_errors(PLANTED_PF[name]) > 1e-2  # 0.94 to 2.5e4 measured


def reverse_moment_errors(reverse_of) -> float:
    """The reverse SDE dx = r(x, u) du + g dW-bar with an affine drift r = a x + b has, run backwards in u, the moment
    equations dm/du = a m + b and dV/du = 2 a V - g^2 (the noise adds g^2 |du|). Integrate them from the exact p_1
    and compare with p_u at every grid point."""
    sch = linear_schedule(T_ODE, beta_start=2e-3, beta_end=0.4)
    m, v = marginal(sch, 1.0)
    state = torch.tensor([[m], [v]], dtype=F64)

    def moments(st, u):
        b = reverse_of(sch, torch.zeros(1, 1, dtype=F64), u)
        a = reverse_of(sch, torch.ones(1, 1, dtype=F64), u) - b
        return torch.cat([a * st[:1] + b, 2 * a * st[1:] - vp_diffusion_squared(u, sch)])

    worst = 0.0
    for t in range(T_ODE, 0, -1):
        state = ralston3(moments, state, t / T_ODE, (t - 1) / T_ODE, SUB)
        m, v = marginal(sch, (t - 1) / T_ODE)
        worst = max(worst, abs(float(state[0]) - m), abs(float(state[1]) - v))
    return worst


def test_the_reverse_sde_has_the_forward_marginals():
    correct = lambda sch, y, u: vp_reverse_drift(y, u, gaussian_score(sch, u)(y), sch)
    assert reverse_moment_errors(correct) < 1e-6  # 7e-8 measured (Ralston, 400 steps)
    # planted: the score term's sign flipped, and the probability-flow drift (half the score term) with the noise kept
    flipped = lambda sch, y, u: vp_drift(y, u, sch) + vp_diffusion_squared(u, sch) * gaussian_score(sch, u)(y)
    half = lambda sch, y, u: vp_probability_flow_drift(y, u, gaussian_score(sch, u)(y), sch)
    assert reverse_moment_errors(flipped) > 1e-2 and reverse_moment_errors(half) > 1e-2


# --- Euler-Maruyama ---------------------------------------------------------------------------------------------------


def affine(update, schedule, t: int, t_prev: int) -> tuple[float, float, float]:
    """(A, B, C) with update(x, z) = A x + B + C z for the exact Gaussian denoiser (1-D, float64)."""
    tt, tp = torch.tensor([t]), torch.tensor([t_prev])
    den = denoiser(schedule)

    def f(x, z):
        x, z = torch.tensor([[x]], dtype=F64), torch.tensor([[z]], dtype=F64)
        return float(update(x, tt, tp, den(x, tt), z, schedule))

    B = f(0.0, 0.0)
    return f(1.0, 0.0) - B, B, f(0.0, 1.0) - B


def law_error(update, schedule, t_max: int, t_min: int, k: int) -> float:
    """|mean error| + |variance error| at t_min after k steps from the exact law at t_max (exact propagation)."""
    m, v = marginal(schedule, t_max / schedule.T)
    ts = [int(round(t_max - (t_max - t_min) * i / k)) for i in range(k + 1)]
    for a, b in zip(ts, ts[1:]):
        A, B, C = affine(update, schedule, a, b)
        m, v = A * m + B, A * A * v + C * C
    m_ex, v_ex = marginal(schedule, t_min / schedule.T)
    return abs(m - m_ex) + abs(v - v_ex)


def fitted_order(steps, errors) -> float:
    lx, ly = [math.log(k) for k in steps], [math.log(e) for e in errors]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return -sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def test_euler_maruyama_update_is_the_reverse_drift_held_over_the_step():
    sch = cosine_schedule(200)
    gen = torch.Generator().manual_seed(2)
    x, x0_hat, z = (torch.randn(6, 1, 4, 4, generator=gen, dtype=F64) for _ in range(3))
    t, t_prev = torch.tensor([200, 150, 90, 40, 7, 3]), torch.tensor([180, 100, 89, 0, 6, 1])
    # the other construction: core.sde's reverse drift at u = t/T, the noise g sqrt(du)
    u, du = t.double() / 200, (t - t_prev).double() / 200
    score = score_from_x0(x, t, x0_hat, sch)
    drift = vp_reverse_drift(x, u, score, sch)
    expected = x - du.reshape(-1, 1, 1, 1) * drift + (sch.beta_at(u) * du).sqrt().reshape(-1, 1, 1, 1) * z
    # float64 round-off of two arrangements; the score divides by 1 - ab (4e-5 at t = 1), hence 1e-9
    assert torch.allclose(euler_maruyama_update(x, t, t_prev, x0_hat, z, sch), expected, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="smaller"):
        euler_maruyama_update(x, t_prev, t, x0_hat, z, sch)


@pytest.mark.parametrize("T", [2**12, 1000], ids=["T4096", "T1000"])
def test_euler_maruyama_is_weakly_first_order(T):
    # cosine_schedule(T, s=0), from 3T/4 to T/8 (sigma from 2.4 to 0.2: no sigma_max rule, no final x0_hat), k steps
    sch = cosine_schedule(T, s=0.0)
    steps = (8, 16, 32, 64)
    errors = [law_error(euler_maruyama_update, sch, 3 * T // 4, T // 8, k) for k in steps]
    order = fitted_order(steps, errors)
    # measured 1.07 for both T; the fit over a factor 8 in steps carries the next term of the expansion (relative
    # O(1/k)), so +-0.2 leaves room for it and excludes orders 0.5 and 2
    assert 0.8 <= order <= 1.2, (order, errors)
    assert errors[-1] < 1e-2  # 6.3e-3 measured at 64 steps


def test_reverse_diffusion_predictor_is_algorithm_3s_and_first_order():
    sch = linear_schedule(1000)
    gen = torch.Generator().manual_seed(3)
    x, x0_hat, z = (torch.randn(5, 3, generator=gen, dtype=F64) for _ in range(3))
    t = torch.tensor([1000, 700, 300, 20, 2])
    beta = sch.beta[t][:, None]
    s = score_from_x0(x, t, x0_hat, sch)
    # Song et al. (2021), App. G, Algorithm 3 (PC sampling, VP-SDE), the predictor, with t_prev = t - 1
    alg5 = (2 - (1 - beta).sqrt()) * x + beta * s + beta.sqrt() * z
    assert torch.allclose(reverse_diffusion_update(x, t, t - 1, x0_hat, z, sch), alg5, rtol=1e-10, atol=1e-10)
    T = 1000
    sch0 = cosine_schedule(T, s=0.0)
    errors = [law_error(reverse_diffusion_update, sch0, 3 * T // 4, T // 8, k) for k in (8, 16, 32, 64)]
    assert 0.8 <= fitted_order((8, 16, 32, 64), errors) <= 1.2, errors  # 1.05 measured


def test_euler_maruyama_step_rules():
    sch = cosine_schedule(1000)
    den = denoiser(sch)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 2, generator=gen, dtype=F64)
    t, t_prev = torch.tensor([1000, 1000, 500, 500]), torch.tensor([900, 0, 400, 0])
    out, state = euler_maruyama_step(den, x, t, t_prev, sch, torch.Generator().manual_seed(5))
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(5), dtype=F64)  # the one draw the step made
    x0_hat = den(x, t)
    assert state is None
    assert torch.equal(out[1], x0_hat[1]) and torch.equal(out[3], x0_hat[3])  # t_prev = 0: the denoiser's x0_hat
    # sigma_1000 = 2e4 > 80: the ancestral step; sigma_500 = 1.0: the Euler-Maruyama formula
    assert torch.equal(out[0], ddim_update(x, t, t_prev, x0_hat, z, sch, eta=1.0)[0])
    assert torch.equal(out[2], euler_maruyama_update(x, t, t_prev, x0_hat, z, sch)[2])


def step_affine(step, schedule, t: int, t_prev: int) -> tuple[float, float, float]:
    """(A, B, C) with step: x -> A x + B + C z for the exact Gaussian denoiser, read off the library's *step* (its rules
    included): four rows x = 0, 1, 0, 2, whose noise z is replayed from the seeded generator (the steps read here draw
    one standard normal tensor); the fourth row checks the affine form."""
    rows = torch.tensor([[0.0], [1.0], [0.0], [2.0]], dtype=F64)
    out, _ = step(denoiser(schedule), rows, torch.full((4,), t), torch.full((4,), t_prev), schedule, torch.Generator().manual_seed(0))
    z = torch.randn(4, 1, generator=torch.Generator().manual_seed(0), dtype=F64)[:, 0].tolist()
    o = out[:, 0].tolist()
    C = (o[0] - o[2]) / (z[0] - z[2])
    B = o[0] - C * z[0]
    A = o[1] - B - C * z[1]
    assert abs(o[3] - (2 * A + B + C * z[3])) <= 1e-9 * (1 + abs(o[3]))
    return A, B, C


def step_trace(step, schedule, ts) -> list[tuple[float, float]]:
    """x's factor A and the variance over the exact one after each step along ts (exact propagation from p at ts[0])."""
    m, v = marginal(schedule, ts[0] / schedule.T)
    out = []
    for a, b in zip(ts, ts[1:]):
        A, B, C = step_affine(step, schedule, a, b)
        m, v = A * m + B, A * A * v + C * C
        out.append((A, v / marginal(schedule, b / schedule.T)[1]))
    return out


def test_euler_maruyama_from_t_T_diverges_without_the_sigma_max_rule():
    """The shipped schedule's last rate is beta(1) = 6908: a step of du = 1/k from u = 1 multiplies x by about
    1 + beta du / 2 - beta du (the score of p_1 ~ N(0, 1) is about -x), -344 at k = 10 steps, and the next network
    evaluation sees an input hundreds of times larger than any it was trained on. The second step (beta du about 2 on
    this schedule, whatever k) multiplies x by a small number that is not 0 and adds noise of variance about 2: without
    the rule it leaves the variance far too large, with it about twice the target (the chapter, and
    euler_maruyama_step's docstring, state these numbers)."""
    sch = cosine_schedule(1000)
    pure = functools.partial(euler_maruyama_step, sigma_max=math.inf)
    ancestral = lambda x, t, tp, x0, z, s: ddim_update(x, t, tp, x0, z, s, eta=1.0)

    def laws(steps, rule, n_steps=None):
        ts = ddim_timesteps(1000, steps)
        m, v = marginal(sch, 1.0)
        for a, b in list(zip(ts, ts[1:]))[:n_steps]:
            ab = sch.alpha_bar[a].item()
            A, B, C = affine(ancestral if rule and math.sqrt((1 - ab) / ab) > 80 else euler_maruyama_update, sch, a, b)
            m, v = A * m + B, A * A * v + C * C
        return v / marginal(sch, (ts[n_steps] if n_steps else ts[-1]) / 1000)[1]

    assert laws(10, rule=False, n_steps=1) > 1e4 and laws(10, rule=True, n_steps=1) < 1.5  # 1.2e5 and 1.0 measured
    assert laws(5, rule=False) > 100 and laws(5, rule=True) < 2  # 152 and 1.76 measured
    assert abs(laws(10, rule=True) - 1) < 0.3  # 1.21 measured: first order at ten steps
    # the same through the library's step (its rule, not a copy of it), and the numbers the chapter states
    text = markdown("sde")
    hybrid = {k: step_trace(euler_maruyama_step, sch, ddim_timesteps(1000, k)) for k in (10, 20, 50, 100)}
    assert abs(hybrid[10][0][1] - laws(10, rule=True, n_steps=1)) < 1e-9
    assert [round(hybrid[k][1][1], 2) for k in (10, 20, 50, 100)] == [2.12, 2.01, 1.96, 1.91]  # the docstring's numbers
    assert rounds_to(hybrid[10][1][1], stated(text, r"\(([0-9.]+) times at ten steps,\n?\s*[0-9.]+ at a hundred\)"))
    assert rounds_to(hybrid[100][1][1], stated(text, r"times at ten steps,\n?\s*([0-9.]+) at a hundred\)"))
    assert rounds_to(hybrid[10][-1][1] - 1, "0.2")  # "at ten steps it is still about a fifth at t1"
    pure_10, pure_20 = step_trace(pure, sch, ddim_timesteps(1000, 10)), step_trace(pure, sch, ddim_timesteps(1000, 20))
    assert rounds_to(pure_10[1][1], stated(text, r"leaves it ([0-9]+) times too large"))
    assert rounds_to(pure_10[1][1], stated(text, r"the variance is ([0-9]+)\n?\s*times its target after two steps"))
    assert rounds_to(pure_20[1][1], stated(text, r"\(([0-9.]+) times at twenty steps\)"))
    assert rounds_to(pure_10[1][0], stated(text, r"multiplies \$x\$ by \$(-[0-9.]+)\$, which leaves"))
    assert rounds_to(pure_10[0][0] * pure_10[1][0], stated(text, r"at a factor of ([0-9]+) over both steps"))
    # where the rule holds: t >= 992 on the cosine schedule, t >= 931 on the linear one (docstrings and chapter)
    for schedule, first in ((sch, 992), (linear_schedule(1000), 931)):
        sigma = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()
        assert int((sigma > 80).nonzero().min()) == first and f"t \\ge {first}" in text


def test_the_hybrid_is_weakly_first_order_from_t_T():
    """The chapter: "The weak order of the hybrid is unaffected". From the exact p_1 at t = T down to t = 125 on the
    shipped schedule, through the library's step (the rule at t = T, the doubling second step included), k = 16 to 128
    steps: the local slope of the law error approaches 1 (1.08, 1.04, 1.02 measured)."""
    sch = cosine_schedule(1000)
    errors = []
    for k in (16, 32, 64, 128):
        ts = [t for t in ddim_timesteps(1000, k) if t >= 125]
        assert ts[-1] == 125
        m, v = marginal(sch, 1.0)
        for a, b in zip(ts, ts[1:]):
            A, B, C = step_affine(euler_maruyama_step, sch, a, b)
            m, v = A * m + B, A * A * v + C * C
        m_ex, v_ex = marginal(sch, 0.125)
        errors.append(abs(m - m_ex) + abs(v - v_ex))
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(3)]
    # within 0.1 of 1 at the end, and approaching it: the next term of the expansion is relatively O(1/k)
    assert abs(slopes[-1] - 1) < 0.1 and abs(slopes[-1] - 1) < abs(slopes[0] - 1), (slopes, errors)


def test_the_opt_in_beta_du_rule():
    """max_beta_du (off by default): rows whose beta(u) du exceeds it take the ancestral step too. At ten steps on the
    cosine schedule the second step (beta du 1.97) is then ancestral, the third (0.97) Euler-Maruyama."""
    sch = cosine_schedule(1000)
    den = denoiser(sch)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(11), dtype=F64)
    capped = functools.partial(euler_maruyama_step, max_beta_du=1.0)
    for t, t_prev, ancestral_expected in ((900, 800, True), (800, 700, False)):
        tt, tp = torch.full((3,), t), torch.full((3,), t_prev)
        out, _ = capped(den, x, tt, tp, sch, torch.Generator().manual_seed(12))
        z = torch.randn(3, 2, generator=torch.Generator().manual_seed(12), dtype=F64)
        beta_du = float(sch.beta_at(t / 1000)) * (t - t_prev) / 1000
        assert (beta_du > 1) == ancestral_expected
        expected = (ddim_update(x, tt, tp, den(x, tt), z, sch, eta=1.0) if ancestral_expected
                    else euler_maruyama_update(x, tt, tp, den(x, tt), z, sch))
        assert torch.equal(out, expected)
        default, _ = euler_maruyama_step(den, x, tt, tp, sch, torch.Generator().manual_seed(12))
        assert torch.equal(default, euler_maruyama_update(x, tt, tp, den(x, tt), z, sch))  # off by default
    # the variance after the second of ten steps is then on target (the chapter's last column)
    assert abs(step_trace(capped, sch, ddim_timesteps(1000, 10))[1][1] - 1) < 0.05  # 0.98 measured
    with pytest.raises(ValueError, match="max_beta_du"):
        euler_maruyama_step(den, x, torch.full((3,), 900), torch.full((3,), 800), sch, max_beta_du=0.0)


def test_the_reverse_sde_steps_refuse_t_above_T():
    sch = cosine_schedule(100)
    x = torch.zeros(2, 3, dtype=F64)
    t, t_prev = torch.tensor([101, 50]), torch.tensor([90, 40])
    for update in (euler_maruyama_update, reverse_diffusion_update):
        with pytest.raises(ValueError, match="1..T"):
            update(x, t, t_prev, x, x, sch)
    for step in (euler_maruyama_step, pc_step):
        with pytest.raises(ValueError, match="1..T"):
            step(lambda y, tt: y, x, t, t_prev, sch)


# --- predictor-corrector ------------------------------------------------------------------------------------------------


def test_snr_step_size_is_the_rule_row_by_row_and_for_the_batch():
    gen = torch.Generator().manual_seed(6)
    s, z = torch.randn(3, 2, 5, generator=gen, dtype=F64), torch.randn(3, 2, 5, generator=gen, dtype=F64)
    alpha = torch.tensor([0.9, 0.99, 1.0], dtype=F64)
    r = 0.16
    delta = snr_step_size(s, z, r, alpha, norms="row")
    assert delta.shape == (3, 1, 1)
    for i in range(3):
        # 2 alpha (r |z| / |s|)^2, each row's norms over its 10 numbers, written out
        expected = 2 * float(alpha[i]) * (r * math.sqrt(float((z[i] ** 2).sum())) / math.sqrt(float((s[i] ** 2).sum()))) ** 2
        assert math.isclose(float(delta[i]), expected, rel_tol=1e-13)
        # the rule's meaning: the drift's norm over the noise's is sqrt(alpha) r
        ratio = float((delta[i] * s[i]).norm() / ((2 * delta[i]).sqrt() * z[i]).norm())
        assert math.isclose(ratio, math.sqrt(float(alpha[i])) * r, rel_tol=1e-12)
    batch = snr_step_size(s, z, r, 1.0, norms="batch")
    mean_z = sum(float(z[i].norm()) for i in range(3)) / 3
    mean_s = sum(float(s[i].norm()) for i in range(3)) / 3
    assert torch.allclose(batch, torch.full((3, 1, 1), 2 * (r * mean_z / mean_s) ** 2, dtype=F64), rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="exactly 0"):
        snr_step_size(torch.zeros_like(s), z, r)
    with pytest.raises(ValueError, match="> 0"):
        snr_step_size(s, z, 0.0)
    with pytest.raises(ValueError, match="'row' or 'batch'"):
        snr_step_size(s, z, r, norms="rows")
    for bad_alpha in (0.0, -0.5, 1.5, float("nan"), torch.tensor([0.9, 0.0, 1.0], dtype=F64)):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            snr_step_size(s, z, r, bad_alpha)


@pytest.mark.parametrize("predictor", ["reverse-diffusion", "ancestral", "euler-maruyama"])
@pytest.mark.parametrize("norms", ["row", "batch"])
def test_pc_step_is_its_predictor_then_langevin_with_the_snr_rule(predictor, norms):
    """Rebuilt by hand from the same generator: one predictor draw, then per corrector step one score and one draw.

    A wiring test: it checks that pc_step calls its parts in this order with these arguments, not that the parts are
    right (their own tests do that)."""
    sch = cosine_schedule(100)
    den = denoiser(sch)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    t, t_prev = torch.full((3,), 60), torch.full((3,), 45)
    out, state = pc_step(den, x, t, t_prev, sch, torch.Generator().manual_seed(8), predictor=predictor, n_corrector=2,
                         snr=0.2, norms=norms)
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(3, 4, generator=gen, dtype=F64)
    x0_hat = den(x, t)
    y = {"reverse-diffusion": reverse_diffusion_update(x, t, t_prev, x0_hat, z, sch),
         "ancestral": ddim_update(x, t, t_prev, x0_hat, z, sch, eta=1.0),
         "euler-maruyama": euler_maruyama_update(x, t, t_prev, x0_hat, z, sch)}[predictor]
    for _ in range(2):
        s = score_from_x0(y, t_prev, den(y, t_prev), sch)
        z = torch.randn(3, 4, generator=gen, dtype=F64)
        y = langevin_update(y, s, snr_step_size(s, z, 0.2, sch.alpha[45], norms), z)
    assert state is None and torch.allclose(out, y, rtol=0, atol=1e-13)


def test_pc_step_counts_and_edges():
    sch = cosine_schedule(100)
    calls = []

    def den(x, t):
        calls.append(int(t[0]))
        return 0.5 * x

    states = list(iterate(den, sch, functools.partial(pc_step, n_corrector=2), torch.ones(2, 3, dtype=F64), [90, 60, 30],
                          torch.Generator().manual_seed(0)))
    # the predictor at t, then two corrector calls at t_prev; on the step to 0, the predictor only
    assert calls == [90, 60, 60, 60, 30, 30, 30] and states[-1].nfe == 7
    step, ts = sampler_plan("pc", 100, 10)
    assert count_nfe(step, sch, ts) == 2 * 10 - 1 and step.keywords == PC_DEFAULTS
    step, ts = sampler_plan("euler-maruyama", 100, 10)
    assert count_nfe(step, sch, ts) == 10 and {"euler-maruyama", "pc"} <= set(SAMPLERS)
    # with no corrector, the predictor alone (the default one: ancestral)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    a, _ = pc_step(lambda y, tt: 0.5 * y, x, torch.full((2,), 50), torch.full((2,), 40), sch, torch.Generator().manual_seed(2),
                   n_corrector=0)
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert torch.equal(a, ddim_update(x, torch.full((2,), 50), torch.full((2,), 40), 0.5 * x, z, sch, eta=1.0))
    # a mixed batch: rows stepping to 0 return x0_hat, the others are corrected
    out, _ = pc_step(lambda y, tt: 0.5 * y, x, torch.full((2,), 50), torch.tensor([0, 40]), sch, torch.Generator().manual_seed(2))
    assert torch.equal(out[0], 0.5 * x[0]) and not torch.equal(out[1], a[1])
    for bad in ({"predictor": "heun"}, {"n_corrector": -1}, {"snr": 0.0}, {"norms": "rows"}):
        with pytest.raises(ValueError):
            pc_step(lambda y, tt: y, x, torch.full((2,), 50), torch.full((2,), 40), sch, **bad)


@pytest.mark.parametrize("d", [8, 32])
def test_the_corrector_samples_the_target_with_batch_norms_and_inflates_it_with_row_norms(d):
    """Pure corrector chains on N(0, I_d). The batch rule is a constant step delta: ULA, whose stationary variance is
    1 / (1 - delta/2) (the chapter on Langevin dynamics). The row rule's step depends on x and z, and its stationary
    variance is ((d + 2)/d)^2 to first order in delta (the chapter "Stochastic differential equations" derives it)."""
    n, r, steps = 2000, 0.1, 400  # delta ~ 2 r^2 = 0.02; the variance relaxes like exp(-2 delta k), e^-16 here
    gen = torch.Generator().manual_seed(d)
    result = {}
    for norms in ("row", "batch"):
        x = torch.randn(n, d, generator=gen, dtype=F64)
        for _ in range(steps):
            z = torch.randn(n, d, generator=gen, dtype=F64)
            delta = snr_step_size(-x, z, r, 1.0, norms)
            x = langevin_update(x, -x, delta, z)
        result[norms] = (float(x.var(0).mean()), float(delta.mean()))
    # standard error of the mean per-coordinate variance: sqrt(2 / (n d)) (independent coordinates), 0.006 at d = 32
    se = math.sqrt(2 / (n * d))
    (v_batch, delta_b), (v_row, delta_r) = result["batch"], result["row"]
    assert abs(v_batch * (1 - delta_b / 2) - 1) < 5 * se, result  # ULA's 1 / (1 - delta/2), exactly
    predicted = ((d + 2) / d) ** 2
    assert abs(v_row / predicted - 1) < 5 * se + delta_r, result  # first order in delta: allow delta on top
    assert v_row / v_batch > 1 + (predicted - 1) / 2  # and the inflation is there: 1.56 (d = 8), 1.13 (d = 32)


def test_pc_and_euler_maruyama_approach_the_data_law_in_32_dimensions():
    """End to end on data N(M, S^2 I_32) with the exact denoiser, 200 steps from t = T: the sample mean and standard
    deviation are within Monte Carlo error and the samplers' first-order bias of the data's.

    A coarse check: at 200 steps even pure Euler-Maruyama (sigma_max=math.inf) passes it (the second step undoes most
    of what the first did, and the rest decays over the later steps); the rule at sigma_max has its own tests above.
    It does catch the row rule and a doubled snr (std ratio off by 0.07 and 0.05, against the allowance 0.034)."""
    sch = cosine_schedule(1000)
    den = denoiser(sch)
    n, d = 2000, 32
    for name in ("euler-maruyama", "pc"):
        step, ts = sampler_plan(name, 1000, 200)
        gen = torch.Generator().manual_seed(9)
        x = sample(den, sch, step, torch.randn(n, d, generator=gen, dtype=F64), ts, gen)
        # standard errors: mean S / sqrt(n d) = 0.002, sd ratio 1 / sqrt(2 n d) = 0.003; a 2% bias allowance on top
        assert abs(float(x.mean()) - M) < 5 * S / math.sqrt(n * d), name
        assert abs(float(x.std(0).mean()) / S - 1) < 0.02 + 5 / math.sqrt(2 * n * d), (name, float(x.std(0).mean()) / S)


# --- devices: the noise is drawn on the generator's device (CPU-only stand-in; tests/test_gpu_paths.py has the real case) ---


@pytest.mark.parametrize("name", ["euler-maruyama", "pc"])
def test_the_new_samplers_draw_noise_on_the_generators_device(monkeypatch, name):
    from test_samplers import GeneratorOnAnotherDevice, strict_randn

    schedule = linear_schedule(20, 1e-3, 0.3)
    step, ts = sampler_plan(name, 20, 20)
    x_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(14))
    reference = sample(lambda xt, t: torch.tanh(xt), schedule, step, x_T, ts, generator=torch.Generator().manual_seed(7))
    calls: list = []
    monkeypatch.setattr(torch, "randn", strict_randn(torch.randn, calls))
    out = sample(lambda xt, t: torch.tanh(xt), schedule, step, x_T, ts, generator=GeneratorOnAnotherDevice(7))
    # one draw per step, and for pc one more per corrector step (none on the step to t = 0)
    assert calls == [torch.device("cuda")] * (20 if name == "euler-maruyama" else 39)
    assert out.device == x_T.device and torch.equal(out, reference)


# --- the command line ---------------------------------------------------------------------------------------------------

from test_cli import tiny_checkpoint, tiny_preset  # noqa: E402,F401  (fixtures: a preset trained on random images)

from ddpm_lib.__main__ import build_parser, main  # noqa: E402


@pytest.mark.parametrize("sampler", ["euler-maruyama", "pc"])
def test_the_command_line_samples_with_the_new_samplers(tmp_path, tiny_checkpoint, sampler):
    import numpy as np

    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", sampler, "--steps", "5", "--n", "3",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["images"].shape == (3, 28, 28) and f["images"].dtype == np.uint8
    args = build_parser().parse_args(["sampler-table", "--checkpoint", "mnist", "--n", "20", "--nfe", "2",
                                      "--samplers", "euler-maruyama", "heun", "pc", "--out", str(tmp_path / "t.json")])
    assert args.samplers == ["euler-maruyama", "heun", "pc"] and args.nfe == [2]


# --- numbers stated in the chapter's prose ------------------------------------------------------------------------------

def test_prose_rates_of_the_two_schedules():
    text = markdown("sde")
    lo = stated(text, r"runs from ([0-9.]+) to [0-9.]+, nearly Song")
    hi = stated(text, r"runs from [0-9.]+ to ([0-9.]+), nearly Song")
    sch = linear_schedule(1000)
    assert rounds_to(float(sch.beta_at(0.0)), lo) and rounds_to(float(sch.beta_at(1.0)), hi)
    # ex-sde-em-first-step: "beta(1) = -1000 log(1 - 0.999) = 6908", "by 1 - 345 = -344", "beta du about 2 whatever k"
    cos = cosine_schedule(1000)
    rate_1 = float(cos.beta_at(1.0))
    assert rounds_to(rate_1, stated(text, r"0\.999\) = ([0-9]+)\$"))
    assert rounds_to(rate_1 * 0.1 / 2, stated(text, r"by \$1 - ([0-9]+) = -[0-9]+\$"))
    assert rounds_to(1 - rate_1 * 0.1 / 2, stated(text, r"by \$1 - [0-9]+ = (-[0-9]+)\$"))
    assert "\\beta\\Delta u \\approx 2$ whatever $k$" in text
    for k in (10, 20, 50):
        assert rounds_to(float(cos.beta_at(1 - 1 / k)) / k, "2"), k


def test_prose_sampler_facts():
    text = markdown("sde")
    # "Their released configurations set $r = 0.16$ by default" (configs/default_cifar10_configs.py of score_sde)
    assert "set $r = 0.16$ by default" in text.replace("\n", " ")
    assert PC_DEFAULTS["snr"] == 0.16 and PC_DEFAULTS["predictor"] == "ancestral" and PC_DEFAULTS["norms"] == "batch"
    # "Heun with 10 steps (18 evaluations)"
    sch = cosine_schedule(1000)
    heun, ts = sampler_plan("heun", 1000, 10)
    assert str(count_nfe(heun, sch, ts)) == stated(text, r"Heun with 10 steps \(([0-9]+) evaluations\)")
    # "where sigma_t ... exceeds 80": euler_maruyama_step's default
    import inspect

    assert inspect.signature(euler_maruyama_step).parameters["sigma_max"].default == 80.0 and "exceeds 80" in text
    assert inspect.signature(euler_maruyama_step).parameters["max_beta_du"].default == math.inf  # opt-in: off by default
    # "With 10,000 points, distances below about 0.01 are noise (the mean distance of a sample of the exact law is
    # 0.0087)": the mean of the Kolmogorov distribution, sqrt(pi/2) ln 2, over sqrt(n)
    assert "With 10,000 points, distances below\nabout 0.01 are noise" in text or "distances below about 0.01 are noise" in text
    mean_ks = math.sqrt(math.pi / 2) * math.log(2) / math.sqrt(10_000)
    assert rounds_to(mean_ks, "0.01") and rounds_to(mean_ks, stated(text, r"the mean distance of a sample of the exact law is ([0-9.]+)\)"))


def test_prose_toy_euler_maruyama_pure_against_hybrid():
    """"pure Euler-Maruyama further still (0.11 against 0.09 at t1, 0.07 against 0.04 at t = 0)": the chapter's toy,
    recomputed (the mixture, its exact denoiser on the cosine schedule, the same seeds)."""
    from ddpm_lib.toys.mixture import GaussianMixture

    text = " ".join(markdown("sde").split())
    found = stated(text, r"pure Euler–Maruyama further still \(([0-9., a-z$_{}=]+)\)")
    numbers = re.findall(r"[0-9]+\.[0-9]+", found)
    sch = cosine_schedule(1000)
    mix = GaussianMixture(weights=torch.tensor([0.35, 0.65], dtype=F64), means=torch.tensor([[-0.7], [0.6]], dtype=F64),
                          stds=torch.tensor([0.12, 0.2], dtype=F64))

    def ks(points, mixture):
        xs = torch.sort(points.reshape(-1)).values
        cdf = sum(w * 0.5 * (1 + torch.erf((xs - mu) / (sd * math.sqrt(2)))) for w, mu, sd in
                  zip(mixture.weights, mixture.means[:, 0], mixture.stds))
        k = torch.arange(1, xs.numel() + 1, dtype=F64)
        return float(torch.maximum(k / xs.numel() - cdf, cdf - (k - 1) / xs.numel()).max())

    x_T = torch.randn(10_000, 1, generator=torch.Generator().manual_seed(20), dtype=F64)
    ts = ddim_timesteps(1000, 10)
    got = {}
    for name, step in (("pure", functools.partial(euler_maruyama_step, sigma_max=math.inf)), ("hybrid", euler_maruyama_step)):
        states = {st.t: st.xt for st in iterate(lambda x, t: mix.posterior_mean_x0(x, int(t[0]), sch), sch, step, x_T, ts,
                                                 torch.Generator().manual_seed(21))}
        got[name] = (ks(states[ts[-1]], mix.noised(ts[-1], sch)), ks(states[0], mix))
    expected = [got["pure"][0], got["hybrid"][0], got["pure"][1], got["hybrid"][1]]
    assert len(numbers) == 4 and all(rounds_to(e, w) for e, w in zip(expected, numbers)), (numbers, expected)


def test_prose_row_rule_inflation():
    # "13% too much in 32 dimensions, half a per cent in MNIST's 784"; ex-sde-row-mnist: "= 0.0051". The small-step
    # formula is no guide in one or two dimensions, so the chapter no longer quotes it there ("nine times" was wrong).
    text = markdown("sde")
    inflation = lambda d: ((d + 2) / d) ** 2
    assert "nine times" not in text
    assert rounds_to(100 * (inflation(32) - 1), stated(text, r"([0-9]+)% too much in 32"))
    assert rounds_to(100 * (inflation(784) - 1), "0.5")  # "half a per cent"
    assert rounds_to(inflation(784) - 1, stated(text, r"\(786/784\)\^2 - 1 = ([0-9.]+)\$"))


@pytest.mark.parametrize("d", [1, 2])
def test_the_row_rule_does_not_settle_in_one_and_two_dimensions(d):
    """snr_step_size's docstring and the chapter: in one or two dimensions the row rule's step is huge near s = 0, and the
    chain's mean square keeps growing far above the small-step formula ((d+2)/d)^2 (r = 0.16, pure chains on N(0, I_d))."""
    n, r = 2000, 0.16
    gen = torch.Generator().manual_seed(30 + d)
    x = torch.randn(n, d, generator=gen, dtype=F64)
    mean_square = {}
    for k in range(1, 2001):
        z = torch.randn(n, d, generator=gen, dtype=F64)
        x = langevin_update(x, -x, snr_step_size(-x, z, r, 1.0, "row"), z)
        if k in (500, 2000):
            mean_square[k] = float((x**2).sum(1).mean()) / d
    assert mean_square[2000] > max(10 * ((d + 2) / d) ** 2, mean_square[500]), mean_square


def test_prose_strided_reverse_diffusion_overestimates_the_variance_at_every_step():
    """The chapter and PC_DEFAULTS: each reverse-diffusion step of the ten-step grid overestimates the variance (the first
    from t = T twice over), each ancestral step underestimates it; in a row the reverse-diffusion sampler ends "1.4 to
    1.5 times" its target at t1 = 100, with an ancestral first step or without, the ancestral one "about two thirds"."""
    text = " ".join(markdown("sde").split())
    assert "still 1.4 to 1.5 times its target at $t_1 = 100$" in text and "about two thirds of it" in text
    sch = cosine_schedule(1000)
    rd = functools.partial(pc_step, predictor="reverse-diffusion", n_corrector=0)
    anc = functools.partial(pc_step, predictor="ancestral", n_corrector=0)
    ts = ddim_timesteps(1000, 10)
    one_rd = [step_trace(rd, sch, [a, b])[0][1] for a, b in zip(ts, ts[1:])]
    one_anc = [step_trace(anc, sch, [a, b])[0][1] for a, b in zip(ts, ts[1:])]
    assert 1.9 < one_rd[0] < 2.1 and min(one_rd) > 1 and max(one_anc) < 1  # 2.04 ... 1.06; 0.99 ... 0.85 measured
    first_anc = lambda den, x, t, tp, s, g=None, st=None: (anc if int(t[0]) == 1000 else rd)(den, x, t, tp, s, g, st)
    at_t1 = [step_trace(step, sch, ts)[-1][1] for step in (rd, first_anc, anc)]
    assert all(1.4 <= round(q, 1) <= 1.5 for q in at_t1[:2]) and abs(at_t1[2] - 2 / 3) < 0.05, at_t1  # 1.46, 1.42, 0.67


def test_prose_ancestral_variance_relative_difference():
    # "beta_tilde_t differs from beta_t by the relative amount beta_t alpha_bar_{t-1} / (1 - alpha_bar_t)"
    sch = linear_schedule(1000)
    t = torch.arange(2, 1001)
    rel = (sch.beta[t] - sch.posterior_variance[t]) / sch.beta[t]
    # (beta - beta_tilde) / beta cancels where it is small (1e-7 at t = T): float64 round-off of 1e-16 / 1e-7 relative
    assert torch.allclose(rel, sch.beta[t] * sch.alpha_bar[t - 1] / (1 - sch.alpha_bar[t]), rtol=1e-12, atol=1e-14)


def test_prose_euler_in_u_against_ddim():
    """ex-sde-euler-u and the order section, on cosine_schedule(2**14, s=0) from u = 3/4 to 1/8 in exactly equal steps:
    at s0 = 0.02 DDIM's errors are "55 to 90 times smaller" than Euler's in (x, u); at s0 = 0.5 Euler in (x, u) is the
    more accurate at every number of steps ("9 times at 64 steps"; its local slope "0.98 from 32 to 64 steps"); at
    s0 = 0.1 DDIM is. With T = 1000 (from 750 to 125, the grid rounded) Euler's local slope at s0 = 0.1 "falls from 1.07 (8
    to 16 steps) to 0.70 (32 to 64 steps)", and at s0 = 0.5 its error at 64 steps is "ten times smaller" than with
    T = 2**14, while DDIM's changes little."""
    from ddpm_lib.core.sde import vp_probability_flow_drift as pf
    from ddpm_lib.sampling import ddim_step

    text = " ".join(markdown("sde").split())

    def euler_in_u(den, x, t, t_prev, schedule, generator=None, state=None):
        u, du = t.double() / schedule.T, (t - t_prev).double() / schedule.T
        x0 = den(x, t)
        out = x - du[:, None] * pf(x, u, score_from_x0(x, t, x0, schedule), schedule)
        return torch.where((t_prev == 0)[:, None], x0, out), None

    def errors(step, s0, T):
        sch = cosine_schedule(T, s=0.0)
        t_from, t_to = 3 * T // 4, T // 8

        def den(x, t):
            ab = sch.alpha_bar[t].to(x).reshape(-1, 1)
            return ab.sqrt() * s0**2 / (ab * s0**2 + 1 - ab) * x

        x = torch.linspace(-3, 3, 13, dtype=F64)[:, None]
        ab_f, ab_to = sch.alpha_bar[t_from].item(), sch.alpha_bar[t_to].item()
        exact = math.sqrt(ab_to / ab_f) * x * math.sqrt((s0**2 + (1 - ab_to) / ab_to) / (s0**2 + (1 - ab_f) / ab_f))
        out = []
        for k in (4, 8, 16, 32, 64):
            ts = [int(round(t_from - (t_from - t_to) * i / k)) for i in range(k + 1)]  # exact for T = 2**14
            states = {st.t: st.xt for st in iterate(den, sch, step, x, ts)}
            out.append(float((states[t_to] - exact).abs().max()))
        return out

    ddim = functools.partial(ddim_step, eta=0.0)
    big = 2**14
    slope = lambda e, i: math.log2(e[i] / e[i + 1])
    # s0 = 0.02
    ratios = [e / d for e, d in zip(errors(euler_in_u, 0.02, big), errors(ddim, 0.02, big))]
    lo, hi = stated(text, r"errors are ([0-9]+) to [0-9]+ times smaller"), stated(text, r"errors are [0-9]+ to ([0-9]+) times smaller")
    assert int(lo) == round(min(ratios)) and int(hi) == round(max(ratios)), ratios  # 54.6 to 89.9 measured
    # s0 = 0.5
    e_05, d_05 = errors(euler_in_u, 0.5, big), errors(ddim, 0.5, big)
    assert all(e < d for e, d in zip(e_05, d_05))
    assert rounds_to(d_05[-1] / e_05[-1], stated(text, r"\(([0-9]+) times at 64 steps\)"))
    assert rounds_to(slope(e_05, 3), stated(text, r"approach 1 \(([0-9.]+) from 32 to 64 steps\)"))
    # s0 = 0.1 (the order figure)
    assert all(d < e for e, d in zip(errors(euler_in_u, 0.1, big), errors(ddim, 0.1, big)))
    # T = 1000
    e_small = errors(euler_in_u, 0.1, 1000)
    assert rounds_to(slope(e_small, 1), stated(text, r"falls from ([0-9.]+) \(8 to 16 steps\)"))
    assert rounds_to(slope(e_small, 3), stated(text, r"to ([0-9.]+) \(32 to 64 steps\)"))
    assert rounds_to(e_05[-1] / errors(euler_in_u, 0.5, 1000)[-1], "10")  # "ten times smaller"
    assert all(abs(a / b - 1) < 0.02 for a, b in zip(errors(ddim, 0.1, 1000), errors(ddim, 0.1, big)))  # "changes little"
    # the order section's grid: u = 3/4 to 1/8 is t = 12288 to 2048, in steps of exactly 10240 / k cells
    assert (3 * big // 4, big // 8) == (12288, 2048) and all(10240 % k == 0 for k in (4, 8, 16, 32, 64))
    assert "($t = 12288$ to $2048$) in $k$ equal steps of exactly $10240/k$ cells" in text


def _sampler_rows():
    import json
    from importlib.resources import files

    weights = files("ddpm_lib") / "weights"
    part3 = json.loads(weights.joinpath("mnist-samplers.json").read_text())
    part4 = json.loads(weights.joinpath("mnist-samplers-sde.json").read_text())
    rows = {(r["sampler"], r["nfe"]): r for r in part3["rows"] + part4["rows"]}
    return part4, rows


def _paired(a, b, floor):
    diff = [(x - y) / floor for x, y in zip(a["fd_bootstrap"], b["fd_bootstrap"])]
    mean = sum(diff) / len(diff)
    return a["fd_ratio"] - b["fd_ratio"], math.sqrt(sum((d - mean) ** 2 for d in diff) / (len(diff) - 1))


def test_the_mnist_sampler_table_the_prose_describes():
    part4, rows = _sampler_rows()
    text = " ".join(markdown("sde").split())
    ratio = lambda name, nfe: rows[name, nfe]["fd_ratio"]
    # the new table: three samplers at about 10, 20, 50, 100 evaluations, 2,000 samples each, commands recorded
    assert part4["n"] == 2000 and len(part4["commands"]) == 3
    assert sorted({r["sampler"] for r in part4["rows"]}) == ["euler-maruyama", "heun", "pc"]
    # "DPM-Solver++(2M) reaches a ratio of 5.7, DDIM and the strided ancestral sampler 7.1 each"
    assert rounds_to(ratio("dpm-solver-2m", 10), stated(text, r"DPM-Solver\+\+\(2M\) reaches a ratio of ([0-9.]+)"))
    each = stated(text, r"DDIM and the strided ancestral sampler ([0-9.]+) each")
    assert rounds_to(ratio("ddim", 10), each) and rounds_to(ratio("ddpm-strided", 10), each)
    # "(Euler–Maruyama 15.1 at ten evaluations, `pc` 13.2 at nine)"; the deterministic solvers lead at ten
    assert rounds_to(ratio("euler-maruyama", 10), stated(text, r"Euler–Maruyama ([0-9.]+) at ten evaluations"))
    assert rounds_to(ratio("pc", 9), stated(text, r"`pc` ([0-9.]+) at nine"))
    assert max(ratio(s, 10) for s in ("ddim", "ddpm-strided", "dpm-solver-2m")) < min(ratio("euler-maruyama", 10), ratio("pc", 9))
    # "Heun's method is the best of all (18 evaluations, 3.6), below DPM-Solver++(2M) at 20 by the paired difference"
    assert rounds_to(ratio("heun", 18), stated(text, r"18 evaluations, ([0-9.]+)\)"))
    assert ratio("heun", 18) == min(r["fd_ratio"] for (s, nfe), r in rows.items() if 18 <= nfe <= 20)
    d, se = _paired(rows["heun", 18], rows["dpm-solver-2m", 20], part4["floor"])
    assert d + 2 * se < 0
    # "Heun gives 3.2 at 48 evaluations and 3.4 at 98, and DPM-Solver++(2M) 3.5 at 50"
    assert rounds_to(ratio("heun", 48), stated(text, r"Heun gives ([0-9.]+) at 48"))
    assert rounds_to(ratio("heun", 98), stated(text, r"at 48 evaluations and ([0-9.]+) at 98"))
    assert rounds_to(ratio("dpm-solver-2m", 50), stated(text, r"DPM-Solver\+\+\(2M\) ([0-9.]+) at 50"))
    # "`pc` to 2.3 at 99 evaluations and Euler–Maruyama to 2.7 at 100, both below Heun at 98 by more than two paired
    # standard errors"
    assert rounds_to(ratio("pc", 99), stated(text, r"`pc` to ([0-9.]+) at 99"))
    assert rounds_to(ratio("euler-maruyama", 100), stated(text, r"Euler–Maruyama to ([0-9.]+) at 100"))
    for name, nfe in (("pc", 99), ("euler-maruyama", 100)):
        d, se = _paired(rows[name, nfe], rows["heun", 98], part4["floor"])
        assert d + 2 * se < 0, name
    # "`pc` gives the lowest ratios of the table, at 99 and 49 evaluations, and Euler–Maruyama at 100 the next"
    lowest = sorted(rows.values(), key=lambda r: r["fd_ratio"])[:3]
    assert [(r["sampler"], r["nfe"]) for r in lowest] == [("pc", 99), ("pc", 49), ("euler-maruyama", 100)]
    # "its standard error over the five sets (7% of its value)"
    rel = part4["floor_sd"] / math.sqrt(part4["floor_sets"]) / part4["floor"]
    assert rounds_to(100 * rel, stated(text, r"over the five sets \(([0-9]+)% of its value\)"))
