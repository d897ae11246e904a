"""A small MLP denoiser for low-dimensional toy data (the 2-D mixtures of ``ddpm_lib.toys.mixture``).

Used by the chapters "From KL divergence to mean squared error" (``notebooks/kl_to_mse.ipynb``) and
"Three (and four) parameterizations" (``notebooks/parameterizations.ipynb``), which train several copies of it on a
2-D Gaussian mixture with different losses or targets. Like every model of the library it is only a
network ``(x_t, t) -> output``: what the output means (``eps``, ``x0``, ``v`` or a score) is decided
by the loss it is trained with, and it knows nothing of schedules or samplers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ToyDenoiser"]


class ToyDenoiser(nn.Module):
    """An MLP ``(x_t, t) -> output`` for ``dim``-dimensional data; ``t`` enters as Fourier features of ``t / T``.

    The input of the MLP is ``x_t`` concatenated with :math:`\\sin(\\omega_j t / T)` and
    :math:`\\cos(\\omega_j t / T)` for ``n_freq`` frequencies :math:`\\omega_j = \\pi \\cdot 1000^{j / (n_\\text{freq} - 1)}`,
    :math:`j = 0, \\dots, n_\\text{freq} - 1` (from :math:`\\pi` to :math:`1000\\pi`, log-spaced), so
    that neighbouring steps ``t`` and ``t + 1`` are told apart. Then three hidden layers of ``width``
    units with SiLU activations and a linear output layer of ``dim`` units.

    The layers are created in that order (input layer first), so ``torch.manual_seed(s)`` before
    construction gives the same initial weights as the inline definitions the chapters used before.

    Args:
        T: the number of diffusion steps; ``t`` is divided by it.
        width: units per hidden layer.
        n_freq: number of frequencies (each gives a sine and a cosine feature).
        dim: the data dimension ``d`` (2 for the chapters' toys).

    Raises:
        ValueError: for a non-positive ``T``, ``width``, ``n_freq`` or ``dim``.

    Shapes and dtypes of :meth:`forward`:
        ``xt``: ``(B, dim)`` float32 (the dtype of the weights; cast float64 data with ``.float()``).
        ``t``: ``(B,)`` integer (or float) steps in ``0..T``.
        returns: ``(B, dim)`` float32.
    """

    def __init__(self, T: int, width: int = 128, n_freq: int = 16, dim: int = 2):
        super().__init__()
        if min(T, width, n_freq, dim) < 1:
            raise ValueError(f"ToyDenoiser needs positive T, width, n_freq and dim, got T={T}, width={width}, n_freq={n_freq}, dim={dim}.")
        self.T = T
        self.dim = dim
        self.register_buffer("freqs", math.pi * torch.exp(torch.linspace(0, math.log(1000.0), n_freq)))
        self.net = nn.Sequential(nn.Linear(dim + 2 * n_freq, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if xt.ndim != 2 or xt.shape[1] != self.dim:
            raise ValueError(f"ToyDenoiser expects xt of shape (B, {self.dim}), got {tuple(xt.shape)}.")
        if t.shape != (xt.shape[0],):
            raise ValueError(f"ToyDenoiser expects t of shape (B,) = ({xt.shape[0]},), one step per row of xt, got {tuple(t.shape)}.")
        phase = (t.to(xt.dtype) / self.T)[:, None] * self.freqs
        return self.net(torch.cat([xt, torch.sin(phase), torch.cos(phase)], dim=1))
