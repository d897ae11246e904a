"""From KL to mean squared error, checks not in test_losses.py (whose KL helpers are reused here):

* the second slip of circulating notes in the eps weight: alphabar_t for alpha_t in the denominator
  (the first, beta_t for beta_t^2, is planted in test_losses.py);
* the score weight beta_t^2 / (2 sigma^2 alpha_t) against the KL;
* the continuous-time limit: for Gaussian data and the exact denoiser, L_T falls monotonically to the
  closed-form L_inf, with error O(1/T) (a planted sign slip in the limit is caught);
* L_simple with t drawn proportionally to w_t^eps is an unbiased estimate of the bound (up to the constant
  mean of w), and uniform t without weights is not.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib.core.losses import simple_loss, vlb_weight
from ddpm_lib.core.schedules import cosine_schedule, linear_schedule
from test_losses import RTOL, kl_per_example, make_case, weight_matches_kl

pytestmark = pytest.mark.usefixtures("single_thread")

K_SE = 5.0
SCHEDULES = {"linear": linear_schedule(1000), "cosine": cosine_schedule(1000), "linear-T20": linear_schedule(20, 0.01, 0.4)}


def eps_weight_alphabar_for_alpha(t, schedule, target, like):
    """Planted (from circulating notes): beta_t^2 / (2 sigma^2 alphabar_t (1 - alphabar_t))."""
    ab = schedule.alpha_bar[t].reshape(-1, 1, 1)
    beta = schedule.beta[t].reshape(-1, 1, 1)
    sigma2 = schedule.posterior_variance[t].reshape(-1, 1, 1)
    return beta**2 / (2 * sigma2 * ab * (1 - ab))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_check_rejects_alphabar_for_alpha_in_the_eps_weight(name):
    ok, msg = weight_matches_kl(eps_weight_alphabar_for_alpha, SCHEDULES[name], "eps", seed=5)
    assert not ok, f"the planted mistake passed: {msg}"


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_score_weight_is_the_kl(name):
    """w_score ||s - s_hat||^2 = KL with s = -eps / sqrt(1 - ab) and the model mean (x_t + beta s_hat) / sqrt(alpha)."""
    schedule = SCHEDULES[name]
    c = make_case(schedule, seed=6)
    eps_hat = c["eps"] + c["delta"]
    kl = kl_per_example(c, eps_hat, "eps")  # the score model's mean is the eps model's mean with eps_hat
    s, s_hat = -c["eps"] / (1 - c["ab"]).sqrt(), -eps_hat / (1 - c["ab"]).sqrt()
    tilde_beta = (1 - c["ab_prev"]) / (1 - c["ab"]) * c["beta"]
    w_score = c["beta"] ** 2 / (2 * tilde_beta * (1 - c["beta"]))
    weighted = (w_score * (s - s_hat) ** 2).sum(dim=(1, 2))
    assert ((weighted - kl).abs() / kl).max().item() <= RTOL
    # and it is the library's eps weight times (1 - alphabar_t)
    w_lib = vlb_weight(c["t"], schedule, "eps", c["x0"]) * (1 - schedule.alpha_bar[c["t"]].reshape(-1, 1, 1))
    assert torch.allclose(w_lib, w_score, rtol=1e-9, atol=0.0)


# --- continuous time -----------------------------------------------------------------------------------------

S2, D, GMIN, GMAX = 0.25, 2, -10.0, 10.0


def snr_c(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(-(GMIN + (GMAX - GMIN) * t))


def L_T(T: int, sign: float = 1.0) -> float:
    """Discrete bound for N(0, S2 I_D) data with the exact denoiser: sum of (SNR(s_i) - SNR(t_i))/2 * mmse(t_i)."""
    ti = torch.arange(1, T + 1, dtype=torch.float64) / T
    return float((sign * 0.5 * (snr_c(ti - 1 / T) - snr_c(ti)) * D * S2 / (1 + S2 * snr_c(ti))).sum())


L_INF = D / 2 * math.log((1 + S2 * math.exp(-GMIN)) / (1 + S2 * math.exp(-GMAX)))


def test_more_steps_lower_loss_and_first_order_convergence():
    values = [L_T(T) for T in (4, 16, 64, 256, 1024, 4096, 16384)]
    assert all(a > b > L_INF for a, b in zip(values, values[1:]))
    scaled = [T * (v - L_INF) for T, v in zip((4096, 16384), values[-2:])]
    assert abs(scaled[1] / scaled[0] - 1) < 0.01  # T (L_T - L_inf) has settled: the error is O(1/T)


def test_planted_sign_slip_in_the_limit_is_caught():
    """Planted: + 1/2 int SNR'(t) ... dt. It is negative and does not approach the closed form."""
    assert L_T(16384, sign=-1.0) < 0
    assert abs(L_T(16384, sign=-1.0) - L_INF) > 1.0


# --- L_simple as importance sampling of the bound -------------------------------------------------------------


def test_simple_loss_with_t_proportional_to_the_weight_estimates_the_bound():
    sch = linear_schedule(1000)
    T = sch.T
    w = vlb_weight(torch.arange(1, T + 1), sch, "eps", torch.zeros(T, 1, dtype=torch.float64))[:, 0]
    delta = 0.3 * torch.cos(torch.arange(1, T + 1, dtype=torch.float64) / 97.0)  # a model error that depends on t
    bound = float((w * 2 * (1 + delta**2)).mean())  # (1/T) sum_t w_t E||eps - eps_hat||^2, eps_hat = delta (2-D)

    def estimates(sample_t, n=200_000, seed=0):
        gen = torch.Generator().manual_seed(seed)
        t = sample_t(n, gen)
        eps = torch.randn(n, 2, generator=gen, dtype=torch.float64)
        out = delta[t - 1, None].expand(n, 2)
        x0 = torch.zeros(n, 2, dtype=torch.float64)
        per_example = ((out - eps) ** 2).sum(1)
        return float(w.mean()) * per_example, float(simple_loss(out, x0, eps, t, sch)) * 2 * float(w.mean())

    importance = lambda n, g: torch.multinomial(w / w.sum(), n, replacement=True, generator=g) + 1  # noqa: E731
    uniform = lambda n, g: torch.randint(1, T + 1, (n,), generator=g)  # noqa: E731
    samples, via_simple_loss = estimates(importance)
    z = (float(samples.mean()) - bound) / (float(samples.std()) / math.sqrt(samples.numel()))
    assert abs(z) < K_SE
    assert math.isclose(via_simple_loss, float(samples.mean()), rel_tol=1e-12)  # simple_loss is that mean
    samples_u, _ = estimates(uniform)
    z_u = (float(samples_u.mean()) - bound) / (float(samples_u.std()) / math.sqrt(samples_u.numel()))
    assert abs(z_u) > K_SE  # planted: uniform t without the weights is not the bound
