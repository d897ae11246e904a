"""Part I, chapter "The variational autoencoder": ddpm_lib.models.vae (network and ELBO), its training
(ddpm_lib.training.train_vae), evaluation (ddpm_lib.evaluation.evaluate_vae), loading
(ddpm_lib.checkpoint.load_vae) and the shipped weights."""

import math

import pytest
import sympy as sp
import torch
from torch.distributions import Independent, Normal, kl_divergence

from ddpm_lib.__main__ import build_parser, main
from ddpm_lib.teaching.checkers import check_bits_per_dim, check_kl_to_standard_normal
from ddpm_lib.checkpoint import export_vae, load_model, load_vae, read_checkpoint, resolve_checkpoint, save_checkpoint
from ddpm_lib.evaluation import evaluate_vae, vae_test_metrics
from ddpm_lib.core.montecarlo import mean_and_stderr
from ddpm_lib.teaching.symbolic import gaussian_logpdf, is_equal
from ddpm_lib.training import VAETrainConfig, train_vae
from ddpm_lib.core.likelihood import bits_per_dim, check_on_pixel_grid, decoder_nll
from ddpm_lib.core.schedules import linear_schedule
from ddpm_lib.data import to_model
from ddpm_lib.models.vae import (VAE, VAEConfig, discretized_logistic_log_prob, elbo_terms,
                                 kl_diag_gaussian_to_standard_normal, reparameterize)

Z = 5.0
F64 = torch.float64


def test_reparameterize_has_the_right_moments_and_catches_the_variance_slip():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.tensor([0.5, -1.0, 2.0], dtype=F64), torch.tensor([-2.0, 0.0, 1.0], dtype=F64)
    eps = torch.randn(100_000, 3, generator=g, dtype=F64)
    z = reparameterize(mean.expand(100_000, 3), logvar.expand(100_000, 3), eps)  # eq. vae-reparam
    m, m_se = mean_and_stderr(z)
    v, v_se = mean_and_stderr((z - mean) ** 2)
    assert float(((m - mean) / m_se).abs().max()) < Z and float(((v - logvar.exp()) / v_se).abs().max()) < Z
    z_wrong = mean + torch.exp(logvar) * eps  # planted: scaled by the variance, not the standard deviation
    vw, vw_se = mean_and_stderr((z_wrong - mean) ** 2)
    assert float(((vw - logvar.exp()) / vw_se).abs().max()) > Z
    with pytest.raises(ValueError, match="must match"):
        reparameterize(mean, logvar, eps)


def test_reparameterization_gradient_has_lower_variance_than_score_function():
    w_, b_, s2_, x_ = 1.5, 0.3, 0.5, 1.2
    mu, sigma, n = 0.2, 0.3, 50_000
    eps = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=F64)
    f = lambda z: -0.5 * math.log(2 * math.pi * s2_) - (x_ - w_ * z - b_) ** 2 / (2 * s2_)
    g_rep = w_ * (x_ - w_ * (mu + sigma * eps) - b_) / s2_                  # d f(mu + sigma eps) / d mu
    g_sf = f(mu + sigma * eps) * eps / sigma                                # f(z) d log q / d mu
    exact = w_ * (x_ - w_ * mu - b_) / s2_
    for g in (g_rep, g_sf):
        m, se = mean_and_stderr(g)
        assert abs(float(m) - exact) < Z * float(se)
    assert float(g_sf.var()) > 5 * float(g_rep.var())


def test_kl_closed_forms_against_sympy_torch_and_monte_carlo():
    z, m1, m2 = sp.symbols("z m1 m2", real=True)
    va, vb = sp.symbols("va vb", positive=True)
    integral = sp.integrate(sp.expand(sp.exp(gaussian_logpdf(z, m1, va)) * (gaussian_logpdf(z, m1, va) - gaussian_logpdf(z, m2, vb))), (z, -sp.oo, sp.oo))
    assert is_equal(integral, (sp.log(vb / va) + (va + (m1 - m2) ** 2) / vb - 1) / 2)  # eq. vae-kl-1d
    g = torch.Generator().manual_seed(2)
    mean, logvar = torch.randn(4, 6, generator=g, dtype=F64), torch.randn(4, 6, generator=g, dtype=F64)
    ref = kl_divergence(Independent(Normal(mean, torch.exp(0.5 * logvar)), 1), Independent(Normal(torch.zeros_like(mean), torch.ones_like(mean)), 1))
    assert torch.allclose(kl_diag_gaussian_to_standard_normal(mean, logvar), ref, atol=1e-12)  # eq. vae-kl-diag
    zs = reparameterize(mean[0].expand(100_000, 6), logvar[0].expand(100_000, 6), torch.randn(100_000, 6, generator=g, dtype=F64))
    log_ratio = Normal(mean[0], torch.exp(0.5 * logvar[0])).log_prob(zs).sum(1) - Normal(0.0, 1.0).log_prob(zs).sum(1)
    est, se = mean_and_stderr(log_ratio)
    assert abs(float(est - kl_diag_gaussian_to_standard_normal(mean[:1], logvar[:1])[0])) < Z * float(se)
    wrong = float(0.5 * (torch.exp(0.5 * logvar[0]) + mean[0] ** 2 - 1 - 0.5 * logvar[0]).sum())  # planted: stds
    assert abs(float(est) - wrong) > Z * float(se)
    mus, vs = sp.symbols("mu_1:3"), sp.symbols("v_1:3")
    assert not check_kl_to_standard_normal(sum((sp.sqrt(v) + m**2 - 1 - sp.log(sp.sqrt(v))) / 2 for m, v in zip(mus, vs))).ok
    with pytest.raises(ValueError, match=r"\(B, k\)"):
        kl_diag_gaussian_to_standard_normal(mean[0], logvar[0])


def test_discretized_logistic_is_a_probability_over_the_256_values():
    x = torch.arange(256, dtype=F64) / 127.5 - 1
    for loc in (-5.0, -0.3, 0.0, 0.7, 1.1):
        for log_s in (-7.0, -3.9, 0.0, 4.0):
            lp = discretized_logistic_log_prob(x, torch.full((256,), loc, dtype=F64), torch.full((256,), log_s, dtype=F64))
            assert abs(float(torch.exp(lp).sum()) - 1) < 1e-12 and float(lp.max()) <= 0
    # an interior mass equals the integral of the logistic density over its bin (trapezoid, 2001 points)
    loc, s = 0.1, 0.05
    k = 140
    y = torch.linspace(float(x[k]) - 1 / 255, float(x[k]) + 1 / 255, 2001, dtype=F64)
    u = (y - loc) / s
    dens = torch.exp(-u) / (s * (1 + torch.exp(-u)) ** 2)
    lp = discretized_logistic_log_prob(x[k : k + 1], torch.tensor([loc], dtype=F64), torch.tensor([math.log(s)], dtype=F64))
    assert abs(float(torch.trapezoid(dens, y)) - float(torch.exp(lp))) < 1e-9
    # float32 with sharp scales: finite values and gradients
    loc32 = torch.full((256,), 0.3, requires_grad=True)
    ls32 = torch.full((256,), -6.5, requires_grad=True)
    discretized_logistic_log_prob(x.float(), loc32, ls32).sum().backward()
    assert torch.isfinite(loc32.grad).all() and torch.isfinite(ls32.grad).all()
    with pytest.raises(ValueError, match="8-bit"):
        discretized_logistic_log_prob(torch.tensor([0.5]), torch.zeros(1), torch.zeros(1))


def test_bits_per_dim_and_its_checker():
    one = bits_per_dim(784 * math.log(2))  # eq. vae-bits-per-dim
    assert isinstance(one, torch.Tensor) and one.dtype == F64 and one.shape == ()  # one return type: a tensor
    assert math.isclose(float(one), 1.0, rel_tol=1e-12)
    nats = torch.tensor([784 * math.log(2), 2 * 784 * math.log(2)], dtype=torch.float32)
    per_image = bits_per_dim(nats)
    assert per_image.dtype == torch.float32 and torch.allclose(per_image, torch.tensor([1.0, 2.0]))
    assert check_bits_per_dim(1000 / (784 * math.log(2)), 1000).ok
    res = check_bits_per_dim(1000 / 784, 1000)  # planted: nats per dimension
    assert not res.ok and "ln 2" in res.message
    with pytest.raises(ValueError):
        bits_per_dim(1.0, num_dims=0)


ALL_LEVELS = to_model(torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16))  # float32 k / 127.5 - 1, k = 0..255
OFF_GRID = [
    ("two thousandths of a level off", ALL_LEVELS.reshape(-1)[:255] + 0.002 / 127.5),  # k = 0..254, inside [-1, 1]
    ("one level past 1", torch.tensor([1.0 + 2 / 255])),
    ("one level below -1", torch.tensor([-1.0 - 2 / 255])),
    ("NaN", torch.tensor([0.0, float("nan")])),
    ("uint8 pixels", torch.tensor([0, 255], dtype=torch.uint8)),
]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_pixel_grid_accepts_every_8_bit_level(dtype):
    x = ALL_LEVELS.to(dtype).clone().requires_grad_()
    check_on_pixel_grid(x)  # no error, in float32 (to_model's round-off) and float64, also for a tensor in a graph
    check_on_pixel_grid(x.double() * (1 + 1e-9))  # round-off far below a level passes too


@pytest.mark.parametrize("what, x", OFF_GRID, ids=[w for w, _ in OFF_GRID])
def test_both_discrete_decoders_refuse_the_same_off_grid_pixels(what, x):
    # one check (ddpm_lib.core.likelihood.check_on_pixel_grid) serves the VAE's and the DDPM's decoder
    with pytest.raises(ValueError, match=r"8-bit grid k / 127\.5 - 1.*to_model") as err:
        check_on_pixel_grid(x, "my_pixels")
    assert "my_pixels" in str(err.value)
    xf = x.float() if x.dtype == torch.uint8 else x
    with pytest.raises(ValueError, match="discretized_logistic_log_prob: x .*8-bit grid"):
        discretized_logistic_log_prob(x, torch.zeros_like(xf), torch.zeros_like(xf))
    x4 = x.reshape(1, 1, 1, -1)
    with pytest.raises(ValueError, match="decoder_nll: x0 .*8-bit grid"):
        decoder_nll(x4, torch.zeros_like(x4, dtype=torch.float32), linear_schedule(10))


def test_bits_per_dim_has_one_definition():
    # the VAE chapter's conversion and the DDPM evaluation's (ddpm_lib.evaluation.elbo) are this one function
    import ddpm_lib.evaluation.elbo as ddpm_elbo
    import ddpm_lib.models.vae as vae_module

    assert ddpm_elbo.bits_per_dim is bits_per_dim
    assert not hasattr(vae_module, "bits_per_dim") or vae_module.bits_per_dim is bits_per_dim
    assert "bits_per_dim" not in vae_module.__all__
    assert float(bits_per_dim(1.0, 784)) == 1.0 / (784 * math.log(2))  # bit for bit what elbo.py divided by before
    assert float(bits_per_dim(3072 * math.log(2), num_dims=3072)) == pytest.approx(1.0, rel=1e-15)


TINY = VAETrainConfig(model=VAEConfig(latent_dim=4, hidden=(16,)), batch_size=8, checkpoint_every=2)


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _weights(path):
    return {k: v for k, v in read_checkpoint(path).tensors.items() if k.startswith(("model.", "optim."))}


def test_train_vae_resumes_exactly_and_refuses_other_configs(tmp_path, images):
    full = train_vae(TINY, tmp_path / "full", steps=7, images=images, progress=False)
    train_vae(TINY, tmp_path / "resumed", steps=3, images=images, progress=False)
    part = _weights(tmp_path / "resumed" / "checkpoint.safetensors")
    resumed = train_vae(TINY, tmp_path / "resumed", steps=7, images=images, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], part[k]) for k in a if k in part)  # the check can fail
    assert read_checkpoint(resumed).meta["state"]["step"] == 7
    with pytest.raises(ValueError, match="another configuration"):
        train_vae(VAETrainConfig(model=VAEConfig(latent_dim=5, hidden=(16,)), batch_size=8), tmp_path / "resumed", steps=9, images=images, progress=False)


def test_export_and_load(tmp_path, images):
    out = tmp_path / "w.safetensors"
    run = train_vae(TINY, tmp_path / "run", steps=2, images=images, progress=False, command="cmd")
    export_vae(run, out, vae_test_metrics(load_vae(run)[0], images[:10], seed=0))
    model, meta = load_vae(out)
    assert meta["kind"] == "vae" and meta["command"] == "cmd" and meta["test"]["images"] == 10
    assert not any(k.startswith("optim.") for k in read_checkpoint(out).tensors)
    x = (images[:3].double() / 127.5 - 1).float()[:, None]
    t = elbo_terms(model, x, torch.zeros(3, 4))
    assert t.elbo.shape == (3,) and torch.allclose(t.elbo, t.reconstruction - t.kl)
    terms = evaluate_vae(model, images[:10], seed=0)  # the exported bits/dim is evaluate_vae's
    assert terms.elbo.shape == (10,)
    assert math.isclose(float(bits_per_dim(-terms.elbo.mean())), meta["test"]["bits_per_dim"], abs_tol=1e-5)
    resumable, _ = load_vae(tmp_path / "run" / "checkpoint.safetensors")  # the training checkpoint loads too
    assert all(torch.equal(a, b) for a, b in zip(resumable.state_dict().values(), model.state_dict().values()))


def test_load_vae_refuses_other_kinds_and_misfit_weights(tmp_path):
    with pytest.raises(ValueError, match="'classifier' checkpoint, not a VAE"):
        load_vae("mnist-classifier")
    with pytest.raises(ValueError, match="not a DDPM"):
        load_model("vae-mnist")
    ckpt = read_checkpoint(resolve_checkpoint("vae-mnist"))
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, ckpt.tensors, {**ckpt.meta, "model": {**ckpt.meta["model"], "latent_dim": 7}})
    with pytest.raises(ValueError, match="do not fit VAE"):
        load_vae(bad)
    with pytest.raises(FileNotFoundError, match="vae-mnist"):
        load_vae(tmp_path / "missing.safetensors")


def test_shipped_weights_load_and_carry_their_command():
    path = resolve_checkpoint("vae-mnist")
    model, meta = load_vae()  # the default is the shipped name
    assert meta == load_vae(path)[1]
    assert isinstance(model, VAE) and meta["kind"] == "vae"
    assert meta["command"].startswith("python -m ddpm_lib train-vae ")
    assert 1.0 < meta["test"]["bits_per_dim"] < 2.0 and meta["test"]["images"] == 10000
    assert path.stat().st_size < 6_000_000


def test_cli_has_train_vae(tmp_path):
    args = build_parser().parse_args(["train-vae", "--out", str(tmp_path), "--steps", "5"])
    assert args.command == "train-vae" and args.steps == 5 and args.hidden == [256, 256]
    assert main(["info", str(resolve_checkpoint("vae-mnist"))]) == 0


def test_monte_carlo_reconstruction_is_a_mean_not_a_sum():
    # source note 000 writes the L-sample estimate as sum_l log p(x | z_l): it must be divided by L
    w_, b_, s2_, x_ = 1.5, 0.3, 0.5, 1.2
    mu, var, L = 0.2, 0.09, 8
    f = lambda z: -0.5 * math.log(2 * math.pi * s2_) - (x_ - w_ * z - b_) ** 2 / (2 * s2_)
    exact = -0.5 * math.log(2 * math.pi * s2_) - ((x_ - w_ * mu - b_) ** 2 + w_**2 * var) / (2 * s2_)  # eq. elbo-lg-recon
    z = mu + math.sqrt(var) * torch.randn(20_000, L, generator=torch.Generator().manual_seed(4), dtype=F64)
    for est, ok in ((f(z).mean(1), True), (f(z).sum(1), False)):
        m, se = mean_and_stderr(est)
        assert (abs(float(m) - exact) < Z * float(se)) == ok
