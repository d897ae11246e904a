"""Learned reverse variances (Nichol & Dhariwal 2021, eqs. 15-16): ddpm_lib.core.variance and its users.

Each test compares two constructions: the library's value against one built here from the schedule's
tensors, ``torch.distributions``, an independent float64 port of Nichol & Dhariwal's hybrid loss, or the
library's other (separately tested) pieces. Everything runs on tiny tensors, a tiny U-Net, the small
shipped ``mnist`` network on 8 images, or a tiny hybrid-loss training run of 4 steps (twice, plus a resume);
the whole file takes about 8 s on one CPU thread.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:randomly tests/test_learned_variance.py``
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from ddpm_lib.checkpoint import LoadedModel, load_model, read_checkpoint
from ddpm_lib.core.forward import q_sample
from ddpm_lib.core.gaussian import gaussian_kl
from ddpm_lib.core.likelihood import BIN_WIDTH, decoder_nll, denoising_kl, vlb_term
from ddpm_lib.core.losses import HYBRID_LAMBDA, LOSSES, hybrid_loss, simple_loss
from ddpm_lib.core.posterior import posterior_mean
from ddpm_lib.core.schedules import Schedule, cosine_schedule, linear_schedule
from ddpm_lib.core.targets import get_target
from ddpm_lib.core.variance import learned_log_variance, log_variance_bounds, split_output
from ddpm_lib.data import load_mnist, to_model
from ddpm_lib.evaluation import elbo_bits_per_dim
from ddpm_lib.evaluation.elbo import with_fixed_variances
from ddpm_lib.evaluation.ode_likelihood import continuous_model_denoiser
from ddpm_lib.models.unet import UNet, UNetConfig
from ddpm_lib.sampling.denoisers import model_denoiser
from ddpm_lib.training.ddpm import PRESETS, TrainConfig, _init_from, train

from test_training import TINY

SCHEDULES = {"cosine": cosine_schedule(1000), "linear": linear_schedule(1000)}
LIN = SCHEDULES["linear"]


def pixels(shape, seed, dtype=torch.float64):
    """Random 8-bit images in model range (on the pixel grid), with both outermost levels planted."""
    g = torch.Generator().manual_seed(seed)
    x0 = to_model(torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)).to(dtype)
    x0.view(-1)[0], x0.view(-1)[1] = -1.0, 1.0
    return x0


# --- 1. learned_log_variance: the interpolation between log tilde-beta_t and log beta_t ---------------------------

@pytest.mark.parametrize("name", list(SCHEDULES))
def test_learned_log_variance_ends_are_the_posterior_variance_and_beta(name):
    schedule = SCHEDULES[name]
    T = schedule.T
    t = torch.tensor([1, 2, 3, 500, T - 1, T])
    like = torch.zeros(len(t), 1, 2, 2, dtype=torch.float64)
    # built here, in float64, from the schedule's own tensors: at t = 1 the lower end is tilde-beta_2
    tilde = torch.log(schedule.posterior_variance.double()[torch.where(t == 1, 2, t)])
    beta = torch.log(schedule.beta.double()[t])
    assert bool((tilde < beta).all())  # the two ends differ, so swapping them would fail below
    expected = {-1.0: tilde, 1.0: beta, 0.0: (tilde + beta) / 2}
    for v, want in expected.items():
        got = learned_log_variance(torch.full_like(like, v), t, schedule)
        assert got.shape == like.shape and got.dtype == torch.float64
        # float64: the interpolation f * hi + (1 - f) * lo is exact at f = 0 and 1 and one rounding off at f = 1/2
        torch.testing.assert_close(got, want.reshape(-1, 1, 1, 1).expand_as(like), rtol=1e-13, atol=0)
    lo, hi = log_variance_bounds(t, schedule, like)
    torch.testing.assert_close(lo.flatten(), tilde, rtol=1e-13, atol=0)
    torch.testing.assert_close(hi.flatten(), beta, rtol=1e-13, atol=0)
    # beyond the ends it extrapolates linearly in log-variance (v is not clamped)
    torch.testing.assert_close(learned_log_variance(torch.full_like(like, 3.0), t, schedule),
                               (2 * beta - tilde).reshape(-1, 1, 1, 1).expand_as(like), rtol=1e-12, atol=0)
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match="1..T"):
            learned_log_variance(torch.zeros(2, 1, 2, 2), torch.tensor([1, bad]), schedule)


# --- 2. denoising_kl with a learned variance ------------------------------------------------------------------------

def test_denoising_kl_with_a_learned_variance_is_the_gaussian_kl():
    g = torch.Generator().manual_seed(1)
    x0 = pixels((4, 1, 3, 3), seed=1)
    t = torch.tensor([2, 3, 400, 1000])
    xt = q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64), LIN)
    x0_hat = x0 + 0.2 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    var_q = LIN.posterior_variance[t].reshape(-1, 1, 1, 1).expand_as(x0)
    fixed = denoising_kl(x0, xt, t, x0_hat, LIN)
    # the fixed variance given as a learned one: the same KL (float64 round-off of exp(log(v)/2) vs sqrt(v))
    torch.testing.assert_close(denoising_kl(x0, xt, t, x0_hat, LIN, torch.log(var_q)), fixed, rtol=1e-10, atol=0)
    # any other variance: the closed form 0.5 (log(v2/v1) + (v1 + (m1 - m2)^2) / v2 - 1), summed per image
    var_p = 3.0 * var_q * torch.exp(0.5 * torch.randn(x0.shape, generator=g, dtype=torch.float64))  # per pixel
    m1, m2 = posterior_mean(x0, xt, t, LIN), posterior_mean(x0_hat, xt, t, LIN)
    want = gaussian_kl(m1, var_q, m2, var_p).sum(dim=(1, 2, 3))
    got = denoising_kl(x0, xt, t, x0_hat, LIN, torch.log(var_p))
    assert float((got - fixed).abs().min()) > 1.0  # the learned variance changes every image's KL by nats
    # float64 on both sides; torch.distributions and gaussian_kl arrange the same terms differently
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


# --- 3. decoder_nll with a learned variance -------------------------------------------------------------------------

def direct_decoder_nll(x0: torch.Tensor, x0_hat: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """-sum log(Phi(upper) - Phi(lower)) per image, float64, by the Normal's cdf; the outermost bins reach +-inf."""
    d = Normal(x0_hat.double(), torch.exp(0.5 * log_variance.double()))
    x = x0.double()
    upper = torch.where(x > 1 - 1e-6, torch.full_like(x, math.inf), x + BIN_WIDTH / 2)
    lower = torch.where(x < -1 + 1e-6, torch.full_like(x, -math.inf), x - BIN_WIDTH / 2)
    return -torch.log(d.cdf(upper) - d.cdf(lower)).reshape(x.shape[0], -1).sum(dim=1)


def test_decoder_nll_with_a_learned_variance_is_the_bin_mass_of_a_gaussian():
    g = torch.Generator().manual_seed(2)
    x0 = pixels((3, 1, 4, 4), seed=2)
    # one width per pixel, from a quarter of a bin to ~20 bins (std 0.002 to 0.16), and a mean within about two
    # widths of the pixel: every bin's mass is >= ~1e-3 (measured: 0.023), so the direct cdf difference (absolute
    # error ~1e-16) is accurate to ~1e-13 relative per pixel (measured on the totals: 2.6e-16)
    log_var = torch.empty_like(x0).uniform_(math.log(4e-6), math.log(2.5e-2), generator=g)
    x0_hat = x0 + 0.7 * torch.exp(0.5 * log_var) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    # beta_1 given as a learned variance: the fixed decoder (float64 round-off of exp(log(b)/2) vs sqrt(b))
    log_beta1 = torch.full_like(x0, math.log(float(LIN.beta[1])))
    torch.testing.assert_close(decoder_nll(x0, x0_hat, LIN, log_beta1), decoder_nll(x0, x0_hat, LIN), rtol=1e-10, atol=0)
    want = direct_decoder_nll(x0, x0_hat, log_var)
    got = decoder_nll(x0, x0_hat, LIN, log_var)
    assert float((got - decoder_nll(x0, x0_hat, LIN)).abs().min()) > 1.0  # the widths matter
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decoder_nll_gradient_is_finite_at_the_edges_and_far_from_the_mean(dtype):
    """The gradient w.r.t. log_variance and x0_hat is finite for every pixel, the outermost levels included.

    Planted bug (the form before learned variances): ``upper = torch.where(x0 > 1 - 1e-6, inf, x0 + w/2)``
    (and ``-inf`` for ``lower``) made the unselected interior branch of the later ``torch.where`` evaluate
    ``log_ndtr(inf)``-type terms at the edge pixels; ``torch.where`` sends zero gradient into that branch, and
    ``0 * inf`` is NaN. Measured with that form: the gradient w.r.t. ``x0_hat`` was NaN at ``x0 = -1`` and
    ``x0 = 1`` even for ``x0_hat = x0``, and at every pixel for ``x0_hat = x0 + 0.5``. The value itself was
    finite, so only a gradient check catches it; the learned width is trained through this gradient.
    """
    levels = torch.tensor([0, 1, 128, 254, 255])  # both edges, their neighbours and an interior level
    x0 = to_model(levels.to(torch.uint8).reshape(1, 1, 1, -1)).to(dtype).flatten()
    # every x0 against offsets from 0 to 2 (x0_hat far outside [-1, 1] too) and widths from 1e-3 to 3 std
    offsets = torch.tensor([0.0, 1e-3, -1e-3, 0.05, -0.05, 0.5, -0.5, 2.0, -2.0], dtype=dtype)
    log_vars = torch.tensor([math.log(1e-6), math.log(1e-4), math.log(1e-2), math.log(9.0)], dtype=dtype)
    X0 = x0[:, None, None].expand(-1, len(offsets), len(log_vars)).reshape(1, 1, -1)
    x0_hat = (X0 + offsets[None, :, None].expand(len(x0), -1, len(log_vars)).reshape(1, 1, -1)).requires_grad_(True)
    log_var = log_vars[None, None, :].expand(len(x0), len(offsets), -1).reshape(1, 1, -1).clone().requires_grad_(True)
    nll = decoder_nll(X0, x0_hat, LIN, log_var)
    nll.sum().backward()
    assert bool(torch.isfinite(nll).all())
    assert bool(torch.isfinite(x0_hat.grad).all()), x0_hat.grad
    assert bool(torch.isfinite(log_var.grad).all()), log_var.grad
    # not merely finite: a mean above the pixel pushes x0_hat down, for an interior pixel and a narrow width
    interior = (X0 == x0[2]) & (x0_hat.detach() - X0 > 0.04) & (log_var.detach() < -8)
    assert bool((x0_hat.grad[interior] > 0).all())


# --- 4. hybrid_loss ----------------------------------------------------------------------------------------------

def hybrid_batch(target: str, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x0 = pixels((6, 1, 4, 4), seed=seed)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 17, 1, 2, 1000, 1])  # t = 1 rows (the decoder) mixed with t >= 2 rows (the KL)
    clean = get_target(target).from_x0_eps(x0, eps, t, LIN)
    prediction = clean + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = 0.5 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return x0, eps, t, torch.cat([prediction, v], dim=1)


@pytest.mark.parametrize("target", ["v", "eps"])
def test_hybrid_loss_is_simple_loss_plus_lambda_T_bits_per_dim(target):
    x0, eps, t, output = hybrid_batch(target)
    C, D = x0.shape[1], x0[0].numel()
    prediction, v = output[:, :C], output[:, C:]
    xt = q_sample(x0, t, eps, LIN)
    x0_hat = get_target(target).to_x0_eps(prediction, xt, t, LIN)[0]
    # each row's term of the bound by itself, with its own learned variance
    nats = []
    for i in range(len(t)):
        r = slice(i, i + 1)
        log_var = learned_log_variance(v[r], t[r], LIN)
        nats.append(decoder_nll(x0[r], x0_hat[r], LIN, log_var) if t[i] == 1
                    else denoising_kl(x0[r], xt[r], t[r], x0_hat[r], LIN, log_var))
    bpd = torch.cat(nats) / (D * math.log(2.0))
    mse = simple_loss(prediction, x0, eps, t, LIN, target)
    want = mse + HYBRID_LAMBDA * LIN.T * bpd.mean()
    got = hybrid_loss(output, x0, eps, t, LIN, target)
    assert LOSSES["hybrid"] is hybrid_loss
    assert float(want - mse) > 1e-3 * float(want)  # the bound's part is far above the tolerance below
    # float64 throughout; the only difference is the order of the same additions
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("target", ["v", "eps"])
def test_hybrid_loss_trains_the_prediction_by_simple_loss_alone(target):
    x0, eps, t, output = hybrid_batch(target, seed=4)
    C = x0.shape[1]
    leaf = output.clone().requires_grad_(True)
    hybrid_loss(leaf, x0, eps, t, LIN, target).backward()
    pred = output[:, :C].clone().requires_grad_(True)
    simple_loss(pred, x0, eps, t, LIN, target).backward()
    # the stop-gradient: the prediction's gradient is L_simple's (same float64 ops, so equal to round-off)
    torch.testing.assert_close(leaf.grad[:, :C], pred.grad, rtol=1e-12, atol=0)
    v_grad = leaf.grad[:, C:]
    assert bool(torch.isfinite(v_grad).all()) and bool((v_grad.abs().sum(dim=(1, 2, 3)) > 0).all())  # every row's v is trained
    # without the stop-gradient, the bound would move the prediction by far more than that tolerance
    pred2 = output[:, :C].clone().requires_grad_(True)
    xt = q_sample(x0, t, eps, LIN)
    x0_hat = get_target(target).to_x0_eps(pred2, xt, t, LIN)[0]
    later = t >= 2
    log_var = learned_log_variance(output[:, C:], t, LIN)
    denoising_kl(x0[later], xt[later], t[later], x0_hat[later], LIN, log_var[later]).sum().backward()
    assert float(pred2.grad.abs().max()) > 1e-3 * float(pred.grad.abs().max())


def test_hybrid_loss_needs_the_variance_channels():
    x0, eps, t, output = hybrid_batch("v")
    C = x0.shape[1]
    with pytest.raises(ValueError, match="learned variances"):
        hybrid_loss(output[:, :C], x0, eps, t, LIN, "v")
    with pytest.raises(ValueError, match="got 3"):
        hybrid_loss(torch.cat([output, output[:, :C]], dim=1), x0, eps, t, LIN, "v")


# --- 5. split_output -------------------------------------------------------------------------------------------------

def test_split_output_by_channel_count():
    x = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).reshape(2, 6, 2, 2)
    out, v = split_output(x[:, :3], 3)
    assert torch.equal(out, x[:, :3]) and v is None
    out, v = split_output(x, 3)
    assert torch.equal(out, x[:, :3]) and torch.equal(v, x[:, 3:])
    with pytest.raises(ValueError, match="got 6"):
        split_output(x, 2)  # 3C
    with pytest.raises(ValueError, match="got 4"):
        split_output(x[:, :4], 3)


# --- 6. the U-Net with learned variances and the denoiser --------------------------------------------------------

def tiny_learned_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(UNetConfig(channels=(8, 16), num_res_blocks=1, attention_heads=2, groups=4, learn_variance=True)).eval()
    with torch.no_grad():  # conv_out starts at zero; give both output channels distinct values
        model.conv_out.weight.normal_(0.0, 0.1)
        model.conv_out.bias.copy_(torch.tensor([0.3, -0.7]))
    return model


class FirstChannels(nn.Module):
    """The network's first ``channels`` output channels: the same prediction with no variance channel."""

    def __init__(self, model: nn.Module, channels: int = 1):
        super().__init__()
        self.model, self.channels = model, channels

    def forward(self, xt, t):
        return self.model(xt, t)[:, : self.channels]


def test_unet_with_learned_variances_and_its_denoiser():
    model = tiny_learned_unet()
    g = torch.Generator().manual_seed(6)
    xt, t = torch.randn(3, 1, 28, 28, generator=g), torch.tensor([1, 300, 1000])
    with torch.no_grad():
        out = model(xt, t)
        assert out.shape == (3, 2, 28, 28)
        assert float((out[:, 0] - out[:, 1]).abs().max()) > 0.1  # taking the wrong channel would show
        for target in ("v", "eps"):
            got = model_denoiser(model, LIN, target)(xt, t)
            want = model_denoiser(FirstChannels(model), LIN, target)(xt, t)
            assert torch.equal(got, want)  # one network call each, the same ops on the same channel: bit for bit
    assert UNet(UNetConfig(channels=(8, 16), attention_heads=2, groups=4)).eval()(xt, t).shape == (3, 1, 28, 28)


# --- 7. the ELBO with learned variances ------------------------------------------------------------------------------

class FixedVariancesAsLearned(nn.Module):
    """The network's prediction, then ``v = +1`` at ``t = 1`` (beta_1) and ``v = -1`` at ``t >= 2`` (tilde-beta_t)."""

    def __init__(self, model: nn.Module, v_at_1: float = 1.0, v_later: float = -1.0):
        super().__init__()
        self.model, self.v_at_1, self.v_later = model, v_at_1, v_later

    def forward(self, xt, t):
        prediction = self.model(xt, t)
        v = torch.where(t == 1, self.v_at_1, self.v_later).to(prediction).reshape(-1, 1, 1, 1).expand_as(prediction)
        return torch.cat([prediction, v], dim=1)


@pytest.fixture(scope="module")
def shipped_mnist():
    return load_model("mnist")


@pytest.fixture(scope="module")
def test_images():
    return load_mnist("test")[0][:8]


def test_elbo_with_v_at_the_fixed_ends_is_the_fixed_variance_elbo(shipped_mnist, test_images):
    net, schedule, target = shipped_mnist.model, shipped_mnist.schedule, shipped_mnist.target

    def bpd(model):
        result = elbo_bits_per_dim(LoadedModel(model, schedule, target, {}), test_images, progress=False, n_strata=5)
        return result["bits_per_dim"], result["decoder_bpd"], result["denoising_bpd"]

    fixed = bpd(net)
    learned = bpd(FixedVariancesAsLearned(net))
    # float32: log then exp of the variance in float32 changes each pixel's KL/NLL by ~1e-7 relative, and so the
    # totals (measured: 1.5e-7 relative on bits_per_dim 1.629, 6e-8 on the decoder's, 2.2e-7 on the sum over t >= 2);
    # 1e-5 leaves a margin for other BLAS kernels. abs=1e-7 covers prior_bpd-sized (near 0) entries.
    for a, b in zip(learned, fixed):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    # the comparison can fail: the geometric mean of the two ends (v = 0) gives a different bound, and each of its two
    # parts differs, so an ELBO that ignored the learned variance in the decoder alone or in the denoising terms alone
    # would fail (the same draws: ignoring it gives the fixed value to ~1e-7, as above). Measured with v = 0:
    # total 1.663 vs 1.629, decoder 0.626 vs 0.677, denoising sum 1.036 vs 0.952 bits/dim.
    middle = bpd(FixedVariancesAsLearned(net, 0.0, 0.0))
    assert abs(middle[0] - fixed[0]) > 1e-2
    assert abs(middle[1] - fixed[1]) > 1e-2  # the decoder, L_0
    assert abs(middle[2] - fixed[2]) > 1e-2  # the sum over t >= 2


# --- 8. TrainConfig: learned variances train with the hybrid loss, and only they do ----------------------------------

def test_train_config_pairs_learned_variances_with_the_hybrid_loss():
    learned = UNetConfig(learn_variance=True)
    for loss in ("simple", "vlb"):
        with pytest.raises(ValueError, match="hybrid"):
            TrainConfig(model=learned, loss=loss)
    with pytest.raises(ValueError, match="learn_variance=False"):
        TrainConfig(model=UNetConfig(), loss="hybrid")
    assert TrainConfig(model=learned, loss="hybrid").loss == "hybrid"
    preset = PRESETS["mnist-cpu-lv"]
    assert preset.model.learn_variance and preset.loss == "hybrid" and preset.init_from == "mnist"
    assert replace(preset) == preset  # rebuilt through __post_init__'s checks


# --- 9. init_from: the shipped mnist network widened with zero variance channels -------------------------------------

def test_init_from_widens_the_shipped_network_with_zero_variance_channels(shipped_mnist):
    config = PRESETS["mnist-cpu-lv"]
    model = UNet(config.model).eval()
    _init_from(model, config)
    ref = shipped_mnist.model
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([1, 400, 1000])
    with torch.no_grad():
        out, expected = model(x, t), ref(x, t)
    assert out.shape == (3, 2, 28, 28)
    assert float(expected.abs().max()) > 0.1
    assert torch.equal(out[:, :1], expected)  # the prediction is the shipped network's, bit for bit
    assert torch.equal(out[:, 1:], torch.zeros_like(expected))  # v = 0: zero weights and bias give exactly 0


# --- 10. hybrid_loss against an independent port of Nichol & Dhariwal's loss --------------------------------------

def improved_diffusion_hybrid(prediction, v, x0, eps, t, schedule, target):
    """Nichol & Dhariwal's hybrid loss (their ``improved-diffusion`` code), ported in float64 from the betas alone.

    Their 0-indexed arrays (``k = t - 1``), their ``normal_kl`` and ``discretized_gaussian_log_likelihood`` (with
    the exact normal cdf in place of their tanh approximation), ``mean_flat`` / ln 2, the bound times ``T / 1000``
    and the MSE's mean. For ``target="v"`` (not in their code) the prediction is converted to ``x0_hat`` and the
    MSE taken against ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0`` (Salimans & Ho 2022).
    """
    T = schedule.T
    betas = schedule.beta[1:].double()
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    post_log_var_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef1 = betas * ac_prev.sqrt() / (1.0 - ac)
    coef2 = (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac)
    k = t - 1
    at = lambda a: a[k].reshape(-1, 1, 1, 1)  # noqa: E731
    xt = at(ac).sqrt() * x0 + at(1.0 - ac).sqrt() * eps
    out = prediction.detach()
    if target == "eps":
        pred_x0, mse_target = (xt - at(1.0 - ac).sqrt() * out) / at(ac).sqrt(), eps
    else:
        pred_x0 = at(ac).sqrt() * xt - at(1.0 - ac).sqrt() * out
        mse_target = at(ac).sqrt() * eps - at(1.0 - ac).sqrt() * x0
    model_mean = at(coef1) * pred_x0 + at(coef2) * xt
    true_mean = at(coef1) * x0 + at(coef2) * xt
    frac = (v + 1.0) / 2.0
    model_log_var = frac * at(torch.log(betas)) + (1.0 - frac) * at(post_log_var_clipped)
    true_log_var = at(post_log_var_clipped)
    kl = 0.5 * (-1.0 + model_log_var - true_log_var + torch.exp(true_log_var - model_log_var)
                + (true_mean - model_mean) ** 2 * torch.exp(-model_log_var))
    cdf = lambda z: 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))  # noqa: E731
    inv_std = torch.exp(-0.5 * model_log_var)
    centred = x0 - model_mean
    cdf_plus, cdf_min = cdf(inv_std * (centred + 1.0 / 255)), cdf(inv_std * (centred - 1.0 / 255))
    log_probs = torch.where(x0 < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
                            torch.where(x0 > 0.999, torch.log((1.0 - cdf_min).clamp(min=1e-12)),
                                        torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
    mean_flat = lambda a: a.mean(dim=tuple(range(1, a.ndim)))  # noqa: E731
    vb = torch.where(k == 0, -mean_flat(log_probs), mean_flat(kl)) / math.log(2.0)
    mse = mean_flat((mse_target - prediction) ** 2)
    return (mse + vb * T / 1000.0).mean()


def test_hybrid_lambda_is_the_papers():
    assert HYBRID_LAMBDA == 1e-3  # Nichol & Dhariwal (2021), §3.1


@pytest.mark.parametrize("target", ["eps", "v"])
@pytest.mark.parametrize("schedule", [cosine_schedule(1000), linear_schedule(1000), cosine_schedule(4000)],
                         ids=["cosine-1000", "linear-1000", "cosine-4000"])  # T = 4000: the bound's factor T / 1000
def test_hybrid_loss_is_nichol_and_dhariwals(schedule, target):
    T = schedule.T
    g = torch.Generator().manual_seed(10)
    x0 = pixels((8, 1, 6, 6), seed=10)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 1, 2, 3, 250, 1, T - 1, T])  # the decoder (t = 1) mixed with the KL terms, both ends
    clean = get_target(target).from_x0_eps(x0, eps, t, schedule)
    # predictions near the truth and v within a few units of 0: every bin mass is far above their 1e-12 floor, so
    # the floor never acts and the two losses differ only by float64 round-off (measured on these draws: at most
    # 1.6e-13 relative, linear; the port's direct cdf difference loses digits that decoder_nll keeps)
    prediction = clean + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    ours = hybrid_loss(torch.cat([prediction, v], dim=1), x0, eps, t, schedule, target)
    theirs = improved_diffusion_hybrid(prediction, v, x0, eps, t, schedule, target)
    mse = simple_loss(prediction, x0, eps, t, schedule, target)
    assert float(theirs - mse) > 1e-3 * float(theirs)  # the bound's part is far above the tolerance below
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    # and their gradient with respect to v (the bound's alone, the prediction's being L_simple's: section 4 above);
    # max-norm relative 1e-10 (measured at most 4e-12, linear; single small entries differ more, relatively)
    leaf, v_leaf = torch.cat([prediction, v], dim=1).requires_grad_(True), v.clone().requires_grad_(True)
    hybrid_loss(leaf, x0, eps, t, schedule, target).backward()
    improved_diffusion_hybrid(prediction, v_leaf, x0, eps, t, schedule, target).backward()
    assert float((leaf.grad[:, 1:] - v_leaf.grad).abs().max()) <= 1e-10 * float(v_leaf.grad.abs().max())


# --- 11. vlb_term: the bound's term at each image's own t ---------------------------------------------------------

@pytest.mark.parametrize("learned", [False, True])
def test_vlb_term_is_decoder_nll_or_denoising_kl_row_by_row(learned):
    g = torch.Generator().manual_seed(11)
    x0 = pixels((6, 1, 4, 4), seed=11)
    t = torch.tensor([5, 1, 1000, 1, 2, 300])  # t = 1 neither first nor last
    xt = q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64), LIN)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    log_var = None
    if learned:
        v = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        log_var = learned_log_variance(v, t, LIN).requires_grad_(True)
    got = vlb_term(x0, xt, t, x0_hat, LIN, log_var)
    assert got.shape == (6,) and got.dtype == torch.float64
    want = []
    for i in range(len(t)):
        r = slice(i, i + 1)
        lv = None if log_var is None else log_var[r]
        want.append(decoder_nll(x0[r], x0_hat[r], LIN, lv) if t[i] == 1
                    else denoising_kl(x0[r], xt[r], t[r], x0_hat[r], LIN, lv))
    want = torch.cat(want)
    # every two rows' terms differ by far more than the tolerance, relative (a swapped or misplaced row would show)
    w = want.detach()
    relative = (w[:, None] - w[None, :]).abs() / torch.maximum(w[:, None].abs(), w[None, :].abs())
    assert float(relative.add(torch.eye(6, dtype=torch.float64)).min()) > 1e-3
    # float64, the same ops on the same rows: equal to round-off
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # a batch of one kind only
    later = t >= 2
    lv_later = None if log_var is None else log_var[later]
    torch.testing.assert_close(vlb_term(x0[later], xt[later], t[later], x0_hat[later], LIN, lv_later), want[later],
                               rtol=1e-12, atol=0)
    if learned:
        (grad,) = torch.autograd.grad(got.sum(), log_var)
        (grad_want,) = torch.autograd.grad(want.sum(), log_var)
        # every row's variance gets a gradient, and the same as through the row-by-row terms
        assert bool(torch.isfinite(grad).all()) and bool((grad.abs().sum(dim=(1, 2, 3)) > 0).all())
        torch.testing.assert_close(grad, grad_want, rtol=1e-12, atol=1e-15)


def test_hybrid_loss_and_vlb_term_refuse_x0_off_the_pixel_grid_at_any_t():
    g = torch.Generator().manual_seed(12)
    x0 = torch.rand(4, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1  # continuous values, not 8-bit levels
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    output = torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([5, 17, 300, 999])  # no t = 1: no decoder term, which alone needs the grid
    with pytest.raises(ValueError, match="grid"):
        hybrid_loss(output, x0, eps, t, LIN, "eps")
    xt = q_sample(x0, t, eps, LIN)
    with pytest.raises(ValueError, match="grid"):
        vlb_term(x0, xt, t, x0, LIN)
    # the same batch with x0 on the grid is accepted
    on_grid = pixels(x0.shape, seed=12)
    assert torch.isfinite(hybrid_loss(output, on_grid, eps, t, LIN, "eps"))
    assert bool(torch.isfinite(vlb_term(on_grid, xt, t, on_grid, LIN)).all())


# --- 12. log_variance_bounds needs T >= 2 ---------------------------------------------------------------------------

def test_log_variance_bounds_refuses_a_schedule_of_one_step():
    one = Schedule.from_beta(torch.tensor([0.1], dtype=torch.float64))
    assert one.T == 1
    with pytest.raises(ValueError, match="T >= 2"):
        log_variance_bounds(torch.tensor([1]), one, torch.zeros(1, 1, 2, 2))
    two = Schedule.from_beta(torch.tensor([0.1, 0.2], dtype=torch.float64))  # the smallest accepted
    lo, hi = log_variance_bounds(torch.tensor([1, 2]), two, torch.zeros(2, 1, 2, 2))
    assert bool(torch.isfinite(lo).all()) and bool((lo < hi).all())


# --- 13. the ODE likelihood's denoiser sets the variance channel aside ----------------------------------------------

@pytest.mark.parametrize("target", ["v", "eps"])
def test_continuous_denoiser_of_a_learned_variance_network_is_the_discrete_one_on_the_grid(target):
    model = tiny_learned_unet()
    cont = continuous_model_denoiser(model, LIN, target)
    disc = model_denoiser(model, LIN, target)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        for t in [1, 37, 500, 1000]:
            want = disc(x, torch.full((2,), t)).double()
            got = cont(x.double(), t / LIN.T)
            assert got.shape == want.shape == x.shape, t
            # float32 network, conversion in float64 (cont) vs float32 (disc): max-norm relative error <= 1e-5
            # (measured at most 7.6e-8)
            assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()), t
    # the variance channel differs (measured: by 2.7 (v) and 9.5 (eps) at u = 1/2), so a denoiser that took it fails
    with torch.no_grad():
        v_channel = continuous_model_denoiser(SecondChannel(model), LIN, target)(x.double(), 0.5)
        assert float((v_channel - cont(x.double(), 0.5)).abs().max()) > 1e-2


class SecondChannel(nn.Module):
    """The network's variance channel given as its prediction (what a denoiser taking the wrong channel sees)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, xt, t):
        return self.model(xt, t)[:, 1:]


# --- 14. with_fixed_variances ---------------------------------------------------------------------------------------

def test_with_fixed_variances_keeps_the_prediction_channels():
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(14))
    t = torch.tensor([1, 300, 1000])
    learned = tiny_learned_unet()
    wrapped = with_fixed_variances(LoadedModel(learned, LIN, "v", {"a": 1}))
    assert wrapped.schedule is LIN and wrapped.target == "v" and wrapped.meta == {"a": 1}
    assert {id(p) for p in wrapped.model.parameters()} == {id(p) for p in learned.parameters()}  # shared, not copied
    torch.manual_seed(0)
    plain = UNet(UNetConfig(channels=(8, 16), num_res_blocks=1, attention_heads=2, groups=4)).eval()
    with torch.no_grad():
        plain.conv_out.weight.normal_(0.0, 0.1)
        full = learned(x, t)
        out = wrapped.model(x, t)
        assert full.shape == (3, 2, 28, 28) and out.shape == (3, 1, 28, 28)
        assert torch.equal(out, full[:, :1])  # a slice of the same call: bit for bit
        assert not torch.equal(out, full[:, 1:])
        same = with_fixed_variances(LoadedModel(plain, LIN, "v", {})).model(x, t)
        assert torch.equal(same, plain(x, t)) and float(same.abs().max()) > 0.1


# --- 15. a tiny hybrid-loss run: resumption, loading, the ELBO, and init_from's refusal ------------------------------

# the tiny run of tests/test_training.py, with learned variances and the hybrid loss
TINY_LV = replace(TINY, model=replace(TINY.model, learn_variance=True), loss="hybrid")


def train_full_and_resumed(config: TrainConfig, root, images):
    """``full``: 4 steps in one go; ``resumed``: 2 steps, then resumed to 4 (one thread each, for bit-exactness).

    Returns the two checkpoints' paths and the tensors of the resumed run at step 2."""
    full = train(config, root / "full", steps=4, images=images, progress=False, threads=1)
    at_2 = read_checkpoint(train(config, root / "resumed", steps=2, images=images, progress=False, threads=1)).tensors
    resumed = train(config, root / "resumed", steps=4, images=images, progress=False, threads=1)
    return full, resumed, at_2


@pytest.fixture(scope="module")
def tiny_hybrid_runs(tmp_path_factory):
    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return (*train_full_and_resumed(TINY_LV, tmp_path_factory.mktemp("hybrid"), images), images)


def test_a_hybrid_run_resumes_bit_exactly_and_loads(tiny_hybrid_runs):
    full, resumed, at_2, images = tiny_hybrid_runs
    a, b = read_checkpoint(full).tensors, read_checkpoint(resumed).tensors
    ema = [k for k in a if k.startswith("ema.")]
    assert ema and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in ema)  # one thread, the same draws: no tolerance
    assert not all(torch.equal(a[k], at_2[k]) for k in ema)  # the comparison can fail: steps 3-4 moved the weights
    loaded = load_model(str(full))
    assert loaded.model.config.learn_variance and loaded.target == TINY_LV.target
    x = to_model(images[:2])
    assert loaded.model(x, torch.tensor([1, 50])).shape == (2, 2, 28, 28)
    result = elbo_bits_per_dim(loaded, images[:4], progress=False, n_strata=3)
    assert math.isfinite(result["bits_per_dim"]) and result["n_images"] == 4
    # its learned variances are used: 4 steps leave v near 0 (measured 4e-4..4e-3), the geometric mean of the two
    # ends, and the bound with the fixed ones on the same draws differs (measured 8.97 vs 10.04 bits/dim)
    fixed = elbo_bits_per_dim(with_fixed_variances(loaded), images[:4], progress=False, n_strata=3)
    assert abs(result["bits_per_dim"] - fixed["bits_per_dim"]) > 0.1


def test_init_from_refuses_to_drop_learned_variances(tiny_hybrid_runs):
    full = tiny_hybrid_runs[0]
    fixed = replace(TINY_LV, model=replace(TINY_LV.model, learn_variance=False), loss="simple", init_from=str(full))
    with pytest.raises(ValueError, match="learn_variance"):
        _init_from(UNet(fixed.model), fixed)
    # the check can fail: the same checkpoint starts a learned-variance run, whose weights are then its EMA weights
    same = replace(TINY_LV, init_from=str(full))
    model = UNet(same.model)
    _init_from(model, same)
    ema = read_checkpoint(full).tensors
    assert all(torch.equal(p, ema[f"ema.{k}"]) for k, p in model.state_dict().items())
