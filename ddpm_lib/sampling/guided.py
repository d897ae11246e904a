"""Guided denoisers of trained networks: the wrappers of :mod:`ddpm_lib.sampling.guidance` applied to a checkpoint.

Each function takes what :func:`~ddpm_lib.checkpoint.load_model` returns (anything with ``model``, ``schedule``
and ``target``) and the labels of one batch, and returns one denoiser ``(xt, t) -> x0_hat``, which
:func:`~ddpm_lib.sampling.images.generate_images` accepts through its ``denoiser_for``. Both take the strength in
the ``"guidance_scale"`` convention of :data:`~ddpm_lib.sampling.guidance.GUIDANCE_CONVENTIONS`, ``g = w + 1``:
``g = 1`` is the conditional model :math:`p(x \\mid y)` for both methods and ``g = 0`` the unconditional one
(for classifier guidance on an unconditional model Dhariwal & Nichol's ``s`` is the same number). Chapter
"Guidance on MNIST".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .denoisers import Denoiser, model_denoiser, schedules_match
from .guidance import classifier_free_guidance, classifier_guidance, classifier_log_likelihood_grad, convert_guidance

if TYPE_CHECKING:
    from ..checkpoint import LoadedModel, LoadedNoisyClassifier

__all__ = ["classifier_free_denoiser", "classifier_guided_denoiser", "check_class_labels"]


def check_class_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``labels`` as int64, after checking they are a 1-D tensor of classes in ``0..num_classes - 1``.

    Raises:
        ValueError: naming the first label outside the range (the "no label" class ``num_classes`` of a
            conditional U-Net is not a class to ask for: guidance builds the unconditional denoiser itself).
    """
    y = torch.as_tensor(labels)
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"class labels must be a 1-D integer tensor, got shape {tuple(y.shape)} and dtype {y.dtype}.")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.numel():
        raise ValueError(f"class label {int(bad[0])} is outside 0..{num_classes - 1}; ask for digits 0..{num_classes - 1}.")
    return y.long()


def _check_scale(g: float) -> None:
    if not g >= 0 or g == float("inf"):
        raise ValueError(f"guidance_scale = {g!r}, but g = w + 1 must be a finite number >= 0 (0: the unconditional model, "
                         f"1: the conditional one, > 1: guided).")


def classifier_free_denoiser(loaded: LoadedModel, labels: torch.Tensor, *, guidance_scale: float) -> Denoiser:
    """Classifier-free guidance of a conditional U-Net trained with label dropout (Ho & Salimans 2022, eq. 6; book eq. ``cfg``).

    The conditional denoiser is the network given ``labels``; the unconditional one is the same network
    given the "no label" class ``num_classes`` (:class:`~ddpm_lib.models.unet.UNet`).

    Args:
        loaded: a conditional model (``loaded.model.config.num_classes`` set), e.g. ``load_model("mnist-cfg")``.
        labels: int64 ``(B,)`` in ``0..num_classes - 1``, the batch's classes.
        guidance_scale: ``g = w + 1 >= 0``, keyword-only.

    Returns:
        A denoiser of two network calls per evaluation, carrying the model's schedule.

    Raises:
        ValueError: for an unconditional model, labels outside the classes, or ``g`` not a finite number ``>= 0``.
    """
    _check_scale(guidance_scale)
    num_classes = loaded.model.config.num_classes
    if num_classes is None:
        raise ValueError("classifier-free guidance needs a conditional model (trained with label dropout, e.g. "
                         "`mnist-cfg`); for an unconditional one, guide with a noise-conditional classifier instead.")
    y = check_class_labels(labels, num_classes)
    conditional = model_denoiser(loaded.model, loaded.schedule, loaded.target, y)
    unconditional = model_denoiser(loaded.model, loaded.schedule, loaded.target, torch.full_like(y, num_classes))
    return classifier_free_guidance(conditional, unconditional, w=convert_guidance(guidance_scale, "guidance_scale"))


def classifier_guided_denoiser(loaded: LoadedModel, classifier: LoadedNoisyClassifier, labels: torch.Tensor, *,
                               guidance_scale: float) -> Denoiser:
    """Classifier guidance of an unconditional model by a noise-conditional classifier (Dhariwal & Nichol 2021, Algorithm 1).

    Args:
        loaded: an unconditional model, e.g. ``load_model("mnist")``.
        classifier: a noise-conditional classifier with its schedule (:func:`~ddpm_lib.checkpoint.load_noisy_classifier`),
            on the model's device.
        labels: int64 ``(B,)``, the batch's classes.
        guidance_scale: ``g = s >= 0`` (for an unconditional model Dhariwal & Nichol's ``s`` equals ``g``), keyword-only.

    Returns:
        A denoiser of one network call and one classifier gradient per evaluation, carrying the model's schedule.

    Raises:
        ValueError: for a conditional model, labels outside the classifier's classes, ``g`` not a finite number
            ``>= 0``, or a classifier trained on another schedule's noise.
    """
    _check_scale(guidance_scale)
    if loaded.model.config.num_classes is not None:
        raise ValueError("classifier guidance here guides an unconditional model; this one is conditional: use "
                         "classifier-free guidance (no classifier), or an unconditional checkpoint such as `mnist`.")
    if not schedules_match(classifier.schedule, loaded.schedule):
        raise ValueError(f"the classifier was trained on the noise of {classifier.schedule} but the model uses "
                         f"{loaded.schedule}; train one for this model (`train-noisy-classifier --checkpoint ...`).")
    y = check_class_labels(labels, classifier.model.config.num_classes)
    unconditional = model_denoiser(loaded.model, loaded.schedule, loaded.target)
    return classifier_guidance(unconditional, classifier_log_likelihood_grad(classifier.model, y), scale=guidance_scale)
