"""A 1-D variational diffusion model whose every ELBO term is closed-form (chapter "Hierarchical VAEs to the VDM").

Core math (torch only), float64 throughout so that the book's identities hold to round-off. The forward
chain :math:`q(x_t \\mid x_{t-1}) = \\mathcal N(\\sqrt{\\alpha_t}x_{t-1}, 1 - \\alpha_t)` of a
:class:`~ddpm_lib.core.schedules.Schedule` with small ``T``, and a reverse model whose every conditional is
a linear Gaussian, :math:`p_\\theta(x_{t-1} \\mid x_t) = \\mathcal N(a_t x_t + c_t, v_t)`,
:math:`p(x_T) = \\mathcal N(m_T, v_T)` (:class:`LinearGaussianReverse`). Given :math:`x_0` the trajectory
:math:`x_{1:T}` is jointly Gaussian, so every term of the ELBO, in the form with consistency terms (Luo
2022, eq. 45, corrected: book eq. ``vdm-elbo-consistency``) and in the form with denoising-matching terms
(Luo 2022, eq. 58; book eq. ``vdm-elbo-denoising``), is a closed-form Gaussian expectation.
:func:`vdm_elbo_estimates` gives the one-sample Monte Carlo estimators of each form, whose variances the
chapter compares. (The linear-Gaussian latent model of the chapter "The evidence lower bound" is
:class:`ddpm_lib.toys.LinearGaussianModel`; the two Gaussian facts both use are :mod:`ddpm_lib.core.gaussian`.)

Variances are always called ``var``; a standard deviation is never passed where a variance belongs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.distributions import Normal

from .forward import q_step_sample
from .gaussian import as_float64 as _f64
from .gaussian import check_variance as _check_var
from .gaussian import expected_gaussian_log_prob, gaussian_kl
from .posterior import posterior_mean_coefs
from .schedules import Schedule

__all__ = [
    "LinearGaussianReverse",
    "optimal_linear_reverse",
    "forward_trajectory_moments",
    "sample_forward_trajectory",
    "bridge_coefs",
    "bridge_mean_var",
    "conditional_mutual_information",
    "log_q_step",
    "log_q_marginal",
    "log_q_posterior",
    "VDMTerms",
    "vdm_elbo_exact",
    "vdm_log_evidence",
    "vdm_terms_denoising",
    "vdm_terms_consistency",
    "vdm_terms_consistency_as_printed",
    "vdm_elbo_estimates",
    "ESTIMATORS",
]


_F64 = torch.float64


# --- the 1-D variational diffusion model -------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LinearGaussianReverse:
    """A reverse model with linear-Gaussian conditionals, for 1-D data and a schedule with ``T`` steps.

    :math:`p(x_T) = \\mathcal N(m_T, v_T)` and, for :math:`t = 1, \\dots, T`,
    :math:`p_\\theta(x_{t-1} \\mid x_t) = \\mathcal N(a_t x_t + c_t, v_t)` (book eq. ``vdm-reverse-model``);
    :math:`t = 1` is the decoder :math:`p_\\theta(x_0 \\mid x_1)`.

    Attributes:
        coef, shift, var: :math:`a_t, c_t, v_t`, float64 tensors of shape ``(T + 1,)`` indexed by
            ``t`` (entry 0 unused); ``var`` holds **variances**.
        prior_mean, prior_var: :math:`m_T, v_T` (default :math:`\\mathcal N(0, 1)`).

    Raises:
        ValueError: for mismatched lengths or non-positive variances.
    """

    coef: torch.Tensor
    shift: torch.Tensor
    var: torch.Tensor
    prior_mean: float = 0.0
    prior_var: float = 1.0

    def __post_init__(self) -> None:
        a, c, v = (_f64(x).reshape(-1) for x in (self.coef, self.shift, self.var))
        if not (a.shape == c.shape == v.shape) or a.numel() < 2:
            raise ValueError(f"LinearGaussianReverse: coef, shift and var must all have length T + 1 >= 2, got {a.numel()}, {c.numel()}, {v.numel()}.")
        _check_var("LinearGaussianReverse.var[1:]", v[1:])
        if not float(self.prior_var) > 0:
            raise ValueError(f"LinearGaussianReverse.prior_var must be a positive variance, got {self.prior_var}.")
        for name, x in (("coef", a), ("shift", c), ("var", v)):
            object.__setattr__(self, name, x)
        object.__setattr__(self, "prior_mean", float(self.prior_mean))
        object.__setattr__(self, "prior_var", float(self.prior_var))

    @property
    def T(self) -> int:
        return self.coef.numel() - 1

    def log_prob(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """:math:`\\log p_\\theta(x_{t-1} \\mid x_t)` in nats, elementwise."""
        if not 1 <= t <= self.T:
            raise ValueError(f"t must be in 1..{self.T}, got {t}.")
        return Normal(self.coef[t] * _f64(x_t) + self.shift[t], self.var[t].sqrt()).log_prob(_f64(x_prev))

    def log_prior(self, x_T: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x_T)` in nats, elementwise."""
        return Normal(self.prior_mean, math.sqrt(self.prior_var)).log_prob(_f64(x_T))


def _check_schedule(schedule: Schedule, reverse: LinearGaussianReverse | None = None) -> None:
    if reverse is not None and reverse.T != schedule.T:
        raise ValueError(f"the reverse model has T = {reverse.T} steps but the schedule has T = {schedule.T}.")


def optimal_linear_reverse(schedule: Schedule, data_mean: float, data_var: float) -> LinearGaussianReverse:
    """The true reverse conditionals :math:`q(x_{t-1} \\mid x_t)` of the forward chain for data :math:`\\mathcal N(\\mu_0, s_0^2)`.

    With :math:`V_t = \\bar\\alpha_t s_0^2 + 1 - \\bar\\alpha_t` and :math:`\\mu_t = \\sqrt{\\bar\\alpha_t}\\mu_0`
    (the marginal of :math:`x_t`), Gaussian conditioning gives
    :math:`a_t = \\sqrt{\\alpha_t} V_{t-1}/V_t`, :math:`c_t = \\mu_{t-1} - a_t \\mu_t`,
    :math:`v_t = V_{t-1} - \\alpha_t V_{t-1}^2 / V_t` (book eq. ``vdm-optimal-reverse``). The prior is
    :math:`\\mathcal N(0, 1)`, so the model is exact but for :math:`q(x_T) \\ne \\mathcal N(0, 1)`.

    Raises:
        ValueError: if ``data_var`` is not positive.
    """
    if not data_var > 0:
        raise ValueError(f"data_var is a variance and must be > 0, got {data_var}.")
    ab = schedule.alpha_bar
    marg_var = ab * data_var + 1 - ab
    marg_mean = ab.sqrt() * data_mean
    alpha = schedule.alpha
    a = torch.zeros_like(ab)
    c = torch.zeros_like(ab)
    v = torch.ones_like(ab)
    a[1:] = alpha[1:].sqrt() * marg_var[:-1] / marg_var[1:]
    c[1:] = marg_mean[:-1] - a[1:] * marg_mean[1:]
    v[1:] = marg_var[:-1] - alpha[1:] * marg_var[:-1] ** 2 / marg_var[1:]
    return LinearGaussianReverse(a, c, v)


def forward_trajectory_moments(x0: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of :math:`(x_0, x_1, \\dots, x_T)` under :math:`q(x_{1:T} \\mid x_0)`, for 1-D ``x0``.

    :math:`\\mathbb E[x_t] = \\sqrt{\\bar\\alpha_t}x_0` and, for :math:`s \\le t`,
    :math:`\\operatorname{Cov}(x_s, x_t) = \\sqrt{\\bar\\alpha_t/\\bar\\alpha_s}\\,(1 - \\bar\\alpha_s)` (book eq.
    ``vdm-trajectory-cov``; row and column 0 are zero since :math:`x_0` is given).

    Args:
        x0: shape ``(B,)``.

    Returns:
        ``(mean, cov)`` of shapes ``(B, T + 1)`` and ``(T + 1, T + 1)``, float64.
    """
    x0 = _f64(x0).reshape(-1)
    ab = schedule.alpha_bar
    mean = ab.sqrt()[None, :] * x0[:, None]
    s = torch.arange(schedule.T + 1)
    lo, hi = torch.minimum(s[:, None], s[None, :]), torch.maximum(s[:, None], s[None, :])
    cov = (ab[hi] / ab[lo]).sqrt() * (1 - ab[lo])
    return mean, cov


def sample_forward_trajectory(x0: torch.Tensor, schedule: Schedule, eps: torch.Tensor) -> torch.Tensor:
    """Run the forward chain one step at a time (``ddpm_lib.q_step_sample``): :math:`x_t = \\sqrt{\\alpha_t}x_{t-1} + \\sqrt{1-\\alpha_t}\\,\\epsilon_t`.

    Args:
        x0: ``(B,)``.
        eps: standard normal noise ``(B, T)``; column ``t - 1`` drives step ``t``.

    Returns:
        ``(B, T + 1)`` float64: column ``t`` is :math:`x_t` (column 0 is ``x0``).

    Raises:
        ValueError: if ``eps`` does not have shape ``(B, T)``.
    """
    x0 = _f64(x0).reshape(-1)
    eps = _f64(eps)
    if eps.shape != (x0.shape[0], schedule.T):
        raise ValueError(f"eps must have shape (B, T) = ({x0.shape[0]}, {schedule.T}), got {tuple(eps.shape)}.")
    xs = [x0]
    for t in range(1, schedule.T + 1):
        xs.append(q_step_sample(xs[-1], torch.full((x0.shape[0],), t), eps[:, t - 1], schedule))
    return torch.stack(xs, dim=1)


def log_q_step(x_t: torch.Tensor, x_prev: torch.Tensor, t: int, schedule: Schedule) -> torch.Tensor:
    """:math:`\\log q(x_t \\mid x_{t-1}) = \\log\\mathcal N(x_t; \\sqrt{\\alpha_t}x_{t-1}, 1 - \\alpha_t)` in nats (book eq. ``forward-kernel``)."""
    a = schedule.alpha[t]
    return Normal(a.sqrt() * _f64(x_prev), (1 - a).sqrt()).log_prob(_f64(x_t))


def log_q_marginal(x_t: torch.Tensor, x0: torch.Tensor, t: int, schedule: Schedule) -> torch.Tensor:
    """:math:`\\log q(x_t \\mid x_0) = \\log\\mathcal N(x_t; \\sqrt{\\bar\\alpha_t}x_0, 1 - \\bar\\alpha_t)` in nats, ``t >= 1`` (book eq. ``q-xt-x0``)."""
    if t < 1:
        raise ValueError("log_q_marginal needs t >= 1 (q(x_0 | x_0) is a point mass).")
    ab = schedule.alpha_bar[t]
    return Normal(ab.sqrt() * _f64(x0), (1 - ab).sqrt()).log_prob(_f64(x_t))


def log_q_posterior(x_prev: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, t: int, schedule: Schedule) -> torch.Tensor:
    """:math:`\\log q(x_{t-1} \\mid x_t, x_0)` in nats, for ``t >= 2`` (Ho et al. 2020, eqs. 6-7; book eq. ``vdm-bayes``)."""
    if t < 2:
        raise ValueError("log_q_posterior needs t >= 2 (at t = 1 the posterior is the point mass at x_0).")
    x_t = _f64(x_t)
    c_x0, c_xt = posterior_mean_coefs(torch.tensor([t]), schedule, x_t.reshape(-1))
    mean = c_x0 * _f64(x0) + c_xt * x_t
    return Normal(mean, schedule.posterior_variance[t].sqrt()).log_prob(_f64(x_prev))


def bridge_coefs(t: int, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bridge :math:`q(x_t \\mid x_{t-1}, x_{t+1}) = \\mathcal N(c_- x_{t-1} + c_+ x_{t+1}, v)`, for ``1 <= t <= T - 1``.

    Bayes' rule on two steps (book eq. ``vdm-bridge``): precision :math:`1/v = 1/\\beta_t + \\alpha_{t+1}/\\beta_{t+1}`,
    :math:`c_- = v\\sqrt{\\alpha_t}/\\beta_t`, :math:`c_+ = v\\sqrt{\\alpha_{t+1}}/\\beta_{t+1}`.

    Returns:
        ``(c_prev, c_next, var)``, float64 0-d tensors; ``var`` is a variance.

    Raises:
        ValueError: if ``t`` is not in ``1..T-1``.
    """
    if not 1 <= t <= schedule.T - 1:
        raise ValueError(f"the bridge q(x_t | x_(t-1), x_(t+1)) needs 1 <= t <= T - 1 = {schedule.T - 1}, got {t}.")
    b0, b1 = schedule.beta[t], schedule.beta[t + 1]
    a0, a1 = schedule.alpha[t], schedule.alpha[t + 1]
    var = 1.0 / (1.0 / b0 + a1 / b1)
    return var * a0.sqrt() / b0, var * a1.sqrt() / b1, var


def bridge_mean_var(x_prev: torch.Tensor, x_next: torch.Tensor, t: int, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and variance of the bridge :math:`q(x_t \\mid x_{t-1}, x_{t+1})` at given neighbours (:func:`bridge_coefs`).

    Returns:
        ``(mean, var)``: ``mean`` broadcast from the inputs, ``var`` a 0-d tensor (a variance).

    Raises:
        ValueError: if ``t`` is not in ``1..T-1``.
    """
    c_prev, c_next, var = bridge_coefs(t, schedule)
    return c_prev * _f64(x_prev) + c_next * _f64(x_next), var


def conditional_mutual_information(t: int, schedule: Schedule) -> torch.Tensor:
    """:math:`I_q(x_t; x_{t+1} \\mid x_{t-1}) = \\tfrac12\\log\\big((\\alpha_{t+1}\\beta_t + \\beta_{t+1})/\\beta_{t+1}\\big)` in nats.

    The parameter-free constant that the consistency form of the ELBO needs once its KL compares
    the bridge :math:`q(x_t \\mid x_{t-1}, x_{t+1})` with :math:`p_\\theta(x_t \\mid x_{t+1})` (book eq.
    ``vdm-elbo-consistency``). It is the expectation of
    :math:`\\log q(x_{t+1} \\mid x_t) - \\log q(x_{t+1} \\mid x_{t-1})`.

    Raises:
        ValueError: if ``t`` is not in ``1..T-1``.
    """
    if not 1 <= t <= schedule.T - 1:
        raise ValueError(f"conditional_mutual_information needs 1 <= t <= T - 1 = {schedule.T - 1}, got {t}.")
    b0, b1, a1 = schedule.beta[t], schedule.beta[t + 1], schedule.alpha[t + 1]
    return 0.5 * torch.log((a1 * b0 + b1) / b1)


class VDMTerms(NamedTuple):
    """An ELBO split into its terms, all in nats; ``elbo`` = ``reconstruction - prior_matching - matching.sum(-1) + constant``.

    Attributes:
        reconstruction: :math:`\\mathbb E[\\log p_\\theta(x_0 \\mid x_1)]`, shape ``(B,)``.
        prior_matching: the prior-matching KL (expected over the variable it is conditioned on), ``(B,)``.
        matching: the consistency or denoising-matching KLs, ``(B, T - 1)``: column ``j`` is the term
            of ``t = j + 1`` (consistency) or ``t = j + 2`` (denoising).
        constant: the parameter-free constant (the conditional mutual informations of the corrected
            consistency form; 0 otherwise), ``(B,)``.
    """

    reconstruction: torch.Tensor
    prior_matching: torch.Tensor
    matching: torch.Tensor
    constant: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        return self.reconstruction - self.prior_matching - self.matching.sum(-1) + self.constant


def _resid(mean: torch.Tensor, cov: torch.Tensor, weights: dict[int, float | torch.Tensor], const) -> tuple[torch.Tensor, torch.Tensor]:
    # mean and variance of sum_i w_i x_i - const for the trajectory moments (mean (B, T+1), cov (T+1, T+1))
    m = -_f64(const) + sum(w * mean[:, i] for i, w in weights.items())
    v = sum(wi * wj * cov[i, j] for i, wi in weights.items() for j, wj in weights.items())
    return m, _f64(v)


def vdm_elbo_exact(x0: torch.Tensor, schedule: Schedule, reverse: LinearGaussianReverse) -> torch.Tensor:
    """The ELBO by its definition, :math:`\\mathbb E_{q(x_{1:T} \\mid x_0)}[\\log p_\\theta(x_{0:T}) - \\log q(x_{1:T} \\mid x_0)]`, exactly.

    Book eq. ``vdm-elbo-def`` (Luo 2022, eq. 37). Each of the :math:`2T + 1` log-densities is a
    Gaussian in a linear function of the jointly Gaussian trajectory, integrated with
    :func:`expected_gaussian_log_prob` and :func:`forward_trajectory_moments` (no decomposition
    into KL terms is used).

    Args:
        x0: data, shape ``(B,)``.

    Returns:
        ``(B,)`` in nats.

    Raises:
        ValueError: if ``reverse`` and ``schedule`` have different ``T``.
    """
    _check_schedule(schedule, reverse)
    mean, cov = forward_trajectory_moments(x0, schedule)
    T = schedule.T
    m, v = _resid(mean, cov, {T: 1.0}, reverse.prior_mean)
    total = expected_gaussian_log_prob(m, v, reverse.prior_var)
    for t in range(1, T + 1):
        m, v = _resid(mean, cov, {t - 1: 1.0, t: -reverse.coef[t]}, reverse.shift[t])   # log p(x_{t-1} | x_t)
        total = total + expected_gaussian_log_prob(m, v, reverse.var[t])
        a = schedule.alpha[t]
        m, v = _resid(mean, cov, {t: 1.0, t - 1: -a.sqrt()}, 0.0)                        # log q(x_t | x_{t-1})
        total = total - expected_gaussian_log_prob(m, v, 1 - a)
    return total


def vdm_log_evidence(x0: torch.Tensor, reverse: LinearGaussianReverse) -> torch.Tensor:
    """:math:`\\log p_\\theta(x_0)` of the linear-Gaussian reverse model, exactly (its marginal of :math:`x_0` is Gaussian).

    Propagates :math:`x_T \\sim \\mathcal N(m_T, v_T)` through
    :math:`x_{t-1} = a_t x_t + c_t + \\sqrt{v_t}\\,\\epsilon`: mean :math:`a_t m + c_t`, variance
    :math:`a_t^2 v + v_t`. The ELBO never exceeds it (book eq. ``elbo-identity``).

    Returns:
        ``(B,)`` in nats.
    """
    m, v = _f64(reverse.prior_mean), _f64(reverse.prior_var)
    for t in range(reverse.T, 0, -1):
        m, v = reverse.coef[t] * m + reverse.shift[t], reverse.coef[t] ** 2 * v + reverse.var[t]
    return Normal(m, v.sqrt()).log_prob(_f64(x0).reshape(-1))


def _reconstruction_exact(mean, cov, reverse) -> torch.Tensor:
    m, v = _resid(mean, cov, {0: 1.0, 1: -reverse.coef[1]}, reverse.shift[1])
    return expected_gaussian_log_prob(m, v, reverse.var[1])


def _expected_kl_linear(mean1: tuple, var1, mean2: tuple, var2, mean, cov) -> torch.Tensor:
    # E[KL(N(mu1, var1) || N(mu2, var2))] over the trajectory, where each mean is a linear function
    # mu = sum_i w_i x_i + offset of the trajectory, given as the pair ({i: w_i}, offset)
    weights = dict(mean1[0])
    for i, w in mean2[0].items():
        weights[i] = weights.get(i, 0.0) - w
    m, v = _resid(mean, cov, weights, mean2[1] - mean1[1])
    var1, var2 = _f64(var1), _f64(var2)
    return 0.5 * (torch.log(var2 / var1) + (var1 + v + m**2) / var2 - 1.0)


def vdm_terms_denoising(x0: torch.Tensor, schedule: Schedule, reverse: LinearGaussianReverse) -> VDMTerms:
    """The ELBO with denoising-matching terms (Luo 2022, eq. 58; book eq. ``vdm-elbo-denoising``), each term exactly.

    * reconstruction :math:`\\mathbb E_{q(x_1 \\mid x_0)}[\\log p_\\theta(x_0 \\mid x_1)]`;
    * prior matching :math:`D_\\mathrm{KL}(q(x_T \\mid x_0)\\,\\|\\,p(x_T))`;
    * denoising matching, ``t = 2..T``:
      :math:`\\mathbb E_{q(x_t \\mid x_0)}[D_\\mathrm{KL}(q(x_{t-1} \\mid x_t, x_0)\\,\\|\\,p_\\theta(x_{t-1} \\mid x_t))]`.

    Returns:
        :class:`VDMTerms` with ``matching`` of shape ``(B, T - 1)`` (column ``j`` is ``t = j + 2``)
        and ``constant`` 0.
    """
    _check_schedule(schedule, reverse)
    x0 = _f64(x0).reshape(-1)
    mean, cov = forward_trajectory_moments(x0, schedule)
    T = schedule.T
    ab = schedule.alpha_bar
    recon = _reconstruction_exact(mean, cov, reverse)
    prior = gaussian_kl(mean[:, T], 1 - ab[T], reverse.prior_mean, reverse.prior_var)
    cols = []
    for t in range(2, T + 1):
        c_x0, c_xt = (c.reshape(()) for c in posterior_mean_coefs(torch.tensor([t]), schedule, x0[:1]))
        q_mean = ({t: c_xt}, c_x0 * x0)        # c_xt x_t + c_x0 x0, as (weights, offset)
        p_mean = ({t: reverse.coef[t]}, reverse.shift[t])
        cols.append(_expected_kl_linear(q_mean, schedule.posterior_variance[t], p_mean, reverse.var[t], mean, cov))
    matching = torch.stack(cols, dim=1) if cols else torch.zeros((x0.shape[0], 0), dtype=_F64)
    return VDMTerms(recon, prior, matching, torch.zeros_like(recon))


def vdm_terms_consistency(x0: torch.Tensor, schedule: Schedule, reverse: LinearGaussianReverse) -> VDMTerms:
    """The ELBO with consistency terms, corrected (book eq. ``vdm-elbo-consistency``), each term exactly.

    * reconstruction :math:`\\mathbb E_{q(x_1 \\mid x_0)}[\\log p_\\theta(x_0 \\mid x_1)]`;
    * prior matching :math:`\\mathbb E_{q(x_{T-1} \\mid x_0)}[D_\\mathrm{KL}(q(x_T \\mid x_{T-1})\\,\\|\\,p(x_T))]`;
    * consistency, ``t = 1..T-1``:
      :math:`\\mathbb E_{q(x_{t-1}, x_{t+1} \\mid x_0)}[D_\\mathrm{KL}(q(x_t \\mid x_{t-1}, x_{t+1})\\,\\|\\,p_\\theta(x_t \\mid x_{t+1}))]`,
      with the bridge of :func:`bridge_mean_var`;
    * constant :math:`\\sum_{t=1}^{T-1} I_q(x_t; x_{t+1} \\mid x_{t-1})` (:func:`conditional_mutual_information`).

    Luo (2022), eq. 45, has :math:`q(x_t \\mid x_{t-1})` in place of the bridge and no constant; that
    version is :func:`vdm_terms_consistency_as_printed` and is *not* equal to the ELBO.
    """
    _check_schedule(schedule, reverse)
    x0 = _f64(x0).reshape(-1)
    mean, cov = forward_trajectory_moments(x0, schedule)
    T = schedule.T
    recon = _reconstruction_exact(mean, cov, reverse)
    aT = schedule.alpha[T]
    prior = _expected_kl_linear(({T - 1: aT.sqrt()}, 0.0), 1 - aT, ({}, _f64(reverse.prior_mean)), reverse.prior_var, mean, cov)
    cols, const = [], torch.zeros_like(recon)
    for t in range(1, T):
        c_prev, c_next, var = bridge_coefs(t, schedule)
        q_mean = ({t - 1: c_prev, t + 1: c_next}, 0.0)
        p_mean = ({t + 1: reverse.coef[t + 1]}, reverse.shift[t + 1])
        cols.append(_expected_kl_linear(q_mean, var, p_mean, reverse.var[t + 1], mean, cov))
        const = const + conditional_mutual_information(t, schedule)
    matching = torch.stack(cols, dim=1) if cols else torch.zeros((x0.shape[0], 0), dtype=_F64)
    return VDMTerms(recon, prior, matching, const)


def vdm_terms_consistency_as_printed(x0: torch.Tensor, schedule: Schedule, reverse: LinearGaussianReverse) -> VDMTerms:
    """Luo (2022), eq. 45, exactly as printed: consistency KLs :math:`D_\\mathrm{KL}(q(x_t \\mid x_{t-1})\\,\\|\\,p_\\theta(x_t \\mid x_{t+1}))`.

    The expectation is over :math:`q(x_{t-1}, x_{t+1} \\mid x_0)` with :math:`x_t` drawn from
    :math:`q(x_t \\mid x_{t-1})` independently of :math:`x_{t+1}`; but under :math:`q` the variable
    :math:`x_{t+1}` is generated from :math:`x_t`. The book (eq. ``vdm-elbo-consistency``) shows that
    the sum of these terms differs from the ELBO whenever some :math:`a_{t+1} \\ne 0`. Kept so that the
    claim can be checked.
    """
    _check_schedule(schedule, reverse)
    x0 = _f64(x0).reshape(-1)
    mean, cov = forward_trajectory_moments(x0, schedule)
    T = schedule.T
    exact = vdm_terms_consistency(x0, schedule, reverse)
    cols = []
    for t in range(1, T):
        a0 = schedule.alpha[t]
        q_mean = ({t - 1: a0.sqrt()}, 0.0)
        p_mean = ({t + 1: reverse.coef[t + 1]}, reverse.shift[t + 1])
        cols.append(_expected_kl_linear(q_mean, 1 - a0, p_mean, reverse.var[t + 1], mean, cov))
    matching = torch.stack(cols, dim=1) if cols else torch.zeros((x0.shape[0], 0), dtype=_F64)
    return VDMTerms(exact.reconstruction, exact.prior_matching, matching, torch.zeros_like(exact.reconstruction))


ESTIMATORS = ("trajectory", "consistency", "consistency-as-printed", "denoising")
"""The one-sample estimators of :func:`vdm_elbo_estimates`."""


def vdm_elbo_estimates(x0: torch.Tensor, schedule: Schedule, reverse: LinearGaussianReverse, eps: torch.Tensor, form: str) -> torch.Tensor:
    """One-sample Monte Carlo estimates of the ELBO, one per row, from one forward trajectory each.

    The trajectory :math:`x_{1:T}` is :func:`sample_forward_trajectory` of ``(x0, eps)``; then

    * ``"trajectory"``: :math:`\\log p_\\theta(x_{0:T}) - \\log q(x_{1:T} \\mid x_0)` at the sample;
    * ``"consistency"``: eq. ``vdm-elbo-consistency`` with every KL computed in closed form at the
      sampled :math:`x_{T-1}` and :math:`(x_{t-1}, x_{t+1})`, the reconstruction at the sampled :math:`x_1`;
    * ``"consistency-as-printed"``: the same with Luo's eq. 45 KLs (biased: its mean is not the ELBO);
    * ``"denoising"``: eq. ``vdm-elbo-denoising`` with every KL in closed form at the sampled
      :math:`x_t` (one variable per term) and the prior KL exact.

    The first, second and fourth are unbiased for :func:`vdm_elbo_exact`.

    Args:
        x0: ``(B,)``; eps: standard normal ``(B, T)``; form: one of :data:`ESTIMATORS`.

    Returns:
        ``(B,)`` in nats.

    Raises:
        ValueError: for an unknown ``form`` or wrong shapes.
    """
    if form not in ESTIMATORS:
        raise ValueError(f"form must be one of {ESTIMATORS}, got {form!r}.")
    _check_schedule(schedule, reverse)
    x0 = _f64(x0).reshape(-1)
    xs = sample_forward_trajectory(x0, schedule, eps)
    T = schedule.T
    recon = reverse.log_prob(x0, xs[:, 1], 1)
    if form == "trajectory":
        total = reverse.log_prior(xs[:, T])
        for t in range(1, T + 1):
            total = total + reverse.log_prob(xs[:, t - 1], xs[:, t], t) - log_q_step(xs[:, t], xs[:, t - 1], t, schedule)
        return total
    if form == "denoising":
        ab = schedule.alpha_bar
        total = recon - gaussian_kl(ab[T].sqrt() * x0, 1 - ab[T], reverse.prior_mean, reverse.prior_var)
        for t in range(2, T + 1):
            c_x0, c_xt = posterior_mean_coefs(torch.tensor([t]), schedule, x0[:1])
            q_mean = c_x0.reshape(()) * x0 + c_xt.reshape(()) * xs[:, t]
            p_mean = reverse.coef[t] * xs[:, t] + reverse.shift[t]
            total = total - gaussian_kl(q_mean, schedule.posterior_variance[t], p_mean, reverse.var[t])
        return total
    aT = schedule.alpha[T]
    total = recon - gaussian_kl(aT.sqrt() * xs[:, T - 1], 1 - aT, reverse.prior_mean, reverse.prior_var)
    for t in range(1, T):
        p_mean = reverse.coef[t + 1] * xs[:, t + 1] + reverse.shift[t + 1]
        if form == "consistency":
            q_mean, q_var = bridge_mean_var(xs[:, t - 1], xs[:, t + 1], t, schedule)
            total = total - gaussian_kl(q_mean, q_var, p_mean, reverse.var[t + 1]) + conditional_mutual_information(t, schedule)
        else:
            a0 = schedule.alpha[t]
            total = total - gaussian_kl(a0.sqrt() * xs[:, t - 1], 1 - a0, p_mean, reverse.var[t + 1])
    return total
