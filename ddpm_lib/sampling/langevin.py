"""Langevin dynamics: the update that every Langevin sampler of the book takes.

The unadjusted Langevin algorithm (ULA) discretizes the Langevin SDE
:math:`dx = \\nabla_x \\log p(x)\\,ds + \\sqrt 2\\,dW` with step size :math:`\\delta`:

.. math::

    x_{k+1} = x_k + \\delta\\,\\nabla_x \\log p(x_k) + \\sqrt{2\\delta}\\, z_k, \\qquad z_k \\sim \\mathcal N(0, I),

whose stationary law tends to :math:`p` as :math:`\\delta \\to 0` (Roberts & Tweedie 1996; the form of
Song & Ermon 2019, eq. 4, with their :math:`\\epsilon/2 = \\delta`). Book chapter "Energy-based models
and Langevin dynamics", eq. ``ula-step``. The same update is the corrector of the predictor-corrector
sampler (Song et al. 2021, Algorithm 4/5), with the score of the noised marginal.

Note the convention: here :math:`\\delta` multiplies the score and :math:`2\\delta` is the noise's
*variance*; Song & Ermon write the step as :math:`\\frac{\\epsilon}{2}\\nabla\\log p + \\sqrt{\\epsilon}\\,z`,
so their :math:`\\epsilon` is :math:`2\\delta`.
"""

from __future__ import annotations

import torch

__all__ = ["langevin_update"]


def langevin_update(x: torch.Tensor, score: torch.Tensor, step_size: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One unadjusted Langevin step, :math:`x + \\delta\\,s(x) + \\sqrt{2\\delta}\\,z` (book eq. ``ula-step``).

    Args:
        x: the current state, any shape ``(B, ...)`` and float dtype.
        score: :math:`\\nabla_x \\log p(x)` at ``x``, same shape.
        step_size: :math:`\\delta > 0`, a float or a tensor broadcasting against ``x`` (per-row step sizes,
            as the signal-to-noise rule of Song et al. 2021 gives); units of ``x`` squared per unit score.
        noise: :math:`z \\sim \\mathcal N(0, I)`, same shape as ``x``.

    Returns:
        The next state, shape and dtype of ``x``.

    Raises:
        ValueError: if the shapes differ or some step size is not positive.
    """
    if score.shape != x.shape or noise.shape != x.shape:
        raise ValueError(f"langevin_update: x {tuple(x.shape)}, score {tuple(score.shape)} and noise "
                         f"{tuple(noise.shape)} must have one shape.")
    delta = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    if bool((delta <= 0).any()):
        raise ValueError("langevin_update: the step size must be positive (it is the variance scale of the noise, 2 * step_size).")
    return x + delta * score + (2 * delta).sqrt() * noise
