"""Identities of the noise schedules (ddpm_lib.core.schedules).

Every reference value here is recomputed independently (Python floats and loops, or the paper's
formula), never copied from the library's output. Tolerances are float64 round-off bounds.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ddpm_lib.core.schedules import Schedule, cosine_schedule, gather, linear_schedule, sigmoid_schedule

pytestmark = pytest.mark.usefixtures("single_thread")

EPS64 = torch.finfo(torch.float64).eps  # 2.2e-16, one ulp of 1.0 in float64

BUILDERS = {
    "linear": lambda T: linear_schedule(T),
    "cosine": lambda T: cosine_schedule(T),
    "sigmoid": lambda T: sigmoid_schedule(T),
}


@pytest.fixture(params=[(name, T) for name in BUILDERS for T in (1, 10, 1000)], ids=lambda p: f"{p[0]}-T{p[1]}")
def schedule(request) -> Schedule:
    name, T = request.param
    return BUILDERS[name](T)


def loop_alpha_bar(beta: list[float]) -> list[float]:
    """alpha_bar[t] = prod_{s=1}^t (1 - beta[s]) with a plain Python loop (alpha_bar[0] = 1)."""
    out = [1.0]
    for b in beta[1:]:
        out.append(out[-1] * (1.0 - b))
    return out


# --- the timestep convention -----------------------------------------------------------------


def test_convention_lengths_and_entry_zero(schedule):
    T = schedule.T
    for field in ("beta", "alpha", "alpha_bar", "snr", "log_snr", "posterior_variance"):
        value = getattr(schedule, field)
        assert value.shape == (T + 1,), field
        assert value.dtype == torch.float64, field
    assert schedule.beta[0].item() == 0.0
    assert schedule.alpha[0].item() == 1.0
    assert schedule.alpha_bar[0].item() == 1.0
    # alpha_bar_1 = alpha_0 * alpha_1 = 1 * (1 - beta_1): a single multiplication by 1 is exact.
    assert schedule.alpha_bar[1].item() == 1.0 - schedule.beta[1].item()


def test_beta_and_alpha_bar_inside_unit_interval(schedule):
    beta, ab = schedule.beta[1:], schedule.alpha_bar[1:]
    assert bool(((beta > 0) & (beta < 1)).all())
    assert bool(((ab > 0) & (ab < 1)).all())


def test_alpha_bar_strictly_decreasing(schedule):
    ab = schedule.alpha_bar
    assert bool((ab[1:] < ab[:-1]).all())


def test_alpha_bar_is_product_of_alphas(schedule):
    beta = schedule.beta.tolist()
    ref = torch.tensor(loop_alpha_bar(beta), dtype=torch.float64)
    # Both sides are products of t <= T factors, each multiplication rounding by <= EPS64/2
    # relative, so they agree to T * EPS64 relative whatever order torch multiplies in.
    rtol = schedule.T * EPS64
    assert torch.allclose(schedule.alpha_bar, ref, rtol=rtol, atol=0.0)


def test_alpha_is_one_minus_beta(schedule):
    assert torch.equal(schedule.alpha, 1.0 - schedule.beta)


# --- SNR ------------------------------------------------------------------------------------------


def test_snr_inverts_to_alpha_bar(schedule):
    snr, ab = schedule.snr, schedule.alpha_bar
    assert math.isinf(snr[0].item()) and snr[0].item() > 0
    # snr = ab / (1 - ab)  <=>  ab = snr / (1 + snr). 1 - ab is exact for ab >= 1/2 (Sterbenz) and
    # has relative error <= EPS64 otherwise; a few roundings more: 8 ulps relative.
    back = snr[1:] / (1.0 + snr[1:])
    assert torch.allclose(back, ab[1:], rtol=8 * EPS64, atol=0.0)


def test_log_snr_is_log_of_snr(schedule):
    log_snr, snr = schedule.log_snr, schedule.snr
    assert math.isinf(log_snr[0].item()) and log_snr[0].item() > 0
    # log(ab) - log1p(-ab) vs log(ab / (1 - ab)): each side carries a few ulps of absolute error
    # in the log (|log_snr| <= ~25 here); exp turns that into a relative error: 1e-12 is 50x that.
    assert torch.allclose(torch.exp(log_snr[1:]), snr[1:], rtol=1e-12, atol=0.0)
    assert bool((log_snr[1:] < log_snr[:-1]).all()), "log SNR must decrease with t"


# --- posterior variance -------------------------------------------------------------------------


def test_posterior_variance_from_definition(schedule):
    beta = schedule.beta.tolist()
    ab = loop_alpha_bar(beta)
    ref = [0.0] + [(1.0 - ab[t - 1]) / (1.0 - ab[t]) * beta[t] for t in range(1, schedule.T + 1)]
    ref = torch.tensor(ref, dtype=torch.float64)
    # alpha_bar_t carries <= t ulps of absolute error (t products), so 1 - alpha_bar_t has relative
    # error <= t*EPS64 / (1 - alpha_bar_t) <= EPS64 / min_t beta_t (as 1 - ab_t >= t * min beta);
    # min beta >= 4e-5 for these schedules -> <= 6e-12 per factor; 1e-10 leaves > 5x margin.
    assert torch.allclose(schedule.posterior_variance, ref, rtol=1e-10, atol=0.0)
    assert schedule.posterior_variance[1].item() == 0.0  # given x_1 and x_0, x_0 is known


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("T", [2, 10, 1000])  # needs t >= 2, where tilde_beta_t > 0
def test_posterior_variance_is_precision_sum(name, T):
    """1/tilde_beta_t = 1/(1 - ab_{t-1}) + alpha_t/beta_t: the precisions of the two Gaussian factors add."""
    schedule = BUILDERS[name](T)
    beta = schedule.beta.tolist()
    ab = loop_alpha_bar(beta)
    prec = torch.tensor(
        [1.0 / (1.0 - ab[t - 1]) + (1.0 - beta[t]) / beta[t] for t in range(2, schedule.T + 1)], dtype=torch.float64
    )
    # Same error budget as test_posterior_variance_from_definition.
    assert torch.allclose(1.0 / schedule.posterior_variance[2:], prec, rtol=1e-10, atol=0.0)


def test_posterior_variance_below_beta(schedule):
    # tilde_beta_t = beta_t (1 - ab_{t-1}) / (1 - ab_t) < beta_t since ab_{t-1} > ab_t.
    assert bool((schedule.posterior_variance[1:] < schedule.beta[1:]).all())


# --- constructors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("T,beta_start,beta_end", [(1000, 1e-4, 0.02), (50, 1e-3, 0.3), (2, 0.1, 0.2)])
def test_linear_endpoints_and_constant_increments(T, beta_start, beta_end):
    s = linear_schedule(T, beta_start, beta_end)
    assert s.name == "linear" and s.T == T
    # linspace reproduces its endpoints up to one rounding: 2 ulps relative.
    assert math.isclose(s.beta[1].item(), beta_start, rel_tol=2 * EPS64, abs_tol=0.0)
    assert math.isclose(s.beta[T].item(), beta_end, rel_tol=2 * EPS64, abs_tol=0.0)
    step = (beta_end - beta_start) / (T - 1)
    diffs = torch.diff(s.beta[1:])
    # each beta has <= a few ulps of beta_end of absolute error; differences inherit twice that.
    assert torch.allclose(diffs, torch.full_like(diffs, step), rtol=0.0, atol=8 * EPS64 * beta_end)


def test_linear_T1_is_beta_start():
    s = linear_schedule(1, 1e-4, 0.02)
    assert s.T == 1 and s.beta[1].item() == 1e-4


@pytest.mark.parametrize("T,s_off", [(1000, 0.008), (200, 0.008), (100, 0.0)])
def test_cosine_alpha_bar_matches_paper(T, s_off):
    """Nichol & Dhariwal (2021), eq. 17: alpha_bar_t = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2)."""
    max_beta = 0.999
    sched = cosine_schedule(T, s=s_off, max_beta=max_beta)

    def f(t: int) -> float:
        return math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2

    # the paper clips beta_t = 1 - f(t)/f(t-1) at max_beta; compare up to the first clipped step.
    unclipped = []
    for t in range(1, T + 1):
        if 1.0 - f(t) / f(t - 1) >= max_beta:
            break
        unclipped.append(t)
    assert len(unclipped) >= T - 2, "the clipping should only touch the last step or so"
    got = sched.alpha_bar[unclipped]
    ref = torch.tensor([f(t) / f(0) for t in unclipped], dtype=torch.float64)
    # The library goes through beta_t = 1 - ratio and back (cumprod of 1 - beta_t): each step adds
    # a few ulps of absolute error to alpha_t, i.e. <= ~4 EPS64 / alpha_t relative; summed over
    # the steps that is the bound below (about 1e-12 here).
    alpha = 1.0 - sched.beta[1 : len(unclipped) + 1]
    rtol = 8 * EPS64 * float((1.0 / alpha).sum()) + 8 * EPS64
    assert torch.allclose(got, ref, rtol=rtol, atol=0.0)


def test_cosine_clips_last_beta():
    s = cosine_schedule(1000, max_beta=0.999)
    # f(T) = cos^2(pi/2) = 0, so the unclipped beta_T would be 1: it must be clipped to max_beta.
    assert s.beta[-1].item() == 0.999
    assert float(s.beta.max()) <= 0.999


def test_sigmoid_alpha_bar_matches_formula():
    """Chen (2023), Algorithm 1: alpha_bar(t) = (v_end - sigmoid((start + (end-start) t/T)/tau)) / (v_end - v_start)."""
    T, start, end, tau = 200, -3.0, 3.0, 0.7
    s = sigmoid_schedule(T, start, end, tau)

    def sig(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))

    v_start, v_end = sig(start / tau), sig(end / tau)
    ref = torch.tensor(
        [(v_end - sig((start + (end - start) * t / T) / tau)) / (v_end - v_start) for t in range(T)], dtype=torch.float64
    )
    # t = T (alpha_bar = 0) is clipped; below it the same round-off budget as the cosine test,
    # loosened by the cancellation v_end - sigmoid(.) near t = T (relative error <= ulp / value).
    alpha = 1.0 - s.beta[1:T]
    rtol = 8 * EPS64 * float((1.0 / alpha).sum()) + 8 * EPS64 / float(ref[-1])
    assert torch.allclose(s.alpha_bar[:T], ref, rtol=rtol, atol=0.0)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_from_alpha_bar_round_trips_beta(name):
    s = BUILDERS[name](1000)
    back = Schedule.from_alpha_bar(s.alpha_bar[1:])
    assert back.T == s.T
    # beta_t = 1 - ab_t/ab_{t-1}: the ratio has a few ulps of relative error, and 1 - ratio turns
    # that into a few ulps of *absolute* error (of 1.0) in beta_t: 8 ulps.
    assert torch.allclose(back.beta, s.beta, rtol=0.0, atol=8 * EPS64)


def test_from_beta_matches_direct_construction():
    b = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    s = Schedule.from_beta(b, name="x")
    assert s.name == "x" and s.T == 3
    assert torch.equal(s.beta, torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64))


# --- immutability -------------------------------------------------------------------------------------


def test_schedule_fields_cannot_be_assigned():
    s = linear_schedule(10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.beta = torch.zeros(11, dtype=torch.float64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"


def test_schedule_copies_its_input():
    beta = torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64)
    s = Schedule(beta)
    beta[1] = 0.5  # mutating the caller's tensor must not change the schedule
    assert s.beta[1].item() == 0.1


def test_derived_tensors_are_fresh():
    s = linear_schedule(10)
    ab = s.alpha_bar
    ab[3] = 123.0  # writing into a derived tensor must not leak into the schedule
    assert s.alpha_bar[3].item() != 123.0


# --- bad inputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [linear_schedule, cosine_schedule, sigmoid_schedule])
@pytest.mark.parametrize("T", [0, -5, 2.5, 10.0, "10", True])
def test_bad_T_raises(builder, T):
    with pytest.raises(ValueError, match=r"T must be an integer >= 1"):
        builder(T)


@pytest.mark.parametrize(
    "beta_end,first_bad",
    # linspace(1e-4, beta_end, 10): beta_t = 1e-4 + (t-1)(beta_end - 1e-4)/9 first reaches 1 at
    # t = 10 for beta_end = 1, and at t = 1 + ceil(9 (1 - 1e-4)/(1.5 - 1e-4)) = 7 for beta_end = 1.5.
    [(1.0, 10), (1.5, 7)],
)
def test_beta_at_least_one_raises(beta_end, first_bad):
    # the message names the first offending step and hints at the parameter to change
    with pytest.raises(ValueError, match=rf"open interval \(0, 1\).*beta_{first_bad} = .*beta_end < 1"):
        linear_schedule(10, beta_end=beta_end)


@pytest.mark.parametrize("beta_start", [0.0, -0.01])
def test_beta_nonpositive_raises(beta_start):
    with pytest.raises(ValueError, match=r"open interval \(0, 1\).*beta_1 ="):
        linear_schedule(10, beta_start=beta_start)


@pytest.mark.parametrize(
    "beta",
    [
        [0.0, 0.1, float("nan")],  # NaN is not inside (0, 1)
        [0.0, 0.1, 0.0],
        [0.0, 1.0],
    ],
)
def test_schedule_rejects_bad_betas(beta):
    with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
        Schedule(torch.tensor(beta, dtype=torch.float64))


def test_schedule_rejects_bad_shape_and_entry_zero():
    with pytest.raises(ValueError, match=r"length T \+ 1 >= 2"):
        Schedule(torch.tensor([0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"1-D"):
        Schedule(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"beta\[0\] must be 0"):
        Schedule(torch.tensor([0.1, 0.2], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"T >= 1"):
        Schedule.from_beta(torch.tensor([], dtype=torch.float64))


@pytest.mark.parametrize(
    "alpha_bar",
    [
        [0.9, 0.9, 0.5],  # not strictly decreasing
        [0.5, 0.8],  # increasing
        [1.0, 0.5],  # alpha_bar_1 = 1 means beta_1 = 0
        [0.5, 0.0],  # alpha_bar_T = 0 means beta_T = 1
        [0.5, -0.1],
    ],
)
def test_from_alpha_bar_rejects_non_decreasing(alpha_bar):
    with pytest.raises(ValueError, match=r"strictly decreasing"):
        Schedule.from_alpha_bar(torch.tensor(alpha_bar, dtype=torch.float64))


def test_from_alpha_bar_rejects_empty():
    with pytest.raises(ValueError, match=r"T >= 1"):
        Schedule.from_alpha_bar(torch.tensor([], dtype=torch.float64))


def test_cosine_bad_parameters_raise():
    with pytest.raises(ValueError, match=r"offset s must be >= 0, got -0.1"):
        cosine_schedule(10, s=-0.1)
    for max_beta in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"max_beta must lie in \(0, 1\)"):
            cosine_schedule(10, max_beta=max_beta)


@pytest.mark.parametrize("start,end", [(3.0, 3.0), (4.0, -1.0)])
def test_sigmoid_start_not_below_end_raises(start, end):
    with pytest.raises(ValueError, match=r"need start < end"):
        sigmoid_schedule(10, start=start, end=end)


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_sigmoid_nonpositive_tau_raises(tau):
    with pytest.raises(ValueError, match=r"tau must be > 0"):
        sigmoid_schedule(10, tau=tau)


# --- gather --------------------------------------------------------------------------------------------


def test_gather_broadcasts_to_batch_shape():
    s = linear_schedule(20)
    like = torch.zeros(4, 1, 5, 6, dtype=torch.float32)
    t = torch.tensor([0, 3, 20, 7])
    out = gather(s.alpha_bar, t, like)
    assert out.shape == (4, 1, 1, 1)
    assert out.dtype == torch.float32
    for i, ti in enumerate(t.tolist()):
        assert out[i, 0, 0, 0].item() == s.alpha_bar[ti].to(torch.float32).item()
    # broadcasting against like works and gives per-example constants
    assert (out * torch.ones_like(like)).shape == like.shape


def test_gather_scalar_t():
    s = linear_schedule(20)
    like = torch.zeros(3, 2, dtype=torch.float64)
    for t in (5, torch.tensor(5)):
        out = gather(s.beta, t, like)
        assert out.shape == ()
        assert out.item() == s.beta[5].item()


@pytest.mark.parametrize("t", [[-1], [21], [0, 21], [3, -2]])
def test_gather_out_of_range_raises(t):
    s = linear_schedule(20)
    with pytest.raises(IndexError, match=r"allows 0\.\.20"):
        gather(s.beta, torch.tensor(t), torch.zeros(len(t), 3))


@pytest.mark.parametrize("t", [torch.tensor([1.0, 2.0]), torch.tensor([True, False]), 1.0])
def test_gather_non_integer_t_raises(t):
    s = linear_schedule(20)
    with pytest.raises(TypeError, match=r"must be integers"):
        gather(s.beta, t, torch.zeros(2, 3))


def test_sigmoid_underflow_is_reported_not_nan():
    # a tiny temperature drives alpha_bar to exactly 0 long before T; that must be a clear error, not NaN betas
    with pytest.raises(ValueError, match="underflows to 0"):
        sigmoid_schedule(1000, tau=0.03)


def test_numpy_integer_T_is_accepted():
    import numpy as np

    assert linear_schedule(np.int64(10)).T == 10


# --- coefficients are formed in float64 and cast at the end -----------------------------------------
#
# In float32, alpha_bar_1 = 1 - 1e-4 keeps only its first ~4 significant digits of 1 - alpha_bar_1
# once it is cast (one float32 ulp near 1 is 6e-8), so a coefficient formed *after* the cast, such as
# 1 - gather(alpha_bar) or beta_t / (1 - alpha_bar_t), is off by ~1e-4 relative at small t (the last
# DDPM step then returned 0.99983 x0_hat). Each probe below feeds exact inputs (0 and 1) to a library
# function in float32 so that its output *is* one coefficient, and compares it with the coefficient
# recomputed here from Python floats: formed in float64 and cast once, it is within a few float32
# ulps (1e-6 relative is 16 ulps).

F32_RTOL = 1e-6


def _probe_values(name: str, schedule: Schedule, t: int) -> tuple[torch.Tensor, float]:
    """(the library's float32 output, the reference coefficient from Python floats) for probe ``name`` at ``t``."""
    from ddpm_lib.core.forward import q_mean_var, q_sample
    from ddpm_lib.core.losses import vlb_weight
    from ddpm_lib.core.targets import score_from_eps
    from ddpm_lib.core.posterior import posterior_mean
    from ddpm_lib.sampling import ddim_update, ddpm_update, dpm_solver_2m_update

    beta = schedule.beta.tolist()
    ab = loop_alpha_bar(beta)
    zero, one = torch.zeros(2, 1, dtype=torch.float32), torch.ones(2, 1, dtype=torch.float32)
    tt, ts = torch.full((2,), t), torch.full((2,), t - 1)
    tilde_beta = (1 - ab[t - 1]) / (1 - ab[t]) * beta[t]
    if name == "q variance 1 - ab_t":
        return q_mean_var(zero, tt, schedule)[1], 1 - ab[t]
    if name == "q_sample sqrt(1 - ab_t)":
        return q_sample(zero, tt, one, schedule), math.sqrt(1 - ab[t])
    if name == "posterior c_x0":
        return posterior_mean(one, zero, tt, schedule), math.sqrt(ab[t - 1]) * beta[t] / (1 - ab[t])
    if name == "posterior c_xt":
        return posterior_mean(zero, one, tt, schedule), math.sqrt(1 - beta[t]) * (1 - ab[t - 1]) / (1 - ab[t])
    # the sampler updates: (xt, t, t_prev, x0_hat, [noise,] schedule) with xt, x0_hat, noise in {0, 1}
    if name == "ddpm_update std":  # x_{t-1} = mean(x0_hat = 0, xt = 0) + sqrt(tilde_beta_t) * noise
        return ddpm_update(zero, tt, ts, zero, one, schedule), math.sqrt(tilde_beta)
    if name == "ddim_update (eta = 1) std":  # x0_hat = xt = 0, so eps_hat = 0 and only sigma * noise is left
        var = (1 - ab[t - 1]) / (1 - ab[t]) * (1 - ab[t] / ab[t - 1])  # DDIM eq. 16
        return ddim_update(zero, tt, ts, zero, one, schedule, eta=1.0), math.sqrt(var)
    if name == "dpm_solver_2m_update sigma_s / sigma_t":  # x0_hat = 0, xt = 1: the output is the xt coefficient
        return dpm_solver_2m_update(one, tt, ts, zero, schedule), math.sqrt((1 - ab[t - 1]) / (1 - ab[t]))
    if name == "score 1 / sqrt(1 - ab_t)":
        return score_from_eps(one, tt, schedule), -1 / math.sqrt(1 - ab[t])
    if name == "vlb_weight eps":
        var = beta[1] if t == 1 else tilde_beta  # the decoder's variance at t = 1
        c_x0 = math.sqrt(ab[t - 1]) * beta[t] / (1 - ab[t])
        return vlb_weight(tt, schedule, "eps", zero), c_x0**2 / (2 * var) * (1 - ab[t]) / ab[t]
    raise KeyError(name)


PROBES = ["q variance 1 - ab_t", "q_sample sqrt(1 - ab_t)", "posterior c_x0", "posterior c_xt", "ddpm_update std",
          "ddim_update (eta = 1) std", "dpm_solver_2m_update sigma_s / sigma_t", "score 1 / sqrt(1 - ab_t)",
          "vlb_weight eps"]


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_float32_coefficients_are_formed_in_float64(probe, name):
    schedule = BUILDERS[name](1000)
    for t in (1, 2, 3, 10, 500, 1000):
        out, ref = _probe_values(probe, schedule, t)
        assert out.dtype == torch.float32
        err = (out.double() - ref).abs().max().item()
        assert err <= F32_RTOL * abs(ref), f"{probe} at t = {t}: float32 {out.flatten()[0].item()!r}, float64 {ref!r}, rel {err / abs(ref):.2e}"


def test_float32_q_variance_at_t1_is_beta1():
    """q(x_1 | x_0) has variance 1 - alpha_bar_1 = beta_1 exactly; in float32 to 1e-6 relative (was 1.7e-4 off)."""
    from ddpm_lib.core.forward import q_mean_var

    schedule = linear_schedule(1000)
    mean, var = q_mean_var(torch.ones(3, 1, 4, 4), torch.ones(3, dtype=torch.long), schedule)
    assert var.dtype == torch.float32 and var.shape == (3, 1, 1, 1)
    assert bool(((var.double() / 1e-4 - 1).abs() <= 1e-6).all()), var.flatten().tolist()
    assert bool(((mean.double() - math.sqrt(1 - 1e-4)).abs() <= 1e-7).all())


def test_gather64_is_float64_on_the_cpu_and_gather_casts_it():
    from ddpm_lib.core.schedules import gather64

    s = linear_schedule(20)
    like = torch.zeros(3, 1, 2, dtype=torch.float32)
    t = torch.tensor([1, 7, 20])
    out = gather64(s.alpha_bar, t, like)
    assert out.dtype == torch.float64 and out.device.type == "cpu" and out.shape == (3, 1, 1)
    assert out.flatten().tolist() == [s.alpha_bar[i].item() for i in t.tolist()]
    assert torch.equal(gather(s.alpha_bar, t, like), out.to(torch.float32))
    assert gather64(s.beta, 5, like).shape == ()
    with pytest.raises(IndexError, match=r"allows 0\.\.20"):
        gather64(s.beta, torch.tensor([21]), like)
    with pytest.raises(TypeError, match=r"must be integers"):
        gather64(s.beta, torch.tensor([1.0]), like)


# --- continuous time u = t / T (book eq. alpha-bar-continuous) -------------------------------------
#
# alpha_bar(u) interpolates log alpha_bar linearly between the grid points u = t / T: the VP-SDE
# dx = -beta(u)/2 x du + sqrt(beta(u)) dW (Song et al. 2021, eq. 11) with the piecewise-constant
# beta(u) = -T log(1 - beta_t) on ((t-1)/T, t/T]. Each check below is paired with a planted wrong
# variant that it rejects, so that none of them passes whatever the library does.


def _grid(T: int) -> torch.Tensor:
    """u = t / T for t = 0..T, each computed as one float64 division (so T * u is not always exactly t)."""
    return torch.tensor([t / T for t in range(T + 1)], dtype=torch.float64)


def _cell_midpoints(T: int) -> torch.Tensor:
    """The midpoints (t - 1/2) / T of the cells ((t-1)/T, t/T], t = 1..T: well inside each cell."""
    return torch.tensor([(t - 0.5) / T for t in range(1, T + 1)], dtype=torch.float64)


def _off_grid(T: int) -> torch.Tensor:
    """Points strictly between grid points: mid-cell, 30% into a cell, 1e-6 of a step on either side of each t / T, and 1e-9 of a step above 0."""
    us = {(t - f) / T for t in range(1, T + 1) for f in (0.5, 0.7, 1e-6)} | {(t + 1e-6) / T for t in range(T)} | {1e-9 / T}
    return torch.tensor(sorted(us), dtype=torch.float64)


def _integral_of_rate(rate_at, T: int, u: torch.Tensor) -> list[float]:
    """int_0^u rate(s) ds for each u, by the midpoint rule on the grid cells (cut at u): exact for a rate that is constant on each cell.

    The midpoints are well inside their cells, so the value of ``rate_at`` at the jumps never enters.
    """
    cells = [r / T for r in rate_at(_cell_midpoints(T)).tolist()]  # the integral over each whole cell
    prefix = [math.fsum(cells[:k]) for k in range(T + 1)]
    us = u.tolist()
    ks = [min(int(math.floor(x * T)), T) for x in us]  # whole cells below u
    partial_mid = torch.tensor([(k / T + x) / 2 if x * T > k else 0.5 / T for x, k in zip(us, ks)], dtype=torch.float64)
    partial_rate = rate_at(partial_mid).tolist()
    return [prefix[k] + (x - k / T) * r if x * T > k else prefix[k] for x, k, r in zip(us, ks, partial_rate)]


def _max_rel(got: torch.Tensor, ref: list[float]) -> float:
    ref_t = torch.tensor(ref, dtype=torch.float64)
    return ((got - ref_t).abs() / ref_t.abs()).max().item()


# planted wrong variants (each must be rejected by one of the checks below)


def _planted_beta_first_order(schedule: Schedule):
    """Song et al.'s beta(t/T) = T beta_t of App. B: right only to first order in beta_t."""
    def rate(u: torch.Tensor) -> torch.Tensor:
        t = (u * schedule.T).ceil().clamp(min=1).long()
        return schedule.T * schedule.beta[t]
    return rate


def _planted_beta_right_continuous(schedule: Schedule):
    """beta(t/T) taken from the cell that *starts* at t / T (right-continuous), not the one that ends there."""
    def rate(u: torch.Tensor) -> torch.Tensor:
        t = (torch.round(u * schedule.T) + 1).clamp(max=schedule.T).long()
        return -schedule.T * torch.log1p(-schedule.beta[t])
    return rate


def _planted_alpha_bar_at(schedule: Schedule, variant: str):
    """alpha_bar(u) interpolated some other way; every variant but "shifted" agrees at the grid points."""
    T, ab = schedule.T, schedule.alpha_bar.tolist()

    def at(u: torch.Tensor) -> torch.Tensor:
        out = []
        for x in u.flatten().tolist():
            k = min(int(round(x * T)) if abs(x * T - round(x * T)) < 1e-9 else int(x * T), T - 1)
            f = x * T - k
            if variant == "linear in alpha_bar":
                out.append((1 - f) * ab[k] + f * ab[k + 1])
            elif variant == "swapped weights":  # the weights of the two ends exchanged: jumps at every grid point
                out.append(ab[k] if f == 0 else ab[k + 1] if f == 1 else math.exp(f * math.log(ab[k]) + (1 - f) * math.log(ab[k + 1])))
            elif variant == "shifted":  # u = t / T read as step t + 1 (an off-by-one between u and t)
                out.append(schedule.alpha_bar_at(min(x + 1 / T, 1.0)).item())
            else:
                raise KeyError(variant)
        return torch.tensor(out, dtype=torch.float64).reshape(u.shape)
    return at


def test_beta_at_is_minus_T_log1p_minus_beta_on_each_cell(schedule):
    T, beta = schedule.T, schedule.beta.tolist()
    ref = [-T * math.log1p(-beta[t]) for t in range(1, T + 1)]
    # log1p and the product by T: a few roundings of <= 1 ulp each, relative.
    assert _max_rel(schedule.beta_at(_cell_midpoints(T)), ref) <= 4 * EPS64
    assert bool((schedule.beta_at(_grid(T)) > 0).all())


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("T", [10, 25])  # T = 25: (7 / 25) * 25 and (14 / 25) * 25 exceed 7 and 14 by an ulp
def test_beta_at_grid_point_belongs_to_the_cell_ending_there(name, T):
    """Left-continuous: beta(t/T) is the rate of ((t-1)/T, t/T]; u = 0 belongs to the first cell."""
    schedule = BUILDERS[name](T)
    assert (7 / 25) * 25 > 7 and (14 / 25) * 25 > 14  # so T * u must be snapped to the grid before ceil()
    grid, mids = _grid(T), _cell_midpoints(T)
    assert torch.equal(schedule.beta_at(grid[1:]), schedule.beta_at(mids))
    assert schedule.beta_at(0.0).item() == schedule.beta_at(mids[0]).item()
    # the check can fail: the right-continuous convention gives the next cell's rate at t / T
    planted = _planted_beta_right_continuous(schedule)
    assert not torch.equal(planted(grid[1:]), schedule.beta_at(mids))


def test_exp_minus_integral_of_beta_at_is_alpha_bar(schedule):
    """exp(-int_0^{t/T} beta(s) ds) = alpha_bar_t: the discrete chain is the SDE observed at u = t / T."""
    T = schedule.T
    ref = schedule.alpha_bar
    got = torch.exp(-torch.tensor(_integral_of_rate(schedule.beta_at, T, _grid(T)), dtype=torch.float64))
    # alpha_bar_t (a cumprod of t factors) carries <= T ulps relative, the integral a few ulps of
    # its size (<= 20 nats here) absolute, i.e. relative in exp(): about 2.5e-13 in all.
    assert torch.allclose(got, ref, rtol=1e-12, atol=0.0)
    # the check can fail: the first-order rate T beta_t misses alpha_bar_t by about sum_t beta_t^2 / 2
    planted = torch.exp(-torch.tensor(_integral_of_rate(_planted_beta_first_order(schedule), T, _grid(T)), dtype=torch.float64))
    assert not torch.allclose(planted, ref, rtol=100 * 1e-12, atol=0.0)


def test_alpha_bar_at_grid_points_is_alpha_bar(schedule):
    T = schedule.T
    grid = _grid(T)
    # T * (t / T) may miss t by an ulp; the values at the grid must still be alpha_bar[t] and
    # log_snr[t], to 1e-12 relative (float64 round-off of log, exp and one interpolation weight).
    assert torch.allclose(schedule.alpha_bar_at(grid), schedule.alpha_bar, rtol=1e-12, atol=0.0)
    assert torch.allclose(schedule.log_snr_at(grid[1:]), schedule.log_snr[1:], rtol=1e-12, atol=0.0)
    assert schedule.alpha_bar_at(0.0).item() == 1.0
    assert schedule.log_snr_at(0.0).item() == math.inf
    assert schedule.alpha_bar_at(1.0).item() == schedule.alpha_bar[T].item()
    # the check can fail: an off-by-one between u and t
    assert not torch.allclose(_planted_alpha_bar_at(schedule, "shifted")(grid), schedule.alpha_bar, rtol=1e-6, atol=0.0)


def test_alpha_bar_at_between_grid_points_is_exp_minus_integral(schedule):
    """Between the grid points too, alpha_bar(u) = exp(-int_0^u beta(s) ds): log alpha_bar is linear on each cell."""
    T, u = schedule.T, _off_grid(schedule.T)
    log_ab = [-i for i in _integral_of_rate(schedule.beta_at, T, u)]
    # same budget as test_exp_minus_integral_of_beta_at_is_alpha_bar: log alpha_bar_t is read from
    # the cumprod (<= T ulps), the interpolation adds a few ulps of |log alpha_bar| <= 20.
    assert _max_rel(schedule.alpha_bar_at(u), [math.exp(x) for x in log_ab]) <= 1e-12
    # the check can fail: interpolating alpha_bar itself (not its log) is off by about beta_t^2 / 8
    # in mid-cell (>= 1.2e-9 here); at the grid points both agree, so only this check sees it.
    assert _max_rel(_planted_alpha_bar_at(schedule, "linear in alpha_bar")(u), [math.exp(x) for x in log_ab]) > 100 * 1e-12

    # log SNR = l - log(-expm1(l)) with l = log alpha_bar. Its error is |delta l| / (1 - alpha_bar);
    # l itself is good to ~1e-12 relative (alpha_bar_1 = 1 - beta_1 is stored, so log alpha_bar_1
    # carries EPS64 / beta_1 relative), and |l| / (1 - alpha_bar) <= 20: 1e-10 absolute.
    ref = torch.tensor([x - math.log(-math.expm1(x)) for x in log_ab], dtype=torch.float64)
    assert torch.allclose(schedule.log_snr_at(u), ref, rtol=0.0, atol=1e-10)
    # the check can fail: log1p(-alpha_bar(u)) cancels when u is 1e-9 of a step above 0 (1 - alpha_bar
    # <= 7e-9 here, so an ulp of alpha_bar is >= 3e-8 of it)
    ab = schedule.alpha_bar_at(u)
    naive = torch.log(ab) - torch.log1p(-ab)
    assert not torch.allclose(naive, ref, rtol=0.0, atol=1e-10)


def test_continuous_time_is_monotone(schedule):
    T = schedule.T
    u = torch.cat([_grid(T), _off_grid(T)]).sort().values  # no two within 1e-9 of a step of each other
    ab, log_snr = schedule.alpha_bar_at(u), schedule.log_snr_at(u)
    assert bool((ab[1:] < ab[:-1]).all()) and bool((ab > 0).all()) and ab[0].item() == 1.0
    assert bool((log_snr[1:] < log_snr[:-1]).all())
    # the check can fail: with the weights of a cell's two ends swapped the grid values are still
    # right, but alpha_bar jumps up just after each grid point
    if T >= 2:
        planted = _planted_alpha_bar_at(schedule, "swapped weights")(u)
        assert not bool((planted[1:] < planted[:-1]).all())


def test_vp_sde_over_one_cell_is_the_forward_kernel(schedule):
    """The VP-SDE with constant rate b over du = 1/T (an OU process) maps x to N(e^{-b du/2} x, 1 - e^{-b du}): q(x_t | x_{t-1})."""
    T, beta = schedule.T, schedule.beta.tolist()
    rate = schedule.beta_at(_grid(T)[1:])  # the rate of the cell that ends at t / T
    mean_factor, var = torch.exp(-rate / T / 2), -torch.expm1(-rate / T)
    ref_mean = [math.sqrt(1 - beta[t]) for t in range(1, T + 1)]
    ref_var = beta[1:]
    # log1p, * T, / T, exp: a few roundings, and exp's argument (<= 7) scales the last: 1e-13 is 40x that.
    assert _max_rel(mean_factor, ref_mean) <= 1e-13
    assert _max_rel(var, ref_var) <= 1e-13
    # the check can fail: the first-order rate T beta_t gives exp(-beta_t/2), off by about beta_t^2 / 8
    planted = _planted_beta_first_order(schedule)(_grid(T)[1:])
    assert _max_rel(torch.exp(-planted / T / 2), ref_mean) > 1000 * 1e-13


@pytest.mark.parametrize("name", list(BUILDERS))
def test_euler_maruyama_on_one_cell_converges_to_the_forward_kernel(name):
    """Euler-Maruyama on the SDE itself, N steps of size h = 1/(T N) with the rate b = beta_at(t/T), converges to q(x_t | x_{t-1}).

    One EM step is x <- (1 - b h / 2) x + sqrt(b h) z, so after N steps from a fixed x the mean factor
    is a^N with a = 1 - b h / 2, and the variance is b h (1 + a^2 + ... + a^{2(N-1)}) = b h (1 - a^{2N}) / (1 - a^2),
    evaluated here in closed form (a loop of N roundings would blur the 1e-13 differences). Their errors
    are first order in 1/N: x^2 / (8N) for the mean factor and about x / (2N) for the variance, relative,
    with x = b / T = -log(1 - beta_t); the check allows twice that.
    """
    schedule = BUILDERS[name](1000)
    T, beta = schedule.T, schedule.beta[1:]
    N = 10_000

    def em_moments(rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bh = rate / (T * N)
        log_a = torch.log1p(-bh / 2)
        return torch.exp(N * log_a), bh * -torch.expm1(2 * N * log_a) / (bh * (1 - bh / 4))  # 1 - a^2 = bh (1 - bh/4)

    x = -torch.log1p(-beta)
    ref_mean, ref_var = (1 - beta).sqrt(), beta
    mean, var = em_moments(schedule.beta_at(_grid(T)[1:]))
    assert bool(((mean / ref_mean - 1).abs() <= x**2 / (4 * N) + 8 * EPS64).all())
    assert bool(((var / ref_var - 1).abs() <= x / N + 8 * EPS64).all())
    # the check can fail: with the first-order rate T beta_t, EM converges to the wrong kernel
    mean_p, _ = em_moments(_planted_beta_first_order(schedule)(_grid(T)[1:]))
    assert not bool(((mean_p / ref_mean - 1).abs() <= x**2 / (4 * N) + 8 * EPS64).all())


def test_continuous_time_keeps_shape_and_is_float64():
    s = linear_schedule(10)
    u = torch.tensor([[0.0, 0.25, 0.5], [0.75, 0.95, 1.0]], dtype=torch.float64)
    for method in (s.alpha_bar_at, s.beta_at, s.log_snr_at):
        out = method(u)
        assert out.shape == (2, 3) and out.dtype == torch.float64, method.__name__
        assert method(0.5).shape == () and method(0.5).dtype == torch.float64
        # a Python float is read as float64 (0.3 is not float32's 0.3)
        assert method(0.3).item() == method(torch.tensor(0.3, dtype=torch.float64)).item()


@pytest.mark.parametrize("method", ["alpha_bar_at", "beta_at", "log_snr_at"])
@pytest.mark.parametrize("u", [-1e-12, 1 + 1e-12, -1.0, 2.0, float("nan"), float("inf"), [0.5, 1.5]])
def test_continuous_time_outside_unit_interval_raises(method, u):
    s = linear_schedule(10)
    with pytest.raises(ValueError, match=r"u must lie in \[0, 1\]"):
        getattr(s, method)(torch.tensor(u, dtype=torch.float64))


@pytest.mark.parametrize("u", [True, torch.tensor([0.5 + 0j])])
def test_continuous_time_non_real_raises(u):
    with pytest.raises(TypeError, match=r"u must be real"):
        linear_schedule(10).alpha_bar_at(u)


# --- the time the network is given: t in units of steps, integer or float ---------------------------


def test_unet_takes_time_in_steps_integer_or_float():
    """The U-Net gets t = T u in steps: an integer t and the same t as a float (or as T * (t / T)) give the same output, bit for bit."""
    from ddpm_lib.models.unet import UNet, UNetConfig

    g = torch.Generator().manual_seed(0)
    model = UNet(UNetConfig(channels=(8, 16), num_res_blocks=1, image_size=8, pad_to=8)).eval()
    with torch.no_grad():  # the output convolutions start at zero, which would hide t altogether: randomize
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    T = 1000
    t_int = torch.tensor([1, 15, 499, 1000])
    x = torch.randn(4, 1, 8, 8, generator=g)
    with torch.no_grad():
        out = model(x, t_int)
        t_from_u = T * (t_int.double() / T)  # continuous time u = t / T, given to the network as T u
        for t_float in (t_int.double(), t_int.float(), t_from_u):
            assert torch.equal(model(x, t_float), out), t_float.dtype
        # the check can fail: the output depends on t, and on its units (u itself is not t)
        assert (model(x, t_int + 1) - out).abs().amax(dim=(1, 2, 3)).min().item() > 1e-4
        assert not torch.allclose(model(x, t_int.double() / T), out, rtol=1e-3, atol=1e-4)
