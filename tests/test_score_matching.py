"""ddpm_lib.core.score_matching and ddpm_lib.training.score_toy, and the numbers of the chapter "Score matching".

Each objective is compared with its closed form on Gaussian data, computed by Gauss-Hermite quadrature (exact for
polynomial models, and converged to round-off for the smooth non-polynomial one, sin(3y), at the orders used),
through the per-row weights of the losses: the explicit and implicit objectives
differ by the constant of book eq. ``ism-loss``, the denoising and explicit ones by that of eq.
``vincent-identity``, and planted targets (the notes' sign, a standard deviation for the variance) break it.
The last part pins the numbers that ``notebooks/score_matching.ipynb`` states in its prose and exercises, against
the library's computation or against the outputs its cells stored.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from ddpm_lib import Schedule, eps_from_score, linear_schedule, q_sample, simple_loss
from ddpm_lib.core.score_matching import (conditional_score, dsm_loss, explicit_score_matching_loss,
                                          implicit_score_matching_loss)
from ddpm_lib.models.mlp import ToyDenoiser
from ddpm_lib.toys.mixture import GaussianMixture
from ddpm_lib.training.score_toy import train_score_toy

from prose import NOTEBOOKS, markdown, rounds_to, stated

F64 = torch.float64


def _cells(name: str) -> list[dict]:
    import json

    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]


def code_and_outputs(name: str) -> tuple[str, str]:
    """The code cells of ``notebooks/NAME.ipynb`` joined by newlines, and their stored text outputs likewise."""
    cells = [c for c in _cells(name) if c["cell_type"] == "code"]
    code = "\n".join("".join(c["source"]) for c in cells)
    outputs = "\n".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
    return code, outputs


def hermite(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights (summing to 1) of Gauss-Hermite quadrature for E over N(0, 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.tensor(z, dtype=F64), torch.tensor(w / w.sum(), dtype=F64)


def hermite_2d(n: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z, w = hermite(n)
    z1, z2 = torch.meshgrid(z, z, indexing="ij")
    return z1.reshape(-1), z2.reshape(-1), (w[:, None] * w[None, :]).reshape(-1)


# --- the losses on Gaussian data ----------------------------------------------------------------------------------


def test_explicit_and_implicit_losses_against_closed_forms():
    # data N(m, s^2) in 1-D, model s(x) = -(x - mu)/v: J_ESM = 1/2 E[((x - m)/s^2 - (x - mu)/v)^2], J_ISM = -1/v + E[(x - mu)^2]/(2 v^2)
    m, s, mu, v = 0.3, 0.7, -0.2, 0.4
    z, w = hermite()
    x = (m + s * z)[:, None]
    model = lambda y: -(y - mu) / v
    esm = explicit_score_matching_loss(model(x), -(x - m) / s**2, weight=w * len(w))
    ism = implicit_score_matching_loss(model, x, weight=w * len(w))
    d = m - mu
    esm_exact = 0.5 * (s**2 * (1 / v - 1 / s**2) ** 2 + d**2 / v**2)
    ism_exact = -1 / v + (s**2 + d**2) / (2 * v**2)
    esm, ism = float(esm), float(ism.detach())
    assert abs(esm - esm_exact) < 1e-12 and abs(ism - ism_exact) < 1e-12
    assert abs(float(esm - ism) - 1 / (2 * s**2)) < 1e-12  # eq. ism-loss: the constant is E[psi^2]/2 = 1/(2 s^2)


def test_implicit_loss_in_two_dimensions_with_a_full_jacobian():
    # s(x) = A x + b with a non-symmetric A: tr grad s = tr A; the Hutchinson estimate is v^T A v with the library's draw
    A = torch.tensor([[-1.5, 0.7], [-0.2, -0.4]], dtype=F64)
    b = torch.tensor([0.1, -0.3], dtype=F64)
    model = lambda x: x @ A.T + b
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = implicit_score_matching_loss(model, x).detach()
    assert abs(float(exact) - float(torch.trace(A) + 0.5 * (model(x) ** 2).sum(1).mean())) < 1e-12
    sliced = implicit_score_matching_loss(model, x, n_probes=1, generator=torch.Generator().manual_seed(1)).detach()
    probe = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)).to(F64) * 2 - 1
    inline = torch.einsum("ni,ij,nj->n", probe, A, probe) + 0.5 * (model(x) ** 2).sum(1)
    assert abs(float(sliced - inline.mean())) < 1e-12
    # v^T A v - tr A = v1 v2 (A12 + A21): unbiased, and exact when A is diagonal
    diagonal = lambda x: x * torch.tensor([-2.0, 0.5], dtype=F64)
    diff = implicit_score_matching_loss(diagonal, x, n_probes=3) - implicit_score_matching_loss(diagonal, x)
    assert abs(float(diff.detach())) < 1e-12


def test_implicit_loss_keeps_the_graph_for_training():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    for probes in (None, 2):
        net.zero_grad()
        implicit_score_matching_loss(net, x, n_probes=probes).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert not x.requires_grad  # the input is not modified
    # the trace term's own gradient: for s(x) = A x, d/dA [tr A + 1/2 mean |A x|^2] = I + A mean(x x^T)
    A = torch.nn.Parameter(torch.tensor([[-1.0, 0.3], [0.2, -0.5]], dtype=F64))
    xd = x.double()
    for probes in (None, 1):  # a Rademacher probe v has v v^T = I on the diagonal; off it, E = 0 but not per draw
        A.grad = None
        implicit_score_matching_loss(lambda y: y @ A.T, xd, n_probes=probes, generator=torch.Generator().manual_seed(2)).backward()
        expected = A.detach() @ (xd.T @ xd) / len(xd)
        if probes is None:
            expected = expected + torch.eye(2, dtype=F64)
        else:
            v = torch.randint(0, 2, xd.shape, generator=torch.Generator().manual_seed(2)).to(F64) * 2 - 1
            expected = expected + v.T @ v / len(xd)
        assert torch.allclose(A.grad, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_dsm_minus_esm_is_the_constant_of_the_vincent_identity(alpha):
    # data N(m, s^2), kernel N(alpha x, sigma^2), several models: J_DSM - J_ESM(q) = 1/(2 sigma^2) - 1/(2 Var q)
    m, s, sigma = 0.4, 0.5, 0.3
    z1, z2, w = hermite_2d()
    x0 = (m + s * z1)[:, None]
    xt = alpha * x0 + sigma * z2[:, None]
    var_q = alpha**2 * s**2 + sigma**2
    zq, wq = hermite()
    xq = (alpha * m + math.sqrt(var_q) * zq)[:, None]
    C = 1 / (2 * sigma**2) - 1 / (2 * var_q)
    models = [lambda y: 0 * y, lambda y: -y / 0.3 + 1, lambda y: torch.sin(3 * y), lambda y: y**2 - 0.5]
    planted = {"sign": [], "sigma": []}
    for f in models:
        j_dsm = dsm_loss(f(xt), xt, x0, sigma, alpha, weight=w * len(w))
        j_esm = explicit_score_matching_loss(f(xq), -(xq - alpha * m) / var_q, weight=wq * len(wq))
        assert abs(float(j_dsm - j_esm) - C) < 1e-9
        planted["sign"].append(float((w * 0.5 * (f(xt) - (xt - alpha * x0) / sigma**2)[:, 0] ** 2).sum() - j_esm))
        planted["sigma"].append(float((w * 0.5 * (f(xt) + (xt - alpha * x0) / sigma)[:, 0] ** 2).sum() - j_esm))
    for values in planted.values():  # the planted targets give a difference that depends on the model
        assert max(values) - min(values) > 0.5


def test_conditional_score_is_the_gradient_of_the_kernel_and_keeps_float64():
    gen = torch.Generator().manual_seed(0)
    x0, xt = (torch.randn(5, 3, generator=gen, dtype=F64) for _ in range(2))
    sigma = torch.tensor([0.1, 0.3, 0.5, 1.0, 2.0], dtype=F64)
    alpha = torch.tensor([1.0, 0.9, 0.5, 0.3, 0.1], dtype=F64)
    x_req = xt.clone().requires_grad_(True)
    log_kernel = (-((x_req - alpha[:, None] * x0) ** 2) / (2 * sigma[:, None] ** 2)).sum()
    (grad,) = torch.autograd.grad(log_kernel, x_req)
    assert torch.allclose(conditional_score(xt, x0, sigma, alpha), grad, rtol=1e-14, atol=0)
    # a Python float sigma stays float64 (torch.as_tensor(0.3) would round it to float32: 3e-8 relative)
    got = conditional_score(xt, x0, 0.3)
    assert float(((got - (-(xt - x0) / 0.09)) / got).abs().max()) < 1e-14
    # float32 in, float32 out
    assert conditional_score(xt.float(), x0.float(), 0.3).dtype == torch.float32
    assert dsm_loss(xt.float(), xt.float(), x0.float(), 0.3).dtype == torch.float32


def test_sigma2_weighted_dsm_is_half_l_simple_of_the_implied_eps():
    # book eq. dsm-eps: (1 - alphabar_t) * 1/2 ||s + eps / sigma_t||^2 = 1/2 ||eps - eps_hat||^2, eps_hat = -sigma_t s
    sch = linear_schedule(1000)
    gen = torch.Generator().manual_seed(2)
    t = torch.randint(1, 1001, (256,), generator=gen)
    x0, eps, s = (torch.randn(256, 3, generator=gen, dtype=F64) for _ in range(3))
    xt = q_sample(x0, t, eps, sch)
    ab = sch.alpha_bar[t]
    lhs = dsm_loss(s, xt, x0, (1 - ab).sqrt(), ab.sqrt(), weight=1 - ab)
    rhs = 3 / 2 * simple_loss(eps_from_score(s, t, sch), x0, eps, t, sch, "eps")
    assert abs(float(lhs / rhs) - 1) < 1e-12


def test_the_losses_refuse_bad_inputs():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="one shape"):
        explicit_score_matching_loss(x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="positive"):
        conditional_score(x, x, 0.0)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        dsm_loss(x, x, x, torch.ones(3))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        explicit_score_matching_loss(x, x, weight=torch.ones(5))
    with pytest.raises(ValueError, match="n_probes"):
        implicit_score_matching_loss(lambda y: y, x, n_probes=0)
    with pytest.raises(ValueError, match="returned shape"):
        implicit_score_matching_loss(lambda y: y[:, :1], x)


def test_coefficient_tensors_pass_their_gradient_and_nan_sigma_is_refused():
    # sigma, alpha and weight are not detached: a learned schedule gets its gradient through the loss
    gen = torch.Generator().manual_seed(3)
    x0, xt, s = (torch.randn(6, 2, generator=gen, dtype=F64) for _ in range(3))
    weight = torch.rand(6, generator=gen, dtype=F64).requires_grad_(True)
    sigma = (0.5 + torch.rand(6, generator=gen, dtype=F64)).requires_grad_(True)
    loss = dsm_loss(s, xt, x0, sigma, weight=weight)
    assert loss.requires_grad
    loss.backward()
    sd, d = sigma.detach()[:, None], xt - x0
    residual = s + d / sd**2                                          # s - target, target = -(xt - x0) / sigma^2
    assert torch.allclose(weight.grad, 0.5 * (residual**2).sum(1) / 6, rtol=1e-12, atol=0)
    d_sigma = weight.detach() / 6 * (residual * (-2 * d / sd**3)).sum(1)  # d/dsigma of (w/B) (1/2)|s + d/sigma^2|^2
    assert torch.allclose(sigma.grad, d_sigma, rtol=1e-12, atol=0)
    for bad in (float("nan"), torch.tensor([0.3, 0.3, float("nan"), 0.3, 0.3, 0.3], dtype=F64)):
        with pytest.raises(ValueError, match="positive"):
            conditional_score(xt, x0, bad)


def test_implicit_loss_is_detached_under_no_grad_and_dtypes_promote():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for probes in (None, 2):
        with_grad = implicit_score_matching_loss(net, x, n_probes=probes, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            without = implicit_score_matching_loss(net, x, n_probes=probes, generator=torch.Generator().manual_seed(1))
        assert with_grad.requires_grad and not without.requires_grad
        assert abs(float(with_grad.detach()) - float(without)) < 1e-12
    # mixed float32 / float64 inputs give float64 (the inputs promoted together), as the docstrings say
    s32 = x.float()
    assert dsm_loss(s32, x, x, 0.3).dtype == F64 and explicit_score_matching_loss(s32, x).dtype == F64
    assert conditional_score(s32, x, 0.3).dtype == F64 and dsm_loss(s32, s32, s32, 0.3).dtype == torch.float32


# --- training -----------------------------------------------------------------------------------------------------


def test_train_score_toy_is_seeded_and_leaves_the_callers_generator_alone():
    mix = GaussianMixture(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=F64),
                          torch.tensor([0.2, 0.2], dtype=F64))
    sch = linear_schedule(50)
    state = torch.get_rng_state()
    a = train_score_toy(mix.sample, sch, steps=30, batch=64, seed=3, width=16)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_score_toy(mix.sample, sch, steps=30, batch=64, seed=3, width=16)
    assert isinstance(a, ToyDenoiser) and not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="weighting"):
        train_score_toy(mix.sample, sch, weighting="sigma")


def test_train_score_toy_learns_a_gaussian_score():
    # data N(m, 0.5^2 I) with m = (1, -1): the score of q(x_t) is -(x_t - sqrt(alphabar) m) / (0.25 alphabar + 1 - alphabar).
    # A steep schedule (beta from 1e-4 to 0.3 over T = 20 steps: alphabar_10 = 0.47, alphabar_20 = 0.034) and a mean
    # away from 0 make the kernel's mean factor sqrt(alphabar) matter at both checked steps, t = T/2 and t = T.
    # Measured relative errors of this run: 0.007 at t = 10 and 0.0008 at t = 20. The bounds leave a factor of 4 to 6
    # for float32 round-off on other CPUs, and lie well below what planted mistakes in score_toy.py give: alpha = 1 for
    # sqrt(alphabar): 0.22 and 0.72; training only on t <= T/2: 0.026 at t = T; the variance passed as sigma: 1.5, 0.7.
    sch = linear_schedule(20, beta_end=0.3)
    m = torch.tensor([1.0, -1.0], dtype=F64)
    sample = lambda n, g: m + 0.5 * torch.randn(n, 2, generator=g, dtype=F64)
    model = train_score_toy(sample, sch, weighting="sigma2", steps=300, batch=256, seed=0, width=32)
    for t_check, bound in ((10, 0.03), (20, 0.005)):
        ab = float(sch.alpha_bar[t_check])
        var = 0.25 * ab + 1 - ab
        xt = math.sqrt(ab) * m + math.sqrt(var) * torch.randn(512, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
        exact = -(xt - math.sqrt(ab) * m) / var
        with torch.no_grad():
            got = model(xt.float(), torch.full((512,), t_check)).double()
        assert float(((got - exact) ** 2).sum(1).mean() / (exact**2).sum(1).mean()) < bound, t_check


# --- the chapter's numbers ----------------------------------------------------------------------------------------

MIX1 = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64), torch.tensor([[-1.0], [0.8]], dtype=F64),
                       torch.tensor([0.3, 0.2], dtype=F64))


def _grid(n=4001, lo=-5.0, hi=5.0):
    g = torch.linspace(lo, hi, n, dtype=F64)
    w = torch.full_like(g, float(g[1] - g[0]))
    w[[0, -1]] /= 2
    return g, w


def test_dsm_floor_exercise():
    # ex-sm-dsm-floor: "$50 - 1/0.52 \approx 48.08$" and the Monte Carlo "to within about 0.07" (its standard error at n = 10^6)
    text = markdown("score_matching")
    floor_w = stated(text, r"50 - 1/0\.52 \\approx ([0-9.]+)\$")
    se_w = stated(text, r"about 48\.08, to within about ([0-9.]+)")
    s, sigma = 0.5, 0.1
    floor = 1 / (2 * sigma**2) - 1 / (2 * (s**2 + sigma**2))
    assert rounds_to(floor, floor_w)
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    x = s * torch.randn(n, 1, generator=gen, dtype=F64)
    xt = x + sigma * torch.randn(n, 1, generator=gen, dtype=F64)
    per_row = 0.5 * (-xt / (s**2 + sigma**2) - conditional_score(xt, x, sigma)) ** 2
    mean, se = float(per_row.mean()), float(per_row.std()) / math.sqrt(n)
    assert abs(mean - floor) < 5 * se
    assert abs(float(dsm_loss(-xt / (s**2 + sigma**2), xt, x, sigma)) - mean) < 1e-9
    assert rounds_to(se * math.sqrt(n / 1e6), se_w)


def test_ism_gaussian_fit_exercise():
    # ex-sm-ism-gaussian: mu = 0.08, v = 0.8376, J_ISM = -1/(2v) ~ -0.597, J_ESM at the minimizer ~ 9.07
    text = markdown("score_matching")
    mu_w = stated(text, r"\\mu = \\mathbb E x = ([0-9.]+)\$")
    v_w = stated(text, r"v = \\mathrm\{Var\}\\,x = ([0-9.]+)\$")
    ism_w = stated(text, r"J_\\text\{ISM\} = -1/\(2v\) \\approx (-[0-9.]+)\$")
    esm_w = stated(text, r"J_\\text\{ESM\} \\approx ([0-9.]+)\$: large")
    g, w = _grid()
    p = w * MIX1.log_prob(g[:, None]).exp()
    mu = float((p * g).sum())
    v = float((p * (g - mu) ** 2).sum())
    assert rounds_to(mu, mu_w) and rounds_to(v, v_w) and rounds_to(-1 / (2 * v), ism_w)
    model = lambda x: -(x - mu) / v
    esm = explicit_score_matching_loss(model(g[:, None]), MIX1.score(g[:, None]), weight=p * len(g))
    ism = implicit_score_matching_loss(model, g[:, None], weight=p * len(g)).detach()
    assert rounds_to(float(esm), esm_w) and abs(float(ism) + 1 / (2 * v)) < 1e-9
    # the minimizer: J_ISM is larger at nearby (mu, v)
    for dmu, dv in ((0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)):
        other = lambda x: -(x - mu - dmu) / (v + dv)
        assert float(implicit_score_matching_loss(other, g[:, None], weight=p * len(g)).detach()) > float(ism)


def test_reverse_variance_exercise():
    # ex-sm-reverse-variance: at x_t = 0, beta = 0.01: 1 + beta d^2 log q_t(0) "about 2.40", d^2 log q_t(0) "approx 140"
    text = markdown("score_matching")
    ratio_w = stated(text, r"print\(1 \+ b \* float\(h\)\)  # about ([0-9.]+)")
    hess_w = stated(text, r"\\partial\^2\\log q_t\(0\) \\approx ([0-9.]+)\$")
    assert f"reverse kernel has ${ratio_w}$ times the variance" in text
    b = 0.01
    q_t = MIX1.noised(1, Schedule.from_beta(torch.tensor([b], dtype=F64)))
    x = torch.zeros(1, 1, dtype=F64, requires_grad=True)
    (sc,) = torch.autograd.grad(q_t.log_prob(x).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(sc.sum(), x)
    assert rounds_to(1 + b * float(h), ratio_w) and rounds_to(float(h), hess_w)
    # and the variance of the kernel by quadrature (Bayes on a grid) is that ratio times beta / alpha
    y, w = _grid(20001, -3.0, 3.0)
    post = w * MIX1.log_prob(y[:, None]).exp() * torch.exp(-(0 - math.sqrt(1 - b) * y) ** 2 / (2 * b))
    post = post / post.sum()
    mean = float((post * y).sum())
    var = float((post * (y - mean) ** 2).sum())
    assert abs(var / (b / (1 - b)) - (1 + b * float(h))) < 1e-8


def test_chapter_numbers_in_the_prose():
    text = markdown("score_matching")
    code, outputs = code_and_outputs("score_matching")
    sch = linear_schedule(1000)
    ab = sch.alpha_bar
    # "At $t = T$ it is about 157": (1 - alphabar_T) / sqrt(alphabar_T) for the linear schedule, T = 1000
    factor_w = stated(text, r"At \$t = T\$ it is about ([0-9]+),")
    assert rounds_to(float((1 - ab[1000]) / ab[1000].sqrt()), factor_w)
    # "$\lambda_t = 1 - \bar\alpha_t$ is $10^{-4}$ at $t = 1$", "At $t = 1$ that factor is $10^{-4}$",
    # "$1/(1-\bar\alpha_1) = 10^4$": exact to the power of ten they state (a relative 1e-3 allows their rounding)
    assert r"$\lambda_t = 1 - \bar\alpha_t$ is $10^{-4}$ at $t = 1$" in text
    assert "At $t = 1$ that factor is $10^{-4}$" in text and r"$1/(1-\bar\alpha_1) = 10^4$" in text
    assert abs(float(1 - ab[1]) / 1e-4 - 1) < 1e-3 and abs(float((1 - ab[1]) / ab[1].sqrt()) / 1e-4 - 1) < 1e-3
    # "$\sigma_T$ is within $10^{-4}$ of 1"
    assert r"$\sigma_T$ is within $10^{-4}$ of 1" in text and 1 - float((1 - ab[1000]).sqrt()) < 1e-4
    # the quadrature grid of the DSM check: N and the interval from the code cell, the step and size in the prose
    n_w, lo_w, hi_w = re.search(r"\nN = (\d+)\ngrid = torch\.linspace\((-?\d+), (-?\d+), N,", code).groups()
    assert f"${n_w} \\times {n_w}$ trapezoid grid on $[{lo_w}, {hi_w}]^2$" in text
    assert rounds_to((int(hi_w) - int(lo_w)) / (int(n_w) - 1), stated(text, r"the grid step \(([0-9.]+)\)"))
    # the 2-D quadrature of 1/2 E||grad log p||^2: "step 0.008 on $[-2.5, 2.5]^2$"
    n_fisher = int(re.search(r"half_fisher_quadrature\((\d+)\)", code).group(1))
    assert "linspace(-2.5, 2.5, n_grid" in code
    assert rounds_to(5 / (n_fisher - 1), stated(text, r"2-D grid \(step ([0-9.]+) on \$\[-2\.5, 2\.5\]\^2\$"))
    # "The score of the *clean* data is a poor model of the noised score ($J_\text{ESM} \approx 11.8$)": the stored output
    clean_w = stated(text, r"noised score \(\$J_\\text\{ESM\} \\approx ([0-9.]+)\$\)")
    assert rounds_to(float(stated(outputs, r"clean-data score +J_DSM = +[0-9.]+ +J_ESM = +([0-9.]+)")), clean_w)
    # the unadjusted Langevin step's bias, "(\$s = 0.2\$): 0.25 %"
    assert stated(text, r"\(\$s = 0\.2\$\): ([0-9.]+) %") == stated(outputs, r"delta/\(2 s\^2\) at s = 0\.2: ([0-9.]+) %")
    # the notes' conditional score: "more than 0.3 of the score's own mean square at every $t \le 200$"
    rel_w, t_w = re.search(r"more than ([0-9.]+) of the score's own mean square at every \$t \\le (\d+)\$", text).groups()
    shown = stated(outputs, r"-eps/sigma_t as the score: relative mean squared distance from the exact score > ([0-9.]+) at")
    steps = stated(outputs, r"from the exact score > [0-9.]+ at t = \[([0-9, ]+)\]")
    assert rel_w == shown and int(t_w) == max(int(v) for v in steps.split(","))
    # the reverse kernel: the constants, the reach of the asymptotic regime, the bending length, ten steps
    assert stated(text, r"agrees within ([0-9.]+) % with the constant") == "0.2"
    assert outputs.count("extrapolated: within 0.2 % of it") == 3
    peak = stated(outputs, r"largest d\^2 log p between the modes: (\d+),")
    assert f"peaks at about {peak}" in text and f"$1/\\sqrt{{{peak}}} \\approx " in text
    assert stated(text, r"1/\\sqrt\{\d+\} \\approx ([0-9.]+)\$") == stated(outputs, r"1/sqrt\(\d+\) = ([0-9.]+)")
    reach = dict(re.findall(r"  (KL|TV|KL var beta/alpha) +within 10 % of the limit up to beta = ([0-9.e-]+);", outputs))
    assert float(reach["KL"]) == 5e-4 and float(reach["TV"]) == float(reach["KL var beta/alpha"]) == 2e-3
    assert r"only up to $\beta = 5\cdot 10^{-4}$ (KL)" in text and r"and $2\cdot 10^{-3}$ (the other two)" in text
    at_002 = stated(outputs, r"  KL +within 10 % of the limit up to beta = [0-9.e-]+; at beta = 0\.02 it is ([0-9.]+) times")
    assert f"the scaled KL is {at_002} times its limit" in text
    ten_w = stated(text, r"would need \$\\beta_t = ([0-9.]+)\$")
    assert ten_w == stated(outputs, r"ten steps of a constant beta reaching alpha_bar_T = [0-9.e+-]+: beta = ([0-9.]+)")
    assert rounds_to(1 - float(ab[1000]) ** 0.1, ten_w)


def test_l_simple_floor_for_data_on_a_line():
    # ex-sm-dsm-floor: for Gaussian data with covariance eigenvalues lambda_i the floor of L_simple per coordinate is
    # (1/D) sum_i alphabar lambda_i / (alphabar lambda_i + sigma^2); data on a line in 2-D (lambda = 1, 0) give about
    # k/D = 1/2 at small t, not 1. Monte Carlo with the exact E[eps | x_t] = sigma (alphabar Sigma + sigma^2 I)^-1 x_t.
    sch = linear_schedule(1000)
    t_now, n = 10, 200_000
    ab = float(sch.alpha_bar[t_now])
    sigma = math.sqrt(1 - ab)
    gen = torch.Generator().manual_seed(4)
    x0 = torch.stack([torch.randn(n, generator=gen, dtype=F64), torch.zeros(n, dtype=F64)], 1)  # on the x-axis
    eps = torch.randn(n, 2, generator=gen, dtype=F64)
    t = torch.full((n,), t_now)
    xt = q_sample(x0, t, eps, sch)
    lam = torch.tensor([1.0, 0.0], dtype=F64)
    eps_hat = sigma * xt / (ab * lam + sigma**2)                                   # E[eps | x_t], coordinate-wise
    floor = float(simple_loss(eps_hat, x0, eps, t, sch, "eps"))
    predicted = float((ab * lam / (ab * lam + sigma**2)).mean())
    se = float(((eps - eps_hat) ** 2).mean(1).std()) / math.sqrt(n)
    assert abs(floor - predicted) < 5 * se and abs(predicted - 0.5) < 0.01           # k/D = 1/2, not 1
    # the planted smooth-density answer, 1 per coordinate, is far outside
    assert abs(floor - 1) > 100 * se
