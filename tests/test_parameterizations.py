"""Conversions between x0, eps, v and the score (ddpm_lib.core.targets), in float64.

Reference values come from the definitions written out here (x_t = sqrt(ab) x0 + sqrt(1 - ab) eps,
v = sqrt(ab) eps - sqrt(1 - ab) x0), from autograd, and from torch.distributions, never from the
library's own output.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib.core.forward import q_sample
from ddpm_lib.core.targets import (
    TARGETS,
    eps_from_score,
    eps_from_v,
    eps_from_x0,
    get_target,
    score_from_eps,
    score_from_x0,
    target_from_x0_eps,
    v_from_x0_eps,
    x0_eps_from_output,
    x0_from_eps,
    x0_from_score,
    x0_from_v,
)
from ddpm_lib.core.schedules import Schedule, cosine_schedule, linear_schedule

pytestmark = pytest.mark.usefixtures("single_thread")

EPS64 = torch.finfo(torch.float64).eps
SCHEDULES = {"linear": linear_schedule(1000), "cosine": cosine_schedule(1000)}


@pytest.fixture(params=list(SCHEDULES))
def schedule(request) -> Schedule:
    return SCHEDULES[request.param]


def loop_alpha_bar(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """alpha_bar[t] per example, shape (B, 1, 1), by a Python loop over the betas."""
    beta = schedule.beta.tolist()
    out = []
    for ti in t.tolist():
        ab = 1.0
        for s in range(1, ti + 1):
            ab *= 1.0 - beta[s]
        out.append(ab)
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 1, 1)


@pytest.fixture
def case(schedule):
    """Random t in 1..T (including both ends), x0 in [-1, 1], standard normal eps; shapes (B, 2, 3)."""
    gen = torch.Generator().manual_seed(0)
    B = 32
    t = torch.randint(1, schedule.T + 1, (B,), generator=gen)
    t[0], t[1] = 1, schedule.T
    x0 = 2 * torch.rand(B, 2, 3, generator=gen, dtype=torch.float64) - 1
    eps = torch.randn(B, 2, 3, generator=gen, dtype=torch.float64)
    ab = loop_alpha_bar(schedule, t)
    a, s = ab.sqrt(), (1.0 - ab).sqrt()
    xt = a * x0 + s * eps  # the definition, written here
    return dict(t=t, x0=x0, eps=eps, xt=xt, a=a, s=s, v=a * eps - s * x0, score=-eps / s)


def assert_within(got: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor) -> None:
    err = (got - ref).abs()
    assert bool((err <= tol).all()), f"max error / tolerance = {(err / tol).max().item():.3g}"


def base_tol(c) -> torch.Tensor:
    """Absolute round-off of x_t and the other inputs: a few ulps of |x0| + |eps| (all terms are O(1)),
    plus the error of alpha_bar: the library's cumprod and the loop above may round differently, by
    <= t ulps relative in alpha_bar_t, i.e. t ulps / (1 - alpha_bar_t) relative in 1 - alpha_bar_t."""
    t = c["t"].reshape(-1, 1, 1).to(torch.float64)
    return (64 * EPS64 + t * EPS64 / c["s"] ** 2) * (c["x0"].abs() + c["eps"].abs())


# --- round trips ---------------------------------------------------------------------------------------


def test_xt_from_library_matches_definition(schedule, case):
    xt = q_sample(case["x0"], case["t"], case["eps"], schedule)
    assert_within(xt, case["xt"], base_tol(case))


def test_x0_eps_round_trip(schedule, case):
    c = case
    # solving for x0 divides by sqrt(ab), for eps by sqrt(1 - ab): the round-off grows by those factors
    assert_within(x0_from_eps(c["xt"], c["t"], c["eps"], schedule), c["x0"], base_tol(c) / c["a"])
    assert_within(eps_from_x0(c["xt"], c["t"], c["x0"], schedule), c["eps"], base_tol(c) / c["s"])


def test_v_round_trip(schedule, case):
    c = case
    v = v_from_x0_eps(c["x0"], c["eps"], c["t"], schedule)
    assert_within(v, c["v"], base_tol(c))
    # x0 = a xt - s v and eps = s xt + a v: no division, a^2 + s^2 = 1, so the round-off stays O(ulp)
    assert_within(x0_from_v(c["xt"], c["t"], v, schedule), c["x0"], base_tol(c))
    assert_within(eps_from_v(c["xt"], c["t"], v, schedule), c["eps"], base_tol(c))


def test_score_round_trip(schedule, case):
    c = case
    score = score_from_eps(c["eps"], c["t"], schedule)
    assert_within(eps_from_score(score, c["t"], schedule), c["eps"], base_tol(c))


@pytest.mark.parametrize("target", TARGETS)
def test_x0_eps_from_true_target(schedule, case, target):
    c = case
    true_output = c[target]
    # the score is -eps / sqrt(1 - ab): the relative error of sqrt(1 - ab) (in base_tol) over sqrt(1 - ab)
    div_out = c["s"] if target == "score" else 1.0
    assert_within(target_from_x0_eps(c["x0"], c["eps"], c["t"], schedule, target), true_output, base_tol(c) / div_out)
    x0_hat, eps_hat = x0_eps_from_output(true_output, c["xt"], c["t"], schedule, target)
    assert x0_hat.shape == eps_hat.shape == c["x0"].shape
    # eps (and the score, through eps = -sqrt(1 - ab) score) -> x0 divides by sqrt(ab); x0 -> eps divides by
    # sqrt(1 - ab); v needs no division
    div_x0 = c["a"] if target in ("eps", "score") else 1.0
    div_eps = c["s"] if target == "x0" else 1.0
    assert_within(x0_hat, c["x0"], base_tol(c) / div_x0)
    assert_within(eps_hat, c["eps"], base_tol(c) / div_eps)


# --- v as a velocity ---------------------------------------------------------------------------------


def test_v_identity_against_q_sample(schedule, case):
    """x0 = sqrt(ab) x_t - sqrt(1 - ab) v, with x_t from the library's q_sample (Salimans & Ho 2022, §4)."""
    c = case
    xt = q_sample(c["x0"], c["t"], c["eps"], schedule)
    assert_within(c["a"] * xt - c["s"] * c["v"], c["x0"], base_tol(c))
    assert_within(x0_from_v(xt, c["t"], c["v"], schedule), c["x0"], base_tol(c))


def test_v_is_the_angular_velocity(schedule, case):
    """With x_phi = cos(phi) x0 + sin(phi) eps, v = d x_phi / d phi (autograd), at phi = atan2(s, a)."""
    c = case
    # one angle per element (same value across an example's pixels): each x_phi element depends on its
    # own phi only, so the gradient of the sum is the elementwise derivative
    phi = torch.atan2(c["s"], c["a"]).expand_as(c["x0"]).clone().requires_grad_(True)
    x_phi = torch.cos(phi) * c["x0"] + torch.sin(phi) * c["eps"]
    assert_within(x_phi.detach(), c["xt"], base_tol(c))  # the angle reproduces x_t
    (dx_dphi,) = torch.autograd.grad(x_phi.sum(), phi)
    v = v_from_x0_eps(c["x0"], c["eps"], c["t"], schedule)
    # cos(atan2(s, a)) = a and sin(...) = s to a few ulps (a^2 + s^2 = 1 up to round-off)
    assert_within(dx_dphi, v, base_tol(c))


# --- the score ---------------------------------------------------------------------------------------


def test_score_from_eps_is_the_gaussian_score(schedule, case):
    """For data that is a point mass at x0, q(x_t) = q(x_t | x0) = N(sqrt(ab) x0, (1 - ab) I), and
    Tweedie is exact: grad log q(x_t) = -eps / sqrt(1 - ab). Compare with autograd of the log-density."""
    c = case
    xt = c["xt"].clone().requires_grad_(True)
    log_q = torch.distributions.Normal(c["a"] * c["x0"], c["s"]).log_prob(xt).sum()
    (score_autograd,) = torch.autograd.grad(log_q, xt)
    score = score_from_eps(c["eps"], c["t"], schedule)
    # the autograd score is -(x_t - a x0)/s^2: the difference x_t - a x0 has a few ulps of |x0| + |eps|
    # of absolute error, divided by s^2.
    assert_within(score, score_autograd, base_tol(c) / c["s"] ** 2)


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["scores", "epsilon", "", "X0", None])
def test_unknown_target_raises(target):
    schedule = SCHEDULES["linear"]
    x = torch.zeros(2, 3, dtype=torch.float64)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"unknown prediction target"):
        x0_eps_from_output(x, x, t, schedule, target)
    with pytest.raises(ValueError, match=r"unknown prediction target"):
        target_from_x0_eps(x, x, t, schedule, target)


def test_targets_are_the_documented_four():
    assert list(TARGETS) == ["eps", "x0", "v", "score"]
    for name, target in TARGETS.items():
        assert target.name == name and get_target(name) is target


def test_vlb_from_x0_weight_is_the_squared_jacobian():
    """vlb_from_x0_weight(w, ab) = w (d x0 / d output)^2 at fixed x_t: 1, 1/SNR, 1 - ab, (1 - ab)^2 / ab (book eq.
    target-weights), written out here; the ELBO check of each weight is in test_losses.py."""
    ab = torch.tensor([0.999, 0.5, 1e-4], dtype=torch.float64)
    w = torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64)
    expected = {"x0": w, "eps": w * (1 - ab) / ab, "v": w * (1 - ab), "score": w * (1 - ab) ** 2 / ab}
    for name, ref in expected.items():
        # the same few float64 operations in another order: a few ulps
        assert torch.allclose(TARGETS[name].vlb_from_x0_weight(w, ab), ref, rtol=8 * EPS64, atol=0.0), name


# --- Tweedie with x0: score_from_x0 and x0_from_score ------------------------------------------------------


def test_score_from_x0_is_the_conditional_score_and_inverts(schedule, case):
    """With the true x0 (point-mass data), (sqrt(ab) x0 - x_t) / (1 - ab) = -eps / sqrt(1 - ab), the score of
    q(x_t | x0); x0_from_score inverts it."""
    c = case
    score = score_from_x0(c["xt"], c["t"], c["x0"], schedule)
    # x_t - a x0 carries base_tol of absolute error, divided by s^2 (and s^2 carries the relative error in base_tol)
    assert_within(score, c["score"], base_tol(c) / c["s"] ** 2)
    # back: x_t + s^2 score = a x0 + O(base_tol), divided by a
    assert_within(x0_from_score(c["xt"], c["t"], score, schedule), c["x0"], base_tol(c) / c["a"])
    assert score.dtype == torch.float64 and score.shape == c["x0"].shape


def test_float32_keeps_dtype():
    schedule = SCHEDULES["linear"]
    x = torch.ones(2, 1, 2, 2, dtype=torch.float32)
    t = torch.tensor([3, 900])
    for out in (x0_from_eps(x, t, x, schedule), v_from_x0_eps(x, x, t, schedule), score_from_eps(x, t, schedule)):
        assert out.dtype == torch.float32 and out.shape == x.shape
    # a float32 conversion agrees with float64 to float32 round-off: the numerator x_t - s eps has a few
    # ulps (1.2e-7) of |x_t| + |eps| of absolute error (and the float32 coefficients one ulp each), and
    # the division by a = sqrt(ab_t) amplifies it by 1/a.
    ref = x0_from_eps(x.double(), t, x.double(), schedule)
    a = schedule.alpha_bar[t].sqrt().reshape(-1, 1, 1, 1)
    tol = 8 * 1.2e-7 * (x.double().abs() + x.double().abs()) / a
    assert bool(((x0_from_eps(x, t, x, schedule).double() - ref).abs() <= tol).all())
    assert math.isfinite(ref.sum().item())
