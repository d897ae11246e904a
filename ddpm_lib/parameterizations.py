"""Conversions between what a network can predict: ``x0``, ``eps``, the score and ``v``.

All follow from :math:`x_t = \\sqrt{\\bar\\alpha_t}\\, x_0 + \\sqrt{1 - \\bar\\alpha_t}\\, \\epsilon`
(book eq. ``q-sample``). The book chapter "Three (and four) parameterizations"
(``notebooks/parameterizations.ipynb``) derives each one:

* eq. ``x0-from-eps``: :math:`x_0 = (x_t - \\sqrt{1 - \\bar\\alpha_t}\\,\\epsilon) / \\sqrt{\\bar\\alpha_t}` (Ho et al. 2020, eq. 15);
* eq. ``score-from-eps``: :math:`\\nabla_{x_t} \\log q(x_t) = -\\mathbb E[\\epsilon \\mid x_t] / \\sqrt{1 - \\bar\\alpha_t}`,
  from Tweedie's formula (book eq. ``tweedie``; Efron 2011; Luo 2022, eq. 151). With the *actual* noise in
  place of its conditional mean, :math:`-\\epsilon / \\sqrt{1 - \\bar\\alpha_t}` is the score of
  :math:`q(x_t \\mid x_0)`, not of the marginal :math:`q(x_t)`;
* eq. ``v``: :math:`v = \\sqrt{\\bar\\alpha_t}\\,\\epsilon - \\sqrt{1 - \\bar\\alpha_t}\\, x_0` (Salimans & Ho 2022, §4).

An unweighted squared error on ``eps``, ``v`` or the score is the squared error of the implied ``x0``
weighted by :math:`\\mathrm{SNR}(t)`, :math:`1 + \\mathrm{SNR}(t)` or :math:`\\mathrm{SNR}(t)(1 + \\mathrm{SNR}(t))`
(book eq. ``target-weights``).

Every function takes tensors of shape ``(B, ...)`` and integer ``t`` of shape ``(B,)`` in ``0..T``
(``1..T`` where it divides by :math:`\\sqrt{1-\\bar\\alpha_t}`), and returns the input's shape and dtype. The
coefficients :math:`\\sqrt{\\bar\\alpha_t}` and :math:`\\sqrt{1-\\bar\\alpha_t}` are formed in float64 and cast
to the input's dtype at the end (in float32, :math:`1-\\bar\\alpha_1` would otherwise lose three digits).
"""

from __future__ import annotations

import torch

from .schedules import Schedule, gather64

__all__ = [
    "TARGETS",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
    "score_from_eps",
    "eps_from_score",
    "x0_eps_from_output",
    "target_from_x0_eps",
]

TARGETS = ("eps", "x0", "v")
"""What a network may be trained to predict (see :func:`x0_eps_from_output`)."""


def _coefs(t: torch.Tensor, schedule: Schedule, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), formed in float64 and cast to like's dtype at the end
    ab = gather64(schedule.alpha_bar, t, like)
    return ab.sqrt().to(like), (1.0 - ab).sqrt().to(like)


def x0_from_eps(xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`x_0 = (x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon)/\\sqrt{\\bar\\alpha_t}` (book eq. ``x0-from-eps``)."""
    a, s = _coefs(t, schedule, xt)
    return (xt - s * eps) / a


def eps_from_x0(xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`\\epsilon = (x_t - \\sqrt{\\bar\\alpha_t}\\, x_0)/\\sqrt{1-\\bar\\alpha_t}`; needs ``t >= 1`` (book eq. ``x0-from-eps``)."""
    a, s = _coefs(t, schedule, xt)
    return (xt - a * x0) / s


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`v = \\sqrt{\\bar\\alpha_t}\\,\\epsilon - \\sqrt{1-\\bar\\alpha_t}\\, x_0` (book eq. ``v``; Salimans & Ho 2022, §4)."""
    a, s = _coefs(t, schedule, x0)
    return a * eps - s * x0


def x0_from_v(xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`x_0 = \\sqrt{\\bar\\alpha_t}\\, x_t - \\sqrt{1-\\bar\\alpha_t}\\, v` (book eq. ``v``)."""
    a, s = _coefs(t, schedule, xt)
    return a * xt - s * v


def eps_from_v(xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`\\epsilon = \\sqrt{1-\\bar\\alpha_t}\\, x_t + \\sqrt{\\bar\\alpha_t}\\, v` (book eq. ``v``)."""
    a, s = _coefs(t, schedule, xt)
    return s * xt + a * v


def score_from_eps(eps: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`\\nabla_{x_t}\\log q(x_t) \\approx -\\epsilon/\\sqrt{1-\\bar\\alpha_t}`; needs ``t >= 1``.

    Book eq. ``score-from-eps``; Tweedie's formula (Efron 2011; book eq. ``tweedie``), Luo (2022)
    eq. 151. It is the score of the marginal :math:`q(x_t)` when ``eps`` is
    :math:`\\mathbb E[\\epsilon \\mid x_t]` (what a network trained on the squared error estimates); for the
    actual noise it is the score of :math:`q(x_t \\mid x_0)`. Units: per unit of ``x``, same shape as ``eps``.
    """
    _, s = _coefs(t, schedule, eps)
    return -eps / s


def eps_from_score(score: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`\\epsilon = -\\sqrt{1-\\bar\\alpha_t}\\, \\nabla_{x_t}\\log q(x_t)` (book eq. ``score-from-eps``)."""
    _, s = _coefs(t, schedule, score)
    return -s * score


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown prediction target {target!r}; choose one of {TARGETS}.")


def x0_eps_from_output(
    output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, schedule: Schedule, target: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network's output into the pair ``(x0_hat, eps_hat)``.

    Args:
        output: the network's prediction, shape of ``xt``; its meaning is ``target``.
        xt: the noisy input, shape ``(B, ...)``.
        t: integer timesteps, shape ``(B,)``, in ``1..T``.
        target: ``"eps"``, ``"x0"`` or ``"v"``.

    Raises:
        ValueError: for an unknown target.
    """
    _check_target(target)
    if target == "eps":
        return x0_from_eps(xt, t, output, schedule), output
    if target == "x0":
        return output, eps_from_x0(xt, t, output, schedule)
    return x0_from_v(xt, t, output, schedule), eps_from_v(xt, t, output, schedule)


def target_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule, target: str) -> torch.Tensor:
    """What a network trained for ``target`` should output, given the true ``x0`` and ``eps``.

    Raises:
        ValueError: for an unknown target.
    """
    _check_target(target)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    return v_from_x0_eps(x0, eps, t, schedule)
