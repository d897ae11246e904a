"""The guidance trade-off on MNIST: label accuracy, Fréchet-distance ratio and within-class diversity against the scale.

Glue over :func:`~ddpm_lib.sampling.images.generate_images` with a guided denoiser
(:mod:`ddpm_lib.sampling.guided`) and the evaluation classifier of :mod:`ddpm_lib.evaluation.frechet`
(chapter "Guidance on MNIST").
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import LoadedModel, write_atomic
from ..data import load_mnist
from ..devices import eval_mode, model_device
from ..models.classifier import MnistClassifier
from ..sampling.denoisers import Denoiser
from ..sampling.images import generate_images
from ..sampling.loop import count_nfe, sampler_plan
from .frechet import _sd, classifier_features, frechet_distances_of_features, random_real_sets

__all__ = ["within_class_distance", "guidance_sweep"]


def within_class_distance(features: torch.Tensor, labels: torch.Tensor, num_classes: int = 10,
                          index: torch.Tensor | None = None) -> float:
    """The mean Euclidean distance between two different images of the same class, averaged over the classes.

    A diversity measure in the evaluation classifier's feature space: it falls when guidance collapses each
    class onto fewer styles. Pairs of an image with itself are left out (with ``index``, a bootstrap
    replicate's indices into the original set, so are pairs of two copies of one original image).

    Args:
        features: float ``(N, F)``.
        labels: int64 ``(N,)``, each class present at least twice.
        index: int64 ``(N,)`` or ``None`` (the identity).

    Returns:
        A float in the units of the features.
    """
    index = torch.arange(features.shape[0]) if index is None else index
    means = []
    for c in range(num_classes):
        mask = labels == c
        if int(mask.sum()) < 2:
            raise ValueError(f"within_class_distance needs at least two images of every class; class {c} has {int(mask.sum())}.")
        f, i = features[mask].double(), index[mask]
        distinct = i[:, None] != i[None, :]
        means.append(float(torch.cdist(f, f)[distinct].mean()))
    return sum(means) / num_classes


def _diversity(features: torch.Tensor, labels: torch.Tensor, read: torch.Tensor, index: torch.Tensor | None,
               num_classes: int = 10) -> float:
    # within_class_distance of the images read as asked (of a bootstrap replicate's, with index); nan if some digit
    # has fewer than two distinct ones
    index = torch.arange(labels.numel()) if index is None else index
    keep = index[read[index]]
    if any(keep[labels[keep] == c].unique().numel() < 2 for c in range(num_classes)):
        return math.nan
    return within_class_distance(features[keep], labels[keep], num_classes, index=keep)


def _cached_images(path: Path | None, settings: dict, make: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    if path is not None and path.exists():
        with np.load(path) as f:
            stored = json.loads(str(f["settings"]))
            if stored != settings:
                raise ValueError(f"{path} holds images drawn with {stored}, not {settings}; pass another --cache folder.")
            return torch.from_numpy(f["images"]), float(f["seconds"])
    t0 = time.perf_counter()
    images = make()
    seconds = time.perf_counter() - t0
    if path is not None:  # written atomically, so that a killed sweep resumes from the scales it finished
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=images.numpy(), seconds=seconds, settings=json.dumps(settings, sort_keys=True))
        write_atomic(path, buffer.getvalue())
    return images, seconds


def guidance_sweep(
    loaded: LoadedModel,
    evaluator: MnistClassifier,
    guide: Callable[[float], Callable[[torch.Tensor], Denoiser]],
    scales: list[float],
    n: int = 2000,
    sampler: str = "dpm-solver-2m",
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 250,
    floor_sets: int = 5,
    n_bootstrap: int = 200,
    cache: str | Path | None = None,
    guide_name: str = "",
) -> dict:
    """Label accuracy, Fréchet distance (with its N-matched floor and ratio) and within-class diversity at each guidance scale.

    The ``n`` images cycle through the digits 0..9 and, at every scale, start from the same seeded ``x_T``
    (:func:`~ddpm_lib.sampling.images.generate_images`), so the rows are paired. For each scale ``g`` (the
    ``"guidance_scale"`` convention, ``w = g - 1``), ``guide(g)`` gives the builder of a batch's denoiser
    from its labels (e.g. ``lambda g: partial(classifier_free_denoiser, loaded, guidance_scale=g)``).

    * ``accuracy``: the fraction of images that the evaluation classifier assigns to the requested digit,
      with the Agresti-Coull standard error :math:`\\sqrt{\\tilde p(1-\\tilde p)/(n+4)}`,
      :math:`\\tilde p = (k+2)/(n+4)` for ``k`` images read as asked (the binomial one, which is 0 at ``k = n``,
      is about the same elsewhere);
    * ``fd``, ``fd_se``, ``fd_ratio``, ``fd_ratio_se``: as in :func:`~ddpm_lib.evaluation.frechet.sampler_table`
      (all ``n`` images against the test set; the floor from ``floor_sets`` disjoint random sets of ``n``
      training digits; bootstrap errors);
    * ``diversity``: :func:`within_class_distance` of the images that the evaluation classifier reads as the digit
      asked for, grouped by that digit, divided by the same of the test set's digits that it reads as their
      labels: 1 is as diverse as real digits. (Grouping every image by the digit asked for would count a misread image as
      variety.) ``nan`` if some digit has fewer than two images read as asked. ``diversity_se``: the standard
      deviation of ``n_bootstrap`` replicates that resample the images of each class with replacement (the
      test set's value held fixed).

    Args:
        cache: a folder for each scale's images (``scale_G.npz``), written as soon as they are drawn and
            reused when present (with the same ``guide_name``, ``n``, sampler, steps, seed and batch size, else a
            ``ValueError``), so that a stopped sweep resumes; ``None`` keeps nothing. The images' file does not
            identify the weights: give a retrained model or classifier a new ``guide_name`` or a new folder.
        guide_name: names the model and the guide (e.g. ``"classifier-free mnist-cfg"``), for the cache.

    Returns:
        ``{"n", "sampler", "steps", "floor", "floor_sd", "floor_sets", "floor_values", "real_within_class_distance",
        "n_bootstrap", "threads", "device", "rows"}`` with rows ``{"guidance_scale", "w", "denoiser_evaluations"
        (per image; each costs two network calls with classifier-free guidance, one network call and, for ``g > 0``,
        one classifier gradient with classifier guidance), "accuracy", "accuracy_se", "fd", "fd_se", "fd_ratio",
        "fd_ratio_se", "diversity", "diversity_se", "seconds"}``.

    Raises:
        ValueError: for ``n < 100`` (ten images of each digit), no scales, or as ``sampler_table``.
    """
    if n < 100 or not scales:
        raise ValueError(f"guidance_sweep needs n >= 100 (ten images of each digit, for the diversity's bootstrap) and at "
                         f"least one scale; got n = {n}, scales = {scales}.")
    cache = None if cache is None else Path(cache)
    labels = torch.arange(n) % 10
    test_images, test_labels = load_mnist("test")
    real = classifier_features(test_images, evaluator)  # once: the reference of every distance below
    floor_values = frechet_distances_of_features(
        [classifier_features(s, evaluator) for s in random_real_sets(load_mnist("train")[0], n, floor_sets, seed)], real)
    floor, floor_sd = sum(floor_values) / floor_sets, _sd(floor_values)
    floor_rel_se = floor_sd / math.sqrt(floor_sets) / floor
    with torch.no_grad(), eval_mode(evaluator):  # like for like: the test digits that the evaluator reads correctly
        real_read = evaluator.head(real).argmax(1) == test_labels
    real_within = within_class_distance(real[real_read], test_labels[real_read])
    step, timesteps = sampler_plan(sampler, loaded.schedule.T, steps)
    # the distance's bootstrap resamples all n images (as frechet_bootstrap does); diversity's resamples within each
    # class (a stratified bootstrap), so that every class keeps its count
    gen = torch.Generator().manual_seed(seed)
    fd_index = torch.randint(n, (n_bootstrap, n), generator=gen)
    members = [torch.nonzero(labels == c).flatten() for c in range(10)]
    class_index = [torch.cat([m[torch.randint(m.numel(), (m.numel(),), generator=gen)] for m in members])
                   for _ in range(n_bootstrap)]
    rows = []
    for g in scales:
        path = None if cache is None else cache / f"scale_{g:g}.npz"
        settings = json.loads(json.dumps({"guide": guide_name, "guidance_scale": g, "n": n, "sampler": sampler,
                                          "steps": steps, "seed": seed, "batch_size": batch_size}))
        images, seconds = _cached_images(path, settings, lambda: generate_images(loaded, n, sampler, steps, 0.0, seed, batch_size,
                                                                       labels=labels, denoiser_for=guide(g)))
        features = classifier_features(images, evaluator)
        # the distance and its bootstrap replicates in one call: the reference's statistics are formed once
        fd, *replicates = frechet_distances_of_features([features] + [features[b] for b in fd_index], real)
        fd_se = _sd(replicates)
        with torch.no_grad(), eval_mode(evaluator):
            read = evaluator.head(features).argmax(1) == labels
        correct = int(read.sum())
        accuracy = correct / n
        # Agresti-Coull: never 0, also where every image (or none) is read as asked
        p_tilde = (correct + 2) / (n + 4)
        # diversity among the images read as the digit asked for, so that a misread image cannot pass for variety
        diversity = _diversity(features, labels, read, None) / real_within
        div_boot = [v / real_within for b in class_index if math.isfinite(v := _diversity(features, labels, read, b))]
        rows.append({"guidance_scale": g, "w": g - 1, "denoiser_evaluations": count_nfe(step, loaded.schedule, timesteps),
                     "accuracy": accuracy, "accuracy_se": math.sqrt(p_tilde * (1 - p_tilde) / (n + 4)),
                     "fd": fd, "fd_se": fd_se, "fd_ratio": fd / floor,
                     "fd_ratio_se": fd / floor * math.hypot(fd_se / fd, floor_rel_se),
                     "diversity": diversity, "diversity_se": _sd(div_boot) if len(div_boot) > 1 else math.nan,
                     "seconds": round(seconds, 1)})
    return {"n": n, "sampler": sampler, "steps": steps, "floor": floor, "floor_sd": floor_sd, "floor_sets": floor_sets,
            "floor_values": floor_values, "real_within_class_distance": real_within, "n_bootstrap": n_bootstrap,
            "threads": torch.get_num_threads(), "device": str(model_device(loaded.model)), "rows": rows}
