"""A small U-Net for 28x28 images (Ronneberger et al. 2015, in the form of Ho et al. 2020, App. B).

A model is only a network: ``model(xt, t[, y]) -> output`` with the shape of ``xt`` (twice its channels
for a network with learned variances). It knows
nothing of schedules or samplers; what the output means (``eps``, ``x0`` or ``v``) is the
training configuration's business.

Layout: a sinusoidal embedding of ``t`` (Vaswani et al. 2017) feeds every residual block; each
resolution has ``num_res_blocks`` residual blocks; the lowest resolution has self-attention
(``torch.nn.MultiheadAttention``). Inputs are zero-padded from ``image_size`` to ``pad_to`` so that
every downsampling halves an even size, and the output is cropped back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import DictConfig

__all__ = ["UNetConfig", "UNet", "timestep_embedding"]


@dataclass(frozen=True)
class UNetConfig(DictConfig):
    """Everything that determines the network's architecture; stored in every checkpoint.

    Attributes:
        in_channels: image channels (1 for MNIST).
        channels: feature channels per resolution, e.g. ``(32, 64, 128)`` for 32, 16 and 8 pixels.
        num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
        attention_heads: heads of the self-attention at the lowest resolution.
        dropout: dropout probability inside residual blocks.
        num_classes: number of class labels for a conditional model, or ``None``. A conditional
            model reserves the extra label ``num_classes`` for "no label" (for guidance later).
        image_size: input height and width (28 for MNIST).
        pad_to: the size the input is padded to; must be divisible by ``2 ** (len(channels) - 1)``.
        groups: GroupNorm groups; every entry of ``channels`` must be divisible by it.
        learn_variance: if true, the network returns ``2 * in_channels`` channels: its target's prediction,
            then the variance interpolation ``v`` of :func:`ddpm_lib.core.variance.learned_log_variance`
            (Nichol & Dhariwal 2021, §3.1; trained with the hybrid loss). Checkpoints written before this
            field existed read as ``False``.

    Checkpoints store it as ``to_dict()`` and read it with ``from_dict`` (:class:`~ddpm_lib.models.config.DictConfig`).

    Raises:
        ValueError: for channels that are empty, non-positive or not divisible by ``groups``, lowest
            channels not divisible by ``attention_heads``, a ``pad_to`` below ``image_size`` or not
            divisible by ``2 ** (len(channels) - 1)``, or ``num_res_blocks < 1``.
    """

    in_channels: int = 1
    channels: tuple[int, ...] = (32, 64, 128)
    num_res_blocks: int = 2
    attention_heads: int = 4
    dropout: float = 0.0
    num_classes: int | None = None
    image_size: int = 28
    pad_to: int = 32
    groups: int = 8
    learn_variance: bool = False

    FIELDS_ADDED_LATER = {"learn_variance": False}

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        levels = len(self.channels)
        if levels < 1 or any(c < 1 for c in self.channels):
            raise ValueError(f"UNetConfig.channels must be a non-empty tuple of positive ints, got {self.channels}.")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"every entry of channels {self.channels} must be divisible by groups={self.groups}.")
        if self.channels[-1] % self.attention_heads:
            raise ValueError(
                f"the lowest-resolution channels {self.channels[-1]} must be divisible by attention_heads={self.attention_heads}."
            )
        if self.pad_to < self.image_size or self.pad_to % (2 ** (levels - 1)):
            raise ValueError(
                f"pad_to={self.pad_to} must be >= image_size={self.image_size} and divisible by 2**{levels - 1}."
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}.")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, §3.5; Ho et al. 2020, App. B).

    Args:
        t: shape ``(B,)``, time in units of steps (book: notation page, "Continuous time"): integers on
            the discrete chain, the float ``T * u`` in continuous time. Cast to float32, so a non-integer
            time is kept to about ``6e-5`` of a step near ``t = 1000``; integers are exact.
        dim: even embedding width.

    Returns:
        float32 tensor ``(B, dim)``: ``[cos(t w_k), sin(t w_k)]`` with ``w_k = max_period^(-k/(dim/2))``.
    """
    if dim % 2:
        raise ValueError(f"timestep_embedding needs an even dim, got {dim}.")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        h, _ = self.attn(h, h, h, need_weights=False)
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class UNet(nn.Module):
    """The denoising network ``(xt, t[, y]) -> output``.

    Args (of ``forward``):
        xt: float tensor ``(B, in_channels, image_size, image_size)``, pixels in the model range.
        t: tensor ``(B,)``, time in units of steps: integers ``1..T`` on the discrete chain, or the float
            ``T * u`` in continuous time (see :func:`timestep_embedding`).
        y: int64 labels ``(B,)`` in ``0..num_classes`` (``num_classes`` = no label) for a
            conditional model; must be ``None`` for an unconditional one.

    Returns:
        A tensor ``(B, C_out, image_size, image_size)`` of ``xt``'s dtype: ``C_out = in_channels``, or twice
        that with ``learn_variance`` (the prediction, then ``v``; :func:`ddpm_lib.core.variance.split_output`).

    Raises:
        ValueError: for a wrong input shape, or a label given to an unconditional model (or
            missing for a conditional one).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        emb_dim = 4 * ch[0]
        g, p = config.groups, config.dropout
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(config.num_classes + 1, emb_dim) if config.num_classes else None
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [ch[0]]
        c = ch[0]
        for level, c_out in enumerate(ch):
            for _ in range(config.num_res_blocks):
                self.down.append(ResBlock(c, c_out, emb_dim, g, p))
                c = c_out
                skip_channels.append(c)
            if level < len(ch) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_channels.append(c)

        self.mid1 = ResBlock(c, c, emb_dim, g, p)
        self.mid_attn = AttentionBlock(c, config.attention_heads, g)
        self.mid2 = ResBlock(c, c, emb_dim, g, p)

        self.up = nn.ModuleList()
        for level in reversed(range(len(ch))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(ResBlock(c + skip_channels.pop(), ch[level], emb_dim, g, p))
                c = ch[level]
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(c, c, 3, padding=1))

        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = nn.Conv2d(c, config.in_channels * (2 if config.learn_variance else 1), 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if xt.ndim != 4 or tuple(xt.shape[1:]) != expected:
            raise ValueError(f"UNet expects xt of shape (B, {', '.join(map(str, expected))}), got {tuple(xt.shape)}.")
        if (y is None) != (self.label_emb is None):
            raise ValueError(
                "this UNet is " + ("conditional: pass labels y" if self.label_emb is not None else "unconditional: y must be None")
            )
        emb = self.time_mlp(timestep_embedding(t, cfg.channels[0]).to(xt.dtype))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)

        pad = cfg.pad_to - cfg.image_size
        h = F.pad(xt, (0, pad, 0, pad)) if pad else xt
        h = self.conv_in(h)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, ResBlock) else layer(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h[:, :, : cfg.image_size, : cfg.image_size]
