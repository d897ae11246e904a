"""The checks of the chapter "My samples are noise", each against the mistake it exists for.

* pixels in [0, 1]: to_model refuses floats, check_model_range refuses data with no value below 0;
* another schedule at sampling than at training: the loop refuses a denoiser that converts with another
  schedule (check_schedule), by any sampler, through the wrappers;
* a standard deviation where the variance belongs: one step from a fixed x_t, repeated, has the posterior
  variance (eqs. posterior-variance, ddim-step) on the exact Gaussian-mixture toy; both slips fail;
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
from ddpm_lib.sampling import (check_schedule, clip_denoiser, ddim_step, ddim_update, ddpm_step, denoiser_from_score,
                               model_denoiser, sample, sampler_plan, schedule_of, standard_normal)
from ddpm_lib.toys import GaussianMixture

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


# --- 3. a standard deviation where the variance belongs ----------------------------------------------------

TOY_SCHEDULE = cosine_schedule(1000)
TOY = GaussianMixture(torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64),
                      torch.tensor([0.3, 0.5], dtype=torch.float64))
TOY_DENOISER = denoiser_from_score(lambda x, t: TOY.noised(int(t[0]), TOY_SCHEDULE).score(x), TOY_SCHEDULE)
N_REPEATS = 20_000
K_SE = 5


def slipped_step(denoiser, x, t, t_prev, schedule, generator=None, state=None, *, power):
    """Planted: the ancestral step (DDIM, eta = 1) with the noise coefficient var**power instead of var**0.5."""
    ab, ab_prev = gather64(schedule.alpha_bar, t, x), gather64(schedule.alpha_bar, t_prev, x)
    var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    noise = standard_normal(x, generator) * (var ** (power - 0.5)).to(x)
    return ddim_update(x, t, t_prev, denoiser(x, t), noise, schedule, eta=1.0), None


def step_variance_within(step, t: int, s: int, seed: int) -> tuple[bool, str]:
    """Take ``step`` from one fixed x_t to ``s``, N_REPEATS times; is the variance of x_s the posterior variance?

    Given x_t the step is x0_hat-dependent mean plus noise, so the variance across repeats is the noise's:
    the exact sigma^2 = (1 - ab_s)/(1 - ab_t) (1 - ab_t/ab_s) (eq. posterior-variance for s = t - 1, eq. ddim-step
    with eta = 1). Allowed: K_SE standard errors of a Gaussian sample variance, sigma^2 sqrt(2 / (n - 1)), per
    coordinate.
    """
    ab, ab_s = TOY_SCHEDULE.alpha_bar[t].item(), TOY_SCHEDULE.alpha_bar[s].item()
    exact = (1 - ab_s) / (1 - ab) * (1 - ab / ab_s)
    x_t = torch.tensor([[0.3, -0.2]], dtype=torch.float64).expand(N_REPEATS, 2)
    out, _ = step(TOY_DENOISER, x_t, torch.full((N_REPEATS,), t), torch.full((N_REPEATS,), s), TOY_SCHEDULE,
                  torch.Generator().manual_seed(seed), None)
    z = ((out.var(dim=0) - exact).abs() / (exact * math.sqrt(2 / (N_REPEATS - 1)))).max().item()
    return z <= K_SE, f"{z:.1f} standard errors from sigma^2 = {exact:.4g}"


@pytest.mark.parametrize("t, s", [(2, 1), (100, 99), (500, 499), (900, 899), (500, 450)])
def test_the_step_variance_is_the_posterior_variance(t, s):
    steps = {"ddim-eta1": partial(ddim_step, eta=1.0)} | ({"ddpm": ddpm_step} if s == t - 1 else {})
    for seed, (name, step) in enumerate(steps.items()):
        ok, msg = step_variance_within(step, t, s, seed)
        assert ok, f"{name}, {t} -> {s}: {msg}"
    for power in (1.0, 0.25):  # the variance used as the std, the std used as the variance
        ok, msg = step_variance_within(partial(slipped_step, power=power), t, s, 10)
        assert not ok, f"the planted slip var**{power} passed, {t} -> {s}: {msg}"


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
