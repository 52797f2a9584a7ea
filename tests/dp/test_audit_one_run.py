"""Tests of dp.audit.one_run: the Steinke-Nasr-Jagielski one-run lower bound."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.audit.one_run import audit_from_scores, epsilon_lower_bound, p_value
from dp.errors import ConfigurationError


def slow_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Obviously-correct reference: exact binomial sums with math.comb, loops, no scipy."""
    q = 1.0 / (1.0 + math.exp(-eps))

    def pmf(j: int) -> float:
        return math.comb(r, j) * q**j * (1 - q) ** (r - j)

    if v == 0:
        return 1.0
    beta = sum(pmf(j) for j in range(v, r + 1))
    alpha = 0.0
    for i in range(1, v + 1):
        alpha = max(alpha, sum(pmf(j) for j in range(v - i, v)) / i)
    return min(1.0, beta + 2 * m * delta * alpha)


@settings(max_examples=200, deadline=None)
@given(
    r=st.integers(1, 60),
    data=st.data(),
    eps=st.floats(0.0, 8.0),
    delta=st.sampled_from([0.0, 1e-6, 1e-5, 1e-3]),
)
def test_p_value_matches_slow_reference(r: int, data: st.DataObject, eps: float, delta: float) -> None:
    v = data.draw(st.integers(0, r))
    m = data.draw(st.integers(r, 5 * r + 10))
    assert p_value(m, r, v, eps, delta) == pytest.approx(slow_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("r", [10, 100, 1000])
def test_all_correct_pure_dp_has_closed_form(r: int) -> None:
    # delta = 0, v = r: p(eps) = q^r with q = e^eps/(1+e^eps), so eps* = logit(alpha^(1/r)).
    a = 0.05
    q = a ** (1.0 / r)
    expected = math.log(q / (1 - q))
    got = epsilon_lower_bound(r, r, r, 0.0, alpha=a)
    assert got <= expected and got == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("m", [100, 10_000])
def test_delta_term_only_lowers_the_bound(m: int) -> None:
    # 100 guesses, all right: delta = 0 gives logit(0.05^(1/100)) = 3.4932; the 2 m delta
    # term of the theorem can only lower it, more so with more canaries.
    pure = epsilon_lower_bound(m, 100, 100, 0.0)
    with_delta = epsilon_lower_bound(m, 100, 100, 1e-5)
    assert pure == pytest.approx(3.4932, abs=1e-3)
    assert with_delta < pure
    assert pure - with_delta < (0.01 if m == 100 else 1.0)


@settings(max_examples=60, deadline=None)
@given(r=st.integers(2, 200), data=st.data(), delta=st.sampled_from([0.0, 1e-5]))
def test_bound_is_the_rejection_threshold(r: int, data: st.DataObject, delta: float) -> None:
    v = data.draw(st.integers(0, r))
    m = 2 * r
    e = epsilon_lower_bound(m, r, v, delta)
    if e > 0:
        assert p_value(m, r, v, e, delta) < 0.05  # rejected at the bound (rounded down)
    # Reference: scan a grid upwards; the first epsilon not rejected is above the bound.
    grid = np.arange(0.0, 12.0, 0.01)
    first_kept = next((g for g in grid if p_value(m, r, v, float(g), delta) >= 0.05), 12.0)
    assert e <= first_kept + 1e-6
    assert e >= first_kept - 0.01 - 1e-6


@settings(max_examples=40, deadline=None)
@given(r=st.integers(2, 300), data=st.data())
def test_more_correct_guesses_never_lower_the_bound(r: int, data: st.DataObject) -> None:
    v = data.draw(st.integers(0, r - 1))
    assert epsilon_lower_bound(r, r, v + 1, 1e-5) >= epsilon_lower_bound(r, r, v, 1e-5) - 1e-6


def test_bound_is_valid_for_randomized_response() -> None:
    """eps0-randomized response is exactly eps0-DP: the bound may exceed eps0 in <= 5% of runs."""
    rng = np.random.default_rng(20260101)
    eps0 = 1.0
    p_truth = math.exp(eps0) / (1 + math.exp(eps0))
    exceed = 0
    trials = 200
    for _ in range(trials):
        inc = rng.random(2000) < 0.5
        truthful = rng.random(2000) < p_truth
        reported = np.where(truthful, inc, ~inc)
        scores = reported + 1e-3 * rng.random(2000)  # tie-break noise independent of the coins
        a = audit_from_scores(scores, inc, delta=0.0, guess_counts=[2000])
        exceed += a.epsilon_lower > eps0
    assert exceed / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_audit_from_scores_counts_guesses_like_a_loop() -> None:
    rng = np.random.default_rng(5)
    inc = rng.random(501) < 0.5
    scores = inc * 1.5 + rng.normal(size=501)
    a = audit_from_scores(scores, inc, delta=1e-5, guess_counts=[1, 10, 51, 501])
    order = sorted(range(501), key=lambda i: (-scores[i], i))
    for r, v, e in a.per_guess_count:
        k_pos = (r + 1) // 2
        top = order[:k_pos]
        bottom = order[501 - (r - k_pos) :] if r - k_pos else []
        v_ref = sum(bool(inc[i]) for i in top) + sum(not inc[i] for i in bottom)
        assert v == v_ref
        assert e == epsilon_lower_bound(501, r, v, 1e-5, alpha=0.05 / 4)
    assert a.epsilon_lower == max(t[2] for t in a.per_guess_count)
    assert a.guess_counts == (1, 10, 51, 501) and a.m == 501


def test_default_guess_counts_and_perfect_separation() -> None:
    inc = np.arange(1000) % 2 == 0
    a = audit_from_scores(inc.astype(float), inc, delta=0.0)
    assert a.guess_counts == (10, 20, 50, 100, 200)
    assert all(v == r for r, v, _ in a.per_guess_count)
    assert a.epsilon_lower > 2.5


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((10, 11, 3, 1.0, 0.0), "0 <= v <= r <= m"),
        ((10, 5, 6, 1.0, 0.0), "0 <= v <= r <= m"),
        ((10.0, 5, 3, 1.0, 0.0), "integers"),
        ((10, 5, 3, -1.0, 0.0), "epsilon"),
        ((10, 5, 3, math.inf, 0.0), "epsilon"),
        ((10, 5, 3, 1.0, 1.5), "delta"),
    ],
)
def test_p_value_rejects_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        p_value(*args)


def test_lower_bound_rejects_bad_alpha() -> None:
    with pytest.raises(ConfigurationError, match="alpha"):
        epsilon_lower_bound(10, 10, 10, 0.0, alpha=1.0)
    with pytest.raises(ConfigurationError, match="0 <= v <= r <= m"):
        epsilon_lower_bound(10, 10, 11, 0.0)


@pytest.mark.parametrize(
    ("scores", "included", "kwargs", "match"),
    [
        ([1.0, 2.0], [True], {}, "equal length"),
        ([1.0], [True], {}, "at least 2"),
        ([1.0, math.nan], [True, False], {}, "finite"),
        ([1.0, 2.0], [True, False], {"confidence": 1.0}, "confidence"),
        ([1.0, 2.0], [True, False], {"guess_counts": [3]}, "guess counts"),
        ([1.0, 2.0], [True, False], {"guess_counts": []}, "guess counts"),
    ],
)
def test_audit_from_scores_rejects_bad_input(scores, included, kwargs, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        audit_from_scores(scores, included, delta=1e-5, **kwargs)


def test_exact_fraction_reference_agrees_for_one_case() -> None:
    # An exact rational check of one p-value (q = 3/4 <=> eps = ln 3).
    r, v, m, delta = 8, 7, 20, Fraction(1, 1000)
    q = Fraction(3, 4)
    pmf = [math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(r + 1)]
    beta = sum(pmf[v:])
    alpha = max(sum(pmf[v - i : v]) / i for i in range(1, v + 1))
    exact = float(beta + 2 * m * delta * alpha)
    assert p_value(m, r, v, math.log(3), float(delta)) == pytest.approx(exact, rel=1e-12)
