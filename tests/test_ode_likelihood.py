"""The exact likelihood through the probability-flow ODE (ddpm_lib.evaluation.ode_likelihood).

Gaussian data, whose every marginal is Gaussian, give the exact log-likelihood in closed form; the
ODE must reach it, and each planted mistake (a missing 1/2 in the velocity, the wrong sign of the
divergence term, the dequantization constant forgotten) must miss it by far more than the tolerance.
Tolerance 1e-4 nats: at rtol = atol = 1e-6 dopri5's global error on these problems is a few 1e-6
(measured: at most 4e-6 over the schedules and start times below), so 1e-4 leaves a factor of 25 for
other CPUs, while the smallest planted mistake moves the answer by more than 0.1 nats.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from ddpm_lib.checkpoint import load_model
from ddpm_lib.core.likelihood import BIN_WIDTH
from ddpm_lib.core.schedules import cosine_schedule, linear_schedule
from ddpm_lib.data import load_mnist
from ddpm_lib.evaluation.ode_likelihood import (
    DEQUANTIZATION_BITS,
    continuous_model_denoiser,
    dequantize,
    discrete_bits_per_dim,
    divergence,
    gaussian_data_denoiser,
    gaussian_data_log_prob,
    ode_log_likelihood,
    ode_nll_bits_per_dim,
    probability_flow_velocity,
    probability_flow_velocity_log_snr,
    u_from_log_snr,
)
from ddpm_lib.sampling.denoisers import model_denoiser

TOL = 1e-4
ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = {"cosine": cosine_schedule(1000), "linear": linear_schedule(1000)}


def _gaussian_problem(schedule, u0: float, seed: int = 0, d: int = 3, n: int = 6):
    # data N(m, S) with a full covariance (so that the Jacobian is not a multiple of the identity),
    # points drawn from q_{u0}
    g = torch.Generator().manual_seed(seed)
    m = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)[:d]
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    S = 0.2 * A @ A.T + 0.05 * torch.eye(d, dtype=torch.float64)
    a = math.sqrt(float(schedule.alpha_bar_at(u0)))
    x0 = m + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(S).T
    x = a * x0 + math.sqrt(1 - a * a) * torch.randn(n, d, generator=g, dtype=torch.float64)
    return m, S, x


def _solve(schedule, m, S, x, u0, velocity=None, **kw):
    velocity = velocity or probability_flow_velocity_log_snr(gaussian_data_denoiser(m, S, schedule), schedule)
    kw.setdefault("rtol", 1e-6)
    kw.setdefault("atol", 1e-6)
    return ode_log_likelihood(x, velocity, t0=float(schedule.log_snr_at(u0)), t1=float(schedule.log_snr_at(1.0)),
                              prior_log_prob=lambda x1: gaussian_data_log_prob(x1, 1.0, m, S, schedule), **kw)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("u0", [1e-3, 1e-5])
def test_gaussian_data_exact_log_likelihood(name, u0):
    schedule = SCHEDULES[name]
    m, S, x = _gaussian_problem(schedule, u0)
    out = _solve(schedule, m, S, x, u0, exact_trace=True)
    exact = gaussian_data_log_prob(x, u0, m, S, schedule)
    assert (out["log_prob"] - exact).abs().max() < TOL
    # the flow carries q_{u0} onto q_1 by the affine map x1 - a1 m = C1^(1/2) C0^(-1/2) (x - a0 m), where
    # C_u = a_u^2 S + sigma_u^2 I all share S's eigenvectors (so the matrices commute)
    evals, V = torch.linalg.eigh(S)
    ab0, ab1 = float(schedule.alpha_bar_at(u0)), float(schedule.alpha_bar_at(1.0))
    scale = torch.sqrt((ab1 * evals + 1 - ab1) / (ab0 * evals + 1 - ab0))
    x1 = math.sqrt(ab1) * m + (x - math.sqrt(ab0) * m) @ V @ torch.diag(scale) @ V.T
    assert (out["x1"] - x1).abs().max() < TOL
    assert out["nfe"] < 400


def test_isotropic_gaussian_data_as_in_the_chapter():
    schedule = SCHEDULES["cosine"]
    m, d = torch.tensor([0.3, -0.2], dtype=torch.float64), 2
    S = 0.25 * torch.eye(d, dtype=torch.float64)
    x = torch.tensor([[0.1, 0.4], [-1.0, 0.0]], dtype=torch.float64)
    out = _solve(schedule, m, S, x, 1e-3, exact_trace=True)
    assert (out["log_prob"] - gaussian_data_log_prob(x, 1e-3, m, S, schedule)).abs().max() < TOL


def test_the_velocity_in_u_and_in_log_snr_are_one_ode():
    # dx/du = (dx/dlambda) (dlambda/du), dlambda/du = -beta(u) / (1 - alpha_bar(u)): two constructions
    schedule = SCHEDULES["cosine"]
    m, S, x = _gaussian_problem(schedule, 0.3)
    den = gaussian_data_denoiser(m, S, schedule)
    f_u, f_lam = probability_flow_velocity(den, schedule), probability_flow_velocity_log_snr(den, schedule)
    for u in [0.0005, 0.01, 0.3, 0.5004, 0.97, 1.0]:
        u_t = torch.tensor(u, dtype=torch.float64)
        lam = schedule.log_snr_at(u_t)
        dlam_du = -float(schedule.beta_at(u_t)) / (1 - float(schedule.alpha_bar_at(u_t)))
        assert torch.allclose(f_u(u_t, x), f_lam(lam, x) * dlam_du, rtol=1e-10, atol=1e-12), u
    # and the velocity in u is -beta/2 (x + score) with Tweedie's score: core.sde's probability-flow drift
    from ddpm_lib.core.sde import vp_probability_flow_drift

    for u in [0.0005, 0.3, 1.0]:
        u_t = torch.tensor(u, dtype=torch.float64)
        ab = float(schedule.alpha_bar_at(u_t))
        score = (math.sqrt(ab) * den(x, u_t) - x) / (1 - ab)
        assert torch.allclose(f_u(u_t, x), vp_probability_flow_drift(x, u_t, score, schedule), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_u_from_log_snr_inverts_log_snr_at(name):
    schedule = SCHEDULES[name]
    for u in [1e-5, 1e-3, 0.0015, 0.5, 0.77777, 0.999, 1.0]:
        assert abs(u_from_log_snr(schedule, schedule.log_snr_at(u)) - u) < 1e-12
    assert u_from_log_snr(schedule, float("inf")) == 0.0
    with pytest.raises(ValueError, match="below the schedule's log-SNR"):
        u_from_log_snr(schedule, float(schedule.log_snr[-1]) - 1.0)


# --- Hutchinson -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_the_exact_trace(probe):
    schedule = SCHEDULES["cosine"]
    m, S, x = _gaussian_problem(schedule, 0.2, n=2)
    f = probability_flow_velocity_log_snr(gaussian_data_denoiser(m, S, schedule), schedule)
    lam = schedule.log_snr_at(0.2)
    xg = x.clone().requires_grad_(True)
    fx = f(lam, xg)
    exact = divergence(fx, xg, None)
    g = torch.Generator().manual_seed(1)
    P = 4000
    probes = (torch.randint(0, 2, (P,) + x.shape, generator=g) * 2 - 1).double() if probe == "rademacher" \
        else torch.randn((P,) + x.shape, generator=g, dtype=torch.float64)
    est = divergence(fx, xg, probes)  # (B, P)
    se = est.std(1) / math.sqrt(P)
    assert (se > 0).all(), "the toy's Jacobian is a multiple of the identity: Hutchinson would be exact, test nothing"
    assert ((est.mean(1) - exact).abs() < 4 * se).all()
    # the variance is the known one: sum_{i != j} J_ij^2 + J_ij J_ji for Rademacher, ||J||_F^2 + tr(J^2) for Gaussian
    J = torch.autograd.functional.jacobian(lambda z: f(lam, z[None])[0], x[0])
    off = J - torch.diag(torch.diag(J))
    var = float((off**2).sum() + (off * off.T).sum()) if probe == "rademacher" else float((J**2).sum() + (J * J.T).sum())
    assert abs(float(est[0].var()) / var - 1) < 0.1  # 4000 draws: the sample variance is within a few percent


def test_hutchinson_log_likelihood_is_unbiased_along_the_solution():
    # the probe is held fixed along the solution; the mean over probes of the ODE's answer is the exact one
    schedule = SCHEDULES["cosine"]
    m, S, x = _gaussian_problem(schedule, 1e-3, n=1)
    g = torch.Generator().manual_seed(2)
    out = _solve(schedule, m, S, x, 1e-3, n_probes=64, generator=g)
    per_probe = out["log_prob_per_probe"][0]
    exact = gaussian_data_log_prob(x, 1e-3, m, S, schedule)[0]
    se = per_probe.std() / math.sqrt(per_probe.numel())
    assert per_probe.std() > 1e-3  # the estimates do vary
    assert abs(float(per_probe.mean() - exact)) < 4 * float(se) + TOL


def test_hutchinson_over_every_sign_vector_is_exact_along_the_solution():
    # Paired and deterministic: the trajectory does not depend on the probe, so a probe v held fixed along it
    # gives Delta_v = v^T M v with M the integral of the Jacobian. Averaged over all 2^D Rademacher sign vectors
    # the off-diagonal terms of M cancel exactly and the mean must equal the exact log-likelihood to the
    # solver's tolerance; an unbalanced subset of the sign vectors (planted) leaves them in and must miss it.
    schedule = SCHEDULES["cosine"]
    m, S, x = _gaussian_problem(schedule, 1e-3, n=1)
    signs = torch.tensor([[a, b, c] for a in (1, -1) for b in (1, -1) for c in (1, -1)], dtype=torch.float64)
    out = _solve(schedule, m, S, x, 1e-3, probes=signs[:, None, :])
    per_probe = out["log_prob_per_probe"][0]
    exact = gaussian_data_log_prob(x, 1e-3, m, S, schedule)[0]
    assert float(per_probe.max() - per_probe.min()) > 0.05, "M would be diagonal: every probe exact, test nothing"
    assert abs(float(per_probe.mean() - exact)) < TOL
    # v and -v give the same estimate (v^T M v is even in v)
    assert torch.allclose(per_probe[:4], per_probe[4:].flip(0), atol=TOL)
    unbalanced = per_probe[:3].mean()  # (+,+,+), (+,+,-), (+,-,+): the (1,2) and (1,3) terms do not cancel
    assert abs(float(unbalanced - exact)) > 10 * TOL


# --- planted mistakes: each must be caught by the Gaussian check -----------------------------------------------

def test_planted_missing_half_in_the_velocity_is_caught():
    schedule = SCHEDULES["cosine"]
    m, S, x = _gaussian_problem(schedule, 1e-3)
    den = gaussian_data_denoiser(m, S, schedule)

    def wrong(lam, z):  # -beta (x + score) instead of -beta/2 (x + score): in log-SNR time, twice the velocity
        a = math.sqrt(float(torch.sigmoid(torch.as_tensor(lam))))
        return a * (den(z, u_from_log_snr(schedule, lam)) - a * z)

    out = _solve(schedule, m, S, x, 1e-3, velocity=wrong, exact_trace=True)
    exact = gaussian_data_log_prob(x, 1e-3, m, S, schedule)
    assert (out["log_prob"] - exact).abs().max() > 0.1


def test_planted_wrong_sign_of_the_divergence_term_is_caught():
    # the planted result recombines the outputs of the correct solve (log p_1 - Delta instead of + Delta); the
    # exact Gaussian test above checks that the library's own combination goes through the same path correctly
    schedule = SCHEDULES["cosine"]
    m, S, x = _gaussian_problem(schedule, 1e-3)
    out = _solve(schedule, m, S, x, 1e-3, exact_trace=True)
    wrong = out["prior_log_prob"] - out["delta"][:, 0]  # log p_1(x_1) - integral of the divergence
    exact = gaussian_data_log_prob(x, 1e-3, m, S, schedule)
    assert (out["log_prob"] - exact).abs().max() < TOL
    assert (wrong - exact).abs().min() > 1.0


def _discrete_gaussian_bits(mu: float, sigma: float, k: torch.Tensor) -> torch.Tensor:
    # -log2 P(k) of the 1-D density N(mu, sigma^2) in the model range integrated over the bin of pixel k
    centre = k.double() / 127.5 - 1
    z = lambda v: (v - mu) / (sigma * math.sqrt(2))
    p = 0.5 * (torch.erf(z(centre + BIN_WIDTH / 2)) - torch.erf(z(centre - BIN_WIDTH / 2)))
    return -torch.log2(p)


def _expected_log_density(mu: float, sigma: float, k: torch.Tensor) -> torch.Tensor:
    # E_U[log N(y; mu, sigma^2)] for y uniform on the bin of k, in closed form (E[(y - mu)^2] = (c - mu)^2 + w^2/12)
    centre = k.double() / 127.5 - 1
    second = (centre - mu) ** 2 + BIN_WIDTH**2 / 12
    return -0.5 * second / sigma**2 - 0.5 * math.log(2 * math.pi * sigma**2)


def test_dequantization_bound_and_its_constant():
    k = torch.arange(256)
    for mu, sigma, tight in [(0.0, 0.5, True), (0.3, 0.2, False), (-0.9, 1.0, True)]:
        exact = _discrete_gaussian_bits(mu, sigma, k)
        bound = discrete_bits_per_dim(_expected_log_density(mu, sigma, k), 1)
        assert (bound >= exact - 1e-12).all()  # Jensen: an upper bound on -log2 P(k)
        if tight:  # and tight where the density is smooth on the scale of a bin (the gap is ~ Var_U[log p] / 2)
            assert (bound - exact).max() < 1e-4
    assert DEQUANTIZATION_BITS == pytest.approx(math.log2(127.5), abs=1e-15)


def test_planted_forgotten_dequantization_constant_is_caught():
    k = torch.arange(256)
    exact = _discrete_gaussian_bits(0.0, 0.5, k)
    lp = _expected_log_density(0.0, 0.5, k)
    forgotten = -lp / math.log(2)  # bits of the density alone
    pixels_over_256 = -lp / math.log(2) + math.log2(256 / 2)  # the constant of bins of width 2/256
    assert (forgotten - exact).abs().min() > 6.9  # not a bound at all: the density exceeds 1
    assert (pixels_over_256 - exact).min() > 4e-3  # a bound, but not the tight one of these bins


def test_dequantize_fills_the_bins_of_the_pixels():
    images = torch.randint(0, 256, (50, 28, 28), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    y = dequantize(images, torch.Generator().manual_seed(1))
    offset = (y - (images[:, None].double() / 127.5 - 1)) / BIN_WIDTH  # in units of one bin
    assert y.dtype == torch.float64 and y.shape == (50, 1, 28, 28)
    assert offset.min() >= -0.5 and offset.max() < 0.5
    # uniform on the bin: mean 0 and variance 1/12; 39200 draws, so the standard errors are 1.5e-3 and 4e-4
    assert abs(float(offset.mean())) < 0.01 and abs(float(offset.var()) - 1 / 12) < 0.003


# --- the network ------------------------------------------------------------------------------------------------

def test_continuous_denoiser_matches_the_discrete_one_on_the_grid():
    loaded = load_model("mnist")
    disc = model_denoiser(loaded.model, loaded.schedule, loaded.target)
    cont = continuous_model_denoiser(loaded.model, loaded.schedule, loaded.target)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in [1, 37, 500, 1000]:
            a = disc(x, torch.full((2,), t)).double()
            b = cont(x.double(), t / loaded.schedule.T)
            assert (a - b).abs().max() < 1e-5, t  # float32 round-off of the conversion
    with pytest.raises(ValueError, match="unknown prediction target"):
        continuous_model_denoiser(loaded.model, loaded.schedule, "noise")


def test_mnist_ode_nll_small_run():
    loaded = load_model("mnist")
    images, _ = load_mnist("test")
    kw = dict(rtol=1e-3, atol=1e-3, n_probes=1, progress=False, seed=0)
    r = ode_nll_bits_per_dim(loaded, images[:2], batch_size=2, **kw)
    assert r["n_images"] == 2 and len(r["bits_per_dim_per_image"]) == 2
    # the stored run's first probe of these two digits (rtol 1e-5, the same seed and draws); at rtol 1e-3 the
    # live values differ by 2e-3 bits/dim (measured), so 0.01, as in the chapter's cell at rtol 1e-4
    stored = json.loads((ROOT / "ddpm_lib" / "weights" / "mnist-ode-nll.json").read_text())
    assert stored["settings"]["seed"] == 0
    first_probe = [row[0] for row in stored["bits_per_dim_per_probe"][:2]]
    assert max(abs(a - b) for a, b in zip(r["bits_per_dim_per_image"], first_probe)) < 0.01
    assert r["bits_per_dim"] == pytest.approx(r["prior_bpd"] + r["delta_bpd"] + DEQUANTIZATION_BITS, abs=1e-9)
    # each image draws its own noise: the second image alone (first_index=1) gets the same draws, so it
    # differs from the batch of two only by the solver's shared steps (tolerance 1e-3)
    alone = ode_nll_bits_per_dim(loaded, images[1:2], batch_size=1, first_index=1, **kw)
    assert math.isnan(alone["bits_per_dim_stderr"])
    assert abs(alone["bits_per_dim"] - r["bits_per_dim_per_image"][1]) < 0.02


def test_stored_mnist_ode_nll_is_consistent():
    path = ROOT / "ddpm_lib" / "weights" / "mnist-ode-nll.json"
    r = json.loads(path.read_text())
    vals = torch.tensor(r["bits_per_dim_per_image"], dtype=torch.float64)
    n = vals.numel()
    assert n == r["n_images"] >= 100
    assert r["bits_per_dim"] == pytest.approx(float(vals.mean()), abs=1e-12)
    assert r["bits_per_dim_stderr"] == pytest.approx(float(vals.std() / math.sqrt(n)), rel=1e-9)
    per_probe = torch.tensor(r["bits_per_dim_per_probe"], dtype=torch.float64)
    assert per_probe.shape == (n, r["settings"]["n_probes"])
    assert torch.allclose(per_probe.mean(1), vals, atol=1e-12)
    assert r["command"].startswith("OMP_NUM_THREADS=1 python scripts/ode_nll.py")
    assert {"rtol", "atol", "n_probes", "probe", "method", "eps", "seed"} <= set(r["settings"])
    assert len(r["elbo_bits_per_dim_per_image"]) == n


# --- the chapter's prose (notebooks/ode_likelihood.ipynb): numbers and claims pinned to the computation -------

def _stored() -> dict:
    return json.loads((ROOT / "ddpm_lib" / "weights" / "mnist-ode-nll.json").read_text())


def test_chapter_constants_in_the_prose():
    from prose import markdown, rounds_to, stated

    text = markdown("ode_likelihood")
    assert rounds_to(DEQUANTIZATION_BITS, stated(text, r"\\log_2 127\.5 \\approx (\d\.\d+)"))
    gap = math.log2(128 / 127.5)
    assert rounds_to(gap, stated(text, r"\\log_2\(128/127\.5\) = (\d\.\d+)"))
    assert rounds_to(gap, stated(text, r"\\log_2\(128/127\.5\) \\approx (\d\.\d+)"))
    assert "392 times" in text and 784 / 2 == 392


def test_chapter_claims_about_the_stored_run():
    from prose import markdown

    r = _stored()
    # "the run was stopped by hand after 1,200 images ... `--n 1200` in one command reproduces it"
    assert r["n_images"] == 1200 and re.search(r"after\s+1,200 images", markdown("ode_likelihood"))
    assert len(r["resumed_with"]) == 1
    ode = torch.tensor(r["bits_per_dim_per_image"], dtype=torch.float64)
    elbo = torch.tensor(r["elbo_bits_per_dim_per_image"], dtype=torch.float64)
    # "the ELBO lies above the ODE's bound for about nine digits in ten, and the two are strongly correlated"
    assert abs(float((elbo > ode).double().mean()) - 0.9) < 0.05
    assert float(torch.corrcoef(torch.stack([ode, elbo]))[0, 1]) > 0.8
    # "the flow's bound is lower than the ELBO all the same": the paired difference is many standard errors
    assert r["elbo_minus_ode"] > 5 * r["elbo_minus_ode_stderr"]
    # "the check above found the bound higher, not lower" at eps = 1e-5
    c = r["checks"]
    assert sum(c["eps_1e-5"]["bits_per_dim_per_image"]) > sum(c["run_tolerances"]["bits_per_dim_per_image"])
    # "the first 1,200 test digits are not a random sample": their ELBO is below the whole test set's by > 3 SE,
    # while the paired gap is stable across blocks of 300 (all within 0.02 of the mean); the derived estimate
    text = markdown("ode_likelihood")
    whole = json.loads((ROOT / "ddpm_lib" / "weights" / "mnist-nll-test.json").read_text())
    z = (whole["bits_per_dim"] - r["elbo_bits_per_dim"]) / math.hypot(whole["bits_per_dim_stderr"], r["elbo_bits_per_dim_stderr"])
    assert z > 3
    gaps = (elbo - ode).split(300)
    assert len(gaps) == 4 and all(abs(float(b.mean()) - r["elbo_minus_ode"]) < 0.02 for b in gaps)
    assert "first 1,200" in text and "not a random sample" in text
    # "the trained network's measured decoder term is larger than the perfect one's" (0.71 against 0.37 bits/dim)
    schedule = load_model("mnist").schedule
    sigma_1 = math.sqrt(1 - float(schedule.alpha_bar[1]))
    background = float((load_mnist("test")[0] == 0).double().mean())
    perfect_decoder = -background * math.log2(0.5 * (1 + math.erf((1 / 255) / sigma_1 / math.sqrt(2))))
    assert whole["decoder_bpd"] > perfect_decoder


def test_chapter_background_pixel_claims():
    # "the flow at u = 1/T pays more than twice as much as the decoder for every background pixel, and over the
    # test set that is more than half a bit per dimension"
    schedule = load_model("mnist").schedule
    sigma_1 = math.sqrt(1 - float(schedule.alpha_bar[1]))
    decoder = 0.5 * (1 + math.erf((1 / 255) / sigma_1 / math.sqrt(2)))
    flow = 2 * decoder - 1
    background = float((load_mnist("test")[0] == 0).double().mean())
    assert -math.log2(flow) > 2 * -math.log2(decoder)
    assert background * (math.log2(decoder) - math.log2(flow)) > 0.5


def test_chapter_eps_claim():
    # "at eps = 1e-5 ... would shrink its last-step noise tenfold": 1 - alpha_bar(u) is proportional to u on the first step
    schedule = load_model("mnist").schedule
    ratio = math.sqrt((1 - float(schedule.alpha_bar_at(1e-5))) / (1 - float(schedule.alpha_bar_at(1e-3))))
    assert abs(ratio - 0.1) < 1e-3


def _ideal_background_bits(lo: float, hi: float) -> tuple[float, float]:
    # pixel 0 under the ideal p_{1/T} = N(-sqrt(alpha_bar_1), sigma_1^2), bin [lo, hi): (exact -log2 P, uniform bound)
    schedule = load_model("mnist").schedule
    mean, sigma = -math.sqrt(float(schedule.alpha_bar[1])), math.sqrt(1 - float(schedule.alpha_bar[1]))
    cdf = lambda v: 0.5 * (1 + math.erf((v - mean) / sigma / math.sqrt(2)))
    exact = -math.log2(cdf(hi) - cdf(lo))
    second = ((lo + hi) / 2 - mean) ** 2 + (hi - lo) ** 2 / 12
    return exact, (second / (2 * sigma**2) + 0.5 * math.log(2 * math.pi * sigma**2)) / math.log(2) - math.log2(hi - lo)


def test_chapter_song_convention_solution():
    # exercise ex-ode-song-convention: the bound 1.128 -> 1.396 bits, the exact value 1.125 -> 1.363, about +0.22
    # bits/dim over the background pixels, some 27 standard errors; and the Jensen gap of the centred bin
    # ("a few thousandths of a bit") -- each rounded as the prose states it
    from prose import markdown

    text = markdown("ode_likelihood")
    centred, song = _ideal_background_bits(-1 - 1 / 255, -1 + 1 / 255), _ideal_background_bits(-1, -1 + 2 / 256)
    for value, written in [(centred[1], "1.128"), (song[1], "1.396"), (centred[0], "1.125"), (song[0], "1.363")]:
        assert abs(value - float(written)) <= 5e-4 and written in text
    background = float((load_mnist("test")[0] == 0).double().mean())
    extra = background * (song[1] - centred[1])
    assert abs(extra - 0.22) <= 5e-3 and "+0.22$ bits/dim" in text
    assert abs(extra / _stored()["bits_per_dim_stderr"] - 27) < 1 and "some 27 standard errors" in text
    assert 1e-3 < centred[1] - centred[0] < 1e-2 and "a few thousandths" in text
