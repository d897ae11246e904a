"""The U-Net: shapes, config validation and round-trip, label handling."""

import pytest
import torch

from ddpm_lib.models.unet import UNet, UNetConfig, timestep_embedding

SMALL = UNetConfig(channels=(8, 16), num_res_blocks=1, attention_heads=2)


def test_output_shape_and_dtype_match_input():
    model = UNet(SMALL)
    x = torch.randn(3, 1, 28, 28)
    out = model(x, torch.tensor([1, 500, 1000]))
    assert out.shape == x.shape and out.dtype == x.dtype


def test_zero_initialised_output_then_learns_something():
    # conv_out starts at zero (so the initial eps prediction is 0); one optimizer step changes that
    model = UNet(SMALL)
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    assert torch.count_nonzero(model(x, t)) == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (model(x, t) - x).pow(2).mean().backward()
    opt.step()
    assert torch.count_nonzero(model(x, t)) > 0


def test_output_depends_on_t():
    torch.manual_seed(0)
    model = UNet(SMALL)
    for p in model.parameters():  # random weights everywhere so every path is live
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 1, 28, 28).repeat(2, 1, 1, 1)
    out = model(x, torch.tensor([10, 900]))
    assert not torch.allclose(out[0], out[1])


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 3.0])
    emb = timestep_embedding(t, 8)
    w = 10000.0 ** (-torch.arange(4) / 4)
    expected = torch.cat([torch.cos(t[:, None] * w), torch.sin(t[:, None] * w)], dim=1)
    # float32 round-off on arguments of size <= 3
    assert torch.allclose(emb, expected, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(t, 7)


def test_config_dict_round_trip_and_mismatch_message():
    cfg = UNetConfig(channels=(16, 32, 64), num_classes=10)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    d["colour"] = 3
    del d["groups"]
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\], missing keys \['groups'\]"):
        UNetConfig.from_dict(d)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"channels": (12, 24)}, "divisible by groups"),
        ({"channels": ()}, "non-empty"),
        ({"pad_to": 30, "channels": (8, 16, 32)}, "pad_to"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"channels": (8, 24), "attention_heads": 5}, "attention_heads"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_wrong_input_shape_and_labels_raise():
    model = UNet(SMALL)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.randn(2, 1, 32, 32), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([0, 1]))
    cond = UNet(UNetConfig(channels=(8, 16), num_res_blocks=1, attention_heads=2, num_classes=10))
    with pytest.raises(ValueError, match="conditional"):
        cond(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))
    assert cond(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([3, 10])).shape == (2, 1, 28, 28)
