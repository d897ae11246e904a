"""Evaluation: the ELBO in bits/dim, classifier accuracy, the classifier-feature Fréchet distance, the VAE's ELBO.

Glue over the core math (:mod:`ddpm_lib.likelihood`) and the models; the only place besides
training that loops over data sets and moves tensors between devices.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from tqdm.auto import tqdm

from .checkpoint import LoadedModel
from .classifier import MnistClassifier
from .data import to_model, to_uint8
from .forward import q_sample
from .likelihood import decoder_nll, denoising_kl, prior_kl
from .samplers import clip_denoiser, iterate, model_denoiser, sampler_plan
from .schedules import Schedule
from .vae import VAE, ELBOTerms, elbo_terms

__all__ = ["generate_images", "elbo_strata", "elbo_bits_per_dim", "classifier_accuracy", "ClassifierFeatures", "classifier_features", "frechet_distance", "frechet_distances", "frechet_bootstrap", "random_real_sets", "check_images", "sampler_table",
           "evaluate_vae"]


@torch.no_grad()
def generate_images(
    loaded: LoadedModel,
    n: int,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``n`` images from a DDPM with a named sampler; uint8 ``(n, 28, 28)`` on the CPU.

    The denoiser's ``x0_hat`` is clipped to ``[-1, 1]`` (Ho et al. 2020). Seeded: ``x_T`` and every
    step's noise come from one CPU generator seeded ``seed`` (drawn on the CPU and moved to
    ``device``, see :func:`~ddpm_lib.samplers.iterate`), so the same arguments give the same
    images on the same device, and the same noise on every device.

    Args:
        progress: show a progress bar over the network evaluations (``batches x steps``; DDPM's
            1000 steps take minutes on a CPU). Off by default, for library use and tests.

    Raises:
        ValueError: if ``n < 1`` or from :func:`sampler_plan`.
    """
    if n < 1:
        raise ValueError(f"the number of images must be >= 1, got {n}.")
    step, timesteps = sampler_plan(sampler, loaded.schedule.T, steps, eta)
    model = loaded.model.to(device).eval()
    denoiser = clip_denoiser(model_denoiser(model, loaded.schedule, loaded.target))
    gen = torch.Generator().manual_seed(seed)
    starts = range(0, n, batch_size)
    bar = tqdm(total=len(starts) * len(timesteps), disable=not progress, desc=f"sample {sampler}", unit="step")
    out = []
    for start in starts:
        x_T = torch.randn((min(batch_size, n - start), 1, 28, 28), generator=gen).to(device)
        for state in iterate(denoiser, loaded.schedule, step, x_T, timesteps, gen):
            if state.t > 0:
                bar.update(1)  # one network evaluation done; the loop then takes the step
        out.append(to_uint8(state.xt))
    bar.close()
    return torch.cat(out)


def check_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    """Validate uint8 MNIST-shaped images ``(N, 28, 28)`` and return them as a tensor.

    Raises:
        ValueError: for another dtype or shape, saying what was expected.
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != (28, 28) or images.shape[0] < 2:
        raise ValueError(
            f"{what}: expected uint8 pixels in 0..255 of shape (N, 28, 28) with N >= 2, got {images.dtype} of shape "
            f"{tuple(images.shape)} (the 'images' array written by `python -m ddpm_lib sample`)."
        )
    return images


def elbo_strata(schedule: Schedule, n_strata: int | None = None) -> list[torch.Tensor]:
    """Groups of consecutive timesteps ``2..T`` over which :func:`elbo_bits_per_dim` sums ``L_{t-1}``.

    ``None`` gives one group per timestep (every term evaluated). An integer ``K`` cuts the range
    of :math:`\\log\\mathrm{SNR}(t)` over ``t = 2..T`` into ``K`` intervals of equal width and
    keeps the non-empty ones, so there are at most ``K`` groups. Equal width in log-SNR rather than
    in ``t`` because the terms vary far less within such a group: in ``t`` they pile up at the ends
    (measured in the chapter "Training a DDPM on MNIST", book eq. ``elbo-stratified``), while the
    continuous-time bound of Kingma et al. (2021) is an integral over the SNR that does not depend
    on how ``t`` maps onto it.

    Returns:
        A list of 1-D ``int64`` tensors of timesteps, in increasing order, that together hold
        ``2..T`` once each.

    Raises:
        ValueError: if ``K < 1``, ``T < 2``, or (for ``K``) some ``alpha_bar_t`` is 0 or 1 at ``t >= 2``.
    """
    if schedule.T < 2:
        raise ValueError(f"the bound has denoising terms only for T >= 2, got T = {schedule.T}.")
    ts = torch.arange(2, schedule.T + 1)
    if n_strata is None:
        return list(ts.split(1))
    if n_strata < 1:
        raise ValueError(f"the number of strata must be >= 1 (or None for every t), got {n_strata}.")
    lam = schedule.log_snr[2:].double()  # decreasing in t
    if not torch.isfinite(lam).all():
        raise ValueError("log-SNR strata need alpha_bar_t in (0, 1) for t >= 2; use n_strata=None for this schedule.")
    width = (lam[0] - lam[-1]) / n_strata
    bin_of_t = ((lam[0] - lam) / width).floor().clamp(max=n_strata - 1).long() if width > 0 else torch.zeros_like(ts)
    return [ts[bin_of_t == k] for k in bin_of_t.unique()]


@torch.no_grad()
def elbo_bits_per_dim(
    loaded: LoadedModel,
    images: torch.Tensor,
    batch_size: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    n_strata: int | None = None,
) -> dict:
    """The negative ELBO of ``images`` under a DDPM, in bits/dim, with every term of the bound.

    Terms: :func:`~ddpm_lib.likelihood.prior_kl` (``L_T``), :func:`~ddpm_lib.likelihood.denoising_kl`
    (``L_{t-1}``, ``t >= 2``) and :func:`~ddpm_lib.likelihood.decoder_nll` (``L_0``), with the
    network's unclipped ``x0_hat``; one network call and one draw of ``x_t`` per evaluated term.
    ``L_T`` and ``L_0`` are always evaluated. The sum over ``t = 2..T`` is taken over the groups of
    :func:`elbo_strata`: per image, one ``t`` drawn uniformly from each group, its term weighted by
    the group's size (stratified sampling, an unbiased estimate of the sum; book eq.
    ``elbo-stratified``). With ``n_strata=None``
    every group is one timestep, so every term is evaluated and the sum is exact given the ``x_t``
    draws. Either way the reported standard error is across images, so it includes the sampling of
    ``t``. The ``t`` draws use their own generator (seeded ``seed + 1``), so ``n_strata=None`` draws
    the same ``x_t`` as evaluating ``t = 1, 2, ..., T`` in turn.

    Args:
        loaded: from :func:`ddpm_lib.checkpoint.load_model`.
        images: uint8 ``(N, 28, 28)``.
        n_strata: ``None`` (every ``t``; ``T`` network calls per image) or ``K`` (at most ``K + 1``).

    Returns:
        A dict: ``bits_per_dim``, ``bits_per_dim_stderr``, ``prior_bpd``, ``denoising_bpd`` (the sum
        over ``t >= 2``), ``decoder_bpd``, ``denoising_bpd_by_t`` (list of ``T`` entries; entry
        ``t-1`` is the mean of ``L_{t-1}`` over the images whose draw was ``t``, ``None`` if none
        was; entry 0 is ``L_0``), ``nats_per_image``, ``n_images``, ``n_strata`` (the number of
        groups used), ``network_calls_per_image``.

    Raises:
        ValueError: from :func:`check_images` and :func:`elbo_strata`.
    """
    images = check_images(images)
    model, schedule = loaded.model.to(device).eval(), loaded.schedule
    strata = elbo_strata(schedule, n_strata)
    denoiser = model_denoiser(model, schedule, loaded.target)
    T, D = schedule.T, images[0].numel()
    gen, t_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    per_image, prior_sum = [], 0.0
    by_t, count_t = torch.zeros(T + 1, dtype=torch.float64), torch.zeros(T + 1, dtype=torch.long)
    bar = tqdm(total=images.shape[0] * (len(strata) + 1), disable=not progress, desc="elbo", unit="image-term")
    for start in range(0, images.shape[0], batch_size):
        x0 = to_model(images[start : start + batch_size]).to(device)
        B = x0.shape[0]
        total = prior_kl(x0, schedule).double().cpu()
        prior_sum += float(total.sum())
        # t = 1 (the decoder), then one t per group, each image drawing its own t in the group
        for group in [torch.tensor([1])] + strata:
            t = group[torch.randint(len(group), (B,), generator=t_gen)]
            t_dev = t.to(device)
            eps = torch.randn(x0.shape, generator=gen).to(device)
            xt = q_sample(x0, t_dev, eps, schedule)
            x0_hat = denoiser(xt, t_dev)
            term = decoder_nll(x0, x0_hat, schedule) if group[0] == 1 else denoising_kl(x0, xt, t_dev, x0_hat, schedule)
            term = term.double().cpu()
            by_t.index_add_(0, t, term)
            count_t.index_add_(0, t, torch.ones_like(t))
            total += len(group) * term
            bar.update(B)
        per_image.append(total)
    bar.close()
    nats = torch.cat(per_image)
    n = nats.numel()
    to_bpd = 1.0 / (D * math.log(2))
    decoder = float(by_t[1]) / n
    return {
        "bits_per_dim": float(nats.mean()) * to_bpd,
        "bits_per_dim_stderr": float(nats.std() / math.sqrt(n)) * to_bpd,
        "prior_bpd": prior_sum / n * to_bpd,
        "denoising_bpd": (float(nats.mean()) - prior_sum / n - decoder) * to_bpd,
        "decoder_bpd": decoder * to_bpd,
        "denoising_bpd_by_t": [float(v) / int(c) * to_bpd if c > 0 else None for v, c in zip(by_t[1:], count_t[1:])],
        "nats_per_image": float(nats.mean()),
        "n_images": n,
        "n_strata": len(strata),
        "network_calls_per_image": len(strata) + 1,
    }


@torch.no_grad()
def classifier_accuracy(classifier: MnistClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` (uint8 ``(N, 28, 28)``) whose predicted class equals ``labels``."""
    classifier.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        logits = classifier(to_model(images[start : start + batch_size]))
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / images.shape[0]


class ClassifierFeatures(nn.Module):
    """The classifier's penultimate features of uint8 images ``(N, 1, 28, 28)``: torchmetrics' feature extractor."""

    def __init__(self, classifier: MnistClassifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.config.features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
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


def _fd_of_features(fakes: list[torch.Tensor], real: torch.Tensor) -> list[float]:
    """torchmetrics' Fréchet distance of each ``(N_i, F)`` feature set in ``fakes`` to the ``(M, F)`` set ``real``."""
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
    return _fd_of_features([classifier_features(fake, classifier, batch_size) for fake in fakes], real_features)


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
    every set of that size: sets drawn from the same noise (the rows of one budget in
    :func:`sampler_table`) are then compared pairwise, and the spread of ``fd_a[b] - fd_b[b]`` is the
    uncertainty of their difference. The standard deviation of one set's replicates approximates
    the sampling error of its distance at that N; it is not exact (duplicated images shift the
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
    replicates = [_fd_of_features([f[indices[f.shape[0]][b]] for b in range(n_bootstrap)], real_features) for f in fake_features]
    return replicates


def random_real_sets(images: torch.Tensor, n: int, count: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` disjoint sets of ``n`` images drawn at random (a seeded permutation) from ``images``.

    The N-matched floor of a Fréchet distance compares *random* real digits with the reference, as
    the model's samples are independent draws. Consecutive blocks of MNIST's training set are not
    random draws: the set is ordered (by writer), and blocks of 2,000 give a floor about 65% higher
    and 2.6 times as spread as random sets (measured with the shipped classifier).

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
    device: str | torch.device = "cpu",
    floor_sets: int = 5,
    n_bootstrap: int = 200,
) -> dict:
    """The Fréchet distance of ``n`` samples to the MNIST test set, for each sampler and number of network evaluations.

    ``ddpm`` runs all ``T`` steps (one row); every other sampler runs each budget in ``budgets``.
    Rows at the same budget start from the same seeded noise, so they are paired; rows at different
    budgets share only their first batch (one generator draws ``x_T`` and every step's noise, batch
    after batch, so its state after a batch depends on the number of steps). Beside each distance:

    * ``fd_se``: the standard deviation of :func:`frechet_bootstrap` replicates (kept in
      ``fd_bootstrap``, so that two rows of one budget get a paired error of their difference);
      ``scripts/fd_calibration.py`` measures how it compares with the spread over independent sets;
    * the N-matched floor: the distance of ``n`` real *training* digits to the same test set,
      averaged over ``floor_sets`` disjoint sets drawn at random (:func:`random_real_sets` with
      ``seed``), with their standard deviation ``floor_sd``;
    * ``fd_ratio = fd / floor`` and its standard error, from ``fd_se`` and ``floor_sd /
      sqrt(floor_sets)`` combined in quadrature (relative errors; first order).

    Returns:
        ``{"n", "floor", "floor_sd", "floor_sets", "floor_seed", "floor_values", "n_bootstrap", "threads", "device", "rows"}`` with rows
        ``{"sampler", "nfe", "fd", "fd_se", "fd_ratio", "fd_ratio_se", "fd_bootstrap", "seconds"}``.

    Raises:
        ValueError: for ``n < 2``, ``floor_sets < 2``, ``n * floor_sets`` above the 60,000 training digits, an unknown
            sampler, or a budget outside ``1..T``.
    """
    import time

    from .data import load_mnist
    from .samplers import SAMPLERS

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
    for name, nfe in plan:
        t0 = time.perf_counter()
        samples.append(generate_images(loaded, n, name, None if name == "ddpm" else nfe, 0.0, seed, batch_size, device))
        seconds.append(time.perf_counter() - t0)
    fds = frechet_distances(samples, reference, classifier)
    boots = frechet_bootstrap(samples, reference, classifier, n_bootstrap, seed)
    floor_rel_se = floor_sd / math.sqrt(floor_sets) / floor
    rows = []
    for (name, nfe), fd, boot, sec in zip(plan, fds, boots, seconds):
        fd_se = _sd(boot)
        ratio = fd / floor
        rows.append({"sampler": name, "nfe": nfe, "fd": fd, "fd_se": fd_se, "fd_ratio": ratio,
                     "fd_ratio_se": ratio * math.hypot(fd_se / fd, floor_rel_se), "fd_bootstrap": boot, "seconds": round(sec, 1)})
    return {"n": n, "floor": floor, "floor_sd": floor_sd, "floor_sets": floor_sets, "floor_seed": seed, "floor_values": floor_values,
            "n_bootstrap": n_bootstrap, "threads": torch.get_num_threads(), "device": str(device), "rows": rows}


@torch.no_grad()
def evaluate_vae(model: VAE, images: torch.Tensor, seed: int = 0, batch_size: int = 1000) -> ELBOTerms:
    """One-sample ELBO estimates of a :class:`~ddpm_lib.vae.VAE` for uint8 ``images`` ``(N, 28, 28)``.

    Sets the model (which must be on the CPU) to eval mode and runs it in batches of ``batch_size``; one
    ``z = mean + sigma * eps`` per image (:func:`ddpm_lib.vae.elbo_terms`). The noise comes from
    ``torch.Generator().manual_seed(seed)``, so the result is reproducible.

    Returns:
        :class:`~ddpm_lib.vae.ELBOTerms` of ``(N,)`` tensors in nats per image.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, images.shape[0], batch_size):
        x = to_model(images[start : start + batch_size])
        eps = torch.randn((x.shape[0], model.config.latent_dim), generator=gen)
        parts.append(elbo_terms(model, x, eps))
    return ELBOTerms(*(torch.cat([getattr(p, f) for p in parts]) for f in ELBOTerms._fields))
