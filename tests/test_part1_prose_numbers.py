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
from ddpm_lib.toys import LinearGaussianModel
from ddpm_lib.core import (LinearGaussianReverse, gaussian_kl, optimal_linear_reverse,
                           sample_forward_trajectory, vdm_elbo_estimates, vdm_elbo_exact, vdm_terms_consistency_as_printed,
                           vdm_terms_denoising)
from ddpm_lib.core.montecarlo import mean_and_stderr
from ddpm_lib.core.posterior import posterior_mean, posterior_variance
from ddpm_lib.toys.mixture import GaussianMixture
from ddpm_lib.training.vae import VAETrainConfig, _lr_at
from ddpm_lib.core.likelihood import bits_per_dim

from prose import NOTEBOOKS, markdown, rounds_to, stated

F64 = torch.float64


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


def _binomial_tail(n: int, p: float, k_sd: float) -> float:
    # P(|N - n p| >= k_sd sqrt(n p (1 - p))) for N ~ Bin(n, p), summed over the counts from log-factorials
    k = torch.arange(n + 1, dtype=F64)
    log_pmf = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)
    return float(torch.exp(log_pmf[(k - n * p).abs() >= k_sd * math.sqrt(n * p * (1 - p))]).sum())


def test_binomial_tail_bites():
    # against a case small enough to sum by hand: Bin(4, 1/2) has mean 2, sd 1; |N - 2| >= 2 at N = 0 and 4
    assert math.isclose(_binomial_tail(4, 0.5, 2.0), 2 / 16, rel_tol=1e-12)
    assert math.isclose(_binomial_tail(4, 0.5, 1.0), 1 - 6 / 16, rel_tol=1e-12)


def test_densities_tail_probabilities():
    text = markdown("densities_likelihood_kl")
    normal_tail = math.erfc(5 / math.sqrt(2))                                    # two-sided normal tail beyond 5 standard errors
    assert rounds_to(normal_tail * 1e7, stated(text, r"with probability \$(\d\.\d) \\times 10\^\{-7\}\$ per cell"))
    # "at nP = 20 ... about ten times heavier than the normal's": at the chapter's sparsest cell with n P >= 20
    assert "its tail beyond 5 standard deviations is about ten times\nheavier than the normal's" in text
    edges = torch.arange(-6.0, 6.0 + 1e-9, 0.25, dtype=F64)
    mixture = GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=F64), torch.tensor([[-1.5, -1.0], [1.5, 0.5], [0.0, 2.0]], dtype=F64),
                              torch.tensor([0.6, 0.8, 0.5], dtype=F64))                         # the chapter's cloud
    cell_p = sum(w_ * torch.diff(torch.special.ndtr((edges - m_[0]) / s_))[:, None] * torch.diff(torch.special.ndtr((edges - m_[1]) / s_))[None, :]
                 for w_, m_, s_ in zip(mixture.weights, mixture.means, mixture.stds))
    sparsest = float(cell_p[200_000 * cell_p >= 20].min())
    assert 20 <= 200_000 * sparsest < 21                                           # "n P = 20"
    ratio = _binomial_tail(200_000, sparsest, 5.0) / normal_tail
    assert float(f"{ratio:.1g}") == 10                                             # about ten: one significant digit
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


# --- The evidence lower bound --------------------------------------------------------------------------------------


def test_elbo_importance_weight_has_finite_moments():
    # the chapter's q = N((0.3, -0.2), I) gives the weight p(x, z) / q(z) finite second and fourth moments
    # (2 P^-1 - Q^-1 > 0 and 4 P^-1 - 3 Q^-1 > 0); the narrower covariance it names does not (2 P^-1 - Q^-1 has a negative eigenvalue)
    text = markdown("elbo")
    assert "$q = \\mathcal N\\big((0.3, -0.2),\\ I\\big)$" in text
    assert "\\begin{pmatrix} 0.5 & 0.1 \\\\ 0.1 & 0.3 \\end{pmatrix}$, fails the first condition" in text
    g = torch.Generator().manual_seed(1)
    model = LinearGaussianModel(torch.randn(3, 2, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64), noise_var=0.5)
    post_prec = torch.linalg.inv(model.posterior(torch.tensor([0.8, -1.1, 0.4], dtype=F64))[1])
    eye, narrow = torch.eye(2, dtype=F64), torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=F64)
    smallest = lambda m: float(torch.linalg.eigvalsh(m).min())
    assert smallest(2 * post_prec - eye) > 0 and smallest(4 * post_prec - 3 * eye) > 0
    assert smallest(2 * post_prec - torch.linalg.inv(narrow)) < 0


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


def test_vae_against_the_shipped_ddpm():
    # the chapter states that the shipped DDPM does not beat the VAE, by how much and by how many standard errors
    text = markdown("vae")
    _, meta = load_vae("vae-mnist")
    ddpm = json.loads((Path(__file__).resolve().parent.parent / "ddpm_lib" / "weights" / "mnist-nll-test.json").read_text())
    gap = ddpm["bits_per_dim"] - meta["test"]["bits_per_dim"]
    gap_se = math.hypot(ddpm["bits_per_dim_stderr"], meta["test"]["bits_per_dim_stderr"])
    assert gap > 5 * gap_se                                                       # the VAE's bound is lower, beyond 5 standard errors
    assert "**The shipped DDPM does not beat this VAE**" in text and "does not beat it: its bound is higher by" in text
    assert rounds_to(gap, stated(text, r"higher by\s+(\d\.\d+) bits/dim"))
    assert rounds_to(gap / gap_se, stated(text, r"some (\d+)\s+standard errors of the difference"))
    assert "the verdict is conservative" in text                                # the independent combination overstates the error


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


def _stored_output(name: str, cell_id: str) -> str:
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    (cell,) = [c for c in cells if c.get("id") == cell_id]
    return "".join("".join(o.get("text", "")) for o in cell["outputs"])


def test_vdm_variance_table_in_the_prose():
    # the prose's range of (a)/(b) and its number of standard errors are the ones the table cell printed
    text = markdown("hvae_to_vdm")
    printed = _stored_output("hvae_to_vdm", "cell-22")
    low, high, z = re.search(r"\(a\)/\(b\) from (\d+\.\d) to (\d+\.\d), each by more than (\d+) standard errors", printed).groups()
    assert f"by factors between about {low} and {high}" in text
    assert f"each difference is more than {z} standard errors" in text
    assert "the plain log-ratio below (b) with the 6 exact-reverse decoders, above it with the 6 others" in printed
    assert "measured in 12 settings" in text


def test_vdm_printed_offset():
    # the printed objective minus the ELBO: -sum_{t=1}^{T-1} sqrt(alpha_{t+1}) beta_t a_{t+1} / v_{t+1}, the same for every x0
    schedule = Schedule.from_alpha_bar(torch.exp(-3.0 * torch.arange(1, 6) / 5))
    opt = optimal_linear_reverse(schedule, 0.5, 0.3)
    for rev in (opt, LinearGaussianReverse(0.8 * opt.coef, opt.shift + 0.1, 1.5 * opt.var)):
        x0 = torch.tensor([-0.7, 0.2, 0.8, 1.9], dtype=F64)
        offset = vdm_terms_consistency_as_printed(x0, schedule, rev).elbo - vdm_elbo_exact(x0, schedule, rev)
        closed = -sum(float(schedule.alpha[t + 1].sqrt() * schedule.beta[t] * rev.coef[t + 1] / rev.var[t + 1]) for t in range(1, 5))
        assert float((offset - closed).abs().max()) < 1e-12 and abs(closed) > 1.0


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
