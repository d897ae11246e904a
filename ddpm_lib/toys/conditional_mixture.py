"""A class-conditional toy with exact answers: one isotropic Gaussian mixture per class, in ``d`` dimensions.

The data are :math:`p(x, y) = \\pi_y\\,p(x \\mid y)` with each :math:`p(x \\mid y)` a
:class:`~ddpm_lib.toys.mixture.GaussianMixture`. The forward process does not see the label, so each class is
noised on its own, :math:`p_t(x \\mid y)` is again a mixture (:meth:`GaussianMixture.noised`), and so are the
marginal :math:`p_t(x) = \\sum_y \\pi_y p_t(x \\mid y)` and the class posterior
:math:`p_t(y \\mid x) = \\pi_y p_t(x \\mid y) / p_t(x)`. With a class made of more than one component,
:math:`p_t(y \\mid x)` is not a logistic function of ``x``, and guidance has something to do.

Every quantity of the book chapter "Guidance, exact on a toy" is closed-form at every noise level: the scores,
Bayes' rule for scores (book eq. ``bayes-score``), the guided score of classifier guidance (book eq.
``classifier-guidance``; Dhariwal & Nichol 2021, §4), the denoisers :math:`\\mathbb E[x_0 \\mid x_t]` and
:math:`\\mathbb E[x_0 \\mid x_t, y]`, and exact draws of the tilted distribution
:math:`p(x)\\,p(y \\mid x)^\\gamma / Z_\\gamma` (book eq. ``tilted``). The noised tilted density, which is not
closed-form, is computed by quadrature (:meth:`ConditionalGaussianMixture.noised_tilted_log_prob`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.schedules import Schedule
from .mixture import GaussianMixture

__all__ = ["ConditionalGaussianMixture"]

F64 = torch.float64


def _labels(y: int | torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """``y`` as an int64 ``(n,)`` tensor of labels in ``0..num_classes-1``."""
    labels = torch.as_tensor(y, dtype=torch.long)
    if labels.ndim == 0:
        labels = labels.expand(n)
    if labels.shape != (n,):
        raise ValueError(f"labels of shape {tuple(labels.shape)} for {n} points: pass one int or one label per row.")
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(f"a label is outside 0..{num_classes - 1}.")
    return labels


def _uniform_t(t: int | torch.Tensor) -> int:
    """The one timestep of a batch (samplers call with ``t`` of shape ``(B,)``, all equal)."""
    tt = torch.as_tensor(t).reshape(-1)
    if tt.numel() == 0 or bool((tt != tt[0]).any()):
        raise ValueError("the toy's exact functions take one timestep per call; got a batch of different timesteps.")
    return int(tt[0])


@dataclass(frozen=True)
class ConditionalGaussianMixture:
    """:math:`p(x, y) = \\pi_y\\,p(x \\mid y)`, each class :math:`p(x \\mid y)` a :class:`GaussianMixture`.

    Attributes:
        classes: a tuple of ``C >= 2`` :class:`GaussianMixture`, all of the same dimension ``d``.
        priors: ``(C,)`` float64, positive, summing to 1 (to ``1e-9``): :math:`\\pi_y = p(y)`.

    Points ``x`` are ``(n, d)`` of any float dtype and are computed with in float64; every result is
    float64. Labels ``y`` are an int (the same class for every row) or an int64 ``(n,)`` tensor.

    Raises:
        ValueError: for fewer than two classes, classes of different dimensions, or priors of the wrong
            shape, not positive or not summing to 1.
    """

    classes: tuple[GaussianMixture, ...]
    priors: torch.Tensor

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        priors = torch.as_tensor(self.priors, dtype=F64)
        if len(classes) < 2 or not all(isinstance(c, GaussianMixture) for c in classes):
            raise ValueError("ConditionalGaussianMixture needs a tuple of at least two GaussianMixture classes.")
        if len({c.dim for c in classes}) != 1:
            raise ValueError(f"the classes have different dimensions {[c.dim for c in classes]}.")
        if priors.shape != (len(classes),) or bool((priors <= 0).any()) or abs(float(priors.sum()) - 1) > 1e-9:
            raise ValueError(f"priors must be {len(classes)} positive numbers summing to 1, got {priors.tolist()}.")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "priors", priors)

    # --- structure -------------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def dim(self) -> int:
        return self.classes[0].dim

    def marginal(self) -> GaussianMixture:
        """:math:`p(x) = \\sum_y \\pi_y p(x \\mid y)` as one :class:`GaussianMixture` (all classes' components, weights :math:`\\pi_y w_{yk}`)."""
        return GaussianMixture(torch.cat([p * c.weights for p, c in zip(self.priors, self.classes)]),
                               torch.cat([c.means for c in self.classes]), torch.cat([c.stds for c in self.classes]))

    def noised(self, t: int, schedule: Schedule) -> "ConditionalGaussianMixture":
        """The forward process's marginals at step ``t`` (``0..T``): each class noised on its own, the priors unchanged.

        :math:`q(x_t \\mid x_0)` does not depend on ``y``, so :math:`p_t(x \\mid y) = \\int p(x_0 \\mid y)\\,q(x_t \\mid x_0)\\,dx_0`
        is the class's mixture noised (:meth:`GaussianMixture.noised`), and :math:`p_t(y) = \\pi_y`.
        """
        return ConditionalGaussianMixture(tuple(c.noised(t, schedule) for c in self.classes), self.priors)

    # --- densities and scores --------------------------------------------------------------------------------------

    def class_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x \\mid y)` for every class, float64 ``(n, C)``, in nats."""
        return torch.stack([c.log_prob(x) for c in self.classes], dim=1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x) = \\log\\sum_y \\pi_y p(x \\mid y)`, float64 ``(n,)``, in nats."""
        return torch.logsumexp(self.class_log_probs(x) + self.priors.log(), dim=1)

    def class_log_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(y \\mid x) = \\log\\pi_y + \\log p(x \\mid y) - \\log p(x)` for every class (Bayes' rule), float64 ``(n, C)``.

        Each row's exponentials sum to 1 (to round-off).
        """
        joint = self.class_log_probs(x) + self.priors.log()
        return joint - torch.logsumexp(joint, dim=1, keepdim=True)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla_x\\log p(x)`, float64 ``(n, d)``, in units of 1 / ``x``."""
        return self.marginal().score(x)

    def class_score(self, x: torch.Tensor, y: int | torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla_x\\log p(x \\mid y)`, float64 ``(n, d)``; ``y`` an int or an int64 ``(n,)``.

        Raises:
            ValueError: for labels of the wrong shape or outside ``0..C-1``.
        """
        labels = _labels(y, x.shape[0], self.num_classes)
        every = torch.stack([c.score(x) for c in self.classes], dim=1)  # (n, C, d)
        return every[torch.arange(x.shape[0]), labels]

    def class_log_posterior_grad(self, x: torch.Tensor, y: int | torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla_x\\log p(y \\mid x) = \\nabla_x\\log p(x \\mid y) - \\nabla_x\\log p(x)` (book eq. ``bayes-score``), float64 ``(n, d)``.

        The classifier's gradient of classifier guidance (Dhariwal & Nichol 2021, §4), exact. It is
        the difference of two closed-form scores; the tests check it against autograd of
        :meth:`class_log_posterior` and against finite differences.

        Raises:
            ValueError: as :meth:`class_score`.
        """
        return self.class_score(x, y) - self.score(x)

    def guided_score(self, x: torch.Tensor, y: int | torch.Tensor, gamma: float) -> torch.Tensor:
        """:math:`\\nabla_x\\log p(x) + \\gamma\\,\\nabla_x\\log p(y \\mid x)` (book eq. ``classifier-guidance`` with ``s = gamma``), float64 ``(n, d)``.

        ``gamma = 0`` is the unconditional score, ``gamma = 1`` the conditional one (eq. ``bayes-score``);
        ``gamma`` is Dhariwal & Nichol's ``s`` on the unconditional model, ``w + 1`` in Ho & Salimans'
        convention. On the noised toy (:meth:`noised`) it is the guided score at that noise level, which
        is *not* the score of the noised tilted distribution for ``gamma`` other than 0 and 1
        (:meth:`noised_tilted_log_prob`; book eq. ``tilted-noised-score``).
        """
        return self.score(x) + gamma * self.class_log_posterior_grad(x, y)

    def posterior_mean_x0(self, xt: torch.Tensor, t: int, schedule: Schedule,
                          y: int | torch.Tensor | None = None) -> torch.Tensor:
        """The exact denoiser :math:`\\mathbb E[x_0 \\mid x_t]`, or :math:`\\mathbb E[x_0 \\mid x_t, y]` given ``y``; float64 ``(n, d)``.

        Computed component by component by conjugate Gaussian algebra
        (:meth:`GaussianMixture.posterior_mean_x0`), not from the score: Tweedie's formula (book eq.
        ``tweedie``) relating the two is what the chapter checks.

        Raises:
            ValueError: as :meth:`class_score`.
        """
        if y is None:
            return self.marginal().posterior_mean_x0(xt, t, schedule)
        labels = _labels(y, xt.shape[0], self.num_classes)
        every = torch.stack([c.posterior_mean_x0(xt, t, schedule) for c in self.classes], dim=1)
        return every[torch.arange(xt.shape[0]), labels]

    # --- time-dependent callables for the samplers and the guidance wrappers ---------------------------------------

    def score_fn(self, schedule: Schedule, y: int | torch.Tensor | None = None,
                 gamma: float | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``(xt, t) -> score`` of the noised toy: unconditional (``y=None``), conditional (``y``), or guided (``y`` and ``gamma``).

        ``t`` is an int64 ``(B,)`` of one timestep in ``1..T`` (as the samplers call), or an int. Wrap it
        with :func:`~ddpm_lib.sampling.denoisers.denoiser_from_score` for an exact denoiser.

        Raises:
            ValueError: if ``gamma`` is given without ``y``; (at the call) for a batch of different timesteps.
        """
        if gamma is not None and y is None:
            raise ValueError("a guided score needs the class y to guide towards.")

        def score(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            toy = self.noised(_uniform_t(t), schedule)
            if y is None:
                return toy.score(xt)
            if gamma is None:
                return toy.class_score(xt, y)
            return toy.guided_score(xt, y, gamma)

        return score

    def class_log_posterior_grad_fn(self, schedule: Schedule,
                                    y: int | torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``(xt, t) -> grad log p_t(y | xt)`` of the noised toy: the exact ``log_likelihood_grad`` of
        :func:`~ddpm_lib.sampling.guidance.classifier_guidance` (a noise-aware classifier, exact at every ``t``)."""

        def grad(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.noised(_uniform_t(t), schedule).class_log_posterior_grad(xt, y)

        return grad

    # --- sampling --------------------------------------------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` exact draws of :math:`(x, y)`: float64 ``(n, d)`` and int64 ``(n,)``."""
        labels = torch.multinomial(self.priors, n, replacement=True, generator=generator)
        x = torch.empty((n, self.dim), dtype=F64)
        for k, c in enumerate(self.classes):
            rows = labels == k
            if bool(rows.any()):
                x[rows] = c.sample(int(rows.sum()), generator)
        return x, labels

    def sample_class(self, n: int, y: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact draws of :math:`p(x \\mid y)`, float64 ``(n, d)``."""
        _labels(y, 1, self.num_classes)
        return self.classes[int(y)].sample(n, generator)

    def tilted_log_prob_unnormalized(self, x: torch.Tensor, y: int, gamma: float) -> torch.Tensor:
        """:math:`\\log p(x) + \\gamma\\log p(y \\mid x)`, float64 ``(n,)`` (book eq. ``tilted`` without its :math:`-\\log Z_\\gamma`)."""
        labels = _labels(y, x.shape[0], self.num_classes)
        return self.log_prob(x) + gamma * self.class_log_posterior(x)[torch.arange(x.shape[0]), labels]

    def sample_tilted(self, n: int, y: int, gamma: float, generator: torch.Generator | None = None,
                      max_proposals: int = 10_000_000) -> torch.Tensor:
        """``n`` exact draws of the tilted distribution :math:`p(x)\\,p(y \\mid x)^\\gamma / Z_\\gamma` (book eq. ``tilted``), float64 ``(n, d)``.

        By rejection: since :math:`p(x)\\,p(y \\mid x)^\\gamma = \\pi_y\\,p(x \\mid y)\\,p(y \\mid x)^{\\gamma - 1}`,
        propose from the class :math:`p(x \\mid y)` and accept with probability :math:`p(y \\mid x)^{\\gamma - 1} \\le 1`
        (von Neumann's rejection sampling; the proposal is exact, so the draws are). The acceptance rate is
        :math:`Z_\\gamma / \\pi_y`. ``gamma = 1`` is :math:`p(x \\mid y)` itself (every proposal accepted).

        Raises:
            ValueError: for ``gamma < 1`` or not finite (the acceptance probability would exceed 1; for
                :math:`0 \\le \\gamma < 1` propose from :math:`p(x)` and accept with :math:`p(y \\mid x)^\\gamma`
                instead), for a bad label, or if more than ``max_proposals`` proposals were needed.
        """
        if not math.isfinite(gamma) or gamma < 1:
            raise ValueError(f"sample_tilted: gamma = {gamma!r}; the proposal p(x | y) with acceptance p(y | x)^(gamma - 1) "
                             "needs gamma >= 1.")
        _labels(y, 1, self.num_classes)
        kept: list[torch.Tensor] = [torch.empty((0, self.dim), dtype=F64)]
        have, proposed, batch = 0, 0, max(n, 1024)
        while have < n:
            if proposed >= max_proposals:
                raise ValueError(f"sample_tilted: {have} of {n} draws after {proposed} proposals (acceptance too low).")
            x = self.sample_class(batch, y, generator)
            log_accept = (gamma - 1) * self.class_log_posterior(x)[:, int(y)]
            u = torch.rand(batch, generator=generator, dtype=F64)
            x = x[u.log() < log_accept]
            kept.append(x)
            have += x.shape[0]
            proposed += batch
        return torch.cat(kept)[:n]

    def noised_tilted_log_prob(self, xt: torch.Tensor, y: int, gamma: float, t: int, schedule: Schedule, *,
                               half_width: float = 4.0, n_grid: int = 401) -> torch.Tensor:
        """:math:`\\log q^\\gamma_t(x_t)`, the tilted distribution (book eq. ``tilted``) noised by the forward process, by quadrature; float64 ``(n,)``.

        :math:`q^\\gamma_t(x_t) = \\int p(x_0)\\,p(y \\mid x_0)^\\gamma\\,q(x_t \\mid x_0)\\,dx_0 / Z_\\gamma` on a square grid of
        ``n_grid`` points per axis on :math:`[-h, h]^d` (``h = half_width``) by the trapezoid rule, ``Z_gamma`` on the same
        grid. Differentiable in ``xt`` (autograd gives the score of eq. ``tilted-noised-score``). Only for ``d <= 2``
        (the grid has ``n_grid^d`` points). Accurate when the grid step is well below the kernel's standard deviation as a
        function of :math:`x_0`, :math:`\\sqrt{(1-\\bar\\alpha_t)/\\bar\\alpha_t}`, and below the components' standard
        deviations, and the data's mass lies inside the square; ``t = 0`` is refused (the kernel is a point mass).

        Raises:
            ValueError: for ``d > 2``, ``t`` outside ``1..T``, or a bad label.
        """
        if self.dim > 2:
            raise ValueError("noised_tilted_log_prob integrates on a grid, for d <= 2 only.")
        if not 1 <= t <= schedule.T:
            raise ValueError(f"t = {t} must lie in 1..T = 1..{schedule.T} (at t = 0 use tilted_log_prob_unnormalized).")
        axis = torch.linspace(-half_width, half_width, n_grid, dtype=F64)
        w_axis = torch.full((n_grid,), float(axis[1] - axis[0]), dtype=F64)
        w_axis[[0, -1]] /= 2
        if self.dim == 1:
            grid, weights = axis[:, None], w_axis
        else:
            g1, g2 = torch.meshgrid(axis, axis, indexing="ij")
            grid = torch.stack([g1.reshape(-1), g2.reshape(-1)], dim=1)
            weights = (w_axis[:, None] * w_axis[None, :]).reshape(-1)
        log_tilt = self.tilted_log_prob_unnormalized(grid, y, gamma) + weights.log()  # (m,)
        ab = schedule.alpha_bar[t].to(F64)
        var = 1 - ab
        x = xt.to(F64)
        sq = ((x[:, None, :] - ab.sqrt() * grid[None]) ** 2).sum(-1)  # (n, m)
        log_kernel = -sq / (2 * var) - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.logsumexp(log_tilt[None] + log_kernel, dim=1) - torch.logsumexp(log_tilt, dim=0)
