"""The forward SDEs of diffusion in continuous time, and the two processes that undo them: the reverse-time SDE and the probability-flow ODE.

Continuous time ``u`` runs over ``[0, 1]`` (``u = 0`` the data, ``u = 1`` the noise; the chain's step ``t``
is ``u = t / T``: book, notation page, "Continuous time"). A forward SDE (Song et al. 2021, "Score-based
generative modeling through stochastic differential equations", eq. 5; book eq. ``forward-sde``)

.. math:: dx = f(x, u)\\,du + g(u)\\,dW

is given by its drift :math:`f` (units of ``x`` per unit of ``u``) and its diffusion coefficient
:math:`g`; the functions here return :math:`g(u)^2`, the variance added per unit of ``u``, since that is
what every formula uses. Two families:

* the **variance-preserving** SDE (Song et al. 2021, eq. 11; book eq. ``vp-sde``), the continuous-time
  DDPM: :math:`f(x, u) = -\\tfrac12\\beta(u)\\,x` and :math:`g(u)^2 = \\beta(u)`, with the rate
  :math:`\\beta(u)` = :meth:`~ddpm_lib.core.schedules.Schedule.beta_at` of a schedule;
* the **variance-exploding** SDE (their eq. 9; book eq. ``ve-sde``): :math:`f = 0` and
  :math:`g(u)^2 = d\\sigma(u)^2/du`, here with their geometric
  :math:`\\sigma(u) = \\sigma_\\min(\\sigma_\\max/\\sigma_\\min)^u` (their App. C).

Given the score :math:`s(x, u) = \\nabla_x\\log p_u(x)` of the marginal at time ``u``, the drift of the
reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6; book eq. ``reverse-sde``) is
:math:`f - g^2 s`, and the drift of the probability-flow ODE with the same marginals (Song et al. 2021,
eq. 13; book eq. ``pf-ode``) is :math:`f - \\tfrac12 g^2 s`. Both are *velocities in u*: a solver going
from ``u`` down to ``u - du`` moves by ``-du`` times them (plus, for the SDE, noise of variance
:math:`g^2\\,du`).

Torch only. Every coefficient is formed in float64 (``beta_at`` is float64 on the CPU) and cast to the
data's dtype and device only where it multiplies the data.
"""

from __future__ import annotations

import math

import torch

from .schedules import Schedule

__all__ = [
    "vp_drift",
    "vp_diffusion_squared",
    "ve_sigma",
    "ve_diffusion_squared",
    "reverse_drift",
    "probability_flow_drift",
    "vp_reverse_drift",
    "vp_probability_flow_drift",
]


def _as_coef(c: torch.Tensor | float, like: torch.Tensor, name: str) -> torch.Tensor:
    """A per-time coefficient (a float, a 0-d tensor, or one value per row ``(B,)``) shaped to broadcast against ``like``.

    Returned in ``like``'s dtype and device; a ``(B,)`` tensor becomes ``(B, 1, ..., 1)``.

    Raises:
        ValueError: for another shape (it would broadcast the data into a larger tensor).
    """
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.ndim == 1 and like.ndim >= 1 and c.shape[0] in (1, like.shape[0]):
        c = c.reshape(c.shape + (1,) * (like.ndim - 1))
    elif c.ndim != 0:
        raise ValueError(f"{name}: a coefficient must be a number, 0-d, or one per row of the batch of shape "
                         f"{tuple(like.shape)}; got shape {tuple(c.shape)}.")
    return c.to(device=like.device, dtype=like.dtype)


def vp_diffusion_squared(u: torch.Tensor | float, schedule: Schedule) -> torch.Tensor:
    """:math:`g(u)^2 = \\beta(u)` of the variance-preserving SDE, the noise variance it adds per unit of ``u``.

    Book eq. ``vp-sde``; Song et al. (2021), eq. 11. The rate is the schedule's
    :meth:`~ddpm_lib.core.schedules.Schedule.beta_at`: piecewise constant, :math:`-T\\log(1-\\beta_t)` on
    the step ``((t-1)/T, t/T]``, so that the SDE reproduces the chain's :math:`q(x_t \\mid x_{t-1})` exactly
    (book eq. ``alpha-bar-continuous``). A rate per unit of ``u``, of order :math:`T\\beta_t`, not a variance in (0, 1).

    Args:
        u: continuous time(s) in ``[0, 1]``, a float or a tensor of any shape.

    Returns:
        A positive float64 tensor of ``u``'s shape, on the CPU.

    Raises:
        ValueError: if some ``u`` lies outside ``[0, 1]`` (from ``beta_at``).
    """
    return schedule.beta_at(u)


def vp_drift(x: torch.Tensor, u: torch.Tensor | float, schedule: Schedule) -> torch.Tensor:
    """The drift :math:`f(x, u) = -\\tfrac12\\beta(u)\\,x` of the variance-preserving SDE (book eq. ``vp-sde``; Song et al. 2021, eq. 11).

    Args:
        x: the state, shape ``(B, ...)``, any float dtype and device.
        u: continuous time in ``[0, 1]``: a float (the same for every row) or a tensor of shape ``(B,)``.

    Returns:
        The drift, shape, dtype and device of ``x`` (units of ``x`` per unit of ``u``).

    Raises:
        ValueError: if some ``u`` lies outside ``[0, 1]``, or ``u`` has another shape.
    """
    return -0.5 * _as_coef(vp_diffusion_squared(u, schedule), x, "vp_drift") * x


def ve_sigma(u: torch.Tensor | float, sigma_min: float = 0.01, sigma_max: float = 50.0) -> torch.Tensor:
    """The noise level :math:`\\sigma(u) = \\sigma_\\min(\\sigma_\\max/\\sigma_\\min)^u` of the variance-exploding SDE.

    Song et al. (2021), App. C (the noise levels of Song & Ermon 2019 in continuous time); book eq.
    ``ve-sde``. Started at :math:`x_0`, the VE-SDE has :math:`x_u \\sim \\mathcal N(x_0, (\\sigma(u)^2 - \\sigma(0)^2) I)`.
    The defaults are their CIFAR-10 values (:math:`\\sigma_\\min = 0.01`, :math:`\\sigma_\\max = 50`).

    Args:
        u: continuous time(s) in ``[0, 1]``, a float or a tensor of any shape.

    Returns:
        A float64 tensor of ``u``'s shape (a standard deviation, in units of ``x``), on the CPU.

    Raises:
        ValueError: if ``0 < sigma_min < sigma_max`` fails or some ``u`` lies outside ``[0, 1]``.
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"ve_sigma: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
    u64 = torch.as_tensor(u, dtype=torch.float64).detach().cpu()
    if not bool(((u64 >= 0) & (u64 <= 1)).all()):
        raise ValueError("ve_sigma: continuous time u must lie in [0, 1].")
    return sigma_min * torch.exp(u64 * math.log(sigma_max / sigma_min))


def ve_diffusion_squared(u: torch.Tensor | float, sigma_min: float = 0.01, sigma_max: float = 50.0) -> torch.Tensor:
    """:math:`g(u)^2 = d\\sigma(u)^2/du = 2\\sigma(u)^2\\log(\\sigma_\\max/\\sigma_\\min)` of the variance-exploding SDE (drift 0).

    Book eq. ``ve-sde``; Song et al. (2021), eq. 9 with :func:`ve_sigma`. The drift of the VE-SDE is
    :math:`f = 0`: pass ``torch.zeros_like(x)`` (or ``0``) as ``f`` to :func:`reverse_drift` and
    :func:`probability_flow_drift`.

    Returns:
        A positive float64 tensor of ``u``'s shape (variance per unit of ``u``), on the CPU.

    Raises:
        ValueError: as :func:`ve_sigma`.
    """
    return 2.0 * ve_sigma(u, sigma_min, sigma_max) ** 2 * math.log(sigma_max / sigma_min)


def _check(f: torch.Tensor | float, g2: torch.Tensor | float, score: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.as_tensor(f, dtype=score.dtype, device=score.device)
    if f.ndim and f.shape != score.shape:
        raise ValueError(f"{name}: the drift f {tuple(f.shape)} and the score {tuple(score.shape)} must have one shape.")
    g2 = torch.as_tensor(g2, dtype=torch.float64)
    if bool((g2 < 0).any()):
        raise ValueError(f"{name}: g2 is the squared diffusion coefficient g(u)^2 and must be >= 0.")
    return f, _as_coef(g2, score, name)


def reverse_drift(f: torch.Tensor | float, g2: torch.Tensor | float, score: torch.Tensor) -> torch.Tensor:
    """The drift :math:`f - g^2\\,\\nabla_x\\log p_u(x)` of the reverse-time SDE (book eq. ``reverse-sde``).

    Anderson (1982); Song et al. (2021), eq. 6: the SDE
    :math:`dx = [f(x, u) - g(u)^2\\nabla_x\\log p_u(x)]\\,du + g(u)\\,d\\bar W`, run from ``u = 1`` down to 0 (``du < 0``,
    :math:`\\bar W` a Wiener process in reverse time), has the marginals :math:`p_u` of the forward SDE. The
    score is that of the marginal *at time u*, not the data's: with :math:`\\nabla\\log p_0` in its place the
    marginals are wrong (the chapter "Stochastic differential equations" checks both).

    Args:
        f: the forward drift at ``(x, u)``, shape of ``score`` (or a number, e.g. 0 for the VE-SDE).
        g2: :math:`g(u)^2 \\ge 0`: a float, 0-d, or one per row ``(B,)`` (float64 is kept until the cast).
        score: :math:`\\nabla_x\\log p_u(x)`, shape ``(B, ...)``, in units of 1 / ``x``.

    Returns:
        The drift, shape and dtype of ``score`` (units of ``x`` per unit of ``u``).

    Raises:
        ValueError: if the shapes differ or some ``g2`` is negative.
    """
    f, g2 = _check(f, g2, score, "reverse_drift")
    return f - g2 * score


def probability_flow_drift(f: torch.Tensor | float, g2: torch.Tensor | float, score: torch.Tensor) -> torch.Tensor:
    """The velocity :math:`f - \\tfrac12 g^2\\,\\nabla_x\\log p_u(x)` of the probability-flow ODE (book eq. ``pf-ode``).

    Song et al. (2021), eq. 13 (derived in their App. D.1 from the Fokker-Planck equation): the ODE
    :math:`dx/du = f(x, u) - \\tfrac12 g(u)^2\\nabla_x\\log p_u(x)` moves an ``x`` drawn from :math:`p_u` to a
    point drawn from :math:`p_{u'}`, in either direction: the same marginals as the forward SDE, with no noise.
    Half the reverse SDE's score term: the other half of that term is what the SDE's noise undoes.

    Args:
        f, g2, score: as :func:`reverse_drift`.

    Returns:
        The velocity, shape and dtype of ``score``.

    Raises:
        ValueError: if the shapes differ or some ``g2`` is negative.
    """
    f, g2 = _check(f, g2, score, "probability_flow_drift")
    return f - 0.5 * g2 * score


def vp_reverse_drift(x: torch.Tensor, u: torch.Tensor | float, score: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:func:`reverse_drift` of the VP-SDE: :math:`-\\tfrac12\\beta(u)\\,x - \\beta(u)\\,s` (book eqs. ``vp-sde`` and ``reverse-sde``).

    Args:
        x, score: shape ``(B, ...)``; ``score`` is :math:`\\nabla_x\\log p_u(x)` at ``(x, u)``.
        u: a float or a tensor ``(B,)`` in ``[0, 1]``.

    Returns:
        The drift, shape and dtype of ``score`` (units of ``x`` per unit of ``u``; a solver going from ``u`` down
        to ``u - du`` moves by ``-du`` times it, plus noise of variance :math:`\\beta(u)\\,du`).

    Raises:
        ValueError: as :func:`vp_drift` and :func:`reverse_drift`.
    """
    return reverse_drift(vp_drift(x, u, schedule), vp_diffusion_squared(u, schedule), score)


def vp_probability_flow_drift(x: torch.Tensor, u: torch.Tensor | float, score: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:func:`probability_flow_drift` of the VP-SDE: :math:`-\\tfrac12\\beta(u)\\,(x + s)` (book eqs. ``vp-sde`` and ``pf-ode``).

    Args:
        x, score, u: as :func:`vp_reverse_drift`.

    Returns:
        The velocity, shape and dtype of ``score`` (units of ``x`` per unit of ``u``).

    Raises:
        ValueError: as :func:`vp_drift` and :func:`probability_flow_drift`.
    """
    return probability_flow_drift(vp_drift(x, u, schedule), vp_diffusion_squared(u, schedule), score)
