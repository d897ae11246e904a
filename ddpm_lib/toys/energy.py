"""Energy-based toys with exact answers, and exact references for one-dimensional Langevin chains.

Book chapter "Energy-based models and Langevin dynamics".

* :class:`GaussianEBM`, the energy-based model :math:`p_\\theta(x) = e^{-E_\\theta(x)} / Z(\\theta)` with the
  quadratic energy :math:`E_\\theta(x) = \\tfrac12 (x-\\mu)^\\top \\Lambda (x-\\mu)`: its partition function, its
  score and the gradient of :math:`f_\\theta = -E_\\theta` in the parameters are closed-form, so contrastive
  divergence and noise-contrastive estimation can be checked against exact answers.
* :func:`cd_gradient` (Hinton 2002), :func:`ula_stationary_covariance` and :func:`cd_fixed_point_precision`
  (where contrastive divergence with a ULA sampler comes to rest, for this Gaussian model), :func:`nce_loss` and
  :func:`nce_fit_quadratic` (Gutmann & Hyvärinen 2010).
* :func:`ula_kernel_1d`, :func:`stationary_on_grid`, :func:`mean_hitting_steps` and
  :func:`langevin_mfpt_sde_1d`: the law of a one-dimensional ULA chain on a fine grid (its stationary law and
  mean first passage times, exact up to the grid) and the mean first passage time of the Langevin SDE by
  quadrature. The chapter's two-mode targets have a density that factorizes over the coordinates, so these
  one-dimensional answers are exact answers for its two-dimensional chains.

Everything is float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "GaussianEBM",
    "cd_gradient",
    "ula_stationary_covariance",
    "cd_fixed_point_precision",
    "nce_loss",
    "nce_fit_quadratic",
    "ula_kernel_1d",
    "stationary_on_grid",
    "mean_hitting_steps",
    "langevin_mfpt_sde_1d",
]

_F64 = torch.float64


def _spd(matrix: torch.Tensor, what: str) -> torch.Tensor:
    m = torch.as_tensor(matrix, dtype=_F64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{what} must be a square matrix, got shape {tuple(m.shape)}.")
    if not torch.allclose(m, m.T, rtol=0, atol=1e-12 * max(1.0, float(m.abs().max()))):
        raise ValueError(f"{what} must be symmetric.")
    if torch.linalg.cholesky_ex(m).info != 0:
        raise ValueError(f"{what} must be positive definite, got eigenvalues {torch.linalg.eigvalsh(m).tolist()}.")
    return m


@dataclass(frozen=True, eq=False)
class GaussianEBM:
    """The energy-based model with energy :math:`E(x) = \\tfrac12 (x-\\mu)^\\top \\Lambda (x-\\mu)` (book eq. ``ebm-density``).

    :math:`f_\\theta(x) = -E(x)` is the unnormalized log-density, :math:`Z = (2\\pi)^{d/2} \\det(\\Lambda)^{-1/2}` its
    partition function, so :math:`p = \\mathcal N(\\mu, \\Lambda^{-1})`.

    Attributes:
        mean: :math:`\\mu`, shape ``(d,)``.
        precision: :math:`\\Lambda`, shape ``(d, d)``, symmetric positive definite.

    Data ``x`` have shape ``(n, d)``. All tensors are float64.

    Raises:
        ValueError: for mismatched shapes or a precision that is not symmetric positive definite.
    """

    mean: torch.Tensor
    precision: torch.Tensor

    def __post_init__(self) -> None:
        mean = torch.as_tensor(self.mean, dtype=_F64).reshape(-1)
        precision = _spd(self.precision, "GaussianEBM: precision")
        if precision.shape[0] != mean.shape[0]:
            raise ValueError(f"GaussianEBM: mean {tuple(mean.shape)} and precision {tuple(precision.shape)} do not match.")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "precision", precision)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`E(x) = \\tfrac12 (x-\\mu)^\\top \\Lambda (x-\\mu)`, shape ``(n,)``."""
        r = x.to(_F64) - self.mean
        return 0.5 * ((r @ self.precision) * r).sum(-1)

    def log_partition(self) -> torch.Tensor:
        """:math:`\\log Z = \\tfrac d2 \\log 2\\pi - \\tfrac12 \\log\\det\\Lambda`, a 0-dim tensor."""
        return 0.5 * self.dim * math.log(2 * math.pi) - 0.5 * torch.logdet(self.precision)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x) = -E(x) - \\log Z`, shape ``(n,)``."""
        return -self.energy(x) - self.log_partition()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla_x \\log p(x) = -\\Lambda (x - \\mu)`, shape ``(n, d)``; it does not involve :math:`Z`."""
        return -(x.to(_F64) - self.mean) @ self.precision

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact draws from :math:`\\mathcal N(\\mu, \\Lambda^{-1})`, shape ``(n, d)``."""
        chol = torch.linalg.cholesky(self.precision)  # Lambda = L L^T, so x = mu + L^{-T} z has covariance Lambda^{-1}
        z = torch.randn((n, self.dim), generator=generator, dtype=_F64)
        return self.mean + torch.linalg.solve_triangular(chol.T, z.T, upper=True).T

    def mean_grad_f(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch mean of :math:`\\nabla_\\theta f_\\theta(x)` for :math:`f_\\theta = -E`: ``(d/dmu (d,), d/dLambda (d, d))``.

        :math:`\\partial f / \\partial \\mu = \\Lambda (x - \\mu)` and
        :math:`\\partial f / \\partial \\Lambda = -\\tfrac12 (x-\\mu)(x-\\mu)^\\top` (the gradient in the matrix entries,
        symmetric).
        """
        r = x.to(_F64) - self.mean
        return (r @ self.precision).mean(0), -0.5 * (r.T @ r) / r.shape[0]


def cd_gradient(model: GaussianEBM, x_data: torch.Tensor, x_negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The contrastive-divergence direction :math:`\\widehat{\\mathbb E}_{data}[\\nabla_\\theta f] - \\widehat{\\mathbb E}_{neg}[\\nabla_\\theta f]`.

    Book eq. ``ebm-grad`` with the model expectation replaced by an average over ``x_negative``; for
    contrastive divergence (Hinton 2002, there with Gibbs sampling, here with Langevin) the negatives are
    the data moved by ``k`` steps of an MCMC kernel that leaves :math:`p_\\theta` (nearly) invariant. With exact
    model samples as negatives it is an unbiased estimate of the log-likelihood gradient. Ascend it.

    Args:
        model: the current :class:`GaussianEBM`.
        x_data: ``(n, d)`` data.
        x_negative: ``(m, d)`` negatives.

    Returns:
        ``(g_mean (d,), g_precision (d, d))``.

    Raises:
        ValueError: if the trailing dimensions differ from the model's.
    """
    if x_data.shape[-1] != model.dim or x_negative.shape[-1] != model.dim:
        raise ValueError(f"cd_gradient: data {tuple(x_data.shape)} and negatives {tuple(x_negative.shape)} must be (n, {model.dim}).")
    gd_mean, gd_prec = model.mean_grad_f(x_data)
    gn_mean, gn_prec = model.mean_grad_f(x_negative)
    return gd_mean - gn_mean, gd_prec - gn_prec


def ula_stationary_covariance(precision: torch.Tensor, step_size: float) -> torch.Tensor:
    """The exact stationary covariance of ULA (book eq. ``ula-step``) on :math:`\\mathcal N(\\mu, \\Lambda^{-1})` (book eq. ``ula-gaussian-variance``).

    The chain :math:`x' = x - \\delta\\Lambda(x-\\mu) + \\sqrt{2\\delta}\\,z` has stationary law
    :math:`\\mathcal N(\\mu, \\Sigma_\\delta)` with :math:`\\Sigma_\\delta = (\\Lambda - \\tfrac\\delta2 \\Lambda^2)^{-1}`,
    which exceeds :math:`\\Lambda^{-1}` by :math:`\\tfrac\\delta2 I + O(\\delta^2)`.

    Args:
        precision: :math:`\\Lambda`, ``(d, d)`` symmetric positive definite.
        step_size: :math:`\\delta`, with :math:`0 < \\delta < 2/\\lambda_{max}(\\Lambda)` (otherwise the chain diverges).

    Returns:
        :math:`\\Sigma_\\delta`, ``(d, d)`` float64.

    Raises:
        ValueError: for a precision that is not symmetric positive definite or a step outside
            :math:`(0, 2/\\lambda_{max})`.
    """
    lam = _spd(precision, "ula_stationary_covariance: precision")
    top = float(torch.linalg.eigvalsh(lam).max())
    if not 0 < step_size < 2 / top:
        raise ValueError(f"ula_stationary_covariance: the step must lie in (0, 2 / lambda_max) = (0, {2 / top:.4g}), got {step_size}.")
    return torch.linalg.inv(lam - 0.5 * step_size * lam @ lam)


def cd_fixed_point_precision(data_cov: torch.Tensor, step_size: float) -> torch.Tensor:
    """The precision at which CD-k with ULA negatives stops moving a Gaussian EBM (book eq. ``cd-fixed-point``).

    In general CD-k rests where ``k`` chain steps from the data leave the data's average of
    :math:`\\nabla_\\theta f_\\theta` unchanged, a condition that depends on ``k``. For this Gaussian EBM that average is
    made of the first two moments, which the linear ULA map keeps exactly when the data's covariance :math:`S` is
    the chain's stationary covariance: :math:`\\Lambda - \\tfrac\\delta2 \\Lambda^2 = S^{-1}`, the same for every
    ``k``. In the eigenbasis of
    :math:`S^{-1}` (eigenvalues :math:`p_i`), :math:`\\lambda_i = (1 - \\sqrt{1 - 2\\delta p_i})/\\delta`, the root that
    tends to :math:`p_i` (the maximum-likelihood precision) as :math:`\\delta \\to 0` and has :math:`\\delta\\lambda_i < 1`
    (the other root, :math:`(1 + \\sqrt{1 - 2\\delta p_i})/\\delta`, also has stationary covariance :math:`S`).

    Args:
        data_cov: :math:`S`, ``(d, d)`` symmetric positive definite (the data's covariance, divided by ``n``).
        step_size: :math:`\\delta`, with :math:`0 < \\delta < 1 / (2 p_{max})`.

    Returns:
        :math:`\\Lambda_{CD}`, ``(d, d)`` float64.

    Raises:
        ValueError: for a covariance that is not symmetric positive definite, or a step with no real root.
    """
    s_inv = torch.linalg.inv(_spd(data_cov, "cd_fixed_point_precision: data_cov"))
    s_inv = 0.5 * (s_inv + s_inv.T)
    p, vecs = torch.linalg.eigh(s_inv)
    if not 0 < step_size < 1 / (2 * float(p.max())):
        raise ValueError(f"cd_fixed_point_precision: need 0 < step < 1 / (2 p_max) = {1 / (2 * float(p.max())):.4g}, got {step_size}.")
    lam = (1 - torch.sqrt(1 - 2 * step_size * p)) / step_size
    return vecs @ torch.diag(lam) @ vecs.T


def nce_loss(logit_data: torch.Tensor, logit_noise: torch.Tensor) -> torch.Tensor:
    """The noise-contrastive loss :math:`-J`, minus the book's objective (book eq. ``nce-objective``).

    With the logit :math:`G(x) = \\log p_\\theta(x) - \\log q(x)` of "data" against "noise",
    :math:`-\\big(\\operatorname{mean}_{data} \\log \\sigma(G) + \\operatorname{mean}_{noise} \\log(1 - \\sigma(G))\\big)`, in nats;
    computed with ``logsigmoid`` (stable for large logits). Gutmann & Hyvärinen (2010) divide the sum over their
    :math:`T` data and :math:`T` noise points by :math:`2T`: with equal numbers of each, this is :math:`-2 J_T` in their
    normalization (the same minimizer).

    Args:
        logit_data: :math:`G` at the data points, shape ``(n,)``.
        logit_noise: :math:`G` at the noise points, shape ``(m,)``.

    Returns:
        A 0-dim tensor, :math:`\\ge 0`.
    """
    return -(torch.nn.functional.logsigmoid(logit_data).mean() + torch.nn.functional.logsigmoid(-logit_noise).mean())


def _quadratic_features(x: torch.Tensor) -> torch.Tensor:
    # (1, x_1 .. x_d, x_i x_j for i <= j): the log-density of any Gaussian (with a free constant) is linear in these
    n, d = x.shape
    rows, cols = torch.triu_indices(d, d)
    return torch.cat([torch.ones(n, 1, dtype=_F64), x, x[:, rows] * x[:, cols]], 1)


def nce_fit_quadratic(
    x_data: torch.Tensor,
    x_noise: torch.Tensor,
    noise_log_prob: Callable[[torch.Tensor], torch.Tensor],
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[GaussianEBM, torch.Tensor]:
    """Noise-contrastive estimation of a Gaussian EBM with a free log-normalizer (Gutmann & Hyvärinen 2010).

    The model is :math:`\\log p_\\theta(x) = -\\tfrac12 (x-\\mu)^\\top\\Lambda(x-\\mu) + c`, with :math:`c` a parameter
    of its own (not :math:`-\\log Z`). Its logit :math:`G = \\log p_\\theta - \\log q` is linear in the quadratic
    features of :math:`x` plus the offset :math:`-\\log q(x)`, so minimizing :func:`nce_loss` is a convex logistic
    regression, solved here by Newton's method (started at :math:`p_\\theta = q`, where :math:`G = 0`).

    Args:
        x_data: ``(n, d)`` data, labelled 1.
        x_noise: ``(m, d)`` draws from the noise law :math:`q`, labelled 0.
        noise_log_prob: :math:`\\log q`, normalized, ``(k, d) -> (k,)``; :math:`q` must be a Gaussian (or any law
            whose log-density is quadratic) so that the start is inside the family.
        max_iter: Newton steps at most.
        tol: stop when the largest change of a coefficient is below this.

    Returns:
        ``(model, c)``: the fitted :class:`GaussianEBM` and the fitted log-normalizer :math:`c` (a 0-dim tensor).
        At the optimum :math:`c \\approx -\\log Z(\\Lambda)`: NCE normalizes the model by itself.

    Raises:
        ValueError: if the fitted precision is not positive definite or Newton did not converge.
    """
    xd, xn = x_data.to(_F64), x_noise.to(_F64)
    d = xd.shape[1]
    fd, fn = _quadratic_features(xd), _quadratic_features(xn)
    od, on = -noise_log_prob(xd).to(_F64), -noise_log_prob(xn).to(_F64)
    # start at log p_theta = log q: fit log q's own quadratic coefficients by least squares on the noise points
    eta = torch.linalg.lstsq(fn, -on[:, None]).solution[:, 0]
    for _ in range(max_iter):
        gd, gn = fd @ eta + od, fn @ eta + on
        sd, sn = torch.sigmoid(gd), torch.sigmoid(gn)
        grad = fd.T @ (1 - sd) / len(xd) - fn.T @ sn / len(xn)
        hess = (fd * (sd * (1 - sd))[:, None]).T @ fd / len(xd) + (fn * (sn * (1 - sn))[:, None]).T @ fn / len(xn)
        step = torch.linalg.solve(hess, grad)
        eta = eta + step
        if float(step.abs().max()) < tol:
            break
    else:
        raise ValueError(f"nce_fit_quadratic: Newton did not converge in {max_iter} steps.")
    rows, cols = torch.triu_indices(d, d)
    quad = torch.zeros(d, d, dtype=_F64)
    quad[rows, cols] = eta[1 + d:]
    # eta . features = -1/2 x^T Lam x + (Lam mu) . x + (c - 1/2 mu^T Lam mu)
    lam = -(quad + quad.T)
    lam = 0.5 * (lam + lam.T)
    model = GaussianEBM(torch.linalg.solve(_spd(lam, "nce_fit_quadratic: fitted precision"), eta[1:1 + d]), lam)
    c = eta[0] + 0.5 * model.mean @ lam @ model.mean
    return model, c


def ula_kernel_1d(score: Callable[[torch.Tensor], torch.Tensor], grid: torch.Tensor, step_size: float) -> torch.Tensor:
    """The transition matrix of one-dimensional ULA (book eq. ``ula-step``) restricted to a uniform grid.

    Row ``i`` is the law of :math:`y_i + \\delta s(y_i) + \\sqrt{2\\delta} z` sampled at the grid points and renormalized
    (mass that would leave the grid is put back in proportion: make the grid wide enough that this is
    negligible). The grid sum of a Gaussian of standard deviation :math:`\\sigma = \\sqrt{2\\delta}` sampled with
    spacing :math:`h` errs by about :math:`e^{-2\\pi^2 \\sigma^2 / h^2}` (Poisson summation), below :math:`10^{-34}` at
    the coarsest spacing allowed, :math:`h = \\sigma / 2`, for a law that is smooth on the scale :math:`\\sigma`.

    Args:
        score: :math:`\\nabla \\log p` on a 1-D tensor, ``(m,) -> (m,)``.
        grid: ``(m,)`` increasing, uniformly spaced points.
        step_size: :math:`\\delta > 0`.

    Returns:
        ``P``, ``(m, m)`` float64, rows summing to 1: ``P[i, j]`` = probability to move from cell ``i`` to cell ``j``.

    Raises:
        ValueError: for a non-positive step, a grid that is not 1-D, increasing and uniform, or a spacing wider than half
            the kernel's standard deviation :math:`\\sqrt{2\\delta}`.
    """
    y = torch.as_tensor(grid, dtype=_F64)
    if y.ndim != 1 or len(y) < 3 or bool((y[1:] <= y[:-1]).any()):
        raise ValueError("ula_kernel_1d: the grid must be a 1-D increasing tensor of at least 3 points.")
    if step_size <= 0:
        raise ValueError(f"ula_kernel_1d: the step size must be positive, got {step_size}.")
    h = float(y[1] - y[0])
    if float((y.diff() - h).abs().max()) > 1e-9 * h:
        raise ValueError("ula_kernel_1d: the grid must be uniformly spaced.")
    if h > math.sqrt(2 * step_size) / 2 * (1 + 1e-9):
        raise ValueError(f"ula_kernel_1d: grid spacing {h:.3g} is coarser than half the kernel's standard deviation "
                         f"sqrt(2 delta) = {math.sqrt(2 * step_size):.3g}.")
    centre = y + step_size * score(y).to(_F64)
    log_k = -((y[None, :] - centre[:, None]) ** 2) / (4 * step_size)
    return torch.softmax(log_k, dim=1)


def stationary_on_grid(transition: torch.Tensor) -> torch.Tensor:
    """The stationary probabilities :math:`\\pi` of a row-stochastic matrix: :math:`\\pi P = \\pi`, :math:`\\sum_i \\pi_i = 1`.

    Solved directly (one equation of :math:`(P^\\top - I)\\pi = 0` replaced by the normalization), which is
    exact however slowly the chain mixes.

    Args:
        transition: ``(m, m)``, rows summing to 1, irreducible.

    Returns:
        ``(m,)`` float64 probabilities (divide by the grid spacing for a density).
    """
    m = transition.shape[0]
    a = transition.T.to(_F64) - torch.eye(m, dtype=_F64)
    a[-1] = 1.0
    b = torch.zeros(m, dtype=_F64)
    b[-1] = 1.0
    return torch.linalg.solve(a, b)


def mean_hitting_steps(transition: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Expected number of steps to reach ``target`` from each state: :math:`\\tau = 0` on it, :math:`\\tau = 1 + P \\tau` off it.

    First-step analysis for a Markov chain; with :func:`ula_kernel_1d` it gives the mean first passage time of
    a ULA chain (multiply by :math:`\\delta` for Langevin time), including the effect of checking the target
    only at the steps.

    Args:
        transition: ``(m, m)``, rows summing to 1.
        target: ``(m,)`` bool, the set to reach (non-empty, reachable from every state).

    Returns:
        ``(m,)`` float64, 0 on the target.

    Raises:
        ValueError: if ``target`` is empty or covers every state.
    """
    target = torch.as_tensor(target, dtype=torch.bool)
    free = ~target
    if not bool(target.any()) or not bool(free.any()):
        raise ValueError("mean_hitting_steps: the target must be a non-empty proper subset of the states.")
    p_free = transition.to(_F64)[free][:, free]
    steps = torch.zeros(transition.shape[0], dtype=_F64)
    steps[free] = torch.linalg.solve(torch.eye(int(free.sum()), dtype=_F64) - p_free, torch.ones(int(free.sum()), dtype=_F64))
    return steps


def langevin_mfpt_sde_1d(density: Callable[[torch.Tensor], torch.Tensor], start: float, end: float,
                         lower: float, n: int = 200_001) -> float:
    """Mean first passage time from ``start`` up to ``end`` of :math:`dX = (\\log p)'(X)\\,dt + \\sqrt2\\,dW` (book eq. ``mfpt-sde``).

    :math:`\\tau = \\int_{start}^{end} \\frac{F(y)}{p(y)}\\,dy` with :math:`F(y) = \\int_{-\\infty}^{y} p`, which solves
    :math:`\\tau'' + (\\log p)' \\tau' = -1`, :math:`\\tau(end) = 0`, with no flux at :math:`-\\infty` (Pavliotis 2014, the chapter
    on exit problems). Trapezoidal rule on ``n`` points of ``[lower, end]``.

    Args:
        density: the normalized density :math:`p` on a 1-D tensor (or any positive multiple of it: the ratio
            :math:`F/p` does not depend on the normalization).
        start, end: ``start < end``.
        lower: where :math:`F` starts; far enough below ``start`` that :math:`p` is negligible there.
        n: quadrature points.

    Returns:
        :math:`\\tau` in units of the SDE's time :math:`t` (ULA steps of size :math:`\\delta` cover :math:`\\delta` each).

    Raises:
        ValueError: unless ``lower < start < end``.
    """
    if not lower < start < end:
        raise ValueError(f"langevin_mfpt_sde_1d: need lower < start < end, got {lower}, {start}, {end}.")
    # two uniform pieces that meet at `start`, so that the outer integral starts on a grid point
    n_below = max(3, int(n * (start - lower) / (end - lower)))
    below = torch.linspace(lower, start, n_below, dtype=_F64)
    above = torch.linspace(start, end, max(3, n - n_below + 1), dtype=_F64)
    y = torch.cat([below, above[1:]])
    p = density(y).to(_F64)
    cdf = torch.cat([torch.zeros(1, dtype=_F64), torch.cumulative_trapezoid(p, y)])
    first = n_below - 1
    return float(torch.trapezoid((cdf / p)[first:], y[first:]))
