"""ddpm_lib.models.mlp: the small MLP denoiser of the chapters kl_to_mse and parameterizations."""

import math

import pytest
import torch
from torch import nn

from ddpm_lib.models.mlp import ToyDenoiser


def test_shapes_dtypes_and_configuration():
    model = ToyDenoiser(1000)
    out = model(torch.randn(5, 2), torch.randint(0, 1001, (5,)))
    assert out.shape == (5, 2) and out.dtype == torch.float32
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(34, 128), (128, 128), (128, 128), (128, 2)]
    small = ToyDenoiser(20, width=8, n_freq=3, dim=3)
    assert small(torch.randn(4, 3), torch.arange(4)).shape == (4, 3)
    assert small.net[0].in_features == 3 + 2 * 3
    assert math.isclose(float(small.freqs[0]), math.pi, rel_tol=1e-6) and math.isclose(float(small.freqs[-1]), 1000 * math.pi, rel_tol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        ToyDenoiser(0)


def test_wrong_shapes_raise_a_clear_value_error():
    model = ToyDenoiser(1000)
    with pytest.raises(ValueError, match=r"xt of shape \(B, 2\)"):
        model(torch.randn(5, 3), torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"xt of shape \(B, 2\)"):
        model(torch.randn(2), torch.ones(1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"t of shape \(B,\)"):
        model(torch.randn(5, 2), torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"t of shape \(B,\)"):
        model(torch.randn(5, 2), torch.tensor(3))


def test_output_depends_on_t():
    torch.manual_seed(0)
    model = ToyDenoiser(1000)
    xt = torch.randn(6, 2).repeat(2, 1)
    t = torch.tensor([1] * 6 + [2] * 6)  # neighbouring steps must be told apart
    with torch.no_grad():
        out = model(xt, t)
    assert not torch.allclose(out[:6], out[6:])
    with torch.no_grad():
        assert torch.equal(model(xt[:6], t[:6]), out[:6])  # and the same t gives the same output


def test_same_seed_same_initial_weights_as_the_inline_definition():
    # the chapters' former inline class, kept here to pin the layer order (and so their stored outputs)
    class Inline(nn.Module):
        def __init__(self, T, width=128, n_freq=16):
            super().__init__()
            self.T = T
            self.register_buffer("freqs", math.pi * torch.exp(torch.linspace(0, math.log(1000.0), n_freq)))
            self.net = nn.Sequential(nn.Linear(2 + 2 * n_freq, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                     nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

        def forward(self, xt, t):
            phase = (t.to(xt.dtype) / self.T)[:, None] * self.freqs
            return self.net(torch.cat([xt, torch.sin(phase), torch.cos(phase)], dim=1))

    torch.manual_seed(1)
    ref = Inline(1000)
    torch.manual_seed(1)
    model = ToyDenoiser(1000)
    a, b = ref.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    xt, t = torch.randn(7, 2), torch.randint(1, 1001, (7,))
    with torch.no_grad():
        assert torch.equal(ref(xt, t), model(xt, t))
