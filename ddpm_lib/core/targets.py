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

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .schedules import Schedule, gather64

__all__ = [
    "Target",
    "TARGETS",
    "get_target",
    "score_from_x0",
    "x0_from_score",
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

def _coefs(t: torch.Tensor, schedule: Schedule, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), formed in float64 and cast to like's dtype at the end
    ab = gather64(schedule.alpha_bar, t, like)
    return ab.sqrt().to(like), (1.0 - ab).sqrt().to(like)


def _coefs_tweedie(t: torch.Tensor, schedule: Schedule, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # sqrt(alpha_bar_t) and 1 - alpha_bar_t, formed in float64 and cast to like's dtype at the end
    ab = gather64(schedule.alpha_bar, t, like)
    return ab.sqrt().to(like), (1.0 - ab).to(like)


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


def score_from_x0(xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Tweedie's formula read forwards: :math:`\\nabla_{x_t}\\log q(x_t) = (\\sqrt{\\bar\\alpha_t}\\,\\mathbb E[x_0\\mid x_t] - x_t)/(1-\\bar\\alpha_t)`.

    Book eq. ``tweedie``; Efron (2011), eq. 2.8; Luo (2022), eq. 133. With ``x0`` the posterior mean
    :math:`\\mathbb E[x_0 \\mid x_t]` (a denoiser's output) it is the score of the marginal; needs ``t >= 1``.
    Shapes ``(B, ...)``; ``t`` integer ``(B,)``; the result has ``xt``'s shape and dtype.
    """
    a, one_minus_ab = _coefs_tweedie(t, schedule, xt)
    return (a * x0 - xt) / one_minus_ab


def x0_from_score(xt: torch.Tensor, t: torch.Tensor, score: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Tweedie's formula read backwards: :math:`\\mathbb E[x_0 \\mid x_t] = (x_t + (1-\\bar\\alpha_t)\\,\\nabla\\log q(x_t))/\\sqrt{\\bar\\alpha_t}`.

    Book eq. ``tweedie``. The inverse of :func:`score_from_x0` (to round-off); shapes as there.
    """
    a, one_minus_ab = _coefs_tweedie(t, schedule, xt)
    return (xt + one_minus_ab * score) / a


@dataclass(frozen=True)
class Target:
    """What a network may be trained to predict, with the conversions every other module reads.

    Attributes:
        name: ``"eps"``, ``"x0"``, ``"v"`` or ``"score"``.
        from_x0_eps: ``(x0, eps, t, schedule) -> output``, the regression target given the clean data
            and the noise (book eqs. ``x0-from-eps``, ``v``, ``score-from-eps``).
        to_x0_eps: ``(output, xt, t, schedule) -> (x0_hat, eps_hat)``, what an output implies.
        vlb_from_x0_weight: ``(w_x0, alpha_bar_t) -> w``: the ELBO weight of a squared error on this
            target from the weight :math:`w^{x_0}_t` of the squared error on ``x0``, both float64. It is
            :math:`w^{x_0}_t (\\partial x_0/\\partial\\,\\text{output})^2` at fixed ``xt``: 1 for ``x0``,
            :math:`(1-\\bar\\alpha_t)/\\bar\\alpha_t = 1/\\mathrm{SNR}` for ``eps``, :math:`1-\\bar\\alpha_t` for ``v``,
            :math:`(1-\\bar\\alpha_t)^2/\\bar\\alpha_t` for the score (book eq. ``target-weights``).
    """

    name: str
    from_x0_eps: Callable[..., torch.Tensor]
    to_x0_eps: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    vlb_from_x0_weight: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _score_to_x0_eps(output, xt, t, schedule):
    eps = eps_from_score(output, t, schedule)
    return x0_from_eps(xt, t, eps, schedule), eps


TARGETS: dict[str, Target] = {
    "eps": Target("eps", lambda x0, eps, t, sch: eps,
                  lambda out, xt, t, sch: (x0_from_eps(xt, t, out, sch), out),
                  lambda w, ab: w * (1.0 - ab) / ab),
    "x0": Target("x0", lambda x0, eps, t, sch: x0,
                 lambda out, xt, t, sch: (out, eps_from_x0(xt, t, out, sch)),
                 lambda w, ab: w),
    "v": Target("v", lambda x0, eps, t, sch: v_from_x0_eps(x0, eps, t, sch),
                lambda out, xt, t, sch: (x0_from_v(xt, t, out, sch), eps_from_v(xt, t, out, sch)),
                lambda w, ab: w * (1.0 - ab)),
    "score": Target("score", lambda x0, eps, t, sch: score_from_eps(eps, t, sch),
                    _score_to_x0_eps,
                    lambda w, ab: w * (1.0 - ab) / ab * (1.0 - ab)),
}
"""The prediction targets by name: the one table that the losses, the denoisers, training and the command line read."""


def get_target(name: str) -> Target:
    """The :class:`Target` called ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return TARGETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown prediction target {name!r}; choose one of {tuple(TARGETS)}.") from None


def x0_eps_from_output(
    output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, schedule: Schedule, target: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network's output into the pair ``(x0_hat, eps_hat)`` (``TARGETS[target].to_x0_eps``).

    Args:
        output: the network's prediction, shape of ``xt``; its meaning is ``target``.
        xt: the noisy input, shape ``(B, ...)``.
        t: integer timesteps, shape ``(B,)``, in ``1..T``.
        target: a name in :data:`TARGETS` (``"eps"``, ``"x0"``, ``"v"``, ``"score"``).

    Raises:
        ValueError: for an unknown target.
    """
    return get_target(target).to_x0_eps(output, xt, t, schedule)


def target_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule, target: str) -> torch.Tensor:
    """What a network trained for ``target`` should output, given the true ``x0`` and ``eps`` (``TARGETS[target].from_x0_eps``).

    Raises:
        ValueError: for an unknown target.
    """
    return get_target(target).from_x0_eps(x0, eps, t, schedule)
