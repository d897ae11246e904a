"""Numbers stated in the prose and the exercise solutions of Part I, pinned to the library's computation.

A chapter's cells print what they compute; a number written in a markdown cell (an exercise's answer,
"about 1.54 bits/dim") is text and could drift from what the library gives. Each test below finds the
stated number in the notebook's markdown by the words around it and compares it with the value that
``ddpm_lib`` computes now, to the precision the prose states it (the computed value must round to the
stated one). Editing either side alone fails here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from ddpm_lib import Schedule
from ddpm_lib.checkpoint import load_vae
from ddpm_lib.elbo import (LinearGaussianReverse, gaussian_kl, optimal_linear_reverse, sample_forward_trajectory,
                           vdm_elbo_estimates, vdm_terms_denoising)
from ddpm_lib.montecarlo import mean_and_stderr
from ddpm_lib.posterior import posterior_mean, posterior_variance
from ddpm_lib.toy import GaussianMixture
from ddpm_lib.training import VAETrainConfig, _lr_at
from ddpm_lib.vae import bits_per_dim

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
F64 = torch.float64


def markdown(name: str) -> str:
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def stated(text: str, pattern: str) -> str:
    """The number that ``pattern`` (one group) captures; every occurrence must state the same number."""
    found = set(re.findall(pattern, text))
    assert found, f"the prose no longer contains {pattern!r}: update this test with it"
    assert len(found) == 1, f"{pattern!r} states different numbers: {sorted(found)}"
    return found.pop()


def rounds_to(computed: float, written: str) -> bool:
    """Whether ``computed``, rounded to the decimals of ``written``, is ``written``."""
    decimals = len(written.split(".")[1]) if "." in written else 0
    return abs(computed - float(written)) <= 0.5 * 10**-decimals * (1 + 1e-9)


def test_rounds_to_bites():
    assert rounds_to(1.5424, "1.54") and rounds_to(25.6, "26") and rounds_to(0.4856, "0.486")
    assert not rounds_to(1.5474, "1.54") and not rounds_to(1.652, "1.54") and not rounds_to(0.4844, "0.486")


# --- Densities, likelihood and KL ---------------------------------------------------------------------------------


def _normal_rule(N: int):
    # the chapter's trapezoid rule: nodes u and weights phi(u) du on [-12, 12], E[f(U)] for U ~ N(0, 1)
    u = torch.linspace(-12.0, 12.0, N, dtype=F64)
    wts = torch.full((N,), 24.0 / (N - 1), dtype=F64)
    wts[0] = wts[-1] = 12.0 / (N - 1)
    return u, wts * torch.exp(-u**2 / 2) / math.sqrt(2 * math.pi)


def _reverse_kl_fit(mixture: GaussianMixture, start) -> tuple[float, float]:
    # the chapter's fit: L-BFGS on the quadrature of KL(q || p) over (mu, log v)
    def reverse_kl(mu_, logv):
        z, wts = _normal_rule(4001)
        xq = mu_ + torch.exp(0.5 * logv) * z
        log_q = -0.5 * (math.log(2 * math.pi) + logv) - 0.5 * z**2
        return (wts * (log_q - mixture.log_prob(xq[:, None]))).sum()

    params = torch.tensor(start, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([params], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = reverse_kl(params[0], params[1])
        loss.backward()
        return loss

    opt.step(closure)
    return float(params[0].detach()), float(torch.exp(params[1].detach()))


def test_densities_tail_probabilities():
    text = markdown("densities_likelihood_kl")
    five_se = stated(text, r"K \\times (\d\.\d) \\times 10\^\{-7\}")            # two-sided tail beyond 5 standard errors
    assert rounds_to(math.erfc(5 / math.sqrt(2)) * 1e7, five_se)
    assert stated(text, r"the mass outside is below \$10\^\{(-\d+)\}\$") == "-32"
    assert math.erfc(12 / math.sqrt(2)) < 1e-32                                  # P(|U| > 12) for U ~ N(0, 1)


def test_densities_mode_covering_numbers():
    text = markdown("densities_likelihood_kl")
    bimodal = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0], [2.0]]), torch.tensor([0.5, 0.5]))
    variance = float((bimodal.weights * (bimodal.means[:, 0] ** 2 + bimodal.stds**2)).sum())   # the mean is 0
    assert rounds_to(variance, stated(text, r"v\^\\star = 4 \+ 0\.25 = (\d\.\d+)"))
    density = lambda x_: float(torch.exp(bimodal.log_prob(torch.tensor([[x_]], dtype=F64))))
    ratio = density(2.0) / density(0.0)
    written = stated(text, r"the data density is about 1/(\d+) of its value")
    assert float(f"{ratio:.2g}") == float(written)                               # two significant digits: 1490 -> 1500


def test_densities_exercise_mle_bias():
    text = markdown("densities_likelihood_kl")
    assert stated(text, r"# about (0\.\d+) = 3/4") == "0.75"
    g = torch.Generator().manual_seed(0)                                          # the solution's code
    x4 = torch.randn(200_000, 4, generator=g, dtype=F64)
    v_hat = ((x4 - x4.mean(1, keepdim=True)) ** 2).mean(1)
    mean, se = mean_and_stderr(v_hat)
    assert abs(float(mean) - 0.75) < 5 * float(se) and float(se) < 0.002        # "within a few 0.001"


def test_densities_exercise_close_modes():
    text = markdown("densities_likelihood_kl")
    written = stated(text, r"with variance about (0\.\d+), a little below")
    close = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-0.5], [0.5]]), torch.tensor([0.5, 0.5]))
    mu_, v_ = _reverse_kl_fit(close, [0.7, 0.0])                                  # the chapter's start, right of the middle
    assert abs(mu_) < 1e-6 and rounds_to(v_, written)
    # "exactly twice the standard deviation ... still has a single mode": the density has one maximum, at 0
    grid = torch.linspace(-3, 3, 6001, dtype=F64)
    dens = torch.exp(close.log_prob(grid[:, None]))
    peaks = ((dens[1:-1] > dens[:-2]) & (dens[1:-1] >= dens[2:])).nonzero()
    assert len(peaks) == 1 and abs(float(grid[1:-1][peaks[0]])) < 1e-9


# --- The variational autoencoder ----------------------------------------------------------------------------------


def test_vae_bits_per_dim_in_the_prose():
    text = markdown("vae")
    _, meta = load_vae("vae-mnist")
    assert rounds_to(meta["test"]["bits_per_dim"], stated(text, r"about (\d\.\d+) bits"))
    steps, batch = meta["state"]["step"], meta["train"]["batch_size"]
    assert rounds_to(steps * batch / 60_000, stated(text, r"\(about (\d+) epochs\)"))


def test_vae_learning_rate_schedule_in_the_prose():
    text = markdown("vae")
    assert "cosine learning-rate decay from $10^{-3}$ to $10^{-4}$" in text
    _, meta = load_vae("vae-mnist")
    config = VAETrainConfig(lr=meta["train"]["lr"], lr_decay_steps=meta["train"]["lr_decay_steps"])
    assert math.isclose(_lr_at(0, config), 1e-3) and math.isclose(_lr_at(meta["train"]["lr_decay_steps"], config), 1e-4)


def test_vae_exercise_bits_per_dim():
    text = markdown("vae")
    assert rounds_to(float(bits_per_dim(850.0)), stated(text, r"\$850 / \(784 \\ln 2\) \\approx (\d\.\d+)\$"))
    assert rounds_to(float(bits_per_dim(850.0, num_dims=32 * 32 * 3)), stated(text, r"\$850 / \(3072 \\ln 2\) \\approx (\d\.\d+)\$"))


def test_vae_exercise_baseline():
    text = markdown("vae")
    w_, b_, s2_, x_, mu = 1.5, 0.3, 0.5, 1.2, 0.2                                 # the chapter's f and mu
    f1, f2 = w_ * (x_ - w_ * mu - b_) / s2_, -w_**2 / s2_                          # f'(mu), f''(mu)
    assert rounds_to(2 * f1**2, stated(text, r"\$2 f'\(\\mu\)\^2 = (\d\.\d+)\$"))
    sigma = 0.1
    ratio = (2 * f1**2 + 2.5 * f2**2 * sigma**2) / (f2**2 * sigma**2)          # baseline variance / reparameterization variance
    assert rounds_to(ratio, stated(text, r"last column, (\d+\.\d) at \$\\sigma = 0\.1\$"))
    # the variance formula itself, by simulation (the chapter derives it with sympy.stats)
    eps = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    z = mu + sigma * eps
    f = lambda z_: -0.5 * math.log(2 * math.pi * s2_) - (x_ - w_ * z_ - b_) ** 2 / (2 * s2_)
    c = f(mu) + 0.5 * f2 * sigma**2                                               # E_q[f(z)]
    g = (f(z) - c) * eps / sigma
    var, var_se = mean_and_stderr((g - g.mean()) ** 2)
    assert abs(float(var) - (2 * f1**2 + 2.5 * f2**2 * sigma**2)) < 5 * float(var_se)


# --- Hierarchical VAEs to the variational diffusion model ---------------------------------------------------------


def test_vdm_schedule_end():
    text = markdown("hvae_to_vdm")
    schedule = Schedule.from_alpha_bar(torch.exp(-3.0 * torch.arange(1, 6) / 5))
    assert rounds_to(float(schedule.alpha_bar[5]), stated(text, r"\\bar\\alpha_T = e\^\{-3\} \\approx (\d\.\d+)"))


def test_vdm_exercise_one_timestep():
    text = markdown("hvae_to_vdm")
    one_written = stated(text, r"its variance is about (0\.\d+) against")
    all_written = stated(text, r"against about\s+(0\.\d+);")
    data_mean, data_var = 0.5, 0.3                                                # the solution's code, as printed
    sch = Schedule.from_alpha_bar(torch.exp(-3.0 * torch.arange(1, 11) / 10))
    opt = optimal_linear_reverse(sch, data_mean, data_var)
    rev = LinearGaussianReverse(0.8 * opt.coef, opt.shift + 0.1, 1.5 * opt.var)
    n, x0 = 20_000, torch.tensor(0.8, dtype=F64)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(n, 10, generator=g, dtype=F64)
    xs = sample_forward_trajectory(x0.expand(n), sch, eps)
    t = torch.randint(2, 11, (n,), generator=g)
    xt = xs.gather(1, t[:, None])[:, 0]
    kl = gaussian_kl(posterior_mean(x0.expand(n), xt, t, sch), posterior_variance(t, sch, xt), rev.coef[t] * xt + rev.shift[t], rev.var[t])
    terms = vdm_terms_denoising(x0[None], sch, rev)
    one_t = rev.log_prob(x0.expand(n), xs[:, 1], 1) - terms.prior_matching - 9 * kl
    all_t = vdm_elbo_estimates(x0.expand(n), sch, rev, eps, "denoising")
    assert rounds_to(float(one_t.var()), one_written) and rounds_to(float(all_t.var()), all_written)


@pytest.mark.parametrize("name", ["densities_likelihood_kl", "elbo", "vae", "hvae_to_vdm"])
def test_no_unpinned_timing_claims(name):
    # wall and CPU times of runs that are not in the repository cannot be checked; the prose must not state them
    assert not re.search(r"\d+(\.\d+)? minutes of (wall|CPU) time", markdown(name))
