"""Drawing the timestep ``t`` of a training example: uniform, or oversampling ``t = 1`` with importance weights.

The training objectives are averages over a uniform ``t``: :math:`L_\\text{simple}`, and the bound
:math:`\\sum_t L_{t-1} = T\\,\\mathbb E_{t\\sim U\\{1..T\\}}[L_{t-1}]`. Any proposal :math:`p_t > 0` estimates
the same average without bias when each example is weighted by :math:`r_t = 1 / (T p_t)`:
:math:`\\mathbb E_{t\\sim p}[r_t L_{t-1}] = \\tfrac1T\\sum_t L_{t-1}` (importance sampling; Nichol &
Dhariwal 2021, §3.3, eq. 18, who draw :math:`p_t \\propto \\sqrt{\\mathbb E[L_t^2]}` from a loss history,
for training on :math:`L_\\text{vlb}` alone; they found it did not help their hybrid loss). The proposal
here is simpler and stateless: each example's ``t`` is set to 1, the decoder term :math:`L_0`, with
probability :math:`\\rho` (so a fraction :math:`\\rho + (1 - \\rho)/T` of a batch is drawn there on average).
A uniform ``t`` visits :math:`L_0` once in ``T`` draws although it can carry the largest share of the
bound. The weights apply to every term of the loss, so that its expectation, and its minimizer, stay
those of the uniform ``t``. Book chapter "Training a DDPM on MNIST", eq. ``first-step-proposal``.
"""

from __future__ import annotations

import torch

__all__ = ["first_step_proposal", "oversample_first_step"]


def first_step_proposal(T: int, rho: float) -> torch.Tensor:
    """The proposal :math:`p_t = \\rho\\,[t = 1] + (1 - \\rho)/T` on ``1..T`` (book eq. ``first-step-proposal``).

    Args:
        T: the number of timesteps.
        rho: the probability in ``[0, 1)`` that a draw is moved to ``t = 1``.

    Returns:
        float64 probabilities of shape ``(T + 1,)``, indexed by ``t`` (entry 0, which is no timestep, is 0);
        they sum to 1.

    Raises:
        ValueError: if ``T < 1`` or ``rho`` is outside ``[0, 1)`` (at ``rho = 1`` no ``t >= 2`` is ever drawn).
    """
    if T < 1:
        raise ValueError(f"first_step_proposal needs T >= 1, got {T}.")
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"the fraction rho of examples drawn at t = 1 must be in [0, 1), got {rho}.")
    p = torch.full((T + 1,), (1.0 - rho) / T, dtype=torch.float64)
    p[0] = 0.0
    p[1] += rho
    return p


def oversample_first_step(t: torch.Tensor, u: torch.Tensor, rho: float, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn uniform draws of ``t`` into draws from :func:`first_step_proposal`, with their importance weights.

    Each ``t[i]`` is replaced by 1 where ``u[i] < rho``, so ``t`` follows :math:`p_t` of book eq.
    ``first-step-proposal``; its weight is :math:`r_t = 1/(T p_t)`, which makes a weighted mean over the
    batch an unbiased estimate of the uniform-``t`` mean (:math:`r_1 = 1/(T\\rho + 1 - \\rho)`, and
    :math:`1/(1 - \\rho)` for every other ``t``).

    Args:
        t: integer timesteps ``(B,)`` drawn uniformly from ``1..T``.
        u: ``B`` draws from U[0, 1), shape ``(B,)``.
        rho: the probability in ``[0, 1)`` that a row is set to ``t = 1``.
        T: the number of timesteps.

    Returns:
        ``(t, weight)``: timesteps ``(B,)`` in ``t``'s integer dtype, and float32 weights ``(B,)`` on ``t``'s device.

    Raises:
        ValueError: from :func:`first_step_proposal`, or if ``t`` is outside ``1..T`` or ``u`` has another shape.
    """
    p = first_step_proposal(T, rho)
    if u.shape != t.shape:
        raise ValueError(f"oversample_first_step: u {tuple(u.shape)} must have t's shape {tuple(t.shape)}.")
    if t.numel() and (int(t.min()) < 1 or int(t.max()) > T):
        raise ValueError(f"oversample_first_step: t must be in 1..T = {T}, got [{int(t.min())}, {int(t.max())}].")
    t = torch.where(u < rho, torch.ones_like(t), t)
    weight = 1.0 / (T * p.to(t.device)[t])
    return t, weight.float()
