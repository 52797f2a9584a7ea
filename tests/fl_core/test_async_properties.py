"""Property tests: whatever the arrival order, buffer composition and members that miss their session,
every applied buffer's unmasked sum is the plain sum of exactly the updates it holds, and no update is
applied twice or revealed alone."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_async_support import SpyTransport, make_fed

from dp.randomness import SeededRandomSource
from fl_core.asynchronous import AsyncFederation, AsyncOptions, SpeedModel, run_buffer_session, session_floor
from secagg import MaskingSecureSum, RingSpec

RING = RingSpec(32)


@st.composite
def sessions(draw):
    n = draw(st.integers(2, 9))
    members = draw(st.lists(st.integers(1, 40), min_size=n, max_size=n, unique=True))
    dim = draw(st.integers(1, 5))
    vecs = {c: np.asarray(draw(st.lists(st.integers(0, 2**32 - 1), min_size=dim, max_size=dim)), dtype=np.uint32)
            for c in members}
    # Stages each member completes before vanishing (absent: it stays); 0..3 for the 4-stage variant.
    drops = draw(st.dictionaries(st.sampled_from(members), st.integers(0, 3)))
    return members, dim, vecs, drops


@settings(max_examples=60)
@given(sessions())
def test_a_buffer_session_releases_exactly_the_sum_of_the_inputs_that_left_or_nothing(case):
    members, dim, vecs, drops = case
    ss = MaskingSecureSum(RING, dim, graph="complete", min_survivors=2)
    floor = session_floor(ss, len(members), 1)
    bo = run_buffer_session(ss, vecs, session=7, rng_for=lambda c: SeededRandomSource(f"p{c}"), stages_completed=drops)
    left = {c for c in members if drops.get(c, 99) > ss.input_stage}  # alive when the masked input is due
    assert bo.inputs_sent <= left  # no input leaves a member that vanished before the input stage
    if bo.released:
        assert bo.survivors == left
        assert len(left) >= max(floor, 2)  # never a sum of fewer than the floor, never one update alone
        expected = sum((vecs[c].astype(np.uint64) for c in left), np.zeros(dim, dtype=np.uint64)) % 2**32
        assert bo.outcome.total.tolist() == expected.astype(np.uint32).tolist()
    else:
        assert bo.outcome.total is None
    # Liveness: if nobody vanished after its input and the others keep t neighbours each, it releases.
    t = ss.parameters(len(members)).threshold
    if all(k <= ss.input_stage for k in drops.values()) and len(left) >= max(floor, t + 1):
        assert bo.released


@st.composite
def runs(draw):
    n = draw(st.integers(4, 9))
    k = draw(st.integers(2, 3))
    c = draw(st.integers(k, n))
    times = draw(st.lists(st.floats(0.5, 200.0, allow_nan=False), min_size=n, max_size=n))
    jitter = draw(st.sampled_from([0.0, 0.5]))
    dropout = draw(st.sampled_from([0.0, 0.2, 0.5]))
    max_staleness = draw(st.sampled_from([None, 0, 1, 3]))
    seed = draw(st.integers(0, 2**16))
    return n, k, c, times, jitter, dropout, max_staleness, seed


@settings(max_examples=20)
@given(runs())
def test_every_applied_buffer_is_the_plain_sum_of_exactly_its_updates_and_none_is_applied_twice(case):
    n, k, c, times, jitter, dropout, max_staleness, seed = case
    spy = SpyTransport()
    fed = make_fed(n_clients=n, buffer=k, secure_sum="masking", transport=spy, seed=seed)
    afed = AsyncFederation(
        fed,
        AsyncOptions(
            buffer=k, concurrency=c, dropout=dropout, max_staleness=max_staleness, max_time_s=5_000.0,
            speed=SpeedModel.trace(times, jitter_sigma=jitter, stage_s=0.3),
        ),
    )
    applied_tokens: list[tuple[int, int]] = []
    orig = afed._run_session

    def watch(members):
        tasks = {m: afed.clients[m].held.task for m in members}  # (client, task) names one update
        res = orig(members)
        if res is not None:
            applied_tokens.extend((m, tasks[m]) for m in res.survivors)
        return res

    afed._run_session = watch
    results = afed.fit(4)
    released = [s for s in spy.sessions if s["outcome"].total is not None]
    assert len(released) >= len(results)
    by_round = {s["round_id"]: s for s in spy.sessions}
    for b in results:
        sess = by_round[b.session]
        inputs, drops, stage = sess["inputs"], sess["drops"], sess["input_stage"]
        # Exactly the members whose input left them (not those that missed the session).
        assert set(b.survivors) == {m for m in inputs if drops.get(m, 99) > stage}
        assert len(b.survivors) >= max(afed.floor, 2)
        expected = sum((inputs[m].astype(np.uint64) for m in b.survivors), np.zeros_like(inputs[b.survivors[0]],
                                                                                         dtype=np.uint64))
        assert sess["outcome"].total.tolist() == (expected % 2**32).astype(np.uint32).tolist()
        if max_staleness is not None:
            assert max(b.staleness) <= max_staleness
    assert len(applied_tokens) == len(set(applied_tokens))  # never applied twice
    assert fed.round == len(results)
    s = afed.stats
    held = sum(1 for cl in afed.clients.values() if cl.held is not None)
    refused = sum(s.refused_by_server.values()) + sum(s.refused_by_client.values())
    assert s.check_ins == s.applied_updates + s.lost_after_input + refused + held
