"""Chapter "Guidance, exact on a toy" (notebooks/guidance_toy.ipynb): its numbers, and the mistakes it plants.

* The toy the prose describes is the one the code builds; the tolerances, noise levels, sample sizes and grid the
  prose states are those of the code.
* The guidance wrappers with exact ingredients (classifier_guidance, classifier_free_guidance, convert_guidance's
  "gamma") against the exact conditional denoiser and against each other; planted mistakes each fail the same
  comparison: the scale applied to the wrong score, guidance_scale read as w, the sign flipped, the standard deviation
  where the variance 1 - alpha_bar belongs in Tweedie's correction, a clean classifier at x_t, the null label that is
  class 0's code.
* The notes' reading that guidance samples the tilted distribution: a small version of the chapter's two-sample test
  (DDIM with the exact guided score against exact tilted draws) finds nothing at gamma = 1 and a difference at
  gamma = 3; the guided score differs from the score of the noised tilted density (quadrature) at gamma = 3 only.
* Every number of the prose and the exercises, against an independent computation or the stored outputs.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import sympy as sp
import torch

from ddpm_lib.core.schedules import cosine_schedule
from ddpm_lib.sampling import (classifier_free_guidance, classifier_guidance, convert_guidance, denoiser_from_score, sample,
                               sampler_plan)
from ddpm_lib.teaching.symbolic import is_equal
from ddpm_lib.toys import ConditionalGaussianMixture, GaussianMixture

from prose import NOTEBOOKS, markdown, rounds_to, stated

pytestmark = pytest.mark.usefixtures("single_thread")

NAME = "guidance_toy"
F64 = torch.float64
SCH = cosine_schedule(1000)
Z = 5.0


def the_toy() -> ConditionalGaussianMixture:
    # written from the prose ("The toy."), not copied from the notebook's code
    c0 = GaussianMixture(torch.tensor([0.6, 0.4], dtype=F64), torch.tensor([[-1.0, 0.0], [0.3, 1.0]], dtype=F64),
                         torch.tensor([0.4, 0.3], dtype=F64))
    c1 = GaussianMixture(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([[1.0, 0.0], [-0.3, -1.0]], dtype=F64),
                         torch.tensor([0.4, 0.3], dtype=F64))
    return ConditionalGaussianMixture((c0, c1), torch.tensor([0.45, 0.55], dtype=F64))


TOY = the_toy()
UNCOND = denoiser_from_score(TOY.score_fn(SCH), SCH)
COND = denoiser_from_score(TOY.score_fn(SCH, 0), SCH)
GRAD = TOY.class_log_posterior_grad_fn(SCH, 0)


def cells():
    return json.loads((NOTEBOOKS / f"{NAME}.ipynb").read_text())["cells"]


def code() -> str:
    return "\n".join("".join(c["source"]) for c in cells() if c["cell_type"] == "code")


def outputs() -> str:
    return "\n".join("".join(o.get("text", "")) for c in cells() if c["cell_type"] == "code" for o in c.get("outputs", []))


def points(n=200, seed=1):
    return 1.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def rel(a, b, scale=None):
    return float((a - b).abs().max() / (b.abs().max() if scale is None else scale))


# --- the toy and the setup the prose describes ---------------------------------------------------------------------


def test_the_prose_describes_the_toy_the_code_builds():
    text = markdown(NAME)
    assert "Class 0 (prior 0.45) is $0.6\\,\\mathcal N((-1, 0), 0.4^2 I) + 0.4\\,\\mathcal N((0.3, 1), 0.3^2 I)$" in text
    assert "class 1 (prior 0.55) is $0.5\\,\\mathcal N((1, 0), 0.4^2 I) + 0.5\\,\\mathcal N((-0.3, -1), 0.3^2 I)$" in text
    src = code()
    for literal in ("[[-1.0, 0.0], [0.3, 1.0]]", "[[1.0, 0.0], [-0.3, -1.0]]", "[0.6, 0.4]", "[0.5, 0.5]", "[0.4, 0.3]",
                    "[0.45, 0.55]", "cosine_schedule(1000)"):
        assert literal in src
    assert "t_check = [1, 10, 100, 300, 600, 1000]" in src and "torch.randn(200, 2" in src and "TOL = 1e-12" in src
    assert "six noise levels from $t = 1$ to $t = T$ on 200 points" in text and "The tolerance is $10^{-12}$" in text
    # "(1 - alpha_bar_T)/sqrt(alpha_bar_T) \approx 2\cdot10^4"
    ab = float(SCH.alpha_bar[1000])
    assert f"{(1 - ab) / math.sqrt(ab):.0e}" == "2e+04" and "\\approx 2\\cdot10^4" in text
    # the sampling section: 4000 samples, 1000 steps, 250 steps, the grid of the quadrature
    assert "n = 4000" in src and '("ddim", 1000), ("ddpm", None)' in src and '(3.0, "ddim", 250)' in src
    assert "4000 samples" in text and "1000 steps" in text and "250 and 1000 steps" in text
    assert "half_width=4.0, n_grid=321" in src and "$321 \\times 321$ grid over $[-4, 4]^2$" in text


# --- the wrappers with exact ingredients, and the planted mistakes ------------------------------------------------


@pytest.mark.parametrize("t_now", [1, 100, 600, 1000])
def test_the_wrappers_reproduce_the_exact_conditional_denoiser(t_now):
    x, t = points(), torch.full((200,), t_now)
    want = TOY.posterior_mean_x0(x, t_now, SCH, 0)  # conjugate algebra, no score
    # float64, relative to the terms that cancel in Tweedie's formula, x_t / sqrt(ab) (the chapter's tolerance;
    # measured about 1e-14)
    scale = float(x.abs().max() / SCH.alpha_bar[t_now].sqrt())
    assert rel(classifier_guidance(UNCOND, GRAD, scale=1.0)(x, t), want, scale) < 1e-12
    assert rel(classifier_free_guidance(COND, UNCOND, w=0.0)(x, t), want, scale) < 1e-12
    assert rel(classifier_free_guidance(COND, UNCOND, w=-1.0)(x, t), TOY.posterior_mean_x0(x, t_now, SCH), scale) < 1e-12


@pytest.mark.parametrize("gamma", [0.5, 2.0, 3.0, 7.5])
def test_classifier_guidance_at_gamma_is_cfg_at_gamma_minus_one(gamma):
    x, t = points(seed=2), torch.full((200,), 300)
    cg = classifier_guidance(UNCOND, GRAD, scale=gamma)(x, t)
    for source in ("gamma", "classifier_scale", "guidance_scale"):
        assert rel(classifier_free_guidance(COND, UNCOND, w=convert_guidance(gamma, source))(x, t), cg) < 1e-9
    # the guided score is the toy's closed form, gamma * score_c + (1 - gamma) * score_u (eq. cfg-gamma)
    exact = TOY.noised(300, SCH).guided_score(x, 0, gamma)
    want = (x + (1 - SCH.alpha_bar[300]) * exact) / SCH.alpha_bar[300].sqrt()
    assert rel(cg, want) < 1e-9
    # planted: guidance_scale (or gamma) read as w, an error of one
    assert rel(classifier_free_guidance(COND, UNCOND, w=gamma)(x, t), cg) > 1e-3
    # planted: the scale applied to the wrong score, s * score_u + grad log p(y|x)
    wrong = denoiser_from_score(lambda z, tt: gamma * TOY.noised(300, SCH).score(z) + GRAD(z, tt), SCH)(x, t)
    assert rel(wrong, cg) > 1e-3
    # planted: the sign flipped, score_u - s grad log p(y | x)
    flipped = denoiser_from_score(lambda z, tt: TOY.noised(300, SCH).score(z) - gamma * GRAD(z, tt), SCH)(x, t)
    assert rel(flipped, cg) > 1e-3


@pytest.mark.parametrize("t_now", [1, 10, 100, 300, 600, 1000])
def test_the_planted_tweedie_and_clean_classifier_mistakes(t_now):
    x, t = points(), torch.full((200,), t_now)
    ab = SCH.alpha_bar[t_now]
    want = COND(x, t)
    scale = float(x.abs().max() / ab.sqrt())
    std = UNCOND(x, t) + (1 - ab).sqrt() / ab.sqrt() * GRAD(x, t)  # the standard deviation for the variance
    clean = UNCOND(x, t) + (1 - ab) / ab.sqrt() * TOY.class_log_posterior_grad(x, 0)  # grad log p_0(y | x) at x_t
    # the chapter: the std is caught at every t but T (where 1 - ab ~ sqrt(1 - ab) ~ 1), the clean classifier from t = 100
    assert (rel(std, want, scale) > 1e-3) == (t_now != 1000)
    assert (rel(clean, want, scale) > 1e-3) == (t_now >= 100)
    text = markdown(NAME)
    assert "wrong, by more than $10^{-3}$ on the same scale, from $t = 100$ on" in text and "wrong at every $t$ but $t = T$" in text
    # "the two differ by only alpha_bar_T / 2 ~ 1e-9" (not round-off: the factors differ, the gradient is ~0 there)
    ab_T = float(SCH.alpha_bar[1000])
    assert abs((1 - ab_T) - math.sqrt(1 - ab_T) + ab_T / 2) < 1e-15 and f"{ab_T / 2:.0e}" == "1e-09"
    assert "differ by only $\\bar\\alpha_T/2 \\approx 10^{-9}$" in text
    out = outputs()
    assert "(planted) clean classifier: off by more than 1e-3 relative at t = [100, 300, 600, 1000]" in out
    assert "(planted) std for variance: off by more than 1e-3 relative at t = [1, 10, 100, 300, 600]" in out


def test_the_eps_and_x0_forms_with_sympy():
    # the chapter's forms, built again: eps with -s sigma, x0 with +s (1 - ab)/sqrt(ab); the planted ones fail
    x, s, m = sp.symbols("x s m", real=True)
    ab = sp.Symbol("alphabar", positive=True)
    log_u = sp.log(sp.exp(-(x - m) ** 2 / 2) + sp.exp(-(x + m) ** 2 / 3))
    log_c = -(x - m) ** 2 / 2
    g = sp.diff(log_c - log_u, x)
    score = sp.diff(log_u, x) + s * g
    sigma = sp.sqrt(1 - ab)
    eps_u = -sigma * sp.diff(log_u, x)
    assert is_equal(-(eps_u - s * sigma * g) / sigma, score)
    assert not is_equal(-(eps_u + s * sigma * g) / sigma, score)
    x0 = (x + (1 - ab) * sp.diff(log_u, x)) / sp.sqrt(ab)
    tweedie = (x + (1 - ab) * score) / sp.sqrt(ab)
    assert is_equal(x0 + s * (1 - ab) / sp.sqrt(ab) * g, tweedie)
    assert not is_equal(x0 + s * sigma / sp.sqrt(ab) * g, tweedie)


def test_the_null_label_that_is_class_0():
    x, t = points(seed=2), torch.full((200,), 300)
    null_is_class0 = denoiser_from_score(TOY.score_fn(SCH, 0), SCH)
    wrong = classifier_free_guidance(COND, null_is_class0, w=2.0)(x, t)
    assert rel(wrong, COND(x, t)) < 1e-12  # no guidance at all
    assert rel(wrong, classifier_free_guidance(COND, UNCOND, w=2.0)(x, t)) > 0.1
    assert "off the guided one by more than 10 % at t = 300" in outputs()


def test_the_conventions_cell_maps_and_plants():
    out = outputs()
    for name in ("guidance_scale", "classifier_scale", "gamma"):
        assert re.search(rf"{name}: offset \+1, equal to Ho & Salimans' at w: True; \(planted\) read as w: False", out)
    for name in ("w", "classifier_scale_conditional"):
        assert re.search(rf"{name}: offset \+0, equal to Ho & Salimans' at w: True", out)
    assert convert_guidance(2.0, "gamma") == 1.0 and convert_guidance(0.0, "w", "gamma") == 1.0


# --- what guidance samples -----------------------------------------------------------------------------------------


def _z(a, b, u):
    sa, sb = a @ u, b @ u
    return abs(float(sa.mean() - sb.mean())) / math.sqrt(float(sa.var()) / len(sa) + float(sb.var()) / len(sb))


def test_guidance_samples_the_tilted_distribution_at_gamma_one_only():
    # a smaller version of the chapter's test: 1000 samples, DDIM with 100 steps (the chapter: 4000, 1000 steps)
    u = TOY.classes[0].weights @ TOY.classes[0].means - TOY.classes[1].weights @ TOY.classes[1].means
    u = u / u.norm()
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(11), dtype=F64)
    step, ts = sampler_plan("ddim", 1000, 100)
    z = {}
    for gamma in (1.0, 3.0):
        guided = sample(classifier_guidance(UNCOND, GRAD, scale=gamma), SCH, step, x_T, ts)
        exact = TOY.sample_tilted(1000, 0, gamma, torch.Generator().manual_seed(12))
        z[gamma] = _z(guided, exact, u)
    # the notes' reading (guidance samples p(x) p(y|x)^gamma) holds at gamma = 1 and is refuted at gamma = 3
    assert z[1.0] < Z and z[3.0] > Z, z


def test_the_guided_score_is_not_the_noised_tilted_score():
    x0 = TOY.sample_tilted(50, 0, 3.0, torch.Generator().manual_seed(3))
    noise = torch.randn(50, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    ab = SCH.alpha_bar[200]
    xt = (ab.sqrt() * x0 + (1 - ab).sqrt() * noise).requires_grad_(True)
    # at gamma = 1 the two agree to the quadrature's error (the trapezoid rule is spectrally accurate here: measured
    # ~1e-14, so 1e-8 would catch any error of the tilt or the kernel); at gamma = 3 they differ by tens of percent
    for gamma, differs in ((1.0, False), (3.0, True)):
        (tilted,) = torch.autograd.grad(TOY.noised_tilted_log_prob(xt, 0, gamma, 200, SCH, n_grid=321).sum(), xt)
        guided = TOY.noised(200, SCH).guided_score(xt.detach(), 0, gamma)
        assert rel(guided, tilted) > 1e-2 if differs else rel(guided, tilted) < 1e-8


def test_the_sampling_numbers_the_prose_states():
    out, text = outputs(), markdown(NAME)
    assert re.search(r"gamma = 1, DDIM \(1000 steps\) against exact tilted draws: \|z\| < 5, agree", out)
    assert re.search(r"gamma = 1, DDPM \(1000 steps\) against exact tilted draws: \|z\| < 5, agree", out)
    ddim = re.search(r"gamma = 3, DDIM \(1000 steps\) against exact tilted draws: \|z\| > 5, differ by ([0-9.]+) \+- ([0-9.]+)", out)
    ddpm = re.search(r"gamma = 3, DDPM \(1000 steps\) against exact tilted draws: \|z\| > 5, differ by ([0-9.]+) \+- ([0-9.]+)", out)
    assert ddim and ddpm and re.search(r"gamma = 3, DDIM against DDPM: differ \(\|z\| > 5\)", out)
    assert rounds_to(float(ddim.group(1)), stated(text, r"guided DDIM puts its samples about ([0-9.]+) further"))
    assert rounds_to(float(ddpm.group(1)), stated(text, r"guided DDPM about ([0-9.]+)"))
    assert "per sample < " in out and "(half the standard error of the comparison below)" in out
    assert "DDIM changes by less than half a standard error between 250 and 1000 steps" in text
    assert "the means agree within 5 standard errors" in out
    # the score gap: "differ by more than 1 % at each of the levels from t = 20 to t = 700"
    assert "gamma = 3: above 0.01 at t = [20, 50, 100, 200, 400, 700]" in out and "below 1e-6 at every t" in out
    assert "more than 1 % at each of the levels from $t = 20$ to $t = 700$" in text
    assert "below 1e-4 at t = 1000" in out and "nearly coincide\nagain at $t = T$" in text


# --- the exercises -------------------------------------------------------------------------------------------------


def _grid():
    axis = torch.linspace(-4, 4, 801, dtype=F64)
    g1, g2 = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([g1.reshape(-1), g2.reshape(-1)], 1), float(axis[1] - axis[0]) ** 2


def test_off_by_one_exercise():
    # "The tilted distribution's mean class posterior is 0.932 at gamma = 1 ... and 0.965 at gamma = 2"
    text = markdown(NAME)
    grid, _ = _grid()
    post = TOY.class_log_posterior(grid)[:, 0].exp()
    meant, used = convert_guidance(1.0, "guidance_scale", "gamma"), convert_guidance(1.0, "w", "gamma")
    assert (meant, used) == (1.0, 2.0)
    values = []
    for gamma in (meant, used):
        tilt = TOY.tilted_log_prob_unnormalized(grid, 0, gamma).exp()
        values.append(float((tilt * post).sum() / tilt.sum()))
    assert rounds_to(values[0], stated(text, r"mean class posterior is ([0-9.]+) at \$\\gamma = 1\$"))
    assert rounds_to(values[1], stated(text, r"and ([0-9.]+) at \$\\gamma = 2\$"))
    # independently: at gamma = 1 it is E_{p(x|y)}[p(y|x)], by Monte Carlo within 5 standard errors
    draws = TOY.sample_class(100_000, 0, torch.Generator().manual_seed(0))
    p = TOY.class_log_posterior(draws)[:, 0].exp()
    assert abs(float(p.mean()) - values[0]) < Z * float(p.std()) / math.sqrt(len(p))
    assert "# 0.932, 0.965" in text


def test_rejection_exercise():
    # "Z_3 = 0.405, so the rates are 0.405 from p(x) and 0.900 from the class"
    text = markdown(NAME)
    grid, h2 = _grid()
    z3 = float(TOY.tilted_log_prob_unnormalized(grid, 0, 3.0).exp().sum()) * h2
    assert rounds_to(z3, stated(text, r"\$Z_3 = ([0-9.]+)\$"))
    assert rounds_to(z3, stated(text, r"rates are ([0-9.]+) from \$p\(x\)\$"))
    assert rounds_to(z3 / 0.45, stated(text, r"and ([0-9.]+) from the class"))
    # independently, by Monte Carlo: the acceptance rate from p(x) is E_p[p(y|x)^3]
    x, _ = TOY.sample(200_000, torch.Generator().manual_seed(1))
    a = TOY.class_log_posterior(x)[:, 0].mul(3).exp()
    assert abs(float(a.mean()) - z3) < Z * float(a.std()) / math.sqrt(len(a))
    assert "# 0.405, 0.900" in text


def test_gaussian_exercise():
    # "the guided variance is 1/3 and the noised tilted one 7/13 \approx 0.538, with means 0.943 y and 0.653 y"
    text = markdown(NAME)
    tau2, gamma, ab = 0.25, 3.0, 0.5
    # the guided density: precision from the two Gaussian factors; the tilted one: Gaussian conjugacy, then noised
    var_guided = 1 / (1 + gamma * ab / (1 - ab + tau2))
    mean_guided = var_guided * gamma * math.sqrt(ab) / (1 - ab + tau2)
    var_tilted0 = 1 / (1 + gamma / tau2)
    var_tilted = ab * var_tilted0 + 1 - ab
    mean_tilted = math.sqrt(ab) * var_tilted0 * gamma / tau2
    assert abs(var_guided - 1 / 3) < 1e-12 and abs(var_tilted - 7 / 13) < 1e-12
    assert "the guided\nvariance is $1/3$ and the noised tilted one $7/13 \\approx 0.538$" in text
    assert rounds_to(7 / 13, "0.538")
    assert rounds_to(mean_guided, stated(text, r"with means \$([0-9.]+)\\,y\$"))
    assert rounds_to(mean_tilted, stated(text, r"and \$([0-9.]+)\\,y\$: the guided"))
    # the factored difference of the variances the solution states, numerically at random points
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        g, a, t2 = (float(v) for v in torch.rand(3, generator=gen, dtype=F64) * torch.tensor([5.0, 1.0, 2.0], dtype=F64))
        diff = 1 / (1 + g * a / (1 - a + t2)) - (a / (1 + g / t2) + 1 - a)
        assert abs(diff - (-g * (g - 1) * a * (1 - a) / ((g + t2) * (1 + t2 + (g - 1) * a)))) < 1e-12
    assert "# True, then 1/3 7/13 0.943 0.653" in text


def test_the_colab_cell_is_the_posterior_chapter_s():
    first = next(c for c in cells() if c["cell_type"] == "code")
    posterior = json.loads((NOTEBOOKS / "posterior.ipynb").read_text())["cells"][1]
    assert "".join(first["source"]) == "".join(posterior["source"]) and first["metadata"]["tags"] == ["hide-input"]
