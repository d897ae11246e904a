"""The negative ELBO of a DDPM on images, in bits/dim, term by term (chapter "Training a DDPM on MNIST").

Glue over the core math of :mod:`ddpm_lib.core.likelihood`: it loops over the images in batches and
draws the timesteps and the noise.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import LoadedModel
from ..devices import eval_mode, model_device
from ..core.forward import q_sample
from ..core.likelihood import bits_per_dim, prior_kl, vlb_term
from ..core.schedules import Schedule
from ..data import check_images, to_model
from ..core.targets import get_target
from ..core.variance import learned_log_variance, split_output

__all__ = ["elbo_strata", "elbo_bits_per_dim", "with_fixed_variances"]


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
    progress: bool = True,
    n_strata: int | None = None,
) -> dict:
    """The negative ELBO of ``images`` under a DDPM, in bits/dim, with every term of the bound.

    Terms: :func:`~ddpm_lib.core.likelihood.prior_kl` (``L_T``), :func:`~ddpm_lib.core.likelihood.denoising_kl`
    (``L_{t-1}``, ``t >= 2``) and :func:`~ddpm_lib.core.likelihood.decoder_nll` (``L_0``), with the
    network's unclipped ``x0_hat`` and, for a network with learned variances, its variances
    (:func:`~ddpm_lib.core.variance.learned_log_variance`; otherwise :math:`\\tilde\\beta_t`, and :math:`\\beta_1`
    for the decoder); one network call and one draw of ``x_t`` per evaluated term.
    ``L_T`` and ``L_0`` are always evaluated. The sum over ``t = 2..T`` is taken over the groups of
    :func:`elbo_strata`: per image, one ``t`` drawn uniformly from each group, its term weighted by
    the group's size (stratified sampling, an unbiased estimate of the sum; book eq.
    ``elbo-stratified``). With ``n_strata=None``
    every group is one timestep, so every term is evaluated and the sum is exact given the ``x_t``
    draws. Either way the reported standard error is across images, so it includes the sampling of
    ``t``. The ``t`` draws use their own generator (seeded ``seed + 1``), so ``n_strata=None`` draws
    the same ``x_t`` as evaluating ``t = 1, 2, ..., T`` in turn.

    Args:
        loaded: from :func:`ddpm_lib.checkpoint.load_model`; the network runs where it is (this
            function never moves the caller's model).
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
    model, schedule = loaded.model, loaded.schedule
    device = model_device(model)
    strata = elbo_strata(schedule, n_strata)
    to_x0_eps = get_target(loaded.target).to_x0_eps
    T, D = schedule.T, images[0].numel()
    gen, t_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    per_image, prior_sum = [], 0.0
    by_t, count_t = torch.zeros(T + 1, dtype=torch.float64), torch.zeros(T + 1, dtype=torch.long)
    bar = tqdm(total=images.shape[0] * (len(strata) + 1), disable=not progress, desc="elbo", unit="image-term")
    with eval_mode(model):  # dropout off inside; the caller's network keeps its mode
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
                # one network call: the prediction gives x0_hat; learned variances, if the network has them, give sigma_t^2
                prediction, v = split_output(model(xt, t_dev), xt.shape[1])
                x0_hat = to_x0_eps(prediction, xt, t_dev, schedule)[0]
                log_var = None if v is None else learned_log_variance(v, t_dev, schedule)
                term = vlb_term(x0, xt, t_dev, x0_hat, schedule, log_var)
                term = term.double().cpu()
                by_t.index_add_(0, t, term)
                count_t.index_add_(0, t, torch.ones_like(t))
                total += len(group) * term
                bar.update(B)
            per_image.append(total)
    bar.close()
    nats = torch.cat(per_image)
    n = nats.numel()
    to_bpd = float(bits_per_dim(1.0, D))  # bits/dim of one nat per image, 1 / (D ln 2); the terms are multiplied by it
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


class _PredictionOnly(nn.Module):
    # a network with learned variances, seen without them: its output's first C channels
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, xt: torch.Tensor, t: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        return split_output(self.net(xt, t, *labels), xt.shape[1])[0]


def with_fixed_variances(loaded: LoadedModel) -> LoadedModel:
    """The same model with its learned variances set aside: :func:`elbo_bits_per_dim` then uses the fixed ones.

    For a network with learned variances (Nichol & Dhariwal 2021) this isolates what the variances buy:
    the same means, with :math:`\\tilde\\beta_t` for ``t >= 2`` and :math:`\\beta_1` for the decoder. A network
    without learned variances is unchanged by it. The returned model shares ``loaded``'s network (nothing is copied);
    it is a wrapper for the ELBO and other callers of ``model(xt, t)``, without the network's ``config``.

    Returns:
        A new :class:`~ddpm_lib.checkpoint.LoadedModel` whose ``model`` returns the prediction's channels only.
    """
    return replace(loaded, model=_PredictionOnly(loaded.model))

