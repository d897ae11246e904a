"""Classifier-free guidance (ddpm_lib.sampling.guidance), in float64 on a toy whose denoisers are exact.

* convert_guidance maps Ho & Salimans' w, the libraries' guidance_scale g = w + 1, Dhariwal & Nichol's
  classifier scale s = w + 1 on the unconditional model and s = w on a conditional one, and refuses unknown
  conventions;
* classifier_free_guidance is Ho & Salimans' eq. 6 (book eq. cfg) written in eps, and its classifier scales are
  the implicit classifier's: the guided score is score_u + s (score_c - score_u), or score_c + s (score_c - score_u);
* it takes w by keyword only, refuses w < -1 (a flipped sign when |w| > 1; a flipped w in (0, 1] passes, as its
  docstring says) and denoisers of two schedules, and keeps their schedule;
* GaussianMixture.responsibilities, which says where a sample landed, is Bayes' rule;
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
    assert convert_guidance(2.5, "classifier_scale_conditional") == 2.5  # on a conditional model s = w
    assert convert_guidance(2.5, "classifier_scale_conditional", "classifier_scale") == 3.5
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
        got = classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=w)(x, t)
        # float64: the two routes differ by round-off, which x0_from_eps multiplies by up to 1/sqrt(alpha_bar_T) = 2e4
        # (x and x0_hat are O(1)); measured below 1e-12 over 1,000 draws of (x, t, w). 1e-8 leaves room for other
        # platforms and is far below the O(1) difference that the planted sign flip makes
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-8), f"w = {w}, t = {int(t[0])}"
        if w != 0.0:  # planted: the sign of w flipped, (1 - w) x0_c + w x0_u, fails the same comparison
            planted = (1 - w) * CONDITIONAL(x, t) + w * UNCONDITIONAL(x, t)
            assert not torch.allclose(planted, want, rtol=1e-9, atol=1e-8)


def test_the_ends_are_the_conditional_and_the_unconditional_denoiser():
    x, t = _points()
    assert torch.equal(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=0.0)(x, t), CONDITIONAL(x, t))
    assert torch.equal(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=-1.0)(x, t), UNCONDITIONAL(x, t))


@pytest.mark.parametrize("s", [1.0, 2.0, 5.0])
def test_the_classifier_scale_is_that_of_the_implicit_classifier(s):
    # Dhariwal & Nichol: score_u + s grad log p(c | x_t), with log p(c | x_t) = log p(x_t | c) - log p(x_t) + const
    x, t = _points(seed=3)
    score_c = score_from_denoiser(CONDITIONAL, SCHEDULE)(x, t)
    score_u = score_from_denoiser(UNCONDITIONAL, SCHEDULE)(x, t)
    want = score_u + s * (score_c - score_u)
    guided = classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=convert_guidance(s, "classifier_scale"))
    got = score_from_denoiser(guided, SCHEDULE)(x, t)
    scale = want.abs().max()
    assert torch.allclose(got, want, rtol=0, atol=1e-9 * scale)
    # the off-by-one reading, s taken for w, gives another score
    off = score_from_denoiser(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=s), SCHEDULE)(x, t)
    assert not torch.allclose(off, want, rtol=0, atol=1e-3 * scale)
    # on a conditional model (Dhariwal & Nichol guide those too; Ho & Salimans' eq. 2): score_c + s grad log p(c | x_t)
    want_c = score_c + s * (score_c - score_u)
    guided_c = classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=convert_guidance(s, "classifier_scale_conditional"))
    assert torch.allclose(score_from_denoiser(guided_c, SCHEDULE)(x, t), want_c, rtol=0, atol=1e-9 * want_c.abs().max())
    # planted: the unconditional model's convention used for the conditional one (w = s - 1) gives another score
    assert not torch.allclose(score_from_denoiser(guided, SCHEDULE)(x, t), want_c, rtol=0, atol=1e-3 * want_c.abs().max())


@pytest.mark.parametrize("w", [-1.5, -3.0, float("nan"), float("inf")])
def test_guidance_refuses_a_w_below_minus_one(w):
    with pytest.raises(ValueError, match="must be >= -1"):
        classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=w)


def test_w_is_keyword_only():
    # planted: a library's g = 4 passed by position, where it would silently be taken for w (guided one step too far)
    with pytest.raises(TypeError):
        classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, 4.0)


def test_the_sign_guard_sees_a_flip_only_when_w_exceeds_one():
    # the limit the docstring states: a flipped w = 3 is refused, a flipped w = 0.5 (-0.5) is a legitimate weight
    with pytest.raises(ValueError, match="must be >= -1"):
        classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=-3.0)
    flipped_small = classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=-0.5)
    # ... which lands far fewer samples in the class than the w = 0.5 meant (measured 0.652 against 0.9995; 0.946 for w = 0)
    meant = _share_in_class_0(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=0.5))
    assert _share_in_class_0(flipped_small) <= meant - 0.2


def test_guidance_keeps_the_schedule_and_refuses_two():
    assert schedule_of(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=2.0)) is SCHEDULE
    other = exact_denoiser(CLASSES, linear_schedule(1000))
    with pytest.raises(ValueError, match="same network and schedule"):
        classifier_free_guidance(CONDITIONAL, other, w=2.0)
    # the same schedule computed again (equal to round-off, another object) is accepted
    classifier_free_guidance(CONDITIONAL, exact_denoiser(CLASSES, cosine_schedule(1000)), w=2.0)
    # a hand-written denoiser says nothing: the other's schedule is kept
    assert schedule_of(classifier_free_guidance(lambda x, t: CONDITIONAL(x, t), UNCONDITIONAL, w=2.0)) is SCHEDULE


def _share_in_class_0(denoiser) -> float:
    step, timesteps = sampler_plan("ddim", 1000, 20)
    x_T = torch.randn((2000, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = sample(denoiser, SCHEDULE, step, x_T, timesteps)
    return (CLASSES.responsibilities(x).argmax(1) == 0).double().mean().item()


def test_responsibilities_are_bayes_rule():
    x = 2 * torch.randn(50, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    # another route: the weighted component densities from torch.distributions, normalised
    joint = torch.stack([CLASSES.weights[k] * torch.distributions.MultivariateNormal(
        MEANS[k], CLASSES.stds[k] ** 2 * torch.eye(2, dtype=torch.float64)).log_prob(x).exp() for k in range(3)], dim=1)
    want = joint / joint.sum(1, keepdim=True)
    got = CLASSES.responsibilities(x)
    assert got.shape == (50, 3) and got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=0, atol=1e-12)  # float64 probabilities of size <= 1: round-off ~1e-16
    # planted: the weights left out (the likelihoods normalised) differ once the weights are unequal
    lopsided = GaussianMixture(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), MEANS, CLASSES.stds)
    unweighted = torch.softmax(torch.stack([-((x - MEANS[k]) ** 2).sum(1) / (2 * 0.25) for k in range(3)], 1), dim=1)
    assert not torch.allclose(lopsided.responsibilities(x), unweighted, rtol=0, atol=1e-3)


def test_guidance_lands_samples_in_the_class_and_the_mistakes_do_not():
    # 2,000 samples. Measured shares: 0.946, 1.0, 0.327, 0.011; each bound below is at least 3.5 of that share's own
    # binomial standard error sqrt(p (1 - p) / n) away from it (0.97 is 4.7 of 0.5 pp above 0.946, 0.29 and 0.37
    # 3.5 and 4.1 of 1.0 pp from 0.327). (The largest standard error, at p = 1/2, is 1.1 percentage points.)
    conditional = _share_in_class_0(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=0.0))
    guided = _share_in_class_0(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=convert_guidance(4.0, "guidance_scale")))
    w_as_g = _share_in_class_0(classifier_free_guidance(CONDITIONAL, UNCONDITIONAL, w=convert_guidance(0.0, "guidance_scale")))
    flipped = _share_in_class_0(lambda x, t: -2.0 * CONDITIONAL(x, t) + 3.0 * UNCONDITIONAL(x, t))
    assert 0.85 <= conditional <= 0.97 and guided >= 0.99 and guided > conditional
    assert 0.29 <= w_as_g <= 0.37  # the class prior, 1/3
    assert flipped <= 0.05


# --- classifier guidance with an exact classifier, and the notes' gamma (book chapter "Guidance, exact on a toy") ---


def _two_class_toy():
    from ddpm_lib.toys import ConditionalGaussianMixture

    c0 = GaussianMixture(torch.tensor([0.5, 0.5], dtype=torch.float64), MEANS[:2], torch.full((2,), 0.5, dtype=torch.float64))
    c1 = GaussianMixture(torch.ones(1, dtype=torch.float64), MEANS[2:], torch.full((1,), 0.5, dtype=torch.float64))
    return ConditionalGaussianMixture((c0, c1), torch.tensor([0.6, 0.4], dtype=torch.float64))


def test_gamma_is_w_plus_one():
    assert GUIDANCE_CONVENTIONS["gamma"] == 1.0
    assert convert_guidance(1.0, "gamma") == 0.0  # gamma = 1: the conditional model
    assert convert_guidance(0.0, "gamma") == -1.0  # gamma = 0: the unconditional model
    assert convert_guidance(3.0, "gamma", "guidance_scale") == 3.0


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_classifier_guidance_with_the_exact_classifier(scale):
    from ddpm_lib.sampling import classifier_guidance

    toy = _two_class_toy()
    uncond = exact_denoiser(toy.marginal())
    cond = denoiser_from_score(toy.score_fn(SCHEDULE, 0), SCHEDULE)
    grad = toy.class_log_posterior_grad_fn(SCHEDULE, 0)
    for seed in range(3):
        x, t = _points(seed=seed)
        got = classifier_guidance(uncond, grad, scale=scale)(x, t)
        # the notes' gamma form, gamma = s: classifier-free guidance with w = convert_guidance(s, "gamma")
        want = classifier_free_guidance(cond, uncond, w=convert_guidance(scale, "gamma"))(x, t)
        size = float(x.abs().max() / SCHEDULE.alpha_bar[int(t[0])].sqrt())  # the terms that cancel in Tweedie's formula
        assert float((got - want).abs().max()) < 1e-12 * size
        if scale != 1.0:  # planted: gamma read as w, one step further
            off = classifier_free_guidance(cond, uncond, w=scale)(x, t)
            assert float((off - want).abs().max()) > 1e-6 * size
