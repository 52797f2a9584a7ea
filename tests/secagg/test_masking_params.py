"""Choice of (k, t): bounds against scipy's binomial tails, a Monte Carlo check of the graph bound, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from secagg.errors import ConfigurationError
from secagg.masking import GraphKind, MaskingSecureSum, choose_parameters
from secagg.ring import RingSpec


def test_complete_graph_uses_all_others_and_majority() -> None:
    p = choose_parameters(10, graph=GraphKind.COMPLETE)
    assert (p.graph, p.degree, p.threshold) == (GraphKind.COMPLETE, 9, 5)


@pytest.mark.parametrize("n", [100, 1000, 10_000])
def test_sparse_choice_meets_its_targets_and_is_logarithmic(n: int) -> None:
    p = choose_parameters(n, graph="sparse")
    assert p.graph is GraphKind.SPARSE
    assert p.privacy_failure_probability <= 2.0**-40 and p.failure_probability <= 2.0**-20
    assert p.threshold == p.degree // 2 + 1
    assert p.degree <= 8 * np.log2(n)
    smaller = choose_parameters(n, graph="sparse", degree=p.degree - 2)
    assert smaller.privacy_failure_probability > 2.0**-40 or smaller.failure_probability > 2.0**-20


@given(n=st.integers(3, 300), gamma=st.floats(0, 0.3), delta=st.floats(0, 0.3), h=st.integers(1, 20))
def test_bounds_match_scipy_binomial_tails(n: int, gamma: float, delta: float, h: int) -> None:
    k = min(2 * h, n - 1)
    p = choose_parameters(n, graph="sparse", degree=2 * h, corrupt_fraction=gamma, dropout_rate=delta)
    t = p.threshold
    fail = min(1.0, n * stats.binom.cdf(t - 1, k, 1 - delta))
    priv = n * stats.binom.sf(t - 1, k, gamma)
    if p.graph is GraphKind.SPARSE:
        priv += n * (gamma + delta) ** (k // 2)
    assert p.failure_probability == pytest.approx(fail, rel=1e-6, abs=1e-15)
    assert p.privacy_failure_probability == pytest.approx(min(1.0, priv), rel=1e-6, abs=1e-15)


def test_disconnection_bound_holds_by_monte_carlo() -> None:
    """Remove each vertex with probability q; the honest subgraph disconnects no more often than n q^(k/2)."""
    n, k, q, trials = 40, 6, 0.3, 3000
    spec = MaskingSecureSum(RingSpec(8), 1, graph="sparse", degree=k, threshold=1)
    graph = spec.neighbours(list(range(1, n + 1)), 0)
    rng = np.random.default_rng(0)
    disconnected = 0
    for _ in range(trials):
        alive = {u for u in graph if rng.random() >= q}
        if not alive:
            continue
        start = next(iter(alive))
        seen, stack = {start}, [start]
        while stack:
            for v in graph[stack.pop()] & alive:
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
        disconnected += seen != alive
    assert disconnected / trials <= n * q ** (k // 2)
    assert disconnected > 0  # the experiment is sensitive enough to see disconnections at all


def test_sparse_falls_back_to_complete_for_small_cohorts() -> None:
    assert choose_parameters(8, graph="sparse").graph is GraphKind.COMPLETE
    assert choose_parameters(30, graph="sparse", degree=40).graph is GraphKind.COMPLETE


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n": 1}, "at least 2"),
        ({"n": 10, "corrupt_fraction": 1.0}, r"\[0, 1\)"),
        ({"n": 10, "dropout_rate": -0.1}, r"\[0, 1\)"),
        ({"n": 10, "graph": "sparse", "degree": 3}, "even"),
        ({"n": 10, "graph": "sparse", "degree": 0}, "even"),
        ({"n": 10, "graph": "complete", "threshold": 10}, "threshold"),
        ({"n": 10, "graph": "complete", "threshold": 0}, "threshold"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        choose_parameters(**kwargs)


def test_large_degrees_at_high_dropout_do_not_overflow() -> None:
    """Regression: C(k, i) beyond a float (k above about 1030, which a 50 % dropout rate drives the
    sparse search to) raised OverflowError. The tails are summed in log space now; a majority
    threshold with half the clients dropping fails about half the time, and the bound says so."""
    p = choose_parameters(1500, dropout_rate=0.5)
    assert p.graph is GraphKind.COMPLETE and p.degree == 1499 and p.threshold == 750
    assert p.failure_probability == 1.0 and p.privacy_failure_probability == 0.0
    forced = choose_parameters(1100, dropout_rate=0.5, degree=1050)
    k, t = forced.degree, forced.threshold
    assert forced.failure_probability == pytest.approx(min(1.0, 1100 * stats.binom.cdf(t - 1, k, 0.5)), rel=1e-9)
    assert forced.privacy_failure_probability == pytest.approx(
        1100 * stats.binom.sf(t - 1, k, 0.05) + 1100 * 0.55 ** (k // 2), rel=1e-9, abs=1e-300
    )


@given(k=st.integers(0, 400), p=st.sampled_from([0.0, 1e-9, 0.05, 0.3, 0.5, 0.9, 1.0]), t=st.integers(-2, 402))
def test_binomial_tails_equal_exact_rational_sums(k: int, p: float, t: int) -> None:
    """Slow reference: the tails summed with exact rationals (the float p at its exact value)."""
    from fractions import Fraction

    from secagg.masking.params import _binom_below, _binom_sf

    q = Fraction(p)
    terms = [Fraction(math.comb(k, i)) * q**i * (1 - q) ** (k - i) for i in range(k + 1)]
    sf = float(sum(terms[max(t, 0) :], Fraction(0))) if t > 0 else 1.0
    below = float(sum(terms[: max(0, min(t, k + 1))], Fraction(0)))
    assert _binom_sf(k, p, t) == pytest.approx(min(1.0, sf), rel=1e-11, abs=1e-300)
    assert _binom_below(k, p, t) == pytest.approx(min(1.0, below), rel=1e-11, abs=1e-300)
