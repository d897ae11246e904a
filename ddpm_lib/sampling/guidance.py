"""Guidance as denoiser wrappers (classifier guidance, classifier-free guidance), and the map between the ways its strength is written.

Classifier guidance (Dhariwal & Nichol 2021, §4 and Algorithms 1 and 2; book eq. ``classifier-guidance``) adds
``s`` times a classifier's gradient to the model's score, :math:`\\nabla\\log p(x_t) + s\\,\\nabla\\log p(y \\mid x_t)`;
:func:`classifier_guidance` does it to a denoiser through Tweedie's formula, so that the result is again a
denoiser: :math:`\\hat x_0 + s\\,\\frac{1-\\bar\\alpha_t}{\\sqrt{\\bar\\alpha_t}}\\,\\nabla\\log p(y \\mid x_t)`.
:func:`classifier_log_likelihood_grad` turns a noise-conditional classifier ``(x_t, t) -> logits`` into that
gradient by autograd.

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
from collections.abc import Callable

import torch

from ..core.schedules import gather64
from .denoisers import Denoiser, schedule_of, schedules_match

__all__ = ["GUIDANCE_CONVENTIONS", "convert_guidance", "classifier_free_guidance", "classifier_guidance",
           "classifier_log_likelihood_grad"]

GUIDANCE_CONVENTIONS = {"w": 0.0, "guidance_scale": 1.0, "classifier_scale": 1.0, "classifier_scale_conditional": 0.0,
                        "gamma": 1.0}
"""Each convention's offset from Ho & Salimans' ``w``: ``value = w + offset``.

The four of the module docstring, and ``"gamma"``: the :math:`\\gamma` of Luo (2022), section "Classifier-Free
Guidance" (and of the notes that the book corrects), a weight on the two scores,
:math:`\\gamma\\nabla\\log p(x_t \\mid c) + (1 - \\gamma)\\nabla\\log p(x_t)` (book eq. ``cfg-gamma``), so
``gamma = w + 1``: the same number as ``guidance_scale`` and as ``classifier_scale``, under another name (book
chapter "Guidance, exact on a toy")."""


def convert_guidance(value: float, source: str, target: str = "w") -> float:
    """A guidance strength written in the convention ``source``, rewritten in ``target``.

    ``guidance_scale = classifier_scale = gamma = w + 1`` and ``classifier_scale_conditional = w`` (module
    docstring; Ho & Salimans 2022, eqs. 2 and 6; Dhariwal & Nichol 2021, Algorithm 1; Luo 2022's ``gamma``,
    book eq. ``cfg-gamma``).

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


def classifier_log_likelihood_grad(classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                                   labels: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """:math:`\\nabla_{x_t}\\log p_\\phi(y \\mid x_t, t)` of a noise-conditional classifier, by autograd.

    Args:
        classifier: ``(xt, t) -> logits`` of shape ``(B, C)`` (e.g.
            :class:`~ddpm_lib.models.noisy_classifier.NoisyClassifier`), ``t`` integer ``(B,)`` in ``1..T``.
        labels: int64 ``(B,)`` in ``0..C-1``, the classes to guide towards (the function closes over them).

    Returns:
        ``grad(xt, t)`` of ``xt``'s shape and dtype, in units of 1 / ``x`` (nats per unit of ``x``). It turns
        gradients on inside itself, so it works under the sampling loop's ``torch.no_grad()`` (not under
        ``torch.inference_mode()``, which no code can undo). The log-probabilities of the batch are summed
        before the one backward pass, which is each image's own gradient only if the classifier treats the
        images independently (eval mode: no batch statistics).

    Raises:
        ValueError: (at the call) if the batch and the labels differ in length, or a label is outside ``0..C-1``.
    """

    def grad(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = xt.detach().requires_grad_(True)
            logits = classifier(x, t)
            y = torch.as_tensor(labels, device=logits.device)
            if y.shape != (logits.shape[0],) or bool((y < 0).any()) or bool((y >= logits.shape[1]).any()):
                raise ValueError(f"classifier guidance: {tuple(y.shape)} labels for a batch of {logits.shape[0]} with "
                                 f"{logits.shape[1]} classes; pass one label in 0..{logits.shape[1] - 1} per image.")
            log_p = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).gather(1, y[:, None].long()).sum()
            return torch.autograd.grad(log_p, x)[0].to(xt.dtype)

    return grad


def classifier_guidance(denoiser: Denoiser, log_likelihood_grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        *, scale: float) -> Denoiser:
    """The denoiser of the guided score :math:`\\nabla\\log p(x_t) + s\\,\\nabla\\log p(y \\mid x_t)` (book eq. ``classifier-guidance``).

    Dhariwal & Nichol (2021), §4 and Algorithm 2, whose :math:`\\epsilon` form this is in :math:`x_0` (their ``s``, the ``"classifier_scale"`` of
    :data:`GUIDANCE_CONVENTIONS`); turned into a denoiser by Tweedie's formula (book eq. ``tweedie``):
    :math:`\\hat x_0 + s\\,\\frac{1-\\bar\\alpha_t}{\\sqrt{\\bar\\alpha_t}}\\,\\nabla\\log p(y\\mid x_t)`.
    With an unconditional ``denoiser``, ``s = 1`` is the conditional model :math:`p(x_t \\mid y)` (Bayes' rule
    for scores, book eq. ``bayes-score``) and ``s = 0`` the unconditional one; with a conditional one,
    ``s`` is Ho & Salimans' ``w`` (``"classifier_scale_conditional"``), of which this wrapper takes only
    ``w >= 0`` (a ``w`` between -1 and 0, towards the unconditional model, needs
    :func:`classifier_free_guidance`).

    Args:
        denoiser: ``(xt, t) -> x0_hat`` carrying its schedule (:func:`~ddpm_lib.sampling.denoisers.model_denoiser`,
            :func:`~ddpm_lib.sampling.denoisers.denoiser_from_score`): the correction needs :math:`\\bar\\alpha_t`.
        log_likelihood_grad: ``(xt, t) -> grad log p(y | xt)`` of ``xt``'s shape, closing over the labels
            (:func:`classifier_log_likelihood_grad`, or a toy's exact one).
        scale: ``s >= 0``, keyword-only.

    Returns:
        A denoiser ``(xt, t) -> x0_hat`` of ``xt``'s shape and dtype, with the same schedule; at ``s = 0``
        ``denoiser`` itself, evaluated without the gradient. The coefficient grows like
        :math:`1/\\sqrt{\\bar\\alpha_t}` as :math:`\\bar\\alpha_t \\to 0` (about :math:`2\\cdot 10^4` at ``t = T`` of
        the cosine schedule). With the exact classifier the correction is :math:`s\\,(\\hat x_0(x_t, y) - \\hat x_0(x_t))`,
        bounded, because the exact gradient shrinks like :math:`\\sqrt{\\bar\\alpha_t}`; a trained classifier whose
        gradient does not shrink so fast at the largest ``t`` moves ``x0_hat`` far out of the data range there,
        and a clipped sampler keeps only its sign (chapter "Guidance on MNIST").

    Raises:
        ValueError: if ``scale`` is negative or not finite (a negative scale guides away from the class), or
            if ``denoiser`` carries no schedule.
    """
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"classifier_guidance: scale = {scale!r}, but Dhariwal & Nichol's s must be >= 0 (0: the "
                         f"unconditional model, 1: the conditional one, > 1: sharper). A negative s guides away from the class.")
    schedule = schedule_of(denoiser)
    if schedule is None:
        raise ValueError("classifier_guidance needs a denoiser that carries its schedule (model_denoiser or "
                         "denoiser_from_score set `.schedule`): the correction is scaled by (1 - alpha_bar_t) / sqrt(alpha_bar_t).")

    def guided(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0_hat = denoiser(xt, t)
        if scale == 0:  # exactly the denoiser, without the classifier's cost
            return x0_hat
        # Tweedie's formula solved for x0_hat with the guided score: the score's own terms cancel, leaving the
        # correction s (1 - alpha_bar_t) / sqrt(alpha_bar_t) grad, its coefficient formed in float64
        ab = gather64(schedule.alpha_bar, t, xt)
        return x0_hat + (scale * (1.0 - ab) / ab.sqrt()).to(xt.dtype) * log_likelihood_grad(xt, t)

    guided.schedule = schedule
    return guided
