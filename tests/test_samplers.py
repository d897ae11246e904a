"""Samplers (ddpm_lib.sampling): update identities, the step protocol and the shared loop, and an
end-to-end Gaussian check.

The update formulas (``ddpm_update``, ``ddim_update``) are tested with given noise; the steps
(``step(denoiser, x, t, t_prev, schedule, generator, state) -> (x_prev, state)``) and ``iterate`` /
``sample`` through the protocol, with the steps drawing their own noise from the generator.

The end-to-end test uses 1-D Gaussian data N(m, s^2), whose exact denoiser is closed form:
q(x_t) = N(sqrt(ab) m, ab s^2 + 1 - ab) and E[x_0 | x_t] = m + k_t (x_t - sqrt(ab) m),
k_t = sqrt(ab) s^2 / (ab s^2 + 1 - ab). With it, every DDPM step is linear-Gaussian, so the law of the
sampler's output is N(mu_out, v_out) with (mu_out, v_out) computed exactly by a two-number recursion
written in this file. That law is *not* exactly N(m, s^2): the ancestral step uses the variance
tilde_beta_t and omits c_x0^2 Var[x_0 | x_t] (exact only for point-mass data), and x_T starts from
N(0, 1) instead of q(x_T). That discretization bias is computed exactly, shown to shrink like 1/T,
and allowed for on top of the Monte Carlo bound.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from ddpm_lib.sampling import (
    SamplerState,
    clip_denoiser,
    ddim_step,
    ddim_timesteps,
    ddim_update,
    ddpm_step,
    ddpm_update,
    iterate,
    model_denoiser,
    sample,
    standard_normal,
)
from ddpm_lib.core.schedules import Schedule, cosine_schedule, linear_schedule

pytestmark = pytest.mark.usefixtures("single_thread")

EPS64 = torch.finfo(torch.float64).eps
K_SE = 5.0  # standard errors allowed in the Monte Carlo checks (two-sided tail ~6e-7)


def loop_alpha_bar(schedule: Schedule) -> list[float]:
    out = [1.0]
    for b in schedule.beta.tolist()[1:]:
        out.append(out[-1] * (1.0 - b))
    return out


def point_mass_denoiser(x0: torch.Tensor):
    """The exact denoiser when the data is the single point x0: E[x_0 | x_t] = x0."""
    return lambda xt, t: x0.expand_as(xt).clone()


# --- single steps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [linear_schedule(1000), cosine_schedule(300)], ids=["linear", "cosine"])
def test_ddim_eta1_consecutive_is_ddpm_step(schedule):
    gen = torch.Generator().manual_seed(0)
    B = 64
    t = torch.randint(1, schedule.T + 1, (B,), generator=gen)
    t[0], t[1] = 1, schedule.T
    xt, x0_hat, noise = (torch.randn(B, 1, 2, 2, generator=gen, dtype=torch.float64) for _ in range(3))
    a = ddpm_update(xt, t, t - 1, x0_hat, noise, schedule)
    b = ddim_update(xt, t, t - 1, x0_hat, noise, schedule, eta=1.0)
    # Both are combinations of xt, x0_hat and noise with O(1) coefficients (DDIM's 1/sqrt(1 - ab_t) in
    # eps_hat is multiplied back by sqrt(1 - ab_{t-1} - sigma^2) <= sqrt(1 - ab_t)); the coefficients
    # carry the round-off of 1 - ab (<= 2.2e-16 / min beta ~ 6e-12 relative): 1e-10 of the inputs' size.
    tol = 1e-10 * (xt.abs() + x0_hat.abs() + noise.abs())
    assert bool(((a - b).abs() <= tol).all()), f"max |diff| = {(a - b).abs().max().item():.3g}"


def test_ddpm_step_at_t1_returns_x0_hat():
    schedule = linear_schedule(1000)
    gen = torch.Generator().manual_seed(1)
    xt, x0_hat, noise = (torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    t = torch.ones(4, dtype=torch.long)
    out = ddpm_update(xt, t, t - 1, x0_hat, noise, schedule)
    # tilde_beta_1 = 0 exactly and c_xt(1) = 0 exactly; c_x0(1) = 1 up to 1.1e-16 / beta_1 (see test_posterior)
    assert torch.allclose(out, x0_hat, rtol=1.1e-16 / schedule.beta[1].item() + 4 * EPS64, atol=0.0)


@pytest.mark.parametrize("schedule", [linear_schedule(1000), cosine_schedule(1000)], ids=["linear", "cosine"])
def test_float32_last_ddpm_step_returns_x0_hat(schedule):
    """In float32 too: c_x0(1) = 1 and c_xt(1) = tilde_beta_1 = 0 are formed in float64 and cast at the end.

    Cast first, float32 gave c_x0(1) = beta_1 / (1 - float32(alpha_bar_1)) = 0.99983 for the linear schedule:
    every sample's last step shrank x0_hat by 1.7e-4.
    """
    gen = torch.Generator().manual_seed(13)
    xt, x0_hat, noise = (torch.randn(8, 1, 4, 4, generator=gen) for _ in range(3))
    t = torch.ones(8, dtype=torch.long)
    out = ddpm_update(xt, t, t - 1, x0_hat, noise, schedule)
    assert out.dtype == torch.float32
    tol = 2 * torch.finfo(torch.float32).eps * x0_hat.abs()
    assert bool(((out - x0_hat).abs() <= tol).all()), f"max |out / x0_hat - 1| = {((out - x0_hat) / x0_hat).abs().max().item():.3g}"


def identity_denoiser(xt, t):
    return xt


def test_ddpm_step_rejects_skipping():
    schedule = linear_schedule(100)
    x = torch.zeros(2, 3)
    for t_prev in (torch.tensor([3, 3]), torch.tensor([4, 3])):
        with pytest.raises(ValueError, match=r"t_prev = t - 1"):
            ddpm_update(x, torch.tensor([5, 5]), t_prev, x, x, schedule)
        with pytest.raises(ValueError, match=r"t_prev = t - 1"):
            ddpm_step(identity_denoiser, x, torch.tensor([5, 5]), t_prev, schedule)


def test_ddim_step_rejects_bad_arguments():
    schedule = linear_schedule(100)
    x = torch.zeros(2, 3)
    t = torch.tensor([5, 5])
    with pytest.raises(ValueError, match=r"eta must be >= 0"):
        ddim_update(x, t, torch.tensor([4, 4]), x, x, schedule, eta=-0.1)
    with pytest.raises(ValueError, match=r"eta must be >= 0"):
        ddim_step(identity_denoiser, x, t, torch.tensor([4, 4]), schedule, eta=-0.1)
    with pytest.raises(ValueError, match=r"t_prev must be smaller"):
        ddim_update(x, t, torch.tensor([5, 4]), x, x, schedule)
    with pytest.raises(ValueError, match=r"t_prev must be smaller"):
        ddim_step(identity_denoiser, x, t, torch.tensor([5, 4]), schedule)
    # eta > 0 adds noise: the formula needs it given
    with pytest.raises(ValueError, match=r"noise"):
        ddim_update(x, t, torch.tensor([4, 4]), x, None, schedule, eta=0.5)


def test_steps_are_their_update_with_the_generators_noise():
    """ddpm_step and ddim_step call the denoiser once at (x, t), draw their noise from the generator (only
    when they need it) and apply their update formula; they carry no state."""
    schedule = linear_schedule(100)
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64)
    t, t_prev = torch.full((3,), 40), torch.full((3,), 39)
    seen = []

    def denoiser(xt, tt):
        seen.append((xt, tt))
        return torch.tanh(xt)

    noise = standard_normal(x, torch.Generator().manual_seed(16))
    out, state = ddpm_step(denoiser, x, t, t_prev, schedule, torch.Generator().manual_seed(16))
    assert state is None and len(seen) == 1 and seen[0][0] is x and torch.equal(seen[0][1], t)
    assert torch.equal(out, ddpm_update(x, t, t_prev, torch.tanh(x), noise, schedule))
    out, state = ddim_step(denoiser, x, t, torch.full((3,), 10), schedule, torch.Generator().manual_seed(16), eta=0.4)
    expected = ddim_update(x, t, torch.full((3,), 10), torch.tanh(x), noise, schedule, eta=0.4)
    assert state is None and torch.equal(out, expected)
    # eta = 0 draws nothing: the generator is left where it was
    g = torch.Generator().manual_seed(17)
    before = g.get_state()
    out, _ = ddim_step(denoiser, x, t, torch.full((3,), 10), schedule, g)
    assert torch.equal(g.get_state(), before)
    assert torch.equal(out, ddim_update(x, t, torch.full((3,), 10), torch.tanh(x), None, schedule))


# --- DDIM with eta = 0 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1000, 50, 7, 1])
def test_ddim_eta0_with_perfect_denoiser_recovers_x0(steps):
    """For point-mass data and its exact denoiser, deterministic DDIM stays on the curve
    x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps_T (eps is constant along it) and ends exactly at x0."""
    schedule = linear_schedule(1000)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(3, 1, 2, 2, generator=gen, dtype=torch.float64) * 2 - 1
    x_T = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    ab = loop_alpha_bar(schedule)
    eps_T = (x_T - math.sqrt(ab[-1]) * x0) / math.sqrt(1 - ab[-1])
    step = functools.partial(ddim_step, eta=0.0)
    states = list(iterate(point_mass_denoiser(x0), schedule, step, x_T, ddim_timesteps(1000, steps), generator=gen))
    for st in states:
        expected = math.sqrt(ab[st.t]) * x0 + math.sqrt(1 - ab[st.t]) * eps_T
        # each step recomputes eps_hat from x_t (dividing by sqrt(1 - ab_t) >= 1e-2) and puts it back,
        # adding a few ulps of the inputs (|x0|, |eps_T| <= ~4) per step; <= 1000 steps: 1e-10 absolute
        assert torch.allclose(st.xt, expected, rtol=0.0, atol=1e-10), f"off the DDIM curve at t = {st.t}"
    assert states[-1].t == 0
    assert torch.allclose(states[-1].xt, x0, rtol=0.0, atol=1e-10)


def test_ddim_eta0_is_deterministic():
    schedule = linear_schedule(200)
    x_T = torch.randn(5, 1, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def denoiser(xt, t):  # any smooth non-trivial denoiser
        return torch.tanh(xt) * 0.5

    step = functools.partial(ddim_step, eta=0.0)
    ts = ddim_timesteps(200, 20)
    a = sample(denoiser, schedule, step, x_T, ts, generator=torch.Generator().manual_seed(10))
    b = sample(denoiser, schedule, step, x_T, ts, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)  # the noise is multiplied by sigma = 0: bit-identical
    # while with eta = 1 the two seeds give different samples
    step1 = functools.partial(ddim_step, eta=1.0)
    c = sample(denoiser, schedule, step1, x_T, ts, generator=torch.Generator().manual_seed(10))
    d = sample(denoiser, schedule, step1, x_T, ts, generator=torch.Generator().manual_seed(11))
    assert not torch.equal(c, d)


# --- the shared loop ----------------------------------------------------------------------------------------------


def test_iterate_yields_T_plus_1_states_ending_at_0():
    T = 30
    schedule = linear_schedule(T, 1e-3, 0.3)
    x_T = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    calls = []

    def denoiser(xt, t):
        calls.append(t.clone())
        return 0.9 * xt

    states = list(iterate(denoiser, schedule, ddpm_step, x_T, list(range(T, 0, -1)), torch.Generator().manual_seed(0)))
    assert len(states) == T + 1
    assert [s.t for s in states] == list(range(T, -1, -1))
    assert all(isinstance(s, SamplerState) for s in states)
    assert torch.equal(states[0].xt, x_T)
    # the denoiser is called once per step with t as a (B,) integer tensor at the state's t
    assert len(calls) == T
    for s, t in zip(states, calls):
        assert t.dtype == torch.long and t.shape == (2,) and bool((t == s.t).all())
        assert torch.equal(s.x0_hat, 0.9 * s.xt)
    assert torch.equal(states[-1].xt, states[-1].x0_hat)
    # one network evaluation per DDPM step, counted after each step; the final state repeats the total
    assert [s.nfe for s in states] == list(range(1, T + 1)) + [T]


def test_iterate_hands_each_step_its_state_and_the_generator():
    """The loop passes the state a step returned to the next step (None on the first), and the same generator."""
    schedule = linear_schedule(10, 1e-3, 0.3)
    gen = torch.Generator().manual_seed(0)
    seen = []

    def counting_step(denoiser, x, t, t_prev, schedule, generator=None, state=None):
        seen.append((int(t[0]), int(t_prev[0]), state, generator))
        return denoiser(x, t), (0 if state is None else state + 1)

    states = list(iterate(lambda xt, t: xt - 1, schedule, counting_step, torch.zeros(2, 1), [10, 7, 3], gen))
    assert [(a, b, c) for a, b, c, _ in seen] == [(10, 7, None), (7, 3, 0), (3, 0, 1)]
    assert all(g is gen for *_, g in seen)
    assert [s.t for s in states] == [10, 7, 3, 0] and torch.equal(states[-1].xt, torch.full((2, 1), -3.0))


def test_iterate_refuses_a_step_that_never_calls_the_denoiser():
    schedule = linear_schedule(10, 1e-3, 0.3)

    def lazy_step(denoiser, x, t, t_prev, schedule, generator=None, state=None):
        return x, None

    with pytest.raises(RuntimeError, match=r"without calling the denoiser"):
        list(iterate(lambda xt, t: xt, schedule, lazy_step, torch.zeros(2, 1), [10, 5]))


def test_iterate_with_strided_timesteps():
    schedule = linear_schedule(1000)
    ts = ddim_timesteps(1000, 10)
    x_T = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    states = list(iterate(lambda xt, t: xt, schedule, functools.partial(ddim_step, eta=0.5), x_T, ts))
    assert [s.t for s in states] == ts + [0]


def test_sample_is_reproducible_and_is_the_last_state():
    schedule = linear_schedule(50, 1e-3, 0.3)
    x_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def denoiser(xt, t):
        return torch.tanh(xt)

    ts = list(range(50, 0, -1))
    a = sample(denoiser, schedule, ddpm_step, x_T, ts, generator=torch.Generator().manual_seed(7))
    b = sample(denoiser, schedule, ddpm_step, x_T, ts, generator=torch.Generator().manual_seed(7))
    c = sample(denoiser, schedule, ddpm_step, x_T, ts, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    last = list(iterate(denoiser, schedule, ddpm_step, x_T, ts, generator=torch.Generator().manual_seed(7)))[-1]
    assert torch.equal(a, last.xt)
    assert a.shape == x_T.shape and a.dtype == x_T.dtype


class GeneratorOnAnotherDevice:
    """Stands in, on a CPU-only machine, for a generator on another device than the samples.

    It reports ``device = cuda`` and draws from a seeded CPU generator; :func:`strict_randn` below
    enforces torch's rule that a generator draws only on its own device (torch raises "Expected a
    'cuda' device type for generator but found 'cpu'"). The real case, a CPU generator with samples
    on a GPU, is the mirror image; tests/test_gpu_paths.py runs it where there is a GPU.
    """

    def __init__(self, seed: int):
        self.cpu = torch.Generator().manual_seed(seed)
        self.device = torch.device("cuda")


def strict_randn(real_randn, calls: list):
    def randn(*size, generator=None, device=None, **kwargs):
        if isinstance(generator, GeneratorOnAnotherDevice):
            asked = torch.device(device if device is not None else "cpu")
            calls.append(asked)
            if asked != generator.device:
                raise RuntimeError(f"Expected a '{generator.device.type}' device type for generator but found '{asked.type}'")
            return real_randn(*size, generator=generator.cpu, **kwargs)  # the CPU plays the generator's device
        return real_randn(*size, generator=generator, device=device, **kwargs)

    return randn


@pytest.mark.parametrize("step", [ddpm_step, functools.partial(ddim_step, eta=1.0)], ids=["ddpm", "ddim-eta1"])
def test_iterate_draws_noise_on_the_generators_device(monkeypatch, step):
    """The loop draws each step's noise on the generator's device, then moves it to the samples' device."""
    schedule = linear_schedule(20, 1e-3, 0.3)
    x_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(14))
    ts = list(range(20, 0, -1))
    reference = sample(lambda xt, t: torch.tanh(xt), schedule, step, x_T, ts, generator=torch.Generator().manual_seed(7))
    calls: list = []
    monkeypatch.setattr(torch, "randn", strict_randn(torch.randn, calls))
    out = sample(lambda xt, t: torch.tanh(xt), schedule, step, x_T, ts, generator=GeneratorOnAnotherDevice(7))
    assert calls == [torch.device("cuda")] * 20  # one draw per step, each on the generator's device
    assert out.device == x_T.device and out.dtype == x_T.dtype
    assert torch.equal(out, reference)  # the same numbers as a generator on the samples' own device


def test_generate_images_progress_bar(capsys):
    """generate_images shows a bar over batches (with the network evaluations so far) only when asked;
    the images do not change."""
    from ddpm_lib.checkpoint import LoadedModel
    from ddpm_lib.sampling import generate_images

    class ZeroNet(torch.nn.Module):  # no parameters: generate_images then runs on the CPU
        def forward(self, xt, t):
            return torch.zeros_like(xt)

    loaded = LoadedModel(ZeroNet(), linear_schedule(10), "eps", {})
    quiet = generate_images(loaded, 3, "ddim", steps=4, batch_size=2)
    assert capsys.readouterr().err == ""
    shown = generate_images(loaded, 3, "ddim", steps=4, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "sample ddim" in err and "2/2" in err and "nfe=4" in err, err  # 2 batches of 4 DDIM steps
    assert torch.equal(quiet, shown) and shown.shape == (3, 28, 28) and shown.dtype == torch.uint8
    # heun: 2 evaluations per step but the last, 2 * 4 - 1 = 7
    generate_images(loaded, 3, "heun", steps=4, batch_size=2, progress=True)
    assert "nfe=7" in capsys.readouterr().err


def test_ddpm_cannot_run_strided_timesteps():
    schedule = linear_schedule(100)
    x_T = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"t_prev = t - 1"):
        sample(lambda xt, t: xt, schedule, ddpm_step, x_T, ddim_timesteps(100, 10))


@pytest.mark.parametrize("timesteps", [[], [5, 5, 1], [3, 4], [101, 50], [10, 0]])
def test_iterate_rejects_bad_timesteps(timesteps):
    schedule = linear_schedule(100)
    with pytest.raises(ValueError, match=r"timesteps"):
        list(iterate(lambda xt, t: xt, schedule, ddpm_step, torch.zeros(1, 2), timesteps))


# --- ddim_timesteps -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 10, 100, 1000])
@pytest.mark.parametrize("steps", [1, 2, 7, 10, 50, 999, 1000])
def test_ddim_timesteps_valid(T, steps):
    if steps > T:
        with pytest.raises(ValueError, match=r"must be in 1\.\.T"):
            ddim_timesteps(T, steps)
        return
    ts = ddim_timesteps(T, steps)
    assert all(isinstance(x, int) for x in ts)
    assert ts[0] == T and ts[-1] >= 1
    assert all(a > b for a, b in zip(ts, ts[1:])), "strictly decreasing"
    assert len(ts) == steps  # evenly spaced with spacing (T-1)/(steps-1) >= 1, so no two round together
    if steps == T:
        assert ts == list(range(T, 0, -1))


@pytest.mark.parametrize("steps", [0, -1, 11])
def test_ddim_timesteps_rejects_bad_steps(steps):
    with pytest.raises(ValueError, match=r"must be in 1\.\.T = 1\.\.10"):
        ddim_timesteps(10, steps)


# --- denoiser wrappers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["eps", "x0", "v", "score"])
def test_model_denoiser_recovers_x0_from_a_perfect_model(target):
    """A 'network' that outputs the exact target for point-mass data gives back x0 for each target."""
    schedule = linear_schedule(1000)
    gen = torch.Generator().manual_seed(6)
    x0 = torch.rand(4, 1, 2, 2, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 1000])
    ab = torch.tensor([loop_alpha_bar(schedule)[i] for i in t.tolist()], dtype=torch.float64).reshape(-1, 1, 1, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    xt = a * x0 + s * eps

    def model(xt_in, t_in):
        return {"eps": (xt_in - a * x0) / s, "x0": x0, "v": a * eps - s * x0, "score": -(xt_in - a * x0) / s**2}[target]

    x0_hat = model_denoiser(model, schedule, target)(xt, t)
    # eps -> x0 divides by sqrt(ab_T) ~ 6e-3 (a ~170x amplification of ulp-level errors), and so does the
    # score (-sqrt(1 - ab) score is eps, no further division); 1e-11 absolute
    assert torch.allclose(x0_hat, x0, rtol=0.0, atol=1e-11)


def test_clip_denoiser_clamps():
    den = clip_denoiser(lambda xt, t: 3 * xt, -1.0, 1.0)
    x = torch.tensor([[-1.0, -0.2, 0.1, 0.5]])
    assert torch.equal(den(x, torch.tensor([1])), torch.tensor([[-1.0, -0.6, 0.3, 1.0]]))


# --- end to end: 1-D Gaussian data ---------------------------------------------------------------------------------


M, S = 0.7, 0.5  # the data distribution N(M, S^2)
N_SAMPLES = 20_000


def gaussian_denoiser(schedule: Schedule, m: float, s: float):
    """Exact E[x_0 | x_t] for x_0 ~ N(m, s^2): m + k_t (x_t - sqrt(ab_t) m)."""
    ab = loop_alpha_bar(schedule)

    def denoiser(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abt = ab[int(t[0])]
        assert bool((t == t[0]).all())
        k = math.sqrt(abt) * s**2 / (abt * s**2 + 1 - abt)
        return m + k * (xt - math.sqrt(abt) * m)

    return denoiser


def sampler_law(schedule: Schedule, m: float, s: float) -> tuple[float, float]:
    """Exact mean and variance of the DDPM sampler's output with the exact denoiser, x_T ~ N(0, 1).

    x_{t-1} = c0 E[x0|x_t] + c1 x_t + sqrt(tilde_beta_t) z is affine in x_t plus independent noise, so
    mean' = A mean + b and var' = A^2 var + tilde_beta_t with A = c0 k_t + c1 (Ho et al. eq. 7).
    """
    ab = loop_alpha_bar(schedule)
    beta = schedule.beta.tolist()
    mean, var = 0.0, 1.0
    for t in range(schedule.T, 0, -1):
        c0 = math.sqrt(ab[t - 1]) * beta[t] / (1 - ab[t])
        c1 = math.sqrt(1 - beta[t]) * (1 - ab[t - 1]) / (1 - ab[t])
        tb = (1 - ab[t - 1]) / (1 - ab[t]) * beta[t]
        k = math.sqrt(ab[t]) * s**2 / (ab[t] * s**2 + 1 - ab[t])
        A = c0 * k + c1
        mean = A * mean + c0 * (m - k * math.sqrt(ab[t]) * m)
        var = A * A * var + tb
    return mean, var


def check_gaussian_sampling(step, schedule: Schedule, seed: int) -> tuple[bool, str]:
    """Sample N_SAMPLES points with ``step`` and the exact denoiser; compare with N(M, S^2).

    Allowed: K_SE standard errors (mean: sqrt(v/N); variance: v sqrt(2/(N-1)), Gaussian output) plus the
    exactly computed discretization bias |mu_out - M|, |v_out - S^2| of the correct DDPM sampler.
    """
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn(N_SAMPLES, 1, generator=gen, dtype=torch.float64)
    x = sample(gaussian_denoiser(schedule, M, S), schedule, step, x_T, list(range(schedule.T, 0, -1)), generator=gen)
    mu_out, v_out = sampler_law(schedule, M, S)
    m_hat, v_hat = x.mean().item(), x.var(unbiased=True).item()
    tol_mean = K_SE * math.sqrt(v_out / N_SAMPLES) + abs(mu_out - M)
    tol_var = K_SE * v_out * math.sqrt(2 / (N_SAMPLES - 1)) + abs(v_out - S**2)
    ok = abs(m_hat - M) <= tol_mean and abs(v_hat - S**2) <= tol_var
    return ok, f"mean {m_hat:.4f} (allowed {M} +- {tol_mean:.4f}), variance {v_hat:.4f} (allowed {S**2} +- {tol_var:.4f})"


def wrong_ddpm_step_variance_as_std(denoiser, xt, t, t_prev, schedule, generator=None, state=None):
    """Planted mistake, a step of the protocol: scales the noise by tilde_beta_t (a variance), not its square root."""
    x0_hat, noise = denoiser(xt, t), standard_normal(xt, generator)
    c0 = schedule.alpha_bar[t - 1].sqrt() * schedule.beta[t] / (1 - schedule.alpha_bar[t])
    c1 = (1 - schedule.beta[t]).sqrt() * (1 - schedule.alpha_bar[t - 1]) / (1 - schedule.alpha_bar[t])
    tb = schedule.posterior_variance[t]
    return c0.reshape(-1, 1) * x0_hat + c1.reshape(-1, 1) * xt + tb.reshape(-1, 1) * noise, None


SCHED_T100 = linear_schedule(100, 1e-3, 0.2)  # DDPM's linear schedule rescaled to T = 100 (betas x 10)
SCHED_T1000 = linear_schedule(1000)


def test_discretization_bias_is_small_and_shrinks_like_1_over_T():
    """Justifies the allowance in check_gaussian_sampling: it is a discretization error, O(1/T)."""
    mu100, v100 = sampler_law(SCHED_T100, M, S)
    mu1000, v1000 = sampler_law(SCHED_T1000, M, S)
    bias100, bias1000 = abs(v100 - S**2) / S**2, abs(v1000 - S**2) / S**2
    assert bias100 < 0.15 and bias1000 < 0.02  # relative variance bias at T = 100 and T = 1000
    assert bias1000 < bias100 / 5  # ~10x fewer/smaller steps -> ~10x smaller bias
    assert abs(mu100 - M) < 1e-3 and abs(mu1000 - M) < 1e-3
    # the same for N(0, 1) data, where q(x_T) = N(0, 1) exactly: what is left is the step's missing
    # c_x0^2 Var[x_0 | x_t], and it too shrinks with T
    assert abs(sampler_law(SCHED_T1000, 0.0, 1.0)[1] - 1.0) < abs(sampler_law(SCHED_T100, 0.0, 1.0)[1] - 1.0) / 5


@pytest.mark.parametrize("schedule", [SCHED_T100, SCHED_T1000], ids=["T100", "T1000"])
def test_ddpm_samples_gaussian_data(schedule):
    ok, msg = check_gaussian_sampling(ddpm_step, schedule, seed=11)
    assert ok, msg


def test_ddpm_samples_match_the_exact_sampler_law():
    """Tighter: the sample moments match the sampler's exact output law within the CLT bound alone."""
    gen = torch.Generator().manual_seed(12)
    x_T = torch.randn(N_SAMPLES, 1, generator=gen, dtype=torch.float64)
    x = sample(gaussian_denoiser(SCHED_T100, M, S), SCHED_T100, ddpm_step, x_T, list(range(100, 0, -1)), generator=gen)
    mu_out, v_out = sampler_law(SCHED_T100, M, S)
    assert abs(x.mean().item() - mu_out) <= K_SE * math.sqrt(v_out / N_SAMPLES)
    assert abs(x.var().item() - v_out) <= K_SE * v_out * math.sqrt(2 / (N_SAMPLES - 1))


def test_gaussian_check_rejects_variance_as_std():
    ok, msg = check_gaussian_sampling(wrong_ddpm_step_variance_as_std, SCHED_T100, seed=11)
    assert not ok, f"the planted mistake passed: {msg}"


def test_sampler_plan_refuses_zero_steps_instead_of_defaulting():
    # `steps or 50` once turned steps = 0 into 50 steps, silently
    from ddpm_lib.sampling import sampler_plan

    for name in ("ddim", "ddpm-strided", "dpm-solver-2m", "heun"):
        with pytest.raises(ValueError, match="must be in 1..T"):
            sampler_plan(name, 100, steps=0)
        assert len(sampler_plan(name, 100)[1]) == 50  # None still means the default of 50


def test_sampler_plan_names_its_steps():
    from ddpm_lib.sampling import SAMPLERS, dpm_solver_2m_step, heun_step, sampler_plan

    assert set(SAMPLERS) == {"ddpm", "ddpm-strided", "ddim", "dpm-solver-2m", "heun", "euler-maruyama", "pc"}
    assert sampler_plan("ddpm", 20) == (ddpm_step, list(range(20, 0, -1)))
    assert sampler_plan("heun", 100, 8) == (heun_step, ddim_timesteps(100, 8))
    assert sampler_plan("dpm-solver-2m", 100, 8)[0] is dpm_solver_2m_step
    ddim, strided = sampler_plan("ddim", 100, 8, eta=0.3)[0], sampler_plan("ddpm-strided", 100, 8, eta=0.3)[0]
    assert ddim.func is ddim_step and ddim.keywords == {"eta": 0.3}
    assert strided.func is ddim_step and strided.keywords == {"eta": 1.0}  # ignores eta
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_plan("euler", 100, 8)


def test_generate_images_starts_every_sampler_and_budget_from_the_same_x_T(monkeypatch):
    # sampler_table's pairing rests on this: all of x_T is drawn before any step noise, so a stochastic sampler's
    # use of the generator (which depends on its number of steps) cannot shift a later batch's x_T. Drawing x_T
    # batch by batch, as before, fails here: the strided rows' second and third batches would start elsewhere.
    import ddpm_lib.sampling.images as images
    from ddpm_lib.checkpoint import LoadedModel
    from ddpm_lib.core.schedules import linear_schedule
    from ddpm_lib.sampling import generate_images

    class Half(torch.nn.Module):  # any network (x_t, t) -> output
        def forward(self, xt, t):
            return 0.5 * xt

    starts = []
    real_iterate = images.iterate

    def spy(denoiser, schedule, step, x_T, timesteps, generator=None):
        starts.append(x_T.clone())
        return real_iterate(denoiser, schedule, step, x_T, timesteps, generator)

    monkeypatch.setattr(images, "iterate", spy)
    loaded = LoadedModel(Half(), linear_schedule(50), "eps", {})
    runs = {}
    for sampler, steps in (("ddpm-strided", 3), ("ddpm-strided", 7), ("ddim", 5), ("ddpm", None)):
        starts.clear()
        generate_images(loaded, 6, sampler, steps, seed=4, batch_size=2)
        runs[sampler, steps] = torch.cat(starts)
    first = runs["ddpm-strided", 3]
    assert first.shape == (6, 1, 28, 28) and len(starts) == 3  # three batches of two
    assert all(torch.equal(first, x) for x in runs.values())
    assert torch.equal(first, torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(4)))  # the first draw
