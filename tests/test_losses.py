"""Training losses (ddpm_lib.core.losses): L_simple and the VLB weights, against the Gaussian KL.

For t >= 2 the ELBO term L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || N(mu_theta, tilde_beta_t I)) is computed
here from the closed-form KL of two Gaussians, with mu_theta the posterior mean at the predicted x0,
and compared with vlb_weight * squared error. Everything float64; the posterior coefficients and the
SNR are written out in this file from a Python-loop alpha_bar.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib.core.losses import simple_loss, vlb_loss, vlb_weight
from ddpm_lib.core.targets import TARGETS
from ddpm_lib.core.schedules import Schedule, cosine_schedule, linear_schedule

pytestmark = pytest.mark.usefixtures("single_thread")

# The coefficients carry the round-off of 1 - alpha_bar (<= 2.2e-16 / min beta ~ 6e-12 relative, see
# test_posterior.RTOL) a few times over; the KL also squares a difference of two posterior means, which
# loses at most a few digits here (perturbations are O(1), the means O(1)). 1e-8 relative covers
# both with margin, while the planted mistake below is off by a factor 1/beta_t >= 50.
RTOL = 1e-8

SCHEDULES = {"linear": linear_schedule(1000), "cosine": cosine_schedule(1000), "linear-T20": linear_schedule(20, 0.01, 0.4)}


def loop_alpha_bar(schedule: Schedule) -> list[float]:
    out = [1.0]
    for b in schedule.beta.tolist()[1:]:
        out.append(out[-1] * (1.0 - b))
    return out


def per_example(values: list[float], t: torch.Tensor) -> torch.Tensor:
    return torch.tensor([values[ti] for ti in t.tolist()], dtype=torch.float64).reshape(-1, 1, 1)


def gaussian_kl(m1: torch.Tensor, v1: torch.Tensor, m2: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """KL(N(m1, v1) || N(m2, v2)) per element, for variances v1, v2 (the standard closed form)."""
    return 0.5 * (torch.log(v2 / v1) + v1 / v2 + (m1 - m2) ** 2 / v2 - 1.0)


def make_case(schedule: Schedule, seed: int, t_min: int = 2, batch: int = 48):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(t_min, schedule.T + 1, (batch,), generator=gen)
    t[0], t[1] = t_min, schedule.T
    x0 = 2 * torch.rand(batch, 2, 3, generator=gen, dtype=torch.float64) - 1
    eps = torch.randn(batch, 2, 3, generator=gen, dtype=torch.float64)
    delta = torch.randn(batch, 2, 3, generator=gen, dtype=torch.float64)  # the model's error
    ab_all = loop_alpha_bar(schedule)
    ab = per_example(ab_all, t)
    ab_prev = per_example(ab_all, t - 1)
    beta = per_example(schedule.beta.tolist(), t)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return dict(t=t, x0=x0, eps=eps, delta=delta, ab=ab, ab_prev=ab_prev, beta=beta, xt=xt)


def true_target(c, target: str) -> torch.Tensor:
    a, s = c["ab"].sqrt(), (1 - c["ab"]).sqrt()
    return {"eps": c["eps"], "x0": c["x0"], "v": a * c["eps"] - s * c["x0"], "score": -c["eps"] / s}[target]


def x0_from_output(c, output: torch.Tensor, target: str) -> torch.Tensor:
    a, s = c["ab"].sqrt(), (1 - c["ab"]).sqrt()
    if target == "eps":
        return (c["xt"] - s * output) / a
    if target == "x0":
        return output
    if target == "score":
        return (c["xt"] + s**2 * output) / a  # Tweedie, x0 = (x_t + (1 - ab) score) / sqrt(ab)
    return a * c["xt"] - s * output  # v


def kl_per_example(c, output: torch.Tensor, target: str) -> torch.Tensor:
    """L_{t-1} in nats per example: KL(q(x_{t-1}|x_t,x_0) || N(mu(x_t, x0_hat), tilde_beta_t I))."""
    ab, ab_prev, beta = c["ab"], c["ab_prev"], c["beta"]
    c0 = ab_prev.sqrt() * beta / (1 - ab)  # Ho et al. (2020), eq. 7
    c1 = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)
    tilde_beta = (1 - ab_prev) / (1 - ab) * beta
    mu_q = c0 * c["x0"] + c1 * c["xt"]
    mu_theta = c0 * x0_from_output(c, output, target) + c1 * c["xt"]
    var = tilde_beta.expand_as(mu_q)
    return gaussian_kl(mu_q, var, mu_theta, var).sum(dim=(1, 2))


def weight_matches_kl(weight_fn, schedule: Schedule, target: str, seed: int) -> tuple[bool, str]:
    """Is weight_fn(t, schedule, target, like) * ||output - target||^2 the KL, for every example?"""
    c = make_case(schedule, seed)
    output = true_target(c, target) + c["delta"]
    kl = kl_per_example(c, output, target)
    w = weight_fn(c["t"], schedule, target, output)
    weighted = (w * (output - true_target(c, target)) ** 2).sum(dim=(1, 2))
    rel = ((weighted - kl).abs() / kl).max().item()
    return rel <= RTOL, f"max relative difference {rel:.3g}"


def ho_eps_weight(t, schedule, target, like):
    """Ho et al. (2020), eq. 12: beta_t^2 / (2 sigma_t^2 alpha_t (1 - ab_t)) with sigma_t^2 = tilde_beta_t."""
    assert target == "eps"
    ab = schedule.alpha_bar[t].reshape(-1, 1, 1)
    beta = schedule.beta[t].reshape(-1, 1, 1)
    sigma2 = schedule.posterior_variance[t].reshape(-1, 1, 1)
    return beta**2 / (2 * sigma2 * (1 - beta) * (1 - ab))


def wrong_eps_weight_beta_not_squared(t, schedule, target, like):
    """Planted mistake: beta_t instead of beta_t^2 in the numerator of Ho et al.'s eq. 12."""
    assert target == "eps"
    ab = schedule.alpha_bar[t].reshape(-1, 1, 1)
    beta = schedule.beta[t].reshape(-1, 1, 1)
    sigma2 = schedule.posterior_variance[t].reshape(-1, 1, 1)
    return beta / (2 * sigma2 * (1 - beta) * (1 - ab))


# --- L_simple ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_simple_loss_zero_for_the_true_target(target):
    schedule = SCHEDULES["linear"]
    c = make_case(schedule, seed=0, t_min=1)
    output = true_target(c, target)
    loss = simple_loss(output, c["x0"], c["eps"], c["t"], schedule, target)
    assert loss.shape == ()
    # eps and x0 are returned as given (exactly 0); v and the score are recomputed by the library from x0 and eps
    # and differ from ours by alpha_bar's round-off (<= t ulps / (1 - ab) relative in sqrt(1 - ab), i.e.
    # <= 1e-11 here), so the mean square is below (1e-10 * max|output|)^2.
    if target in ("v", "score"):
        assert loss.item() <= (1e-10 * output.abs().max().item()) ** 2
    else:
        assert loss.item() == 0.0


@pytest.mark.parametrize("target", TARGETS)
def test_simple_loss_is_the_mean_square_error(target):
    schedule = SCHEDULES["linear"]
    c = make_case(schedule, seed=1, t_min=1)
    output = true_target(c, target) + c["delta"]
    loss = simple_loss(output, c["x0"], c["eps"], c["t"], schedule, target)
    ref = (c["delta"] ** 2).mean().item()
    # the same O(1) numbers squared and averaged over 288 elements: relative round-off ~ 1e-12 at most
    # (plus the v round-off above, relative to O(1) deltas)
    assert math.isclose(loss.item(), ref, rel_tol=1e-9)


# --- VLB weight = Gaussian KL -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("target", TARGETS)
def test_vlb_weight_times_squared_error_is_the_kl(name, target):
    ok, msg = weight_matches_kl(vlb_weight, SCHEDULES[name], target, seed=2)
    assert ok, msg


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_check_rejects_the_score_weighted_like_eps(name):
    """The KL check tells the score's weight, w^x0 (1 - ab)^2 / ab (each TARGETS row's vlb_from_x0_weight, read by
    vlb_weight), from eps's w^x0 (1 - ab) / ab: a score network trained with the eps weight is caught."""
    def eps_weight(t, sch, target, like):
        return vlb_weight(t, sch, "eps", like)

    ok, msg = weight_matches_kl(eps_weight, SCHEDULES[name], "score", seed=5)
    assert not ok, f"the planted weight passed: {msg}"


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_ho_eq12_eps_weight_is_the_kl(name):
    """A second, independently written eps weight (Ho et al. eq. 12) must pass the same check."""
    ok, msg = weight_matches_kl(ho_eps_weight, SCHEDULES[name], "eps", seed=3)
    assert ok, msg


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_check_rejects_beta_instead_of_beta_squared(name):
    ok, msg = weight_matches_kl(wrong_eps_weight_beta_not_squared, SCHEDULES[name], "eps", seed=3)
    assert not ok, f"the planted mistake passed: {msg}"


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_x0_weight_is_half_the_snr_drop(name):
    """w^x0_t = (SNR(t-1) - SNR(t)) / 2 for t >= 2 (Kingma et al. 2021, eq. 13)."""
    schedule = SCHEDULES[name]
    ab = loop_alpha_bar(schedule)
    snr = [a / (1.0 - a) for a in ab[1:]]
    snr = [math.inf] + snr
    t = torch.arange(2, schedule.T + 1)
    ref = torch.tensor([(snr[ti - 1] - snr[ti]) / 2 for ti in t.tolist()], dtype=torch.float64)
    w = vlb_weight(t, schedule, "x0", torch.zeros(len(t), 1, dtype=torch.float64))[:, 0]
    # SNR(t) has the relative error of 1 - ab_t (<= ~6e-12); the drop SNR(t-1) - SNR(t) is at least
    # ~1% of SNR(t-1) for these schedules (beta_t >= 1e-4 over 1 - ab_t <= 1), which amplifies it
    # by <= 100x: 1e-8 relative covers it.
    assert torch.allclose(w, ref, rtol=RTOL, atol=0.0)


def test_t1_weight_is_the_gaussian_decoder():
    """At t = 1, tilde_beta_1 = 0, and the weight is the decoder's 1/(2 beta_1) for x0 (documented)."""
    schedule = SCHEDULES["linear"]
    w = vlb_weight(torch.tensor([1]), schedule, "x0", torch.zeros(1, 1, dtype=torch.float64)).item()
    beta1 = schedule.beta[1].item()
    # c_x0(1) = beta_1 / (1 - ab_1) = 1 up to 1.1e-16 / beta_1 relative (see test_posterior)
    assert math.isclose(w, 1.0 / (2.0 * beta1), rel_tol=1e-11)
    assert math.isfinite(w)


# --- vlb_loss ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_vlb_loss_is_the_mean_kl(target):
    schedule = SCHEDULES["linear"]
    c = make_case(schedule, seed=4)
    output = true_target(c, target) + c["delta"]
    loss = vlb_loss(output, c["x0"], c["eps"], c["t"], schedule, target)
    ref = kl_per_example(c, output, target).mean().item()
    assert loss.shape == ()
    assert math.isclose(loss.item(), ref, rel_tol=RTOL)


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["scores", "epsilon", ""])
def test_unknown_target_raises(target):
    schedule = SCHEDULES["linear"]
    x = torch.zeros(2, 3, dtype=torch.float64)
    t = torch.tensor([2, 3])
    with pytest.raises(ValueError, match=r"unknown prediction target"):
        vlb_weight(t, schedule, target, x)
    with pytest.raises(ValueError, match=r"unknown prediction target"):
        simple_loss(x, x, x, t, schedule, target)
    with pytest.raises(ValueError, match=r"unknown prediction target"):
        vlb_loss(x, x, x, t, schedule, target)


def test_shape_mismatch_and_t0_raise():
    schedule = SCHEDULES["linear"]
    x = torch.zeros(2, 3, dtype=torch.float64)
    t = torch.tensor([2, 3])
    with pytest.raises(ValueError, match=r"must have x0's shape"):
        simple_loss(torch.zeros(2, 4), x, x, t, schedule, "eps")
    with pytest.raises(ValueError, match=r"must have x0's shape"):
        vlb_loss(torch.zeros(2, 4), x, x, t, schedule, "eps")
    with pytest.raises(ValueError):
        vlb_weight(torch.tensor([0, 3]), schedule, "eps", x)
