"""SymPy helpers for the derivations and the readers' checkers (imports sympy; never used by training).

The book checks every algebraic step by comparing the expression on one line with the expression
on the next: two *different* expressions, equal by :func:`is_equal` (``simplify(lhs - rhs) == 0``,
or agreement at random points where simplification is too slow). :func:`is_equal` and
:func:`equal_at_random_points` refuse (:class:`VacuousCheckError`) two sides that SymPy has already
built into one expression, since such a check could not fail.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import sympy as sp

__all__ = [
    "gaussian_logpdf",
    "kl_gaussian",
    "kl_gaussian_diag",
    "complete_square",
    "is_equal",
    "equal_at_random_points",
    "VacuousCheckError",
    "refuse_vacuous",
    "is_equal_polynomial",
]


class VacuousCheckError(ValueError):
    """A comparison whose two sides are already the same expression as SymPy built them.

    SymPy evaluates as it builds: ``sqrt(a*b)`` of positive symbols becomes ``sqrt(a)*sqrt(b)``,
    ``(1 - a - s) + s`` becomes ``1 - a``, ``2*(x + y)`` becomes ``2*x + 2*y``. A check whose sides
    have merged this way compares an expression with itself and cannot fail.
    """


def refuse_vacuous(lhs, rhs, what: str = "this comparison") -> None:
    """Raise :class:`VacuousCheckError` if ``lhs - rhs`` is already 0 as built (before any simplification).

    That is the case when the two sides are the same object, or differ only in ways SymPy's
    automatic evaluation removes (term order, collected like terms, numeric factors distributed).
    The book uses it so that every symbolic check compares two *different* constructions.

    Raises:
        VacuousCheckError: with a message that says why and what to do instead.
    """
    difference = sp.sympify(lhs) - sp.sympify(rhs)
    if difference == 0:
        raise VacuousCheckError(
            f"{what}: both sides are already the same expression as SymPy built them "
            f"({sp.sstr(sp.sympify(lhs))[:80]}), so the check cannot fail. Compare two different "
            "constructions: derive one side step by step and write the other from the formula in the text. "
            "Where a derived result (from solve, integrate, simplify) comes out exactly as the text writes it, "
            "check a property that could fail instead, e.g. substitute it into the equation it solves."
        )


def gaussian_logpdf(x: sp.Expr, mean: sp.Expr, var: sp.Expr) -> sp.Expr:
    """:math:`\\log \\mathcal N(x; \\mu, \\sigma^2) = -\\tfrac12\\log(2\\pi\\sigma^2) - (x-\\mu)^2/(2\\sigma^2)` in nats.

    ``var`` is a variance (not a standard deviation).
    """
    return -sp.log(2 * sp.pi * var) / 2 - (x - mean) ** 2 / (2 * var)


def kl_gaussian(mean1: sp.Expr, var1: sp.Expr, mean2: sp.Expr, var2: sp.Expr) -> sp.Expr:
    """:math:`D_\\mathrm{KL}(\\mathcal N(\\mu_1,\\sigma_1^2)\\,\\|\\,\\mathcal N(\\mu_2,\\sigma_2^2))` in nats (1-D, closed form).

    :math:`\\tfrac12\\big(\\log(\\sigma_2^2/\\sigma_1^2) + (\\sigma_1^2 + (\\mu_1-\\mu_2)^2)/\\sigma_2^2 - 1\\big)`;
    Kingma & Welling (2014), App. B; Luo (2022), eq. 87 for the multivariate form.
    """
    return (sp.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1) / 2


def kl_gaussian_diag(
    means1: Iterable[sp.Expr], vars1: Iterable[sp.Expr], means2: Iterable[sp.Expr], vars2: Iterable[sp.Expr]
) -> sp.Expr:
    """KL between two Gaussians with diagonal covariances: the sum of the 1-D :func:`kl_gaussian` terms.

    Raises:
        ValueError: if the four sequences differ in length.
    """
    m1, v1, m2, v2 = (list(a) for a in (means1, vars1, means2, vars2))
    if not len(m1) == len(v1) == len(m2) == len(v2):
        raise ValueError("kl_gaussian_diag: means and variances must all have the same length.")
    return sp.Add(*(kl_gaussian(a, b, c, d) for a, b, c, d in zip(m1, v1, m2, v2)))


def complete_square(expr: sp.Expr, x: sp.Symbol) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """Write a quadratic ``expr`` in ``x`` as :math:`-\\tfrac{p}{2}(x - m)^2 + c`; return ``(p, m, c)``.

    For a log-density, ``p`` is the precision (1/variance) and ``m`` the mean of the Gaussian in ``x``.

    Raises:
        ValueError: if ``expr`` is not a polynomial of degree 2 in ``x``.
    """
    poly = sp.Poly(sp.expand(expr), x)
    if poly.degree() != 2:
        raise ValueError(f"complete_square: expected a quadratic in {x}, got degree {poly.degree()}.")
    a, b, c0 = (poly.coeff_monomial(x**k) for k in (2, 1, 0))
    return sp.simplify(-2 * a), sp.simplify(-b / (2 * a)), sp.simplify(c0 - b**2 / (4 * a))


def equal_at_random_points(lhs: sp.Expr, rhs: sp.Expr, trials: int = 20, seed: int = 0, rtol: float = 1e-9) -> bool:
    """Whether ``lhs`` and ``rhs`` agree at ``trials`` random points (each free symbol uniform on (0.05, 0.95)).

    Values in (0, 1) suit schedule quantities (betas, alpha_bars); the tolerance ``rtol`` is relative
    to the larger magnitude and covers float round-off of 30-digit evaluation. Points where either
    side is not finite are skipped; if all are, the answer is False.

    Raises:
        VacuousCheckError: if the two sides are already the same expression as built (:func:`refuse_vacuous`).
    """
    refuse_vacuous(lhs, rhs, "equal_at_random_points")
    return _agree_at_random_points(sp.sympify(lhs), sp.sympify(rhs), trials, seed, rtol)


def _agree_at_random_points(lhs: sp.Expr, rhs: sp.Expr, trials: int = 20, seed: int = 0, rtol: float = 1e-9) -> bool:
    """:func:`equal_at_random_points` without the guard (the checkers compare a reader's answer with a known slip)."""
    rng = random.Random(seed)
    symbols = sorted(lhs.free_symbols | rhs.free_symbols, key=str)
    agreed = 0
    for _ in range(trials):
        point = {s: sp.Float(rng.uniform(0.05, 0.95), 30) for s in symbols}
        a, b = complex(lhs.evalf(30, subs=point)), complex(rhs.evalf(30, subs=point))
        if not all(map(lambda z: abs(z) < float("inf"), (a, b))):
            continue
        if abs(a - b) > rtol * max(1.0, abs(a), abs(b)):
            return False
        agreed += 1
    return agreed > 0


def is_equal(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """Whether two expressions are equal: ``simplify(lhs - rhs) == 0``, else :func:`equal_at_random_points`.

    A False from simplify alone is not trusted (simplify can miss identities), hence the numeric
    fallback; a True from it is.

    Raises:
        VacuousCheckError: if the two sides are already the same expression as built, so that the
            check could not fail (:func:`refuse_vacuous`).
    """
    lhs, rhs = sp.sympify(lhs), sp.sympify(rhs)
    refuse_vacuous(lhs, rhs, "is_equal")
    if sp.simplify(sp.expand(lhs - rhs)) == 0:
        return True
    return _agree_at_random_points(lhs, rhs)


def is_equal_polynomial(lhs, rhs, variables) -> bool:
    """Whether two polynomials in ``variables`` are equal, comparing coefficient by coefficient with ``is_equal``.

    Gaussian log-densities are quadratics in their variables with coefficients (and a constant)
    that depend on the parameters; simplifying the whole difference at once can take SymPy minutes,
    each coefficient takes a fraction of a second. Each coefficient of ``lhs - rhs`` must be 0 by
    :func:`is_equal` (``simplify``, else agreement at random points).

    Raises:
        ValueError: if ``lhs - rhs`` is not a polynomial in ``variables``.
        VacuousCheckError: if the two sides are already the same expression as
            built, so that the check could not fail.
    """
    refuse_vacuous(lhs, rhs, "is_equal_polynomial")
    difference = sp.expand(sp.sympify(lhs) - sp.sympify(rhs))
    try:
        poly = sp.Poly(difference, *variables)
    except sp.PolynomialError as err:
        raise ValueError(f"is_equal_polynomial: the difference is not a polynomial in {list(variables)} ({err}).") from err
    # Each coefficient of the expanded difference is a different construction from 0 unless it is 0.
    return all(c == 0 or is_equal(c, sp.Integer(0)) for c in poly.coeffs())
