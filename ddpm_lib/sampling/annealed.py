"""Langevin chains, annealed Langevin dynamics and replica exchange, all built on the ULA step.

Book chapter "Energy-based models and Langevin dynamics". Every move here is
:func:`ddpm_lib.sampling.langevin.langevin_update`, :math:`x + \\delta\\,s(x) + \\sqrt{2\\delta}\\,z`
(book eq. ``ula-step``); the three routines differ in which score and which step size they hand it.

* :func:`langevin_chain` runs the unadjusted Langevin algorithm (ULA) with one score and one step size.
* :func:`annealed_langevin` is Algorithm 1 of Song & Ermon (2019): ULA at noise levels
  :math:`\\sigma_1 > \\dots > \\sigma_L`, each with the score of the target blurred by
  :math:`\\mathcal N(0, \\sigma_i^2 I)` and step :math:`\\alpha_i = \\epsilon\\,\\sigma_i^2/\\sigma_L^2`
  (book eq. ``annealed-step``).
* :func:`replica_exchange_langevin` runs ULA on the tempered laws :math:`p^{\\beta_j}` side by side and swaps
  neighbouring levels with the Metropolis probability of book eq. ``swap-acceptance`` (parallel tempering, or
  replica exchange: Geyer 1991; Hukushima & Nemoto 1996. The replica Monte Carlo of Swendsen & Wang 1986, which
  preceded them, exchanged partial configurations rather than whole states).

Noise is drawn on the generator's device (:func:`ddpm_lib.sampling.steps.standard_normal`), so the same
generator gives the same chain on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .langevin import langevin_update
from .steps import standard_normal

__all__ = ["langevin_chain", "annealed_langevin", "swap_neighbours", "replica_exchange_langevin"]

Score = Callable[[torch.Tensor], torch.Tensor]
NoisedScore = Callable[[torch.Tensor, float], torch.Tensor]


def langevin_chain(
    score: Score,
    x: torch.Tensor,
    step_size: float | torch.Tensor,
    n_steps: int,
    generator: torch.Generator | None = None,
    observe: Callable[[int, torch.Tensor], object] | None = None,
) -> torch.Tensor:
    """``n_steps`` steps of the unadjusted Langevin algorithm (book eq. ``ula-step``; Roberts & Tweedie 1996).

    Each step is ``langevin_update(x, score(x), step_size, z)`` with fresh :math:`z \\sim \\mathcal N(0, I)`.
    For :math:`\\delta \\to 0` the chain's stationary law tends to the law whose score ``score`` is; for
    :math:`\\delta > 0` it differs from it by :math:`O(\\delta)` (book eq. ``ula-gaussian-variance`` for a Gaussian).

    Args:
        score: :math:`x \\mapsto \\nabla_x \\log p(x)`, a tensor of ``x``'s shape.
        x: the starting states, shape ``(B, ...)``, a float dtype; not modified.
        step_size: :math:`\\delta > 0`, a float or a tensor broadcasting against ``x``.
        n_steps: the number of steps, ``>= 0`` (0 returns ``x`` itself).
        generator: the source of the noise (its device is where the noise is drawn).
        observe: if given, called as ``observe(k, x_k)`` after step ``k = 1 .. n_steps`` (to collect
            statistics along the chain); its return value is ignored.

    Returns:
        The state after ``n_steps`` steps, shape and dtype of ``x``.

    Raises:
        ValueError: if ``n_steps < 0``, or (from :func:`langevin_update`) for a non-positive step size or a
            score of another shape.
    """
    if n_steps < 0:
        raise ValueError(f"langevin_chain: n_steps must be >= 0, got {n_steps}.")
    for k in range(1, n_steps + 1):
        x = langevin_update(x, score(x), step_size, standard_normal(x, generator))
        if observe is not None:
            observe(k, x)
    return x


def annealed_langevin(
    score: NoisedScore,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    eps: float,
    n_steps_each: int,
    generator: torch.Generator | None = None,
    observe: Callable[[int, int, torch.Tensor], object] | None = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics, Algorithm 1 of Song & Ermon (2019) (book eq. ``annealed-step``).

    For each noise level :math:`\\sigma_i` in turn (largest first), ``n_steps_each`` ULA steps on the blurred law
    :math:`p_{\\sigma_i} = p * \\mathcal N(0, \\sigma_i^2 I)` with the paper's step
    :math:`\\alpha_i = \\epsilon\\,\\sigma_i^2 / \\sigma_L^2`:
    :math:`x \\leftarrow x + \\tfrac{\\alpha_i}{2} s(x, \\sigma_i) + \\sqrt{\\alpha_i}\\, z`, which is book eq.
    ``ula-step`` with :math:`\\delta_i = \\alpha_i / 2`. The chain ends at (approximately) :math:`p_{\\sigma_L}`, not
    :math:`p`: the last level should be small against the scale of the data.

    Args:
        score: ``score(x, sigma)`` = :math:`\\nabla_x \\log p_\\sigma(x)`, a tensor of ``x``'s shape; ``sigma`` is
            passed as a Python float.
        x: the starting states, shape ``(B, ...)``, a float dtype (the paper starts from uniform noise).
        sigmas: :math:`\\sigma_1 > \\sigma_2 > \\dots > \\sigma_L > 0`, strictly decreasing.
        eps: the paper's :math:`\\epsilon > 0`, the step at the last level (:math:`\\alpha_L = \\epsilon`, so
            :math:`\\delta_L = \\epsilon / 2`).
        n_steps_each: :math:`T \\ge 1`, the steps per level.
        generator: the source of the noise.
        observe: if given, called as ``observe(i, t, x)`` after step ``t = 1 .. T`` of level ``i = 0 .. L-1``.

    Returns:
        The state after all :math:`L T` steps, shape and dtype of ``x``.

    Raises:
        ValueError: for an empty, non-positive or not strictly decreasing ``sigmas``, ``eps <= 0`` or
            ``n_steps_each < 1``.
    """
    levels = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)]
    if not levels or min(levels) <= 0 or any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"annealed_langevin: sigmas must be positive and strictly decreasing, got {levels}.")
    if eps <= 0 or n_steps_each < 1:
        raise ValueError(f"annealed_langevin: need eps > 0 and n_steps_each >= 1, got {eps} and {n_steps_each}.")
    sigma_last = levels[-1]
    for i, sigma in enumerate(levels):
        alpha = eps * (sigma / sigma_last) ** 2
        for t in range(1, n_steps_each + 1):
            x = langevin_update(x, score(x, sigma), alpha / 2, standard_normal(x, generator))
            if observe is not None:
                observe(i, t, x)
    return x


def _check_betas(betas: torch.Tensor, levels: int) -> None:
    if betas.ndim != 1 or betas.shape[0] != levels:
        raise ValueError(f"replica exchange: need one beta per level ({levels}), got shape {tuple(betas.shape)}.")
    if bool((betas <= 0).any()) or bool((betas[1:] >= betas[:-1]).any()):
        raise ValueError(f"replica exchange: betas must be positive and strictly decreasing, got {betas.tolist()}.")


def swap_neighbours(
    x: torch.Tensor,
    log_prob: torch.Tensor,
    betas: torch.Tensor,
    parity: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Propose swapping the states of levels ``j`` and ``j + 1`` for every ``j`` of the given parity (book eq. ``swap-acceptance``).

    Level ``j`` samples :math:`\\pi_j \\propto p^{\\beta_j}`. Exchanging :math:`x_j` and :math:`x_{j+1}` is accepted with
    probability :math:`\\min\\{1, \\exp[(\\beta_j - \\beta_{j+1})(\\log p(x_{j+1}) - \\log p(x_j))]\\}`, the Metropolis
    ratio that leaves the product :math:`\\prod_j \\pi_j(x_j)` invariant (Geyer 1991; Hukushima & Nemoto 1996). Pairs of one parity are
    disjoint, so they are decided independently.

    Args:
        x: the states, shape ``(J, B, ...)``: ``J`` levels, ``B`` independent replica sets.
        log_prob: :math:`\\log p(x)` (the untempered target, normalized or not), shape ``(J, B)``.
        betas: inverse temperatures, shape ``(J,)``, positive and strictly decreasing.
        parity: 0 swaps the pairs (0, 1), (2, 3), ...; 1 swaps (1, 2), (3, 4), ...
        generator: the source of the uniform draws (on its device).

    Returns:
        ``(x_new, log_prob_new, accepted)``: the states and log-probabilities after the swaps, and a bool tensor
        of shape ``(n_pairs, B)`` saying which proposals were accepted (``n_pairs`` may be 0).

    Raises:
        ValueError: for mismatched shapes, a parity other than 0 or 1, or invalid ``betas``.
    """
    levels = x.shape[0]
    betas = torch.as_tensor(betas, dtype=torch.float64)
    _check_betas(betas, levels)
    if log_prob.shape != x.shape[:2]:
        raise ValueError(f"swap_neighbours: log_prob {tuple(log_prob.shape)} must be x's first two dims {tuple(x.shape[:2])}.")
    if parity not in (0, 1):
        raise ValueError(f"swap_neighbours: parity must be 0 or 1, got {parity}.")
    if parity >= levels - 1:  # no pair of this parity (one level, or two levels and parity 1)
        return x, log_prob, torch.zeros((0, x.shape[1]), dtype=torch.bool, device=x.device)
    low = torch.arange(parity, levels - 1, 2, device=x.device)
    lp = log_prob.to(torch.float64)
    log_ratio = (betas.to(x.device)[low] - betas.to(x.device)[low + 1])[:, None] * (lp[low + 1] - lp[low])
    device = x.device if generator is None else generator.device
    u = torch.rand(log_ratio.shape, generator=generator, device=device, dtype=torch.float64).to(x.device)
    accepted = torch.log(u) < log_ratio
    x_new, lp_new = x.clone(), log_prob.clone()
    mask = accepted.reshape(accepted.shape + (1,) * (x.ndim - 2))
    x_new[low] = torch.where(mask, x[low + 1], x[low])
    x_new[low + 1] = torch.where(mask, x[low], x[low + 1])
    lp_new[low] = torch.where(accepted, log_prob[low + 1], log_prob[low])
    lp_new[low + 1] = torch.where(accepted, log_prob[low], log_prob[low + 1])
    return x_new, lp_new, accepted


def replica_exchange_langevin(
    score: Score,
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    betas: Sequence[float] | torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    observe: Callable[[int, torch.Tensor], object] | None = None,
) -> tuple[torch.Tensor, float]:
    """Parallel tempering with ULA moves: Langevin on each :math:`p^{\\beta_j}`, then swaps of neighbouring levels.

    One step: every level ``j`` takes a ULA step (book eq. ``ula-step``) on :math:`p^{\\beta_j}`, whose score is
    :math:`\\beta_j \\nabla\\log p`, with step size :math:`\\delta/\\beta_j` (the tempered law is wider by
    :math:`1/\\sqrt{\\beta_j}`), i.e. :math:`x_j + \\delta\\,\\nabla\\log p(x_j) + \\sqrt{2\\delta/\\beta_j}\\,z`; then
    :func:`swap_neighbours` with the parity of the step number (even steps pair (0, 1), (2, 3), ...). Level 0
    (:math:`\\beta_0`, usually 1) is the target. The ULA moves are unadjusted, so each level carries the
    :math:`O(\\delta)` bias of ULA; the swaps themselves are exact Metropolis moves.

    Args:
        score: :math:`\\nabla_x \\log p`, called on a ``(J * B, ...)`` batch.
        log_prob: :math:`\\log p` up to a constant, ``(J * B, ...) -> (J * B,)``.
        x: starting states, shape ``(J, B, ...)``.
        betas: inverse temperatures, ``(J,)``, positive and strictly decreasing.
        step_size: :math:`\\delta > 0` at :math:`\\beta = 1`.
        n_steps: steps, ``>= 0``.
        generator: the source of all randomness.
        observe: if given, ``observe(k, x_k)`` after step ``k`` (moves and swaps done).

    Returns:
        ``(x, acceptance)``: the final states ``(J, B, ...)`` and the fraction of swap proposals accepted
        (``nan`` when there were none).

    Raises:
        ValueError: for invalid ``betas``, ``step_size <= 0`` or ``n_steps < 0``.
    """
    levels, batch = x.shape[0], x.shape[1]
    b = torch.as_tensor(betas, dtype=torch.float64)
    _check_betas(b, levels)
    if step_size <= 0 or n_steps < 0:
        raise ValueError(f"replica_exchange_langevin: need step_size > 0 and n_steps >= 0, got {step_size}, {n_steps}.")
    shape = (levels,) + (1,) * (x.ndim - 1)
    beta = b.to(device=x.device, dtype=x.dtype).reshape(shape)
    accepted, proposed = 0, 0
    for k in range(1, n_steps + 1):
        flat = x.reshape((levels * batch,) + x.shape[2:])
        s = score(flat).reshape(x.shape)
        x = langevin_update(x, beta * s, step_size / beta, standard_normal(x, generator))
        lp = log_prob(x.reshape((levels * batch,) + x.shape[2:])).reshape(levels, batch)
        x, _, acc = swap_neighbours(x, lp, b, k % 2, generator)
        accepted, proposed = accepted + int(acc.sum()), proposed + acc.numel()
        if observe is not None:
            observe(k, x)
    return x, (accepted / proposed if proposed else float("nan"))
