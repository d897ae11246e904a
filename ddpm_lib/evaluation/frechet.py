"""Sample quality: classifier accuracy, the classifier-feature Fréchet distance with its bootstrap error and N-matched floor, and the sampler table.

Glue over torchmetrics' Fréchet distance with the MNIST classifier of :mod:`ddpm_lib.models.classifier`
as the feature extractor (chapter "Training a DDPM on MNIST").
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ..checkpoint import LoadedModel
from ..devices import eval_mode, model_device
from ..data import check_images, load_mnist, to_model
from ..models.classifier import MnistClassifier
from ..sampling.images import generate_images
from ..sampling.loop import SAMPLERS, count_nfe, sampler_plan

__all__ = ["classifier_accuracy", "ClassifierFeatures", "classifier_features", "frechet_distance", "frechet_distances",
           "frechet_distances_of_features",
           "frechet_bootstrap", "random_real_sets", "sampler_table"]


@torch.no_grad()
def classifier_accuracy(classifier: MnistClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` (uint8 ``(N, 28, 28)``) whose predicted class equals ``labels``."""
    correct = 0
    with eval_mode(classifier):
        for start in range(0, images.shape[0], batch_size):
            logits = classifier(to_model(images[start : start + batch_size]))
            correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / images.shape[0]


class ClassifierFeatures(nn.Module):
    """The classifier's penultimate features of uint8 images ``(N, 1, 28, 28)``: torchmetrics' feature extractor."""

    def __init__(self, classifier: MnistClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.config.features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.classifier):  # dropout off; the caller's classifier keeps its mode
            return self.classifier.features(to_model(images))


class _GivenFeatures(nn.Module):
    """torchmetrics' feature extractor for features computed beforehand: the identity on ``(N, F)``."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def classifier_features(images: torch.Tensor, classifier: MnistClassifier, batch_size: int = 1000) -> torch.Tensor:
    """The classifier's penultimate features of uint8 ``images`` ``(N, 28, 28)``: a float32 tensor ``(N, F)``.

    Raises:
        ValueError: for images of the wrong dtype or shape.
    """
    images = check_images(images)
    extractor = ClassifierFeatures(classifier)
    return torch.cat([extractor(images[start : start + batch_size, None]) for start in range(0, images.shape[0], batch_size)])


def frechet_distances_of_features(fakes: list[torch.Tensor], real: torch.Tensor) -> list[float]:
    """torchmetrics' Fréchet distance of each ``(N_i, F)`` float feature set in ``fakes`` to the ``(M, F)`` set ``real``.

    :func:`frechet_distances` on features computed once (:func:`classifier_features`), for callers that reuse them.
    Returns one float per set, in order.
    """
    metric = FrechetInceptionDistance(feature=_GivenFeatures(real.shape[1]), reset_real_features=False)
    metric.update(real, real=True)
    distances = []
    for fake in fakes:
        metric.reset()  # drops the previous fake set's statistics; the real ones are kept
        metric.update(fake, real=False)
        distances.append(float(metric.compute()))
    return distances


def frechet_distances(fakes: list[torch.Tensor], real: torch.Tensor, classifier: MnistClassifier, batch_size: int = 1000) -> list[float]:
    """Fréchet distance of each set in ``fakes`` to ``real``, in the classifier's features; uint8 images ``(N, 28, 28)``.

    torchmetrics' ``FrechetInceptionDistance`` on :func:`classifier_features` (Heusel et al. 2017,
    eq. 6, on MNIST-classifier features instead of Inception's). The real set's features are
    computed once. Unitless; biased upward at small N, so compare with the same-N floor of real
    images (:func:`sampler_table` does).

    Returns:
        One distance per set in ``fakes``, in order.

    Raises:
        ValueError: for images of the wrong dtype or shape (checked before any features are computed).
    """
    fakes = [check_images(fake, "fake images") for fake in fakes]
    real = check_images(real, "real images")
    real_features = classifier_features(real, classifier, batch_size)
    return frechet_distances_of_features([classifier_features(fake, classifier, batch_size) for fake in fakes], real_features)


def frechet_distance(fake: torch.Tensor, real: torch.Tensor, classifier: MnistClassifier, batch_size: int = 1000) -> float:
    """:func:`frechet_distances` of the single set ``fake`` to ``real``.

    Raises:
        ValueError: for images of the wrong dtype or shape.
    """
    return frechet_distances([fake], real, classifier, batch_size)[0]


def frechet_bootstrap(
    fakes: list[torch.Tensor], real: torch.Tensor, classifier: MnistClassifier, n_bootstrap: int = 200, seed: int = 0, batch_size: int = 1000
) -> list[list[float]]:
    """Bootstrap replicates of each fake set's Fréchet distance to ``real`` (Efron & Tibshirani 1993, ch. 6).

    Replicate ``b`` resamples each fake set's N images with replacement, with the *same* indices for
    every set of that size: sets whose image ``i`` starts from the same noise (every row of
    :func:`sampler_table` starts image ``i`` from the same ``x_T``) are then compared pairwise, and the
    spread of ``fd_a[b] - fd_b[b]`` is the uncertainty of their difference. (For a stochastic sampler
    only ``x_T`` is shared; its step noise differs between rows, so its differences gain little.) The
    standard deviation of one set's replicates approximates the sampling error of its distance at that N; it is not exact (duplicated images shift the
    replicates upward, and near the floor, where the distance behaves like a squared norm, it
    overstates the spread): ``scripts/fd_calibration.py`` measures it against independent sets.
    The reference ``real`` is held fixed (it is the whole test set).

    Returns:
        For each set in ``fakes``, a list of ``n_bootstrap`` distances.

    Raises:
        ValueError: for ``n_bootstrap < 2`` or images of the wrong dtype or shape.
    """
    if n_bootstrap < 2:
        raise ValueError(f"frechet_bootstrap needs n_bootstrap >= 2 replicates, got {n_bootstrap}.")
    fakes = [check_images(fake, "fake images") for fake in fakes]
    real_features = classifier_features(check_images(real, "real images"), classifier, batch_size)
    fake_features = [classifier_features(fake, classifier, batch_size) for fake in fakes]
    gen = torch.Generator().manual_seed(seed)
    indices = {n: torch.randint(n, (n_bootstrap, n), generator=gen) for n in sorted({f.shape[0] for f in fake_features})}
    replicates = [frechet_distances_of_features([f[indices[f.shape[0]][b]] for b in range(n_bootstrap)], real_features) for f in fake_features]
    return replicates


def random_real_sets(images: torch.Tensor, n: int, count: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` disjoint sets of ``n`` images drawn at random (a seeded permutation) from ``images``.

    The N-matched floor of a Fréchet distance compares *random* real digits with the reference, as
    the model's samples are independent draws. Consecutive blocks of MNIST's training set are not
    random draws: the set is ordered (by writer), and blocks of 2,000 give a floor about 65% higher
    and about twice as spread as random sets (measured with the shipped classifier in the chapter
    "Training a DDPM on MNIST").

    Raises:
        ValueError: if ``count * n`` exceeds the number of images, or ``n < 2`` or ``count < 1``.
    """
    if n < 2 or count < 1 or n * count > images.shape[0]:
        raise ValueError(f"random_real_sets needs n >= 2, count >= 1 and n * count <= {images.shape[0]} images; got n = {n}, count = {count}.")
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    return [images[order[k * n : (k + 1) * n]] for k in range(count)]


def _sd(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def sampler_table(
    loaded: LoadedModel,
    classifier: MnistClassifier,
    n: int,
    budgets: list[int],
    samplers: tuple[str, ...] = ("ddpm", "ddpm-strided", "ddim", "dpm-solver-2m"),
    seed: int = 0,
    batch_size: int = 250,
    floor_sets: int = 5,
    n_bootstrap: int = 200,
) -> dict:
    """The Fréchet distance of ``n`` samples to the MNIST test set, for each sampler and number of steps.

    ``ddpm`` runs all ``T`` steps (one row); every other sampler runs each number of steps in
    ``budgets``. Each row records its ``steps`` and the network evaluations they cost, ``nfe``, counted
    (:func:`~ddpm_lib.sampling.loop.count_nfe`: one per step for ``ddpm``, ``ddpm-strided``, ``ddim``,
    ``dpm-solver-2m`` and ``euler-maruyama``; up to two for ``heun`` and two for ``pc``, one on their last step).
    ``euler-maruyama`` is the hybrid of :func:`~ddpm_lib.sampling.steps.euler_maruyama_step` (ancestral where
    sigma_t > 80), ``pc`` the sampler of :data:`~ddpm_lib.sampling.loop.PC_DEFAULTS`. Every row starts each image
    from the same seeded ``x_T`` (:func:`~ddpm_lib.sampling.images.generate_images`), so the rows are
    paired. Beside each distance:

    * ``fd_se``: the standard deviation of :func:`frechet_bootstrap` replicates (kept in
      ``fd_bootstrap``, so that any two rows get a paired error of their difference);
      ``scripts/fd_calibration.py`` measures how it compares with the spread over independent sets;
    * the N-matched floor: the distance of ``n`` real *training* digits to the same test set,
      averaged over ``floor_sets`` disjoint sets drawn at random (:func:`random_real_sets` with
      ``seed``), with their standard deviation ``floor_sd``;
    * ``fd_ratio = fd / floor`` and its standard error, from ``fd_se`` and ``floor_sd /
      sqrt(floor_sets)`` combined in quadrature (relative errors; first order).

    Returns:
        ``{"n", "floor", "floor_sd", "floor_sets", "floor_seed", "floor_values", "n_bootstrap", "threads", "device", "rows"}`` with rows
        ``{"sampler", "steps", "nfe", "fd", "fd_se", "fd_ratio", "fd_ratio_se", "fd_bootstrap", "seconds"}``.

    Raises:
        ValueError: for ``n < 2``, ``floor_sets < 2``, ``n * floor_sets`` above the 60,000 training digits, an unknown
            sampler, or a budget outside ``1..T``.
    """
    T = loaded.schedule.T
    if n < 2:
        raise ValueError(f"sampler_table needs n >= 2 samples, got {n}.")
    train = load_mnist("train")[0]
    if floor_sets < 2 or n * floor_sets > train.shape[0]:
        raise ValueError(f"the floor needs 2 <= floor_sets and n * floor_sets <= {train.shape[0]} training digits; got n = {n}, floor_sets = {floor_sets}.")
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown sampler(s) {unknown}; choose from {sorted(SAMPLERS)}.")
    if any(not 1 <= b <= T for b in budgets):
        raise ValueError(f"every budget must be in 1..T = 1..{T}, got {budgets}.")
    reference = load_mnist("test")[0]
    floor_values = frechet_distances(random_real_sets(train, n, floor_sets, seed), reference, classifier)
    floor, floor_sd = sum(floor_values) / floor_sets, _sd(floor_values)
    plan = [(s, T) if s == "ddpm" else (s, b) for s in samplers for b in ([T] if s == "ddpm" else budgets)]
    samples, seconds = [], []
    for name, steps in plan:
        t0 = time.perf_counter()
        samples.append(generate_images(loaded, n, name, None if name == "ddpm" else steps, 0.0, seed, batch_size))
        seconds.append(time.perf_counter() - t0)
    fds = frechet_distances(samples, reference, classifier)
    boots = frechet_bootstrap(samples, reference, classifier, n_bootstrap, seed)
    floor_rel_se = floor_sd / math.sqrt(floor_sets) / floor
    rows = []
    for (name, steps), fd, boot, sec in zip(plan, fds, boots, seconds):
        fd_se = _sd(boot)
        ratio = fd / floor
        step, timesteps = sampler_plan(name, T, None if name == "ddpm" else steps)
        nfe = count_nfe(step, loaded.schedule, timesteps)
        rows.append({"sampler": name, "steps": steps, "nfe": nfe, "fd": fd, "fd_se": fd_se, "fd_ratio": ratio,
                     "fd_ratio_se": ratio * math.hypot(fd_se / fd, floor_rel_se), "fd_bootstrap": boot, "seconds": round(sec, 1)})
    return {"n": n, "floor": floor, "floor_sd": floor_sd, "floor_sets": floor_sets, "floor_seed": seed, "floor_values": floor_values,
            "n_bootstrap": n_bootstrap, "threads": torch.get_num_threads(),
            "device": str(model_device(loaded.model)), "rows": rows}
