"""Denoisers: a network becomes a callable ``(x_t, t) -> x0_hat``, and wrappers turn one denoiser into another.

A *denoiser* is any callable ``denoiser(xt, t) -> x0_hat`` with ``xt`` of shape ``(B, ...)``, ``t`` an
integer tensor ``(B,)`` in ``1..T`` (the book's time convention, notation page), and ``x0_hat`` of
``xt``'s shape and dtype. A conditional denoiser closes over its labels. Samplers only ever see a
denoiser, so a wrapper (clipping, guidance in Part V) gives every sampler the same behaviour.

A denoiser that converts a network's output with a schedule (:func:`model_denoiser`) carries it as
its attribute ``schedule``; the wrappers here keep it, and the sampling loop refuses to step with another
one (:func:`check_schedule`): a network sampled with a schedule it was not trained with gives noise.

The score and the denoiser carry the same information (Tweedie's formula, book eq. ``tweedie``):
:func:`score_from_denoiser` and :func:`denoiser_from_score` convert between them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.schedules import Schedule
from ..core.targets import get_target, score_from_x0, x0_from_score
from ..core.variance import split_output

__all__ = ["Denoiser", "ScoreFn", "model_denoiser", "clip_denoiser", "score_from_denoiser", "denoiser_from_score",
           "schedule_of", "check_schedule", "schedules_match", "SCHEDULE_RTOL", "SCHEDULE_ATOL"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def model_denoiser(
    model: Callable[..., torch.Tensor], schedule: Schedule, target: str, labels: torch.Tensor | None = None
) -> Denoiser:
    """Wrap a network trained for ``target`` into a denoiser returning ``x0_hat``.

    Args:
        model: ``model(xt, t) -> output``, or ``model(xt, t, labels)`` when ``labels`` is given. A network
            with learned variances (twice ``xt``'s channels) gives its prediction's channels to the
            denoiser and its variances to no one (:func:`ddpm_lib.core.variance.split_output`).
        target: a name in :data:`ddpm_lib.core.targets.TARGETS`; its ``to_x0_eps`` converts the output.
        labels: int64 ``(B,)`` class labels the conditional denoiser closes over (the batch it is
            called with must have ``B`` rows), or ``None`` for an unconditional model.

    Returns:
        The denoiser, with the attribute ``schedule`` (this ``schedule``), which the sampling loop
        compares with its own (:func:`check_schedule`). Pass the schedule the network was trained
        with: a checkpoint's is ``load_model(...).schedule``.

    Raises:
        ValueError: for an unknown target (at once, not at the first call).
    """
    to_x0_eps = get_target(target).to_x0_eps

    def denoiser(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output = model(xt, t) if labels is None else model(xt, t, labels)
        prediction, _ = split_output(output, xt.shape[1])  # a learned variance, if any, is not the denoiser's
        return to_x0_eps(prediction, xt, t, schedule)[0]

    denoiser.schedule = schedule
    return denoiser


def clip_denoiser(denoiser: Denoiser, lo: float = -1.0, hi: float = 1.0) -> Denoiser:
    """Clamp a denoiser's ``x0_hat`` to ``[lo, hi]``, the data range (Ho et al. 2020, §3.3 and their code).

    Without it, an ``eps``-predicting network's
    :math:`\\hat x_0 = (x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat\\epsilon)/\\sqrt{\\bar\\alpha_t}` (book eq. ``x0-from-eps``)
    amplifies the network's error by :math:`\\sqrt{(1-\\bar\\alpha_t)/\\bar\\alpha_t}` (about :math:`2\\cdot 10^4`
    at ``t = T`` of the cosine schedule), and a sampler with few steps carries it into the image. The
    result keeps the input's ``schedule`` attribute (:func:`schedule_of`).
    """

    def clipped(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser(xt, t).clamp(lo, hi)

    clipped.schedule = schedule_of(denoiser)
    return clipped


def schedule_of(denoiser: Denoiser) -> Schedule | None:
    """The schedule a denoiser converts with (its attribute ``schedule``), or ``None`` if it does not say.

    :func:`model_denoiser` and :func:`denoiser_from_score` set it and the wrappers of this package keep
    it; a denoiser written by hand (an exact toy denoiser, a ``lambda``) says nothing, and is not checked.
    """
    return getattr(denoiser, "schedule", None)


SCHEDULE_RTOL = 1e-12
"""Relative tolerance of :func:`schedules_match` on each ``beta_t``."""
SCHEDULE_ATOL = 1e-14
"""Absolute tolerance of :func:`schedules_match` on each ``beta_t`` (about 45 float64 ulps of 1)."""


def schedules_match(a: Schedule, b: Schedule) -> bool:
    """Whether two schedules are the same: the same object, or the same ``T`` and ``beta`` equal to round-off.

    ``beta_t`` is computed as ``1 - alpha_bar_t / alpha_bar_{t-1}`` (cosine, sigmoid), so two computations
    of one schedule differ by a few ulps of 1 in ``beta`` (an absolute error), which is a relative error of
    up to ``eps / beta_t``: the shipped ``mnist`` checkpoint's cosine betas differ from a fresh
    ``cosine_schedule(1000)`` by ``2.2e-16`` at four ``t`` (relative ``1.1e-13``), so an exact comparison
    would refuse the right schedule. The test is ``|a.beta - b.beta| <= SCHEDULE_ATOL + SCHEDULE_RTOL |b.beta|``
    at every ``t`` (``torch.allclose``); another schedule, or one ``beta_t`` changed by a relative ``1e-3``,
    is far outside it (tests/test_troubleshooting.py).
    """
    return a is b or (a.T == b.T and bool(torch.allclose(a.beta.to(torch.float64), b.beta.to(torch.float64),
                                                           rtol=SCHEDULE_RTOL, atol=SCHEDULE_ATOL)))


def _schedule_difference(a: Schedule, b: Schedule) -> str:
    """Where two schedules of one ``T`` differ most in ``beta`` (for messages whose reprs look alike)."""
    if a.T != b.T:
        return f"T = {a.T} against T = {b.T}"
    diff = (a.beta.to(torch.float64) - b.beta.to(torch.float64)).abs()
    t = int(diff.argmax())
    return f"their beta_t differ by up to {float(diff[t]):.3g} (at t = {t}, beta_t = {float(b.beta[t]):.6g})"


def check_schedule(denoiser: Denoiser, schedule: Schedule) -> None:
    """Refuse to sample with ``schedule`` a denoiser that converts with another one.

    Two schedules are the same when :func:`schedules_match` says so (the same object, or the same ``T``
    and equal ``beta`` to round-off): a network trained on the cosine schedule with ``T = 1000`` and
    sampled with the linear one, or with ``T = 500``, is handed noise levels that do not match its ``t``,
    and its samples are no longer digits (book chapter "My samples are noise"). Called by
    :func:`~ddpm_lib.sampling.loop.iterate` on every run.

    What it compares is the denoiser's schedule with the sampler's; it cannot know the schedule the
    network was trained with. A network given the wrong schedule in both places passes: take the
    checkpoint's, ``load_model(...).schedule``, or sample with ``generate_images``.

    Raises:
        ValueError: if :func:`schedule_of` the denoiser is not ``None`` and differs from ``schedule``;
            the message names both, where their betas differ, and the fix (one schedule, the
            checkpoint's, for both).
    """
    own = schedule_of(denoiser)
    if own is None or schedules_match(own, schedule):
        return
    raise ValueError(
        f"the denoiser converts the network's output with {own}, but the sampler steps with {schedule} "
        f"({_schedule_difference(own, schedule)}). A network must be sampled with the schedule it was trained with: "
        f"pass the checkpoint's schedule (load_model(...).schedule) to both model_denoiser and the sampler, or use "
        f"generate_images, which does."
    )


def score_from_denoiser(denoiser: Denoiser, schedule: Schedule) -> ScoreFn:
    """The score :math:`\\nabla_{x_t}\\log q(x_t)` that a denoiser implies (Tweedie, book eq. ``tweedie``).

    Returns ``score(xt, t)`` of ``xt``'s shape and dtype, in units of 1 / ``x``; needs ``t >= 1``.
    """

    def score(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return score_from_x0(xt, t, denoiser(xt, t), schedule)

    return score


def denoiser_from_score(score: ScoreFn, schedule: Schedule) -> Denoiser:
    """The denoiser a score function implies, :math:`\\hat x_0 = (x_t + (1-\\bar\\alpha_t)\\,s)/\\sqrt{\\bar\\alpha_t}`.

    The inverse of :func:`score_from_denoiser` (book eq. ``tweedie``): an exact score (a toy's)
    becomes an exact denoiser that every sampler accepts.
    """

    def denoiser(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0_from_score(xt, t, score(xt, t), schedule)

    denoiser.schedule = schedule
    return denoiser
