"""A noise-conditional MNIST classifier :math:`p_\\phi(y \\mid x_t, t)`, the network behind classifier guidance.

A model is only a network: ``classifier(xt, t) -> logits`` with ``xt`` float ``(B, 1, 28, 28)`` (a noised
image in the model's range, of any scale the forward process gives it) and ``t`` integer ``(B,)`` in ``1..T``
(the book's time convention, notation page). Dhariwal & Nichol (2021, §4) guide with the downsampling half of
their U-Net; this is the same idea at MNIST's size: four convolutions in two resolutions, each block told the
time by a sinusoidal embedding (:func:`~ddpm_lib.models.unet.timestep_embedding`) added to its channels,
then, over the 7x7 map, a ``features``-wide layer and the logits, so that the read-out sees where each feature
is, not only which local features are present. Trained by :func:`ddpm_lib.training.noisy_classifier.train_noisy_classifier`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import DictConfig
from .unet import timestep_embedding

__all__ = ["NoisyClassifierConfig", "NoisyClassifier"]


@dataclass(frozen=True)
class NoisyClassifierConfig(DictConfig):
    """The architecture: two blocks of two 3x3 convolutions (``channels``), GroupNorm and SiLU, a time embedding.

    Attributes:
        channels: the widths of the two resolutions (28x28, then 14x14); a 2x2 average pool then gives the 7x7 map.
        emb_dim: width of the time embedding (even).
        features: width of the layer between the 7x7 map and the logits.
        num_classes: the number of labels.
        groups: GroupNorm groups (must divide both widths).
    """

    channels: tuple[int, int] = (32, 64)
    emb_dim: int = 64
    features: int = 128
    num_classes: int = 10
    groups: int = 8

    def __post_init__(self) -> None:
        if self.emb_dim % 2 or self.emb_dim < 2:
            raise ValueError(f"NoisyClassifierConfig.emb_dim must be even and >= 2, got {self.emb_dim}.")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"NoisyClassifierConfig: groups = {self.groups} must divide every width in {self.channels}.")


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(groups, c_out), nn.GroupNorm(groups, c_out)
        self.time = nn.Linear(emb_dim, c_out)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.norm1(self.conv1(x)) + self.time(emb)[:, :, None, None])
        return nn.functional.silu(self.norm2(self.conv2(h)))


class NoisyClassifier(nn.Module):
    """``forward(xt, t)`` returns float32 logits ``(B, num_classes)``: :math:`\\log p_\\phi(y \\mid x_t, t)` up to a constant in ``y``.

    Raises:
        ValueError: if ``xt`` is not ``(B, 1, 28, 28)`` or ``t`` is not ``(B,)``.
    """

    def __init__(self, config: NoisyClassifierConfig = NoisyClassifierConfig()):
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.emb = nn.Sequential(nn.Linear(config.emb_dim, config.emb_dim), nn.SiLU(), nn.Linear(config.emb_dim, config.emb_dim))
        self.block1 = _Block(1, c1, config.emb_dim, config.groups)
        self.block2 = _Block(c1, c2, config.emb_dim, config.groups)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 7 * 7, config.features), nn.SiLU(),
                                  nn.Linear(config.features, config.num_classes))

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if xt.ndim != 4 or tuple(xt.shape[1:]) != (1, 28, 28):
            raise ValueError(f"NoisyClassifier expects noised images (B, 1, 28, 28), got {tuple(xt.shape)}.")
        if t.shape != (xt.shape[0],):
            raise ValueError(f"NoisyClassifier expects one timestep per image, t of shape ({xt.shape[0]},); got {tuple(t.shape)}.")
        emb = self.emb(timestep_embedding(t, self.config.emb_dim))
        h = self.block1(xt.float(), emb)
        h = self.block2(nn.functional.avg_pool2d(h, 2), emb)
        return self.head(nn.functional.avg_pool2d(h, 2))
