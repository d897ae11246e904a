"""ddpm_lib.teaching.checkers: each checker accepts the right answer and names the common slips."""

import math

import pytest
import sympy as sp

from ddpm_lib.teaching.checkers import (CheckResult, alpha_bar, alpha_next, alpha_t, b, check_bits_per_dim, check_bridge,
                               check_elbo_gap, check_forward_marginal, check_kl_gaussian, check_kl_to_standard_normal,
                               check_posterior_linear_gaussian, check_telescoping, m1, m2, s2, v1,
                               v2, telescoping_symbols, w, x, x_next, x_prev)
from ddpm_lib.teaching.checkers import _verdict
from ddpm_lib.teaching.symbolic import VacuousCheckError, is_equal_polynomial, kl_gaussian


def test_result_object():
    r = CheckResult(False, "the sign is flipped.")
    assert not r and str(r) == "WRONG: The sign is flipped." and repr(r) == str(r)
    assert CheckResult(True, "fine.")


def test_kl_gaussian_slips():
    right = (sp.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1) / 2
    assert check_kl_gaussian(right).ok
    assert check_kl_gaussian(sp.log(sp.sqrt(v2) / sp.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - sp.Rational(1, 2)).ok  # same thing, other form
    cases = {
        (sp.log(v1 / v2) + (v2 + (m1 - m2) ** 2) / v1 - 1) / 2: "not symmetric",
        (sp.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2) / 2: "-1",
        sp.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1: "1/2",
        -right: "never negative",
        m1 * v2: "not one of the common slips",
    }
    for answer, hint in cases.items():
        res = check_kl_gaussian(answer)
        assert not res.ok and hint in res.message, res.message
    # symbols are matched by name, whatever their assumptions
    assert check_kl_gaussian(right.subs({v1: sp.Symbol("v1"), m2: sp.Symbol("m2")})).ok
    with pytest.raises(ValueError, match="unknown symbol"):
        check_kl_gaussian(sp.Symbol("sigma"))


def test_kl_to_standard_normal_slips():
    mus, vs = sp.symbols("mu_1:4"), sp.symbols("v_1:4")
    right = sum((v + m**2 - 1 - sp.log(v)) / 2 for m, v in zip(mus, vs))
    assert check_kl_to_standard_normal(right, dim=3).ok
    assert "first dimension" in check_kl_to_standard_normal((vs[0] + mus[0] ** 2 - 1 - sp.log(vs[0])) / 2, dim=3).message
    assert "-1" in check_kl_to_standard_normal(sum((v + m**2 - sp.log(v)) / 2 for m, v in zip(mus, vs)), dim=3).message
    with pytest.raises(ValueError):
        check_kl_to_standard_normal(right, dim=0)


def test_posterior_checker():
    assert check_posterior_linear_gaussian(w * (x - b) / (w**2 + s2), s2 / (w**2 + s2)).ok
    res = check_posterior_linear_gaussian(w * x / (w**2 + s2), (w**2 + s2) / s2)
    assert not res.ok and "bias" in res.message and "precision" in res.message


def test_elbo_gap_checker():
    assert check_elbo_gap(-3.0, 0.5, -2.5).ok
    assert "exceeds" in check_elbo_gap(-1.0, 0.5, -2.5).message
    assert "negative" in check_elbo_gap(-2.0, -0.5, -2.5).message
    res = check_elbo_gap(-3.0, 0.5, -3.5)  # ELBO - KL = log p
    assert not res.ok and "added" in res.message


def test_bits_per_dim_checker():
    nats = 900.0
    assert check_bits_per_dim(nats / (784 * math.log(2)), nats).ok
    assert "per image" in check_bits_per_dim(nats / math.log(2), nats).message
    assert "ln 10" in check_bits_per_dim(nats / (784 * math.log(10)), nats).message
    assert not check_bits_per_dim(1.0, nats).ok


def test_forward_marginal_checker():
    assert check_forward_marginal(sp.sqrt(alpha_bar), 1 - alpha_bar).ok
    res = check_forward_marginal(alpha_bar, sp.sqrt(1 - alpha_bar))
    assert not res.ok and "sqrt(alpha_bar_t) x_0" in res.message and "standard deviation" in res.message


def test_telescoping_checker():
    Q = telescoping_symbols(4)
    assert check_telescoping(sp.log(Q[0] / Q[3]), 4).ok
    assert "dropped" in check_telescoping(sp.log(Q[1]) - sp.log(Q[3]), 4).message
    assert "one by one" in check_telescoping(0, 4).message
    assert "sign" in check_telescoping(sp.log(Q[3]) - sp.log(Q[0]), 4).message
    with pytest.raises(ValueError):
        telescoping_symbols(1)


def test_bridge_checker():
    var = 1 / (1 / (1 - alpha_t) + alpha_next / (1 - alpha_next))
    mean = var * (sp.sqrt(alpha_t) * x_prev / (1 - alpha_t) + sp.sqrt(alpha_next) * x_next / (1 - alpha_next))
    assert check_bridge(mean, var).ok
    var_std = 1 / (1 / sp.sqrt(1 - alpha_t) + alpha_next / sp.sqrt(1 - alpha_next))
    assert "standard deviations" in check_bridge(mean, var_std).message
    assert "forward step" in check_bridge(sp.sqrt(alpha_t) * x_prev, 1 - alpha_t).message


def test_is_equal_polynomial():
    y, a = sp.symbols("y a", real=True)
    assert is_equal_polynomial((y + a) ** 2, y**2 + 2 * a * y + a**2, [y])
    assert not is_equal_polynomial((y + a) ** 2, y**2 + a**2, [y])
    # coefficients that need simplify: (1 - c^2) / (1 - c) = 1 + c and (c^3 - 1) / (c - 1) = c^2 + c + 1
    c = sp.Symbol("c", positive=True)
    assert is_equal_polynomial((1 - c**2) / (1 - c) * y + (c**3 - 1) / (c - 1), (1 + c) * y + c**2 + c + 1, [y])
    assert not is_equal_polynomial((1 - c**2) / (1 - c) * y, (1 - c) * y, [y])
    with pytest.raises(ValueError, match="not a polynomial"):
        is_equal_polynomial(sp.exp(y), 1, [y])


def test_is_equal_polynomial_refuses_sides_built_into_one_expression():
    y = sp.Symbol("y", real=True)
    alpha_t, abar, ab_s, sigma = sp.symbols("alpha_t alphabar_{t-1} alphabar_s sigma", positive=True)
    quad = (y - sp.sqrt(alpha_t) * x) ** 2 / (2 * (1 - alpha_t))
    for lhs, rhs in [(sp.sqrt(alpha_t * abar) * y, sp.sqrt(alpha_t) * sp.sqrt(abar) * y),
                     (((1 - ab_s - sigma**2) + sigma**2) * y**2, (1 - ab_s) * y**2),
                     (quad, quad)]:
        with pytest.raises(VacuousCheckError, match="cannot fail.*Compare two different constructions"):
            is_equal_polynomial(lhs, rhs, [y])


def test_the_checkers_accept_answers_typed_like_the_reference_and_refuse_a_slip_equal_to_it():
    # a reader's answer typed exactly as the reference (the same expression as built) is right, not refused
    right = kl_gaussian(m1, v1, m2, v2)
    typed = (sp.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1) / 2
    assert typed - right == 0
    assert check_kl_gaussian(typed).ok and check_kl_gaussian(right).ok
    assert check_forward_marginal(sp.sqrt(alpha_bar), 1 - alpha_bar).ok
    assert check_kl_to_standard_normal((sp.Symbol("v_1") + sp.Symbol("mu_1") ** 2 - 1 - sp.log(sp.Symbol("v_1"))) / 2, dim=1).ok
    # and a slip typed exactly as the checker builds it is still recognised
    assert "1/2" in check_kl_gaussian(2 * right).message
    assert "never negative" in check_kl_gaussian(-right).message
    assert "standard deviation" in check_forward_marginal(sp.sqrt(alpha_bar), sp.sqrt(1 - alpha_bar)).message
    # a checker whose known slip SymPy builds into the right answer could never name that slip: it raises
    abar_prev = sp.Symbol("alphabar_prev", positive=True)
    with pytest.raises(VacuousCheckError, match="known slip"):
        _verdict(alpha_t, sp.sqrt(alpha_t) * sp.sqrt(abar_prev), [(sp.sqrt(alpha_t * abar_prev), "a slip")], "the coefficient")
