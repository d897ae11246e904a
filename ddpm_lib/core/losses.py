"""Training losses: :math:`L_\\text{simple}` and the variational-bound (VLB) weighting.

Book chapter "From KL to mean squared error" (``notebooks/kl_to_mse.ipynb``; the bound is book
eq. ``vlb-terms``). For ``t >= 2`` the ELBO term
:math:`L_{t-1} = D_\\mathrm{KL}(q(x_{t-1}\\mid x_t, x_0)\\,\\|\\,p_\\theta(x_{t-1}\\mid x_t))` with
:math:`p_\\theta` of variance :math:`\\sigma_t^2 = \\tilde\\beta_t` equals
:math:`\\|\\tilde\\mu_t - \\mu_\\theta\\|^2 / (2\\tilde\\beta_t)` (book eq. ``kl-to-mse``; Ho et al.
2020, eq. 8), which for an ``x0`` prediction is
:math:`\\tfrac12(\\mathrm{SNR}(t-1) - \\mathrm{SNR}(t))\\,\\|x_0 - \\hat x_0\\|^2`
(book eq. ``snr-weight``; Kingma et al. 2021, eq. 13).
"""

from __future__ import annotations

import torch

from .forward import q_sample
from .likelihood import bits_per_dim, vlb_term
from .targets import get_target, target_from_x0_eps
from .posterior import posterior_mean_coefs
from .schedules import Schedule, gather64
from .variance import learned_log_variance, split_output

__all__ = ["simple_loss", "vlb_weight", "vlb_loss", "hybrid_loss", "HYBRID_LAMBDA", "LOSSES"]

HYBRID_LAMBDA = 1e-3
"""The weight :math:`\\lambda` of :math:`L_\\text{vlb}` in the hybrid loss (Nichol & Dhariwal 2021, §3.1)."""


def simple_loss(
    output: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule, target: str = "eps",
    importance_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """:math:`L_\\text{simple}`: the mean squared error between the output and its target.

    Ho et al. (2020), eq. 14, for ``target="eps"``; the same unweighted MSE for ``"x0"`` or ``"v"``.
    Book eq. ``l-simple``.

    Args:
        output: the network's output, shape ``(B, ...)``.
        x0, eps: the clean data and the noise that made ``xt``, same shape.
        t: integer timesteps, shape ``(B,)``, in ``1..T``.
        target: a name in :data:`~ddpm_lib.core.targets.TARGETS` (``"eps"``, ``"x0"``, ``"v"``, ``"score"``).
        importance_weight: ``None`` or one importance weight per example, shape ``(B,)``
            (:func:`~ddpm_lib.core.timesteps.oversample_first_step`).

    Returns:
        A 0-d tensor: the mean over the batch and all dimensions (with ``importance_weight``: each example's mean times
        its weight, then the mean over the batch).

    Raises:
        ValueError: for an unknown target or mismatched shapes.
    """
    if output.shape != x0.shape:
        raise ValueError(f"simple_loss: output {tuple(output.shape)} must have x0's shape {tuple(x0.shape)}.")
    sq = (output - target_from_x0_eps(x0, eps, t, schedule, target)) ** 2
    # without weights, one mean over everything, as before: a mean of per-example means adds in another order, and
    # the runs written before importance sampling existed must resume and reproduce bit for bit
    if importance_weight is None:
        return torch.mean(sq)
    return _weighted_mean(sq.reshape(sq.shape[0], -1).mean(dim=1), importance_weight)


def _weighted_mean(per_example: torch.Tensor, importance_weight: torch.Tensor | None) -> torch.Tensor:
    # the batch mean of per-example values, each times its importance weight (B,) if one is given
    if importance_weight is None:
        return per_example.mean()
    if importance_weight.shape != per_example.shape:
        raise ValueError(f"importance_weight must hold one value per example, shape {tuple(per_example.shape)}, "
                         f"got {tuple(importance_weight.shape)}.")
    return (per_example * importance_weight.to(per_example)).mean()


def vlb_weight(t: torch.Tensor, schedule: Schedule, target: str, like: torch.Tensor) -> torch.Tensor:
    """The weight :math:`w_t` that makes :math:`w_t\\,\\|\\text{output} - \\text{target}\\|^2` the ELBO term.

    For ``t >= 2``, :math:`w_t \\|\\cdot\\|^2 = L_{t-1}` in nats with :math:`\\sigma_t^2 = \\tilde\\beta_t`
    (book eq. ``kl-to-mse``): :math:`w^{x_0}_t = c_{x_0}^2 / (2\\tilde\\beta_t)
    = \\tfrac12(\\mathrm{SNR}(t-1) - \\mathrm{SNR}(t))`,
    :math:`w^{\\epsilon}_t = w^{x_0}_t / \\mathrm{SNR}(t)` (book eq. ``eps-weight``; Ho et al. 2020, eq. 12) and
    :math:`w^{v}_t = w^{x_0}_t (1 - \\bar\\alpha_t)` and, for the score, :math:`w^{\\epsilon}_t (1 - \\bar\\alpha_t)`
    (book eq. ``score-weight``): each target's ``vlb_from_x0_weight`` in :data:`~ddpm_lib.core.targets.TARGETS`.
    At ``t = 1`` (where :math:`\\tilde\\beta_1 = 0`) the decoder variance :math:`\\beta_1` is used
    instead, which gives the Gaussian decoder's squared-error weight :math:`1/(2\\beta_1)` for ``x0``.

    Returns:
        A float tensor of shape ``(B, 1, ..., 1)`` broadcasting against ``like``, in nats per unit
        squared error.

    Raises:
        ValueError: for an unknown target or ``t = 0``.
    """
    # formed in float64 (on the CPU, like the schedule) and cast to like's dtype and device at the end
    like64 = torch.empty((1,) * like.ndim, dtype=torch.float64)
    c_x0, _ = posterior_mean_coefs(t, schedule, like64)
    sigma2 = schedule.posterior_variance.clone()
    sigma2[1] = schedule.beta[1]  # the decoder's variance at t = 1, where posterior_variance is 0
    var = gather64(sigma2, t, like)
    w_x0 = c_x0**2 / (2.0 * var)
    ab = gather64(schedule.alpha_bar, t, like)
    return get_target(target).vlb_from_x0_weight(w_x0, ab).to(like)


def vlb_loss(
    output: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule, target: str = "eps",
    importance_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The VLB-weighted squared error, summed over pixels and averaged over the batch (nats per image).

    An unbiased estimate of :math:`\\sum_{t=1}^T L_{t-1} / T` up to the constant decoder terms when
    ``t`` is uniform on ``1..T``, or drawn from another proposal with ``importance_weight`` its importance weights
    (:func:`~ddpm_lib.core.timesteps.oversample_first_step`); multiply by ``T`` for the sum. Book eq. ``kl-to-mse``.

    Args:
        output, x0, eps, t, target: as for :func:`simple_loss`.
        importance_weight: ``None`` or one weight per example, shape ``(B,)``.

    Returns:
        A 0-d tensor in nats per example.

    Raises:
        ValueError: for an unknown target or mismatched shapes.
    """
    if output.shape != x0.shape:
        raise ValueError(f"vlb_loss: output {tuple(output.shape)} must have x0's shape {tuple(x0.shape)}.")
    sq = (output - target_from_x0_eps(x0, eps, t, schedule, target)) ** 2
    w = vlb_weight(t, schedule, target, output)
    return _weighted_mean((w * sq).reshape(sq.shape[0], -1).sum(dim=1), importance_weight)


def hybrid_loss(
    output: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule, target: str = "eps",
    importance_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """:math:`L_\\text{hybrid} = L_\\text{simple} + \\lambda L_\\text{vlb}` for a network with learned variances.

    Nichol & Dhariwal (2021), §3.1, eq. 16, with :math:`\\lambda` = :data:`HYBRID_LAMBDA`; book eq. ``hybrid-loss``.
    ``output`` holds ``2C`` channels (:func:`~ddpm_lib.core.variance.split_output`): the prediction of
    ``target``, trained by :func:`simple_loss`, and ``v``, trained by the bound's term at the drawn ``t``
    alone: :func:`~ddpm_lib.core.likelihood.denoising_kl` for ``t >= 2`` and the decoder's
    :func:`~ddpm_lib.core.likelihood.decoder_nll` at ``t = 1``, with the variance
    :func:`~ddpm_lib.core.variance.learned_log_variance` and the mean from the prediction held fixed
    (detached), so that :math:`L_\\text{vlb}` moves only the variance. As in their code, the term is in
    bits per dimension and is multiplied by :math:`\\lambda T`: with ``t`` uniform on ``1..T`` it is an
    unbiased estimate of :math:`\\lambda \\sum_t L_{t-1}` per dimension (the constant :math:`L_T` left out).
    Their :math:`\\lambda` was set beside an :math:`\\epsilon` MSE; with another target the MSE has another scale
    (for ``v``, :math:`\\|v - \\hat v\\|^2 = \\|\\epsilon - \\hat\\epsilon\\|^2 / \\bar\\alpha_t`), and the same
    :math:`\\lambda` weighs the bound differently against it. Unlike their code, which floors each bin's mass at
    ``1e-12``, the decoder term here is exact (:func:`~ddpm_lib.core.likelihood.decoder_nll`).

    Args:
        output: ``(B, 2C, ...)``; x0, eps: ``(B, C, ...)``, ``x0`` on the 8-bit pixel grid (the decoder term
            is defined only there); t: integers ``(B,)`` in ``1..T``.
        importance_weight: ``None`` (``t`` uniform) or the importance weights ``(B,)`` of a ``t`` drawn from another
            proposal (:func:`~ddpm_lib.core.timesteps.oversample_first_step`), applied to both terms, so that the
            estimate stays unbiased for the same objective.

    Returns:
        A 0-d tensor: mean squared error per dimension plus :math:`\\lambda T` times bits per dimension.

    Raises:
        ValueError: if ``output`` does not have ``2C`` channels, for an unknown target, or for an ``x0`` off the
            pixel grid (checked for every batch, whatever ``t`` was drawn).
    """
    prediction, v = split_output(output, x0.shape[1])
    if v is None:
        raise ValueError(f"hybrid_loss needs a network with learned variances: 2 x {x0.shape[1]} output channels, "
                         f"got {output.shape[1]}. Set UNetConfig(learn_variance=True).")
    mse = simple_loss(prediction, x0, eps, t, schedule, target, importance_weight)
    xt = q_sample(x0, t, eps, schedule)
    x0_hat = get_target(target).to_x0_eps(prediction.detach(), xt, t, schedule)[0]
    nats = vlb_term(x0, xt, t, x0_hat, schedule, learned_log_variance(v, t, schedule))
    return mse + HYBRID_LAMBDA * schedule.T * _weighted_mean(bits_per_dim(nats, x0[0].numel()), importance_weight)


LOSSES = {"simple": simple_loss, "vlb": vlb_loss, "hybrid": hybrid_loss}
"""The training losses by name (``TrainConfig.loss``, :func:`ddpm_lib.training.train_toy`): each is
``loss(output, x0, eps, t, schedule, target, importance_weight=None) -> 0-d tensor``, ``importance_weight`` the importance weights of
a non-uniform ``t`` (:mod:`ddpm_lib.core.timesteps`)."""
