"""Classifier-free guidance (ddpm_lib.sampling.guidance), in float64 on a toy whose denoisers are exact.

* convert_guidance maps Ho & Salimans' w, the libraries' guidance_scale g = w + 1 and Dhariwal & Nichol's
  classifier scale s = w + 1, and refuses unknown conventions;
* classifier_free_guidance is Ho & Salimans' eq. 6 (book eq. cfg) written in eps, and its classifier scale is
  the implicit classifier's: the guided score is score_u + s (score_c - score_u);
* it refuses w < -1 (the wrong sign) and denoisers of two schedules, and keeps their schedule;
* on three Gaussian classes in the plane, guidance lands more samples in the requested class than
  conditioning alone, w = 0 read as g (the unconditional model) about a third, and the flipped sign fewer.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib.core.schedules import cosine_schedule, linear_schedule
from ddpm_lib.core.targets import eps_from_x0, x0_from_eps
from ddpm_lib.sampling import (GUIDANCE_CONVENTIONS, classifier_free_guidance, convert_guidance, denoiser_from_score, sample,
                               sampler_plan, schedule_of, score_from_denoiser)
from ddpm_lib.toys import GaussianMixture

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEDULE = cosine_schedule(1000)
ANGLES = torch.tensor([90.0, 210.0, 330.0], dtype=torch.float64) * math.pi / 180
MEANS = torch.stack([ANGLES.cos(), ANGLES.sin()], dim=1)
CLASSES = GaussianMixture(torch.full((3,), 1 / 3, dtype=torch.float64), MEANS, torch.full((3,), 0.5, dtype=torch.float64))


def exact_denoiser(mixture: GaussianMixture, schedule=SCHEDULE):
    return denoiser_from_score(lambda x, t: mixture.noised(int(t[0]), schedule).score(x), schedule)


UNCONDITIONAL = exact_denoiser(CLASSES)
CONDITIONAL = exact_denoiser(GaussianMixture(torch.ones(1, dtype=torch.float64), MEANS[:1], torch.full((1,), 0.5, dtype=torch.float64)))


def test_convert_guidance_maps_the_three_conventions():
    assert convert_guidance(1.0, "guidance_scale") == 0.0  # g = 1: the conditional model, w = 0
    assert convert_guidance(0.0, "guidance_scale") == -1.0  # g = 0: the unconditional model
    assert convert_guidance(3.0, "w", "guidance_scale") == 4.0
    assert convert_guidance(2.5, "classifier_scale", "guidance_scale") == 2.5
    for source in GUIDANCE_CONVENTIONS:
        for target in GUIDANCE_CONVENTIONS:
            assert convert_guidance(convert_guidance(1.75, source, target), target, source) == 1.75
    with pytest.raises(ValueError, match="unknown guidance convention"):
        convert_guidance(1.0, "cfg_scale")
    with pytest.raises(ValueError, match="finite"):
        convert_guidance(float("nan"), "w")


def _points(n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return x, torch.full((n,), int(torch.randint(1, 1001, (1,), generator=gen)))


@pytest.mark.parametrize("w", [-1.0, -0.5, 0.0, 1.0, 7.5])
def test_guidance_is_eq_6_written_in_eps(w):
    for seed in range(5):
        x, t = _points(seed=seed)
        eps_c = eps_from_x0(x, t, CONDITIONAL(x, t), SCHEDULE)
        eps_u = eps_from_x0(x, t, UNCONDITIONAL(x, t), SCHEDULE)
        want = x0_from_eps(x, t, (1 + w) * eps_c - w * eps_u, SCHEDULE)
        got = classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w)(x, t)
        # float64: the two routes differ by round-off, which x0_from_eps multiplies by up to 1/sqrt(alpha_bar_T) = 2e4
        # (x and x0_hat are O(1)); measured below 1e-12 over 1,000 draws of (x, t, w). 1e-8 leaves room for other
        # platforms and is far below the O(1) difference that the planted sign flip makes
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-8), f"w = {w}, t = {int(t[0])}"
        if w != 0.0:  # planted: the sign of w flipped, (1 - w) x0_c + w x0_u, fails the same comparison
            planted = (1 - w) * CONDITIONAL(x, t) + w * UNCONDITIONAL(x, t)
            assert not torch.allclose(planted, want, rtol=1e-9, atol=1e-8)


def test_the_ends_are_the_conditional_and_the_unconditional_denoiser():
    x, t = _points()
    assert torch.equal(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, 0.0)(x, t), CONDITIONAL(x, t))
    assert torch.equal(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, -1.0)(x, t), UNCONDITIONAL(x, t))


@pytest.mark.parametrize("s", [1.0, 2.0, 5.0])
def test_the_classifier_scale_is_that_of_the_implicit_classifier(s):
    # Dhariwal & Nichol: score_u + s grad log p(c | x_t), with log p(c | x_t) = log p(x_t | c) - log p(x_t) + const
    x, t = _points(seed=3)
    score_c = score_from_denoiser(CONDITIONAL, SCHEDULE)(x, t)
    score_u = score_from_denoiser(UNCONDITIONAL, SCHEDULE)(x, t)
    want = score_u + s * (score_c - score_u)
    guided = classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, convert_guidance(s, "classifier_scale"))
    got = score_from_denoiser(guided, SCHEDULE)(x, t)
    scale = want.abs().max()
    assert torch.allclose(got, want, rtol=0, atol=1e-9 * scale)
    # the off-by-one reading, s taken for w, gives another score
    off = score_from_denoiser(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, s), SCHEDULE)(x, t)
    assert not torch.allclose(off, want, rtol=0, atol=1e-3 * scale)


@pytest.mark.parametrize("w", [-1.5, -3.0, float("nan"), float("inf")])
def test_guidance_refuses_a_w_below_minus_one(w):
    with pytest.raises(ValueError, match="must be >= -1"):
        classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w)


def test_guidance_keeps_the_schedule_and_refuses_two():
    assert schedule_of(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, 2.0)) is SCHEDULE
    other = exact_denoiser(CLASSES, linear_schedule(1000))
    with pytest.raises(ValueError, match="same network and schedule"):
        classifier_free_guidance(CONDITIONAL, other, 2.0)
    # a hand-written denoiser says nothing: the other's schedule is kept
    assert schedule_of(classifier_free_guidance(lambda x, t: CONDITIONAL(x, t), UNCONDITIONAL, 2.0)) is SCHEDULE


def _share_in_class_0(denoiser) -> float:
    step, timesteps = sampler_plan("ddim", 1000, 20)
    x_T = torch.randn((2000, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = sample(denoiser, SCHEDULE, step, x_T, timesteps)
    return (CLASSES._log_resp(x)[0].argmax(1) == 0).double().mean().item()


def test_guidance_lands_samples_in_the_class_and_the_mistakes_do_not():
    # 2,000 samples: the binomial standard error of a share is at most 1.1 percentage points; the bounds
    # below are 3 of them or more from the measured shares (0.95, 1.0, 0.33, 0.01)
    conditional = _share_in_class_0(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, 0.0))
    guided = _share_in_class_0(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, convert_guidance(4.0, "guidance_scale")))
    w_as_g = _share_in_class_0(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, convert_guidance(0.0, "guidance_scale")))
    flipped = _share_in_class_0(lambda x, t: -2.0 * CONDITIONAL(x, t) + 3.0 * UNCONDITIONAL(x, t))
    assert 0.85 <= conditional <= 0.97 and guided >= 0.99 and guided > conditional
    assert 0.29 <= w_as_g <= 0.37  # the class prior, 1/3
    assert flipped <= 0.05
