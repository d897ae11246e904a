"""The learned schedule (ddpm_lib.core.learned_schedule): SNR(t) = exp(-gamma(t)) with a monotone network.

Checks: gamma is strictly increasing with pinned ends for *any* parameter values (the architecture,
not the training, guarantees it); the discrete schedule is sigmoid(-gamma(i/T)); the continuous-time
integrand is 0.5 gamma' exp(-gamma) ||x0 - x0_hat||^2 and, for Gaussian data with the exact denoiser,
its mean does not depend on the shape of gamma (Kingma et al. 2021, §5.1) but only on its ends.
Planted mistakes: a non-monotone gamma (signed weights) and a loss with unpinned ends.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib.core.learned_schedule import (
    alpha_bar_from_gamma,
    continuous_vlb_integrand,
    schedule_from_gamma,
    snr_from_gamma,
)
from ddpm_lib.core.schedules import Schedule
from ddpm_lib.models import MonotoneGamma

pytestmark = pytest.mark.usefixtures("single_thread")

K_SE = 5.0
GRID = torch.linspace(0, 1, 2001, dtype=torch.float64)


def slope(net, t):
    t = t.clone().requires_grad_(True)
    g = net(t)
    (dg,) = torch.autograd.grad(g.sum(), t, create_graph=True)
    return g, dg


@pytest.mark.parametrize("seed", range(5))
def test_monotone_and_pinned_for_any_parameters(seed):
    gen = torch.Generator().manual_seed(seed)
    net = MonotoneGamma(-7.0, 12.0, hidden=16, generator=gen).double()
    with torch.no_grad():  # scramble every raw parameter, including to large negative values
        for p in net.parameters():
            p.copy_(6.0 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    g, dg = (v.detach() for v in slope(net, GRID))
    assert abs(float(g[0]) + 7.0) < 1e-12 and abs(float(g[-1]) - 12.0) < 1e-12
    assert float(dg.min()) > 0
    assert bool((g[1:] > g[:-1]).all())


def test_schedule_from_gamma_is_sigmoid_of_minus_gamma_and_leaves_the_module_alone():
    net = MonotoneGamma(generator=torch.Generator().manual_seed(0))  # float32 parameters
    sch = schedule_from_gamma(net, T=500)
    assert isinstance(sch, Schedule) and sch.T == 500
    assert next(net.parameters()).dtype == torch.float32  # evaluated on a float64 copy
    i = torch.arange(1, 501, dtype=torch.float64)
    with torch.no_grad():
        g = net.double()(i / 500)
    # alpha_bar goes through 1 - ab / ab_prev and back (cumprod): a few ulps relative per step
    assert torch.allclose(sch.alpha_bar[1:], torch.sigmoid(-g), rtol=1e-12, atol=0)
    assert float(sch.alpha_bar[0]) == 1.0
    assert torch.allclose(sch.log_snr[1:], -g, rtol=0, atol=1e-8)


def test_gamma_helpers():
    g = torch.tensor([-3.0, 0.0, 2.5], dtype=torch.float64)
    ab = alpha_bar_from_gamma(g)
    assert torch.allclose(ab / (1 - ab), snr_from_gamma(g), rtol=1e-14)
    assert torch.allclose(1 - ab, torch.sigmoid(g), rtol=1e-14)
    with pytest.raises(TypeError):
        alpha_bar_from_gamma(torch.tensor([1, 2]))
    with pytest.raises(TypeError):
        snr_from_gamma([0.5])


def test_errors():
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        MonotoneGamma(3.0, 3.0)
    with pytest.raises(ValueError, match="hidden"):
        MonotoneGamma(hidden=0)
    net = MonotoneGamma()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net(torch.tensor([0.5, 1.2]))
    with pytest.raises(TypeError):
        net(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="T must be"):
        schedule_from_gamma(net, 0)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="differ"):
        continuous_vlb_integrand(x, torch.zeros(3, 3), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="shape"):
        continuous_vlb_integrand(x, x, torch.zeros(2), torch.ones(3))


class SignedGamma(torch.nn.Module):
    """Planted mistake: the same form g(t) = t + sum_k b_k sigmoid(w_k t + c_k), pinned ends, signed weights."""

    def __init__(self, generator):
        super().__init__()
        self.w = torch.nn.Parameter(5.0 * torch.randn(32, generator=generator, dtype=torch.float64))
        self.c = torch.nn.Parameter(5.0 * torch.randn(32, generator=generator, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(32, generator=generator, dtype=torch.float64))

    def raw(self, t):
        return t + (torch.sigmoid(t[..., None] * self.w + self.c) * self.b).sum(-1)

    def forward(self, t):
        ends = self.raw(torch.tensor([0.0, 1.0], dtype=t.dtype))
        return -10.0 + 20.0 * (self.raw(t) - ends[0]) / (ends[1] - ends[0])


def test_planted_non_monotone_gamma_is_rejected():
    signed = SignedGamma(torch.Generator().manual_seed(1))
    dg = slope(signed, GRID)[1].detach()
    assert float(dg.min()) < 0  # the planted network really is non-monotone
    with pytest.raises(ValueError, match="strictly decreasing"):
        schedule_from_gamma(signed, T=1000)


# --- the continuous-time loss and its invariance ----------------------------------------------------------

S2, D = 0.25, 2  # Gaussian data N(0, S2 I_D)


def gaussian_vlb_samples(gamma_fn, n, seed):
    """Samples of the integrand with t ~ U(0, 1) and the exact denoiser of N(0, S2 I)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = math.sqrt(S2) * torch.randn(n, D, generator=gen, dtype=torch.float64)
    t = torch.rand(n, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, D, generator=gen, dtype=torch.float64)
    g, dg = slope(gamma_fn, t)
    ab = torch.sigmoid(-g)[:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    x0_hat = ab.sqrt() * S2 / (ab * S2 + 1 - ab) * xt
    return continuous_vlb_integrand(x0, x0_hat, g, dg).detach()


def closed_form(g0, g1):
    """0.5 int mmse(v) dv from SNR(1) = exp(-g1) to SNR(0) = exp(-g0), mmse(v) = D S2 / (1 + S2 v)."""
    return D / 2 * math.log((1 + S2 * math.exp(-g0)) / (1 + S2 * math.exp(-g1)))


def z_score(samples, expected):
    return (float(samples.mean()) - expected) / (float(samples.std()) / math.sqrt(samples.numel()))


def test_integrand_formula():
    x0 = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64)
    x0_hat = torch.tensor([[0.5, 2.0], [0.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([0.0, math.log(2.0)], dtype=torch.float64)
    dg = torch.tensor([3.0, 4.0], dtype=torch.float64)
    out = continuous_vlb_integrand(x0, x0_hat, g, dg)
    assert torch.allclose(out, torch.tensor([0.5 * 3 * 1 * 0.25, 0.5 * 4 * 0.5 * 1.0], dtype=torch.float64), rtol=1e-14)


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_value_depends_only_on_the_ends(seed):
    """Two different monotone gammas with the same ends: both means match the closed form (5 SE)."""
    net = MonotoneGamma(-10.0, 10.0, generator=torch.Generator().manual_seed(seed)).double()
    with torch.no_grad():
        net.raw_b.add_(2.0)  # a strongly non-linear schedule
    linear = lambda t: -10.0 + 20.0 * t  # noqa: E731
    expected = closed_form(-10.0, 10.0)
    for fn in (net, linear):
        z = z_score(gaussian_vlb_samples(fn, 100_000, seed=10 + seed), expected)
        assert abs(z) < K_SE, f"{fn}: z = {z:.2f}"


def test_planted_unpinned_end_changes_the_loss():
    """Planted mistake: a schedule whose end gamma(0) = -6 instead of -10 gives another value; the check sees it."""
    short = lambda t: -6.0 + 16.0 * t  # noqa: E731
    z = z_score(gaussian_vlb_samples(short, 100_000, seed=3), closed_form(-10.0, 10.0))
    assert abs(z) > K_SE
    assert abs(z_score(gaussian_vlb_samples(short, 100_000, seed=3), closed_form(-6.0, 10.0))) < K_SE
