"""Denoisers and their wrappers (ddpm_lib.sampling.denoisers), in float64.

* Tweedie's formula both ways: score_from_denoiser and denoiser_from_score invert each other, and the
  score of the exact Gaussian-mixture denoiser is the mixture's exact noised score
  (ddpm_lib.toys.GaussianMixture, whose score and posterior mean are computed by other routes);
* model_denoiser hands a conditional model its labels, and refuses an unknown target when built;
* a denoiser wrapper can turn gradients back on inside ``sample`` (which runs under no_grad) and take
  a gradient with respect to x_t: the protocol leaves room for classifier guidance.
"""

from __future__ import annotations

import functools

import pytest
import torch

from ddpm_lib.core.forward import q_sample
from ddpm_lib.core.schedules import Schedule, cosine_schedule, linear_schedule
from ddpm_lib.core.targets import x0_from_eps, x0_from_v
from ddpm_lib.sampling import (
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    denoiser_from_score,
    dpm_solver_2m_step,
    heun_step,
    model_denoiser,
    sample,
    score_from_denoiser,
)
from ddpm_lib.toys import GaussianMixture

pytestmark = pytest.mark.usefixtures("single_thread")

EPS64 = torch.finfo(torch.float64).eps
SCHEDULES = {"linear": linear_schedule(1000), "cosine": cosine_schedule(1000)}
MIX = GaussianMixture(
    torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
    torch.tensor([[-0.8, 0.0], [0.8, 0.4], [0.0, -0.8]], dtype=torch.float64),
    torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64),
)


@pytest.fixture(params=list(SCHEDULES))
def schedule(request) -> Schedule:
    return SCHEDULES[request.param]


def coefs(schedule: Schedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alpha_bar_t) and 1 - alpha_bar_t per row, shape (B, 1)."""
    ab = schedule.alpha_bar[t].reshape(-1, 1)
    return ab.sqrt(), 1 - ab


def within(got: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor) -> tuple[bool, str]:
    ratio = ((got - ref).abs() / tol).max().item()
    return ratio <= 1.0, f"max error / tolerance = {ratio:.3g}"


def mixed_t(schedule: Schedule, n: int, gen: torch.Generator) -> torch.Tensor:
    """Random timesteps in 1..T, both ends included: the wrappers must work row by row."""
    t = torch.randint(1, schedule.T + 1, (n,), generator=gen)
    t[0], t[1] = 1, schedule.T
    return t


# --- Tweedie both ways -------------------------------------------------------------------------------------


def test_score_and_denoiser_conversions_invert_each_other(schedule):
    gen = torch.Generator().manual_seed(0)
    t = mixed_t(schedule, 64, gen)
    x = 3 * torch.randn(64, 2, generator=gen, dtype=torch.float64)
    a, one_minus_ab = coefs(schedule, t)

    def den(xt, tt):  # any denoiser, depending on t row by row
        return torch.tanh(xt) * (1 + tt.reshape(-1, 1) / schedule.T)

    def score(xt, tt):  # any score function
        return torch.sin(xt) - xt * tt.reshape(-1, 1) / schedule.T

    # denoiser -> score -> denoiser: x + (1 - ab) s = a D + O(ulp (|x| + a |D|)), then divided by a = sqrt(ab)
    # (>= 6e-3 at t = T for the linear schedule): 8 ulps of (|x| + |D|) / a covers the few roundings
    back = denoiser_from_score(score_from_denoiser(den, schedule), schedule)(x, t)
    ok, msg = within(back, den(x, t), 8 * EPS64 * (x.abs() + den(x, t).abs()) / a)
    assert ok, msg
    # score -> denoiser -> score: a D - x = (1 - ab) s + O(ulp (|x| + (1 - ab) |s|)), divided by 1 - ab (>= 1e-4)
    back = score_from_denoiser(denoiser_from_score(score, schedule), schedule)(x, t)
    ok, msg = within(back, score(x, t), 8 * EPS64 * (x.abs() + one_minus_ab * score(x, t).abs()) / one_minus_ab)
    assert ok, msg
    assert back.dtype == torch.float64 and back.shape == x.shape


def mixture_denoiser(schedule: Schedule):
    """The exact E[x_0 | x_t] of MIX, row by row (GaussianMixture.posterior_mean_x0 takes one integer t)."""

    def den(xt, t):
        out = torch.empty_like(xt)
        for tv in t.unique().tolist():
            rows = t == tv
            out[rows] = MIX.posterior_mean_x0(xt[rows], tv, schedule)
        return out

    return den


def mixture_score(xt: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The exact score of q(x_t) for MIX as data, row by row, from the noised mixture's own density."""
    out = torch.empty_like(xt)
    for tv in t.unique().tolist():
        rows = t == tv
        out[rows] = MIX.noised(tv, schedule).score(xt[rows])
    return out


def mixture_case(schedule: Schedule, seed: int, n: int = 600):
    gen = torch.Generator().manual_seed(seed)
    t = mixed_t(schedule, n, gen)
    t[2:40] = torch.arange(2, 40)  # the small t, where 1 - ab is tiny and Tweedie's division is felt most
    xt = q_sample(MIX.sample(n, gen), t, torch.randn(n, 2, generator=gen, dtype=torch.float64), schedule)
    return t, xt


# The library gets the score as (sqrt(ab) D - x) / (1 - ab) and the reference as sum_k r_k (sqrt(ab) mu_k - x) / v_k
# with v_k = ab s_k^2 + 1 - ab >= 1 - ab: both subtract quantities of size |x| + |mu| (|mu| <= 0.9) and divide by at
# least 1 - ab (>= 1e-4 at t = 1), and the responsibilities add a few ulps more. Measured: <= 25 ulps of
# (|x| + 1) / (1 - ab), at t = 1; 256 ulps leaves margin (it is 2e-9 absolute at t = 1, on scores of size ~60).
def score_tolerance(xt, t, schedule):
    return 256 * EPS64 * (xt.abs() + 1) / coefs(schedule, t)[1]


def test_score_of_the_exact_mixture_denoiser_is_the_exact_noised_score(schedule):
    t, xt = mixture_case(schedule, seed=1)
    ref = mixture_score(xt, t, schedule)
    got = score_from_denoiser(mixture_denoiser(schedule), schedule)(xt, t)
    ok, msg = within(got, ref, score_tolerance(xt, t, schedule))
    assert ok, msg
    # the check can fail: Tweedie without sqrt(alpha_bar) in front of the denoiser, (D - x) / (1 - ab)
    planted = (mixture_denoiser(schedule)(xt, t) - xt) / coefs(schedule, t)[1]
    ok, msg = within(planted, ref, score_tolerance(xt, t, schedule))
    assert not ok, f"the planted slip passed: {msg}"


def test_denoiser_of_the_exact_noised_score_is_the_exact_mixture_denoiser(schedule):
    t, xt = mixture_case(schedule, seed=2)
    ref = mixture_denoiser(schedule)(xt, t)
    got = denoiser_from_score(lambda x, tt: mixture_score(x, tt, schedule), schedule)(xt, t)
    # the score's error above times (1 - ab) / sqrt(ab): 256 ulps of (|x| + 1) / sqrt(ab) (25 measured)
    ok, msg = within(got, ref, 256 * EPS64 * (xt.abs() + 1) / coefs(schedule, t)[0])
    assert ok, msg


# --- model_denoiser ---------------------------------------------------------------------------------------


class RecordingModel:
    """A stub network: records what it is called with and returns a fixed function of x_t."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)
        return 0.5 * args[0]


def test_model_denoiser_passes_the_labels_to_the_model(schedule):
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.tensor([1, 500, 1000])
    labels = torch.tensor([7, 0, 3])
    model = RecordingModel()
    x0_hat = model_denoiser(model, schedule, "x0", labels)(x, t)
    assert len(model.calls) == 1
    xt_seen, t_seen, labels_seen = model.calls[0]
    assert xt_seen is x and t_seen is t and labels_seen is labels
    assert torch.equal(x0_hat, 0.5 * x)  # an x0 model's output is the denoiser's output
    # without labels the model is called with (x_t, t) only; the output is converted for the target
    model = RecordingModel()
    eps_hat_x0 = model_denoiser(model, schedule, "eps")(x, t)
    assert [len(c) for c in model.calls] == [2]
    assert torch.equal(eps_hat_x0, x0_from_eps(x, t, 0.5 * x, schedule))
    v_x0 = model_denoiser(RecordingModel(), schedule, "v", labels)(x, t)
    assert torch.equal(v_x0, x0_from_v(x, t, 0.5 * x, schedule))


@pytest.mark.parametrize("target", ["epsilon", "", "X0", None])
def test_model_denoiser_refuses_an_unknown_target_when_built(target):
    def never_called(*args):
        raise AssertionError("the model must not be called")

    with pytest.raises(ValueError, match=r"unknown prediction target"):
        model_denoiser(never_called, SCHEDULES["linear"], target)


# --- room for guidance ------------------------------------------------------------------------------------

CENTER = torch.tensor([0.6, -0.3], dtype=torch.float64)
GUIDANCE = 2.0


def guided(denoiser, schedule: Schedule, grad_log_likelihood):
    """Classifier guidance in the protocol: score + w grad log p(y | x_t), back to a denoiser (Tweedie)."""
    score = score_from_denoiser(denoiser, schedule)
    return denoiser_from_score(lambda x, t: score(x, t) + GUIDANCE * grad_log_likelihood(x, t), schedule)


def autograd_grad_log_likelihood(schedule: Schedule, record: list):
    """grad_x log p(y | x_t) for a stand-in noisy 'classifier', log p(y | x_t) = -ab_t |x_t - CENTER|^2 / 2 (sure of
    itself only as the noise falls; a constant-size gradient would become an x0_hat shift of (1 - ab) / sqrt(ab),
    ~ 1e2 at t = T, too large for this toy), by autograd.

    sample() runs the loop under torch.no_grad(); the wrapper turns gradients back on for itself."""

    def grad(x, t):
        record.append(torch.is_grad_enabled())
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            log_p = -0.5 * (schedule.alpha_bar[t].reshape(-1, 1) * (xg - CENTER) ** 2).sum()
            (g,) = torch.autograd.grad(log_p, xg)
        return g

    return grad


def exact_grad_log_likelihood(schedule: Schedule):
    return lambda x, t: schedule.alpha_bar[t].reshape(-1, 1) * (CENTER - x)


STEPS = {
    "ddim": functools.partial(ddim_step, eta=0.0),
    "ddpm-strided": functools.partial(ddim_step, eta=1.0),
    "dpm-solver-2m": dpm_solver_2m_step,
    "heun": heun_step,
}


@pytest.mark.parametrize("name", list(STEPS))
def test_a_wrapper_can_take_gradients_inside_sample(name):
    schedule = linear_schedule(100, 1e-3, 0.2)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    base = mixture_denoiser(schedule)
    record: list = []
    ts = ddim_timesteps(100, 10)
    out = sample(guided(base, schedule, autograd_grad_log_likelihood(schedule, record)), schedule, STEPS[name], x_T, ts,
                 generator=torch.Generator().manual_seed(5))
    assert record and not any(record), "sample() must call the denoiser with gradients off"
    assert not out.requires_grad
    # the same run with the gradient written out, ab (CENTER - x): autograd inside the loop computed it (to
    # round-off: pow's backward forms 2 (x - CENTER) * 0.5 ab in another order; float64, O(1) values)
    exact = sample(guided(base, schedule, exact_grad_log_likelihood(schedule)), schedule, STEPS[name], x_T, ts,
                   generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, exact, rtol=0.0, atol=1e-12)
    # and the guidance does something: the samples move toward CENTER compared with the unguided run
    plain = sample(base, schedule, STEPS[name], x_T, ts, generator=torch.Generator().manual_seed(5))
    assert (out - CENTER).norm(dim=1).mean() < (plain - CENTER).norm(dim=1).mean()


def test_ddpm_step_with_guidance_under_sample():
    schedule = linear_schedule(50, 1e-3, 0.3)
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    record: list = []
    den = guided(mixture_denoiser(schedule), schedule, autograd_grad_log_likelihood(schedule, record))
    out = sample(den, schedule, ddpm_step, x_T, list(range(50, 0, -1)), generator=torch.Generator().manual_seed(7))
    assert len(record) == 50 and not any(record) and bool(out.isfinite().all())
