"""A small MNIST classifier, and its penultimate features as the evaluation network.

A model is only a network: ``classifier(x) -> logits`` with ``x`` float ``(B, 1, 28, 28)`` in
``[-1, 1]``. :meth:`MnistClassifier.features` returns the 128-dimensional penultimate activations
that define the Fréchet distance of :mod:`ddpm_lib.evaluation` (the role Inception-v3 plays for
FID, Heusel et al. 2017, on a network trained on MNIST itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import DictConfig

__all__ = ["ClassifierConfig", "MnistClassifier"]


@dataclass(frozen=True)
class ClassifierConfig(DictConfig):
    """The classifier's architecture: two conv blocks of ``channels`` and a ``features``-wide layer.

    Its JSON form in checkpoints: :class:`~ddpm_lib.models.config.DictConfig`. No validation of its
    own: a size that does not fit fails when :class:`MnistClassifier` is built.
    """

    channels: tuple[int, int] = (32, 64)
    features: int = 128
    num_classes: int = 10
    dropout: float = 0.25


class MnistClassifier(nn.Module):
    """conv-conv-pool, conv-conv-pool, a ``features``-wide layer, then logits over the classes.

    ``forward(x)`` returns float logits ``(B, num_classes)``; ``features(x)`` returns ``(B, features)``.

    Raises:
        ValueError: if ``x`` is not ``(B, 1, 28, 28)``.
    """

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(c2 * 7 * 7, config.features), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.features, config.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"MnistClassifier expects (B, 1, 28, 28) images in [-1, 1], got {tuple(x.shape)}.")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
