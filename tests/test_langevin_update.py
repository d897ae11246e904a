"""ddpm_lib.sampling.langevin_update: the ULA step of book eq. ``ula-step`` (the chapter tests the chain it drives)."""

import pytest
import torch

from ddpm_lib.sampling import langevin_update


def test_the_step_is_drift_plus_noise_of_variance_two_delta():
    # for a standard normal target (score -x) one step from x maps N(m, v) to N((1 - d) m, (1 - d)^2 v + 2 d);
    # checked on the formula's two parts separately, with hand-written values
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    z = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    out = langevin_update(x, -x, 0.01, z)
    # x + d s + sqrt(2 d) z, written out: 1 - 0.01 + 0.1414.. * 0.5 and -2 + 0.02 + 0.1414.. * 0.25
    expected = torch.tensor([[0.99 + 0.02**0.5 * 0.5, -1.98 + 0.02**0.5 * 0.25]], dtype=torch.float64)
    assert torch.allclose(out, expected, rtol=0, atol=1e-15)
    # the noise's scale is the square root of 2 * delta, not delta and not sqrt(delta): planted forms differ
    for wrong in (x - 0.01 * x + 0.01 * z, x - 0.01 * x + 0.1 * z):
        assert not torch.allclose(out, wrong, rtol=0, atol=1e-6)


def test_the_stationary_variance_of_a_gaussian_target():
    # ULA on N(0, 1): x' = (1 - d) x + sqrt(2 d) z has stationary variance 2d / (1 - (1 - d)^2) = 1 / (1 - d/2), exactly
    d, n = 0.2, 200_000
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, dtype=torch.float64)
    for _ in range(200):  # (1 - d)^400 ~ 1e-39: the start is forgotten
        x = langevin_update(x, -x, d, torch.randn(x.shape, generator=g, dtype=torch.float64))
    var, exact = float(x.var()), 1 / (1 - d / 2)
    # the sample variance of n normal draws has standard error var * sqrt(2 / n) = 0.0035 here; 5 of them
    assert abs(var - exact) < 5 * exact * (2 / n) ** 0.5
    assert abs(var - 1.0) > 5 * exact * (2 / n) ** 0.5  # the step-size bias is visible at this n


def test_bad_input_is_refused():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="one shape"):
        langevin_update(x, torch.zeros(2, 2), 0.1, x)
    with pytest.raises(ValueError, match="positive"):
        langevin_update(x, x, 0.0, x)
