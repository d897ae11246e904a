"""Learned reverse variances (Nichol & Dhariwal 2021, eqs. 15-16): ddpm_lib.core.variance and its users.

Each test compares two constructions: the library's value against one built here from the schedule's
tensors, ``torch.distributions`` or the library's other (separately tested) pieces. Everything runs on
tiny tensors or the small shipped ``mnist`` network on 8 images; the whole file takes a few seconds on
one CPU thread.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:randomly tests/test_learned_variance.py``
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from ddpm_lib.checkpoint import LoadedModel, load_model
from ddpm_lib.core.forward import q_sample
from ddpm_lib.core.gaussian import gaussian_kl
from ddpm_lib.core.likelihood import BIN_WIDTH, decoder_nll, denoising_kl
from ddpm_lib.core.losses import HYBRID_LAMBDA, LOSSES, hybrid_loss, simple_loss
from ddpm_lib.core.posterior import posterior_mean
from ddpm_lib.core.schedules import cosine_schedule, linear_schedule
from ddpm_lib.core.targets import get_target
from ddpm_lib.core.variance import learned_log_variance, log_variance_bounds, split_output
from ddpm_lib.data import load_mnist, to_model
from ddpm_lib.evaluation import elbo_bits_per_dim
from ddpm_lib.models.unet import UNet, UNetConfig
from ddpm_lib.sampling.denoisers import model_denoiser
from ddpm_lib.training.ddpm import PRESETS, TrainConfig, _init_from

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
    # the comparison can fail: the geometric mean of the two ends (v = 0) gives a different bound
    middle = bpd(FixedVariancesAsLearned(net, 0.0, 0.0))
    assert abs(middle[0] - fixed[0]) > 1e-3  # measured 0.034 bits/dim


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
