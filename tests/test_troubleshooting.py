"""The checks of the chapter "My samples are noise", each against the mistake it exists for.

* pixels in [0, 1]: to_model refuses floats, check_model_range refuses data with no value below 0;
* another schedule at sampling than at training: the loop refuses a denoiser that converts with another
  schedule (check_schedule), by any sampler, through the wrappers, and accepts the same schedule computed
  again (the shipped checkpoint's betas against a fresh cosine_schedule(1000), equal to round-off);
* a standard deviation where the variance belongs: one step from a fixed x_t, taken twice with two known
  noises, has exactly the noise coefficient sqrt of the posterior variance (eqs. posterior-variance,
  ddim-step); both slips fail, and so does alpha_bar taken one index off;
* no clipping: check_model_range refuses samples outside [-1, 1];
* raw instead of EMA weights: load_model says that a shipped file holds only the EMA, and loads the raw
  weights of a file that has them.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from ddpm_lib.checkpoint import load_model, read_checkpoint, resolve_checkpoint, save_checkpoint
from ddpm_lib.core.schedules import Schedule, cosine_schedule, gather64, linear_schedule
from ddpm_lib.data import check_model_range, to_model
from ddpm_lib.sampling import (check_schedule, clip_denoiser, ddim_step, ddim_update, ddpm_step, model_denoiser, sample,
                               sampler_plan, schedule_of, standard_normal)

pytestmark = pytest.mark.usefixtures("single_thread")


def _digits() -> torch.Tensor:
    """Four uint8 'digits': a black background and a white bar at a different place in each."""
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    for i in range(4):
        images[i, 4 + 5 * i : 8 + 5 * i, 6:22] = 255
    return images


# --- 1. pixels in [0, 1] -------------------------------------------------------------------------------


def test_the_range_checks_refuse_zero_one_pixels():
    digits = _digits()
    zero_one = digits[:, None].float() / 255
    with pytest.raises(TypeError, match=r"uint8 pixels in 0..255.*\(x \* 255\)"):
        to_model(zero_one[:, 0])
    with pytest.raises(ValueError, match=r"look like pixels in \[0, 1\].*to_model.*2 \* x - 1"):
        check_model_range(zero_one, "x0")
    assert check_model_range(to_model(digits), "x0") is not None  # the right scaling passes
    assert check_model_range(2 * zero_one - 1, "x0") is not None  # and so does the fix the message names
    with pytest.raises(ValueError, match="leave the model's range"):  # not scaled at all
        check_model_range(digits[:, None].float(), "x0")
    with pytest.raises(TypeError, match="to_model"):
        check_model_range(digits, "x0")
    with pytest.raises(ValueError, match="NaN"):
        check_model_range(torch.full((2, 1, 28, 28), float("nan")), "x0")


# --- 4. no clipping --------------------------------------------------------------------------------------


def test_the_range_checks_refuse_unclipped_samples():
    x = to_model(_digits())
    x[0, 0, 0, 0] = 1.6  # one pixel of an unclipped sample
    with pytest.raises(ValueError, match="clip_denoiser"):
        check_model_range(x, "samples")
    assert check_model_range(x, "samples", tol=0.7) is not None
    assert check_model_range(x.clamp(-1, 1), "samples") is not None


# --- 2. another schedule at sampling ---------------------------------------------------------------------


def _stand_in_network(xt, t):
    return torch.zeros_like(xt)  # predicts eps = 0: any network will do, the check looks at the schedule


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver-2m", "heun"])
@pytest.mark.parametrize("other", [linear_schedule(1000), cosine_schedule(500), cosine_schedule(1000, s=0.0)],
                         ids=["linear", "T500", "cosine-s0"])
def test_the_loop_refuses_a_denoiser_of_another_schedule(sampler, other):
    trained = cosine_schedule(1000)
    denoiser = clip_denoiser(model_denoiser(_stand_in_network, trained, "eps"))
    step, timesteps = sampler_plan(sampler, other.T, None if sampler == "ddpm" else 5)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"sampled with the schedule it was trained with.*load_model\(\.\.\.\)\.schedule"):
        sample(denoiser, other, step, x_T, timesteps, torch.Generator().manual_seed(1))
    # the same schedule, even rebuilt as another object, is accepted
    step, timesteps = sampler_plan(sampler, 1000, None if sampler == "ddpm" else 5)
    if sampler != "ddpm":
        out = sample(denoiser, cosine_schedule(1000), step, x_T, timesteps, torch.Generator().manual_seed(1))
        assert out.shape == x_T.shape


def test_check_schedule_reads_the_attribute_and_passes_what_says_nothing():
    cosine = cosine_schedule(1000)
    den = model_denoiser(_stand_in_network, cosine, "v")
    assert schedule_of(den) is cosine and schedule_of(clip_denoiser(den)) is cosine
    check_schedule(den, cosine)
    check_schedule(den, Schedule(cosine.beta.clone(), name="renamed"))  # equal betas are the same schedule
    check_schedule(lambda x, t: x, linear_schedule(1000))  # a hand-written denoiser is not checked
    planted = Schedule(torch.cat([cosine.beta[:-1], cosine.beta[-1:] * 0.999]))  # one beta of a thousand differs
    with pytest.raises(ValueError):
        check_schedule(den, planted)


def test_the_checkpoint_schedule_is_accepted_with_a_fresh_cosine_schedule():
    # The shipped checkpoint stores its cosine betas; a fresh cosine_schedule(1000) computes them again and may differ
    # by round-off (measured: 2.2e-16 at four t on the machine that wrote this, relative 1.1e-13). That is the same
    # schedule: sampling the checkpoint's denoiser with it must go through, both ways round.
    stored = load_model("mnist").schedule
    fresh = cosine_schedule(1000)
    check_schedule(model_denoiser(_stand_in_network, stored, "v"), fresh)
    check_schedule(model_denoiser(_stand_in_network, fresh, "v"), stored)
    step, timesteps = sampler_plan("ddim", 1000, 3)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert sample(model_denoiser(_stand_in_network, stored, "v"), fresh, step, x_T, timesteps).shape == x_T.shape
    # planted: one beta_t changed by a relative 1e-3 (at the smallest beta, in the middle, at t = T) is refused, and
    # the message says where the two schedules differ (their reprs look alike)
    for t in (1, 352, 1000):
        beta = stored.beta.clone()
        beta[t] *= 1 + 1e-3
        with pytest.raises(ValueError, match=rf"differ by up to .* \(at t = {t},"):
            check_schedule(model_denoiser(_stand_in_network, Schedule(beta, name="cosine"), "v"), fresh)


# --- 3. a standard deviation where the variance belongs ----------------------------------------------------

TOY_SCHEDULE = cosine_schedule(1000)
N_POINTS = 500
NOISE_TOL = 1e-12


def any_denoiser(xt, t):
    """A denoiser that is not the true one: with x_t fixed its output is the same in both runs and cancels."""
    return torch.tanh(xt) * (1 - t.reshape(-1, 1) / 2000)


def slipped_step(denoiser, x, t, t_prev, schedule, generator=None, state=None, *, power):
    """Planted: the ancestral step (DDIM, eta = 1) with the noise coefficient var**power instead of var**0.5.

    ``ddim_update`` multiplies the noise by sqrt(var), so the noise is rescaled by var**(power - 1/2) where var > 0
    and by 0 where var = 0 (a last step to t = 0: written as var**(power - 1/2) alone that is 0**(-1/4) = inf, and
    0 * inf = NaN, an artefact of the rescaling rather than of the slip).
    """
    ab, ab_prev = gather64(schedule.alpha_bar, t, x), gather64(schedule.alpha_bar, t_prev, x)
    var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    noise = standard_normal(x, generator) * torch.where(var > 0, var ** (power - 0.5), 0.0).to(x)
    return ddim_update(x, t, t_prev, denoiser(x, t), noise, schedule, eta=1.0), None


def off_by_one_step(denoiser, x, t, t_prev, schedule, generator=None, state=None):
    """Planted: the ancestral step whose variance reads alpha_bar one index too far (t + 1 and t_prev + 1)."""
    var = lambda a, b: (1 - gather64(schedule.alpha_bar, b, x)) / (1 - gather64(schedule.alpha_bar, a, x)) * (  # noqa: E731
        1 - gather64(schedule.alpha_bar, a, x) / gather64(schedule.alpha_bar, b, x))
    noise = standard_normal(x, generator) * (var(t + 1, t_prev + 1) / var(t, t_prev)).sqrt().to(x)
    return ddim_update(x, t, t_prev, denoiser(x, t), noise, schedule, eta=1.0), None


def noise_coefficient_error(step, t: int, s: int) -> float:
    """Take ``step`` from one fixed x_t to ``s`` twice, with noises z_a and z_b; how far is it from sigma exactly?

    Given x_t a step is a mean (whatever the denoiser says) plus sigma z, and it draws z with ``standard_normal``
    from the generator it is given, so drawing again from the same seeds gives z_a and z_b, and
    x_a - x_b = sigma (z_a - z_b) exactly, with sigma^2 = (1 - ab_s)/(1 - ab_t) (1 - ab_t/ab_s) (eq.
    posterior-variance for s = t - 1, eq. ddim-step with eta = 1). Returns max |x_a - x_b - sigma (z_a - z_b)|:
    the outputs are O(1) in float64, so the right step leaves round-off of about 1e-15 (NOISE_TOL = 1e-12 leaves
    room); a wrong coefficient leaves |sigma' - sigma| |z_a - z_b|.
    """
    ab, ab_s = TOY_SCHEDULE.alpha_bar[t].item(), TOY_SCHEDULE.alpha_bar[s].item()
    sigma = math.sqrt((1 - ab_s) / (1 - ab) * (1 - ab / ab_s))
    x_t = torch.randn(N_POINTS, 2, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    tt, ss = torch.full((N_POINTS,), t), torch.full((N_POINTS,), s)
    x_a, _ = step(any_denoiser, x_t, tt, ss, TOY_SCHEDULE, torch.Generator().manual_seed(1), None)
    x_b, _ = step(any_denoiser, x_t, tt, ss, TOY_SCHEDULE, torch.Generator().manual_seed(2), None)
    z_a = standard_normal(x_t, torch.Generator().manual_seed(1))
    z_b = standard_normal(x_t, torch.Generator().manual_seed(2))
    return float((x_a - x_b - sigma * (z_a - z_b)).abs().max())


@pytest.mark.parametrize("t, s", [(2, 1), (100, 99), (500, 499), (900, 899), (500, 450)])
def test_the_step_noise_is_the_posterior_standard_deviation(t, s):
    steps = {"ddim-eta1": partial(ddim_step, eta=1.0), "slipped_step, power 1/2": partial(slipped_step, power=0.5)}
    steps |= {"ddpm": ddpm_step} if s == t - 1 else {}
    for name, step in steps.items():
        err = noise_coefficient_error(step, t, s)
        assert err <= NOISE_TOL, f"{name}, {t} -> {s}: off by {err:.3g}"
    planted = {"var**1 (the variance as the std)": partial(slipped_step, power=1.0),
               "var**0.25 (the std as the variance)": partial(slipped_step, power=0.25),
               "alpha_bar one index off": off_by_one_step}
    for name, step in planted.items():
        err = noise_coefficient_error(step, t, s)
        assert err > 1e3 * NOISE_TOL, f"the planted {name} passed, {t} -> {s}: off by only {err:.3g}"


def test_the_off_by_one_slip_is_below_what_a_monte_carlo_check_sees():
    # why the check above is exact: alpha_bar one index off changes sigma^2 at t = 500 -> 450 by less than 1%, while
    # a Monte Carlo variance from 20,000 repeats within 5 standard errors allows 5 sqrt(2 / 19,999) = 5% relative
    ab = TOY_SCHEDULE.alpha_bar.double()
    var = lambda a, b: (1 - ab[b]) / (1 - ab[a]) * (1 - ab[a] / ab[b])  # noqa: E731
    change = abs(float(var(501, 451) / var(500, 450)) - 1)
    assert 0 < change < 0.01 < 5 * math.sqrt(2 / 19_999)


# --- 5. raw instead of EMA weights ---------------------------------------------------------------------


def test_load_model_says_the_shipped_files_hold_only_the_ema(tmp_path):
    with pytest.raises(ValueError, match=r"only the EMA weights.*weights='ema'"):
        load_model("mnist-cpu", weights="model")
    # a file with raw weights (as a training run's checkpoint has) loads them
    ckpt = read_checkpoint(resolve_checkpoint("mnist-cpu"))
    raw = {f"model.{k}": v + 0.01 for k, v in ckpt.prefixed("ema").items()}
    meta = {k: v for k, v in ckpt.meta.items() if k != "format"}
    path = tmp_path / "run.safetensors"
    save_checkpoint(path, {**ckpt.tensors, **raw}, meta)
    loaded_raw, loaded_ema = load_model(path, weights="model"), load_model(path)
    first = next(iter(ckpt.prefixed("ema")))
    assert torch.equal(loaded_raw.model.state_dict()[first], raw[f"model.{first}"])
    assert torch.equal(loaded_ema.model.state_dict()[first], ckpt.tensors[f"ema.{first}"])
