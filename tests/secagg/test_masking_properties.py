"""Property test: for random cohorts, graphs, thresholds, both variants (with and without identity
keys), min_survivors guards, vectors and dropout schedules at every stage of the variant, the round
returns the exact sum of the survivors whenever enough survive, else a typed abort.

The survival oracle (tests/secagg/test_masking_support.py) is an independent model of
who survives each stage; the sum oracle adds Python ints.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_masking_support import identity_kw, make_inputs, rngs, slow_sum, survival_oracle

from secagg.errors import TooFewSurvivorsError
from secagg.masking import MaskingSecureSum
from secagg.ring import RingSpec
from secagg.simulation import run_round

NEVER = 99


@st.composite
def scenarios(draw: st.DrawFn, max_n: int = 40) -> tuple[MaskingSecureSum, list[int], dict[int, int], int, int]:
    n = draw(st.integers(3, max_n))
    graph = draw(st.sampled_from(["complete", "sparse"]))
    degree = None
    if graph == "sparse":
        degree = draw(st.one_of(st.none(), st.integers(1, max(1, (n - 1) // 2)).map(lambda h: 2 * h)))
    probe = MaskingSecureSum(RingSpec(8), 1, graph=graph, degree=degree, security_bits=20, correctness_bits=10)
    k = probe.parameters(n).degree
    threshold = draw(st.one_of(st.none(), st.integers(1, k)))
    bits = draw(st.sampled_from([1, 8, 16, 20, 32, 64]))
    dim = draw(st.integers(1, 6))
    ids = sorted(draw(st.sets(st.integers(1, 10_000), min_size=n, max_size=n)))
    with_identities = draw(st.booleans())
    min_survivors = draw(st.one_of(st.just(1), st.integers(1, n)))
    spec = MaskingSecureSum(
        RingSpec(bits),
        dim,
        graph=graph,
        degree=degree,
        threshold=threshold,
        security_bits=20,
        correctness_bits=10,
        min_survivors=min_survivors,
        **identity_kw(ids, with_identities),  # type: ignore[arg-type]
    )
    last = 4 if with_identities else 3  # the index of the unmasking stage: vanish just before it
    rate = draw(st.sampled_from([0.0, 0.1, 0.3, 0.6]))
    drops = {}
    for c in ids:
        if draw(st.floats(0, 1, exclude_max=True)) < rate:
            drops[c] = draw(st.integers(0, last))
    return spec, ids, drops, draw(st.integers(0, 2**16)), draw(st.integers(0, 2**32))


def _check(scenario: tuple[MaskingSecureSum, list[int], dict[int, int], int, int]) -> None:
    spec, ids, drops, seed, round_id = scenario
    inputs = make_inputs(spec.ring, spec.dim, ids, seed)
    ok, survivors = survival_oracle(spec, ids, round_id, drops)
    out = run_round(spec, inputs, round_id=round_id, rng_for=rngs(seed), stages_completed=drops)
    if ok:
        assert out.error is None, out.error
        assert out.stages == (5 if spec.identities is not None else 4)
        assert out.survivors == survivors
        assert np.array_equal(out.total, slow_sum(spec.ring, inputs, sorted(survivors)))
    else:
        assert isinstance(out.error, TooFewSurvivorsError)
        assert out.total is None and out.survivors == frozenset()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_n=40))
def test_exact_sum_or_typed_abort(scenario: tuple[MaskingSecureSum, list[int], dict[int, int], int, int]) -> None:
    _check(scenario)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_n=40))
def test_exact_sum_or_typed_abort_2000_schedules(
    scenario: tuple[MaskingSecureSum, list[int], dict[int, int], int, int],
) -> None:
    _check(scenario)
