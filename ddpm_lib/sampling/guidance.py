"""Classifier-free guidance as a denoiser wrapper, and the map between the ways its strength is written.

Ho & Salimans (2022), eq. 6 (book eq. ``cfg``), mix a conditional and an unconditional prediction of
the noise with a weight ``w``:

.. math:: \\tilde\\epsilon(x_t, c) = (1 + w)\\,\\hat\\epsilon(x_t, c) - w\\,\\hat\\epsilon(x_t).

``x0_hat`` is affine in ``eps_hat`` at fixed ``(x_t, t)`` (book eq. ``x0-from-eps``) and the two
weights sum to 1, so the same mix of the two denoisers' ``x0_hat`` is the same guidance:
:func:`classifier_free_guidance` takes two denoisers and returns one, which every sampler accepts.

The strength is written in four conventions in the literature and in code (:data:`GUIDANCE_CONVENTIONS`):

* ``"w"``: Ho & Salimans' ``w``; ``w = 0`` is the conditional model, ``w = -1`` the unconditional one;
* ``"guidance_scale"``: the scale of common libraries (e.g. diffusers),
  :math:`\\hat\\epsilon_u + g(\\hat\\epsilon_c - \\hat\\epsilon_u)`, so ``g = w + 1``; ``g = 1`` is the
  conditional model, ``g = 0`` the unconditional one;
* ``"classifier_scale"``: Dhariwal & Nichol's (2021) classifier scale ``s`` (their Algorithms 1 and 2)
  applied to the unconditional model, with the implicit classifier
  :math:`p(c \\mid x_t) \\propto p(x_t \\mid c) / p(x_t)` in place of a trained one: the guided score
  :math:`\\nabla\\log p(x_t) + s\\,\\nabla\\log p(c \\mid x_t)` is the ``g = s`` mix, so ``s = w + 1``;
* ``"classifier_scale_conditional"``: the same classifier scale applied to a conditional model, as
  Dhariwal & Nichol also do and as Ho & Salimans write classifier guidance (their eq. 2,
  :math:`\\tilde\\epsilon = \\hat\\epsilon(x_t, c) - w\\sigma_t\\nabla\\log p(c \\mid x_t)`): the guided score
  :math:`\\nabla\\log p(x_t \\mid c) + s\\,\\nabla\\log p(c \\mid x_t)` is
  :math:`(1 + s)\\nabla\\log p(x_t \\mid c) - s\\nabla\\log p(x_t)`, so ``s = w``.

Mixing up ``w`` and ``g`` is an error of exactly one: ``g = 0`` read as ``w`` gives the conditional
model where the unconditional one was meant, and ``w = 0`` read as ``g`` the reverse.
:func:`convert_guidance` maps between them. Book chapter "My samples are noise".
"""

from __future__ import annotations

import math

import torch

from .denoisers import Denoiser, schedule_of, schedules_match

__all__ = ["GUIDANCE_CONVENTIONS", "convert_guidance", "classifier_free_guidance"]

GUIDANCE_CONVENTIONS = {"w": 0.0, "guidance_scale": 1.0, "classifier_scale": 1.0, "classifier_scale_conditional": 0.0}
"""Each convention's offset from Ho & Salimans' ``w``: ``value = w + offset``."""


def convert_guidance(value: float, source: str, target: str = "w") -> float:
    """A guidance strength written in the convention ``source``, rewritten in ``target``.

    ``guidance_scale = classifier_scale = w + 1`` and ``classifier_scale_conditional = w`` (module
    docstring; Ho & Salimans 2022, eqs. 2 and 6; Dhariwal & Nichol 2021, Algorithm 1).

    Args:
        value: a finite float.
        source, target: names in :data:`GUIDANCE_CONVENTIONS`.

    Returns:
        A float (exact: the conventions differ by adding 0 or 1).

    Raises:
        ValueError: for an unknown convention or a value that is not finite.
    """
    for name in (source, target):
        if name not in GUIDANCE_CONVENTIONS:
            raise ValueError(f"unknown guidance convention {name!r}; choose one of {sorted(GUIDANCE_CONVENTIONS)}.")
    if not math.isfinite(value):
        raise ValueError(f"a guidance strength must be finite, got {value!r}.")
    return float(value) - GUIDANCE_CONVENTIONS[source] + GUIDANCE_CONVENTIONS[target]


def classifier_free_guidance(conditional: Denoiser, unconditional: Denoiser, *, w: float) -> Denoiser:
    """The guided denoiser :math:`(1 + w)\\,\\hat x_0(x_t, c) - w\\,\\hat x_0(x_t)` (Ho & Salimans 2022, eq. 6; book eq. ``cfg``).

    Args:
        conditional: the denoiser given the class (closing over its labels), ``(xt, t) -> x0_hat``.
        unconditional: the denoiser without it (for one network trained with label dropout: the
            same network given the "no label" class).
        w: Ho & Salimans' weight, keyword-only (``w=...``: a library's scale passed by position is
            refused by Python rather than taken for ``w``), ``w >= -1``: ``-1`` is the unconditional
            denoiser, ``0`` the conditional one, ``w > 0`` guides. A library's ``guidance_scale`` ``g`` is
            ``w = g - 1`` (:func:`convert_guidance`).

    Returns:
        A denoiser ``(xt, t) -> x0_hat`` of ``xt``'s shape and dtype, two calls per evaluation. It
        carries the schedule of its inputs (:func:`~ddpm_lib.sampling.denoisers.schedule_of`), so the
        sampling loop still refuses a mismatched one.

    Raises:
        ValueError: if ``w < -1`` or is not finite (below -1 the mix pushes samples *away* from the
            class), or if the two denoisers carry different schedules
            (:func:`~ddpm_lib.sampling.denoisers.schedules_match`).

    The ``w >= -1`` guard catches a flipped sign only when ``|w| > 1``: a flipped ``w = 3`` becomes
    ``-3`` and is refused, but a flipped ``w = 0.5`` becomes ``-0.5``, a legitimate weight between the
    unconditional and the conditional model, and passes (it lands fewer samples in the class, which
    only a look at the samples shows). Nor can it see ``g`` taken for ``w`` (an error of one, both
    ``>= -1``); naming ``w`` at every call is what guards against that.
    """
    if not math.isfinite(w) or w < -1:
        raise ValueError(
            f"classifier_free_guidance: w = {w!r}, but Ho & Salimans' w must be >= -1 (-1: unconditional, 0: "
            f"conditional, > 0: guided); below -1 the mix pushes samples away from the class. Check the sign, and "
            f"convert a library's guidance_scale g with convert_guidance(g, 'guidance_scale') (w = g - 1)."
        )
    schedule = schedule_of(conditional)
    other = schedule_of(unconditional)
    if schedule is not None and other is not None and not schedules_match(schedule, other):
        raise ValueError(f"classifier_free_guidance: the conditional denoiser uses {schedule} and the unconditional one "
                         f"{other}; build both from the same network and schedule.")

    def guided(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (1.0 + w) * conditional(xt, t) - w * unconditional(xt, t)

    guided.schedule = schedule if schedule is not None else other
    return guided
