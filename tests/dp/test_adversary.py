"""Epsilon per adversary: against the server no amplification is credited and each client composes its own rounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.accountants import compute_epsilon
from dp.accountants.analytic import analytic_gaussian_epsilon
from dp.adversary import (
    ANY_CLIENT,
    CENTRAL_UNBOUNDED_REASON,
    Adversary,
    ServerAccount,
    charged_clients,
    epsilon_for,
    epsilon_vs_public,
    epsilon_vs_server,
    epsilon_vs_server_curve,
    epsilon_vs_server_per_client,
    server_view,
    unbounded_reason,
)
from dp.budget import Budget
from dp.errors import BudgetExceededError, ConfigurationError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling

DELTA = 1e-5


def gauss(r: int, ids: tuple[int, ...], *, z: float = 1.0, q: float = 0.01, mode: DPMode = DPMode.DISTRIBUTED,
          population: int = 1000, cohort_ids: tuple[int, ...] | None = None) -> RoundEvent:
    cohort = tuple(sorted(set(ids) | set(cohort_ids or ())))
    return RoundEvent(
        round=r,
        mode=mode,
        mechanism=Mechanism.GAUSSIAN,
        l2_sensitivity=1.0,
        noise_variance=z * z,
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=q,
        population=population,
        cohort=len(cohort),
        survivors=len(ids),
        cohort_ids=cohort,
        survivor_ids=ids,
    )


def skellam(r: int, ids: tuple[int, ...], *, var_scale: float = 1.0) -> RoundEvent:
    l2 = 1024.0 + 10.0
    return RoundEvent(
        round=r,
        mode=DPMode.DISTRIBUTED,
        mechanism=Mechanism.SKELLAM,
        l2_sensitivity=l2,
        l1_sensitivity=10 * l2,
        noise_variance=var_scale * l2 * l2,
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=0.1,
        population=100,
        cohort=len(ids),
        survivors=len(ids),
        dim=100,
        cohort_ids=ids,
        survivor_ids=ids,
    )


def test_finding4_a_client_sampled_three_times_is_charged_three_unamplified_rounds() -> None:
    """Issue 14, finding 4: 100 rounds at q = 0.01, z = 1. Model users see eps < 1; the server
    chose the cohorts, so a client sampled in 3 rounds is at the 3-round Gaussian epsilon."""
    events = [gauss(r, (1, 2) if r in (3, 50, 77) else (2,)) for r in range(1, 101)]
    public = compute_epsilon(events, DELTA)
    assert public < 1.0  # what the ledger used to report as "the" epsilon
    per = epsilon_vs_server_per_client(events, DELTA)
    assert per[1] == pytest.approx(analytic_gaussian_epsilon([1.0] * 3, DELTA), rel=1e-9)
    assert per[1] > 8.0
    assert per[2] == pytest.approx(analytic_gaussian_epsilon([1.0] * 100, DELTA), rel=1e-9)
    assert epsilon_vs_server(events, DELTA) == per[2]
    assert epsilon_vs_public(events, DELTA) == pytest.approx(public)
    # A budget of 2 enforced against the server stops the run long before 100 rounds.
    b = Budget(2.0, DELTA, against=Adversary.SERVER)
    with pytest.raises(BudgetExceededError):
        b.check(events[:-1], events[-1])
    Budget(2.0, DELTA, against=Adversary.PUBLIC).check(events[:-1], events[-1])


def test_server_view_drops_amplification_and_central_is_unbounded() -> None:
    e = gauss(1, (1,), q=0.1)
    v = server_view(e)
    assert v.sampling is Sampling.FULL and v.sampling_rate == 1.0 and v.survivor_ids == (1,)
    c = gauss(1, (1,), mode=DPMode.CENTRAL)
    assert server_view(c).mechanism is Mechanism.NONE
    assert epsilon_vs_server([c], DELTA) == math.inf
    assert unbounded_reason([c]) == CENTRAL_UNBOUNDED_REASON
    assert unbounded_reason([e]) is None
    # Against model users central mode keeps its amplified, finite number.
    assert math.isfinite(epsilon_vs_public([c], DELTA))
    # A round nobody survived costs nothing under either view.
    empty = gauss(2, (), cohort_ids=(3,))
    assert charged_clients(empty) == ()
    assert epsilon_vs_server([empty], DELTA) == 0.0


def test_rounds_without_ids_are_charged_to_every_client() -> None:
    named = gauss(1, (1,))
    anonymous = RoundEvent.from_dict({**named.to_dict(), "round": 2, "cohort_ids": [], "survivor_ids": []})
    assert charged_clients(anonymous) == (ANY_CLIENT,)
    per = epsilon_vs_server_per_client([named, anonymous], DELTA)
    assert per[1] == pytest.approx(analytic_gaussian_epsilon([1.0, 1.0], DELTA))
    assert per[ANY_CLIENT] == pytest.approx(analytic_gaussian_epsilon([1.0], DELTA))
    # A planned round (cohort known, survivors not yet) is charged to every cohort member.
    planned = RoundEvent.from_dict({**named.to_dict(), "survivor_ids": [], "cohort_ids": [1, 5], "cohort": 2})
    assert set(epsilon_vs_server_per_client([planned], DELTA)) == {1, 5}


def test_skellam_rounds_compose_by_rdp_per_client() -> None:
    events = [skellam(r, (1, 2) if r % 2 else (2,)) for r in range(1, 9)]
    per = epsilon_vs_server_per_client(events, DELTA)
    alone_1 = [server_view(e) for e in events if 1 in e.survivor_ids]
    assert per[1] == pytest.approx(compute_epsilon(alone_1, DELTA, accountant="rdp"), rel=1e-9)
    assert per[2] > per[1]


@given(
    st.lists(
        st.tuples(st.sets(st.integers(1, 6), min_size=1, max_size=6), st.floats(0.5, 4.0)),
        min_size=1,
        max_size=12,
    )
)
def test_per_client_gaussian_composition_is_exact_and_ordering_holds(rounds: list[tuple[set[int], float]]) -> None:
    """Against the server each client's epsilon is the exact Gaussian composition of its own
    rounds; it never falls below the amplified number, and order does not matter."""
    events = [gauss(r, tuple(sorted(ids)), z=z, q=0.05) for r, (ids, z) in enumerate(rounds, start=1)]
    per = epsilon_vs_server_per_client(events, DELTA)
    for c, eps in per.items():
        zs = [e.noise_multiplier for e in events if c in e.survivor_ids]
        assert eps == pytest.approx(analytic_gaussian_epsilon(zs, DELTA), rel=1e-9, abs=1e-12)
    server = epsilon_vs_server(events, DELTA)
    assert server >= epsilon_vs_public(events, DELTA)
    assert epsilon_vs_server(list(reversed(events)), DELTA) == pytest.approx(server, rel=1e-12)


def test_public_never_exceeds_server_in_local_mode() -> None:
    # Local mode is charged without amplification against model users too (all rounds, every
    # client): capped by the per-client number against the server.
    events = [gauss(r, (r % 3 + 1,), mode=DPMode.LOCAL, z=2.0) for r in range(1, 10)]
    assert epsilon_vs_public(events, DELTA) == pytest.approx(epsilon_vs_server(events, DELTA))
    assert epsilon_vs_public(events, DELTA) < compute_epsilon(events, DELTA)


def test_epsilon_for_and_budget_against() -> None:
    events = [gauss(r, (1,)) for r in range(1, 4)]
    assert epsilon_for(Adversary.SERVER, events, DELTA) == epsilon_vs_server(events, DELTA)
    assert epsilon_for("public", events, DELTA) == epsilon_vs_public(events, DELTA)
    assert Budget(5.0, DELTA, against="server").spent(events) == epsilon_vs_server(events, DELTA)
    with pytest.raises(ConfigurationError, match="against"):
        Budget(5.0, DELTA, against="everyone")
    with pytest.raises(ConfigurationError, match="delta"):
        epsilon_vs_server_per_client(events, 0.0)


def _slow_server_epsilon(events: list[RoundEvent], delta: float) -> float:
    """Reference: for every client, compose its own rounds from scratch with the accountants
    (exact Gaussian DP when every round of the run is Gaussian, Renyi DP otherwise)."""
    from dp.adversary import charged_clients as charged

    clients = {c for e in events for c in charged(e)}
    gaussian = all(e.mechanism is Mechanism.GAUSSIAN for e in events)
    worst = 0.0
    for c in clients:
        mine = [server_view(e) for e in events if c in charged(e) or charged(e) == (ANY_CLIENT,)]
        if gaussian:
            zs = [e.noise_multiplier for e in mine if e.survivors > 0]
            eps = analytic_gaussian_epsilon(zs, delta) if zs else 0.0
        else:
            eps = compute_epsilon(mine, delta, accountant="rdp")
        worst = max(worst, eps)
    return worst


@settings(max_examples=30)
@given(
    st.lists(
        st.tuples(st.sets(st.integers(1, 5), min_size=1, max_size=5), st.floats(0.8, 3.0), st.booleans()),
        min_size=1,
        max_size=10,
    ),
    st.booleans(),
)
def test_incremental_account_matches_the_slow_reference(rounds: list[tuple[set[int], float, bool]],
                                                        mixed: bool) -> None:
    """The incremental per-client account (the fast path the round loop uses) equals composing
    each client's rounds from scratch, at every prefix, and epsilon_if equals charging."""
    events = [
        skellam(r, tuple(sorted(ids)), var_scale=z * z) if (mixed and sk) else gauss(r, tuple(sorted(ids)), z=z)
        for r, (ids, z, sk) in enumerate(rounds, start=1)
    ]
    acc = ServerAccount(DELTA)
    curve = epsilon_vs_server_curve(events, DELTA)
    for k, e in enumerate(events):
        predicted = acc.epsilon_if(e)
        acc.add(e)
        assert acc.epsilon() == pytest.approx(predicted, rel=1e-12)
        ref = _slow_server_epsilon(events[: k + 1], DELTA)
        assert acc.epsilon() == pytest.approx(ref, rel=1e-9)
        assert curve[k] == pytest.approx(ref, rel=1e-9)


def test_cached_rdp_row_is_the_uncached_curve_and_read_only() -> None:
    """Rounds with the same parameters (every client's own record) share one cached RDP curve:
    it equals the curve computed afresh, and nobody can change it in place."""
    import numpy as np

    from dp.accountants import _rdp_matrix, charge_of
    from dp.adversary import _rdp_row

    _rdp_row.cache_clear()
    charge = charge_of(server_view(skellam(3, (1, 2))))
    first, again = _rdp_row(charge), _rdp_row(charge)
    assert again is first and _rdp_row.cache_info().hits == 1
    assert np.array_equal(first, _rdp_matrix([charge])[0])
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 0.0
    # Composition reads the cache without changing it: the same answer twice.
    events = [skellam(r, (1,)) for r in range(1, 4)]
    assert epsilon_vs_server(events, DELTA) == epsilon_vs_server(events, DELTA)
    assert np.array_equal(_rdp_row(charge), _rdp_matrix([charge])[0])
