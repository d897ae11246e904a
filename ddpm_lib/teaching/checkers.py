"""Checkers for the readers' answers: right or wrong, and when wrong, a hint about the likely slip.

Used by the exercises of Part I (imports sympy; never used by training or sampling). A checker
takes the reader's formula (a SymPy expression in the symbols this module exports, matched by name)
or number, compares it with the right answer (symbolically with :func:`ddpm_lib.teaching.symbolic.is_equal`,
numerically with a stated tolerance), and recognises the usual slips: a standard deviation where a
variance belongs, :math:`\\bar\\alpha_t` where :math:`\\sqrt{\\bar\\alpha_t}` belongs, a term dropped
from a telescoping sum, a missing :math:`\\ln 2`. Each returns a :class:`CheckResult`; in a notebook
it displays as its message::

    from ddpm_lib.teaching.checkers import check_kl_gaussian, m1, v1, m2, v2
    check_kl_gaussian((sp.log(v2 / v1) + (v1 + (m1 - m2)**2) / v2 - 1) / 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from .symbolic import _agree_at_random_points, is_equal, kl_gaussian, kl_gaussian_diag, refuse_vacuous

__all__ = [
    "CheckResult",
    "m1", "v1", "m2", "v2",
    "x", "w", "b", "s2",
    "alpha_bar", "alpha_t", "alpha_next",
    "x_prev", "x_next",
    "check_kl_gaussian",
    "check_kl_to_standard_normal",
    "check_posterior_linear_gaussian",
    "check_elbo_gap",
    "check_bits_per_dim",
    "check_forward_marginal",
    "check_telescoping",
    "check_bridge",
    "telescoping_symbols",
]

# The symbols readers write their answers in (matched by name, so sp.Symbol("v1") works too).
m1, m2 = sp.symbols("m1 m2", real=True)
v1, v2 = sp.symbols("v1 v2", positive=True)
x, b = sp.symbols("x b", real=True)
w = sp.Symbol("w", real=True)
s2 = sp.Symbol("s2", positive=True)
alpha_bar, alpha_t, alpha_next = sp.symbols("alpha_bar alpha_t alpha_next", positive=True)
x_prev, x_next = sp.symbols("x_prev x_next", real=True)


@dataclass(frozen=True)
class CheckResult:
    """The verdict of a checker: ``ok`` (bool) and a ``message`` (right, or wrong with a hint).

    ``bool(result)`` is ``result.ok``; ``str`` and ``repr`` are the message, so that a notebook shows it.
    """

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return ("RIGHT: " if self.ok else "WRONG: ") + _cap(self.message)

    __repr__ = __str__


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _both(first: CheckResult, second: CheckResult, right: str) -> CheckResult:
    ok = first.ok and second.ok
    return CheckResult(ok, _cap(right) if ok else f"{_cap(first.message)} {_cap(second.message)}")


def _adopt(expr, allowed: list[sp.Symbol], what: str) -> sp.Expr:
    """Turn the reader's answer into a SymPy expression in *our* symbols (matched by name)."""
    try:
        expr = sp.sympify(expr)
    except (sp.SympifyError, TypeError) as err:
        raise ValueError(f"{what}: could not read the answer as a SymPy expression ({err}).") from err
    by_name = {s.name: s for s in allowed}
    unknown = sorted(s.name for s in expr.free_symbols if s.name not in by_name)
    if unknown:
        names = ", ".join(s.name for s in allowed)
        raise ValueError(f"{what}: unknown symbol(s) {unknown}; write the answer in {names} (import them from ddpm_lib.teaching.checkers).")
    return expr.subs({s: by_name[s.name] for s in expr.free_symbols}, simultaneous=True)


def _verdict(answer: sp.Expr, right: sp.Expr, slips: list[tuple[sp.Expr, str]], what: str) -> CheckResult:
    # A slip that SymPy builds into the right answer itself could never be told apart from it.
    for wrong, hint in slips:
        refuse_vacuous(wrong, right, f"{what}: the known slip ({hint[:60]}...)")
    # A reader's answer written exactly as ours is right; is_equal refuses only our own vacuous checks.
    if answer - right == 0 or is_equal(answer, right):
        return CheckResult(True, f"{what} is correct.")
    for wrong, hint in slips:
        if answer - wrong == 0 or _agree_at_random_points(answer, wrong):
            return CheckResult(False, f"{what}: {hint}")
    symbols = sorted(answer.free_symbols | right.free_symbols, key=str)
    point = {s: sp.Rational(3 + i, 10) for i, s in enumerate(symbols)}
    try:
        mine, theirs = float(answer.subs(point)), float(right.subs(point))
        detail = f" At {', '.join(f'{k} = {v}' for k, v in point.items())} your expression gives {mine:.6g}; the right one gives {theirs:.6g}."
    except (TypeError, ValueError):
        detail = ""
    return CheckResult(False, f"{what} is not right, and it is not one of the common slips this checker knows.{detail}")


def check_kl_gaussian(answer) -> CheckResult:
    """Check a formula for :math:`D_\\mathrm{KL}(\\mathcal N(m_1, v_1)\\,\\|\\,\\mathcal N(m_2, v_2))` in nats.

    Write it in the symbols ``m1, v1, m2, v2`` (``v1, v2`` are **variances**). The right answer is
    :math:`\\tfrac12(\\log(v_2/v_1) + (v_1 + (m_1 - m_2)^2)/v_2 - 1)`, book eq. ``vae-kl-1d``.
    Recognised slips: standard deviations where variances belong, the arguments swapped, the
    :math:`-1` or the :math:`\\tfrac12` forgotten, the log term not halved, the sign flipped.
    """
    a = _adopt(answer, [m1, v1, m2, v2], "KL(N(m1, v1) || N(m2, v2))")
    right = kl_gaussian(m1, v1, m2, v2)
    slips = [
        (kl_gaussian(m1, sp.sqrt(v1), m2, sp.sqrt(v2)), "you used standard deviations where variances belong: v1 and v2 are variances, so the ratio inside the log and the terms over v2 take v1, v2 themselves, not their square roots."),
        (kl_gaussian(m1, v1**2, m2, v2**2), "you squared the variances: v1 and v2 already are variances (sigma^2)."),
        (kl_gaussian(m2, v2, m1, v1), "you computed KL(N(m2, v2) || N(m1, v1)): the KL is not symmetric; the expectation is under the first argument, N(m1, v1)."),
        (right + sp.Rational(1, 2), "you forgot the -1 inside the bracket (check: the KL of a distribution from itself, m1 = m2 and v1 = v2, must be 0)."),
        (2 * right, "you forgot the overall factor 1/2."),
        (right + sp.log(v2 / v1) / 2, "the log term is log(sigma2 / sigma1) = (1/2) log(v2 / v1): you wrote log(v2 / v1) without the 1/2."),
        (-right, "the sign is flipped: a KL divergence is never negative."),
    ]
    return _verdict(a, right, slips, "KL(N(m1, v1) || N(m2, v2))")


def check_kl_to_standard_normal(answer, dim: int = 2) -> CheckResult:
    """Check :math:`D_\\mathrm{KL}(\\mathcal N(\\mu, \\operatorname{diag}(v))\\,\\|\\,\\mathcal N(0, I))` for a ``dim``-dimensional diagonal Gaussian.

    Write it in the symbols ``mu_1, ..., mu_dim`` (real) and ``v_1, ..., v_dim`` (variances), e.g.
    ``sp.symbols("mu_1:3")``. The right answer is :math:`\\tfrac12\\sum_j (v_j + \\mu_j^2 - 1 - \\log v_j)`,
    book eq. ``vae-kl-diag``. Recognised slips: standard deviations for variances, a missing
    :math:`-1` per dimension, one term only, the log-variance used as a variance.

    Raises:
        ValueError: if ``dim < 1``.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}.")
    mus = list(sp.symbols(f"mu_1:{dim + 1}", real=True))
    vs = list(sp.symbols(f"v_1:{dim + 1}", positive=True))
    a = _adopt(answer, mus + vs, f"KL(N(mu, diag v) || N(0, I)) in {dim} dimensions")
    zeros, ones = [0] * dim, [1] * dim
    right = kl_gaussian_diag(mus, vs, zeros, ones)
    slips = [
        (kl_gaussian_diag(mus, [sp.sqrt(v) for v in vs], zeros, ones), "you used standard deviations where variances belong (v_j is sigma_j^2)."),
        (right + sp.Rational(dim, 2), "you forgot the -1 of each dimension (the KL must be 0 when mu = 0 and v = 1)."),
        (sp.Add(*[(v + mu**2 - 1 - sp.log(v)) for mu, v in zip(mus, vs)]), "you forgot the factor 1/2."),
        (sp.Add(*[(sp.exp(v) + mu**2 - 1 - v) / 2 for mu, v in zip(mus, vs)]), "that is the formula in terms of the log-variance; here v_j is the variance itself."),
    ]
    if dim >= 2:  # in one dimension the first term is the whole sum: no slip
        slips.append((kl_gaussian(mus[0], vs[0], 0, 1), "you kept only the first dimension: for a diagonal Gaussian the KL is the sum over dimensions."))
    return _verdict(a, right, slips, f"KL(N(mu, diag v) || N(0, I)) in {dim} dimensions")


def check_posterior_linear_gaussian(mean, var) -> CheckResult:
    """Check the posterior :math:`p(z \\mid x)` of the 1-D model :math:`z \\sim \\mathcal N(0, 1)`, :math:`x \\mid z \\sim \\mathcal N(wz + b, s_2)`.

    Give its mean and its **variance** in the symbols ``x, w, b, s2`` (``s2`` is the noise
    variance). Right: mean :math:`w(x - b)/(w^2 + s_2)`, variance :math:`s_2/(w^2 + s_2)` (book eq.
    ``elbo-lg-posterior`` with :math:`k = d = 1`). Recognised slips: the noise standard deviation
    where its variance belongs, the precision given for the variance, the bias forgotten.
    """
    syms = [x, w, b, s2]
    mean_a = _adopt(mean, syms, "the posterior mean")
    var_a = _adopt(var, syms, "the posterior variance")
    right_mean, right_var = w * (x - b) / (w**2 + s2), s2 / (w**2 + s2)
    s = sp.sqrt(s2)
    var_res = _verdict(var_a, right_var, [
        (s / (w**2 + s), "you used the noise standard deviation sqrt(s2) where its variance s2 belongs."),
        ((w**2 + s2) / s2, "that is the posterior precision (1 / variance): invert it."),
        (1 / (w**2 + 1), "this is the posterior variance for s2 = 1 only: the precision is 1 + w^2 / s2."),
    ], "the posterior variance")
    mean_res = _verdict(mean_a, right_mean, [
        (w * x / (w**2 + s2), "you forgot the bias: the posterior mean uses the residual x - b."),
        (w * (x - b) / (w**2 + s), "you used the noise standard deviation sqrt(s2) where its variance s2 belongs."),
        ((x - b) / w, "that is the maximum-likelihood z (it ignores the prior N(0, 1), which shrinks the mean towards 0)."),
    ], "the posterior mean")
    return _both(mean_res, var_res, "the posterior mean and variance are correct.")


def check_elbo_gap(elbo: float, kl: float, log_evidence: float, rtol: float = 1e-9) -> CheckResult:
    """Check numbers against :math:`\\log p(x) = \\mathrm{ELBO} + D_\\mathrm{KL}(q(z \\mid x)\\,\\|\\,p(z \\mid x))` (book eq. ``elbo-identity``).

    Tolerance: ``rtol`` relative to ``max(1, |log p(x)|)``; the default 1e-9 allows float64
    round-off of closed-form evaluations, not Monte Carlo estimates (use a CLT tolerance for those).
    Recognised slips: the KL subtracted instead of added, a negative KL, an ELBO above the evidence.
    """
    elbo, kl, log_evidence = float(elbo), float(kl), float(log_evidence)
    tol = rtol * max(1.0, abs(log_evidence))
    if abs(elbo + kl - log_evidence) <= tol and kl >= -tol:
        return CheckResult(True, f"ELBO + KL = {elbo + kl:.10g} equals log p(x) = {log_evidence:.10g} (to {tol:.1e}).")
    if kl < -tol:
        return CheckResult(False, f"your KL is negative ({kl:.6g}); a KL divergence is never negative. Did you swap q and p(z | x) inside the log?")
    if abs(elbo - kl - log_evidence) <= tol:
        return CheckResult(False, "the identity is log p(x) = ELBO + KL: the gap between the evidence and the ELBO is the KL, which is added, not subtracted.")
    if elbo > log_evidence + tol:
        return CheckResult(False, f"your ELBO ({elbo:.6g}) exceeds log p(x) ({log_evidence:.6g}); it is a lower bound, so check its sign and the terms you dropped.")
    return CheckResult(False, f"ELBO + KL = {elbo + kl:.10g} but log p(x) = {log_evidence:.10g}: they differ by {elbo + kl - log_evidence:.3g}.")


def check_bits_per_dim(value: float, nats_per_image: float, num_dims: int = 784, rtol: float = 1e-6) -> CheckResult:
    """Check a conversion from nats per image to bits per dimension: :math:`\\text{nats}/(D\\ln 2)` (book eq. ``vae-bits-per-dim``).

    Recognised slips: the :math:`\\ln 2` forgotten (nats/dim), the division by :math:`D` forgotten
    (bits per image), :math:`\\log_2` applied as a factor instead of a divisor.

    Raises:
        ValueError: if ``num_dims < 1``.
    """
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}.")
    value, nats = float(value), float(nats_per_image)
    right = nats / (num_dims * math.log(2))

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-300)

    if close(value, right):
        return CheckResult(True, f"{nats:.6g} nats per image = {right:.6g} bits/dim.")
    for wrong, hint in [
        (nats / num_dims, "that is nats per dimension: divide by ln 2 as well to get bits."),
        (nats / math.log(2), f"that is bits per image: divide by the number of dimensions D = {num_dims} as well."),
        (nats * math.log(2) / num_dims, "multiply by log2(e) = 1 / ln 2, not by ln 2."),
        (nats / (num_dims * math.log(10)), "bits are base-2: divide by ln 2, not ln 10."),
    ]:
        if close(value, wrong):
            return CheckResult(False, hint)
    return CheckResult(False, f"{value:.6g} is not {nats:.6g} / ({num_dims} ln 2) = {right:.6g} bits/dim.")


def check_forward_marginal(mean_coef, var) -> CheckResult:
    """Check :math:`q(x_t \\mid x_0) = \\mathcal N(c\\,x_0, v)`: the mean coefficient :math:`c` and the **variance** :math:`v`, in ``alpha_bar``.

    Right: :math:`c = \\sqrt{\\bar\\alpha_t}`, :math:`v = 1 - \\bar\\alpha_t` (book eq. ``q-xt-x0``).
    Recognised slips: :math:`\\bar\\alpha_t` for :math:`\\sqrt{\\bar\\alpha_t}`, the standard deviation
    :math:`\\sqrt{1 - \\bar\\alpha_t}` given as the variance, :math:`1 - \\sqrt{\\bar\\alpha_t}`.
    """
    c = _adopt(mean_coef, [alpha_bar], "the mean coefficient")
    v = _adopt(var, [alpha_bar], "the variance")
    c_res = _verdict(c, sp.sqrt(alpha_bar), [
        (alpha_bar, "the mean of x_t is sqrt(alpha_bar_t) x_0, not alpha_bar_t x_0: each step scales the signal by sqrt(alpha_t), and the product of the square roots is the square root of the product."),
        (1 - alpha_bar, "1 - alpha_bar_t is the variance of the noise, not the signal coefficient."),
    ], "the mean coefficient")
    v_res = _verdict(v, 1 - alpha_bar, [
        (sp.sqrt(1 - alpha_bar), "that is the standard deviation of the noise; the variance is 1 - alpha_bar_t (variances of independent Gaussians add)."),
        (1 - sp.sqrt(alpha_bar), "the variance is 1 - alpha_bar_t, not 1 - sqrt(alpha_bar_t): signal variance alpha_bar_t plus noise variance must give 1 for unit-variance data."),
        (alpha_bar, "alpha_bar_t is the share of the variance that is signal; the noise variance is 1 - alpha_bar_t."),
    ], "the variance")
    return _both(c_res, v_res, "q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t) is correct.")


def telescoping_symbols(T: int) -> list[sp.Symbol]:
    """The positive symbols ``Q_1, ..., Q_T`` standing for the values :math:`q(x_t \\mid x_0)` in :func:`check_telescoping`."""
    if T < 2:
        raise ValueError(f"T must be >= 2, got {T}.")
    return list(sp.symbols(f"Q_1:{T + 1}", positive=True))


def check_telescoping(answer, T: int) -> CheckResult:
    """Check the value of :math:`\\sum_{t=2}^{T} \\log\\big(q(x_{t-1} \\mid x_0)/q(x_t \\mid x_0)\\big)`, the sum that telescopes in eq. ``vdm-telescoping``.

    Write it in the symbols of :func:`telescoping_symbols` (``Q_t`` for :math:`q(x_t \\mid x_0)`). The
    right answer is :math:`\\log Q_1 - \\log Q_T`. Recognised slips: a term dropped at either end, all
    factors cancelled one by one (a literal reading of Luo 2022, eq. 53), the sign flipped.

    Raises:
        ValueError: if ``T < 2``.
    """
    Q = telescoping_symbols(T)
    a = _adopt(answer, Q, "the telescoping sum")
    right = sp.log(Q[0]) - sp.log(Q[-1])
    slips = [(sp.Integer(0), "the factors do not cancel one by one: q(x_t | x_0) and q(x_(t-1) | x_0) are densities of different variables. Only neighbouring factors of the product cancel, which leaves the first numerator and the last denominator.")]
    if T >= 3:
        slips += [
            (sp.log(Q[0]) - sp.log(Q[-2]), "a term was dropped from the telescoping sum: the last denominator q(x_T | x_0) survives, not q(x_(T-1) | x_0)."),
            (sp.log(Q[1]) - sp.log(Q[-1]), "a term was dropped from the telescoping sum: the sum starts at t = 2, so the first numerator is q(x_1 | x_0)."),
        ]
    slips.append((-right, "the sign is flipped: the numerators are q(x_(t-1) | x_0), so log q(x_1 | x_0) enters with a plus."))
    return _verdict(a, right, slips, "the telescoping sum")


def check_bridge(mean, var) -> CheckResult:
    """Check the bridge :math:`q(x_t \\mid x_{t-1}, x_{t+1})` of the forward chain (book eq. ``vdm-bridge``).

    Give its mean and **variance** in ``alpha_t, alpha_next, x_prev, x_next`` (:math:`\\alpha_t`,
    :math:`\\alpha_{t+1}`, :math:`x_{t-1}`, :math:`x_{t+1}`). Right: precision
    :math:`1/(1-\\alpha_t) + \\alpha_{t+1}/(1-\\alpha_{t+1})`, mean = variance times
    :math:`(\\sqrt{\\alpha_t}x_{t-1}/(1-\\alpha_t) + \\sqrt{\\alpha_{t+1}}x_{t+1}/(1-\\alpha_{t+1}))`.
    Recognised slips: standard deviations for the step variances, :math:`\\alpha` for :math:`\\sqrt\\alpha`,
    the forward step :math:`q(x_t \\mid x_{t-1})` given instead of the bridge.
    """
    syms = [alpha_t, alpha_next, x_prev, x_next]
    mean_a = _adopt(mean, syms, "the bridge mean")
    var_a = _adopt(var, syms, "the bridge variance")
    b0, b1 = 1 - alpha_t, 1 - alpha_next

    def parts(beta0, beta1, root):
        v = 1 / (1 / beta0 + alpha_next / beta1)
        return v * (root(alpha_t) * x_prev / beta0 + root(alpha_next) * x_next / beta1), v

    right_mean, right_var = parts(b0, b1, sp.sqrt)
    wrong_std_mean, wrong_std_var = parts(sp.sqrt(b0), sp.sqrt(b1), sp.sqrt)
    wrong_root_mean, _ = parts(b0, b1, lambda a: a)
    var_res = _verdict(var_a, right_var, [
        (wrong_std_var, "you used the standard deviations sqrt(1 - alpha) where the step variances 1 - alpha belong."),
        (b0, "that is the variance of the forward step q(x_t | x_(t-1)); knowing x_(t+1) as well makes the bridge narrower."),
        (1 / right_var, "that is the precision (1 / variance): invert it."),
    ], "the bridge variance")
    mean_res = _verdict(mean_a, right_mean, [
        (wrong_std_mean, "you used the standard deviations sqrt(1 - alpha) where the step variances 1 - alpha belong."),
        (wrong_root_mean, "the steps scale by sqrt(alpha), not alpha: x_t = sqrt(alpha_t) x_(t-1) + noise."),
        (sp.sqrt(alpha_t) * x_prev, "that is the mean of the forward step q(x_t | x_(t-1)); the bridge also uses x_(t+1)."),
    ], "the bridge mean")
    return _both(mean_res, var_res, "the bridge mean and variance are correct.")
