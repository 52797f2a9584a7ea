from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource
from secagg import (
    LocalProtocolError,
    Message,
    PlainSum,
    RemoteProtocolError,
    RingSpec,
    TooFewSurvivorsError,
    run_round,
)

RING = RingSpec(32)


def _inputs(n, dim, seed=0):
    rng = SeededRandomSource(seed)
    return {c: rng.uint64(dim).astype(np.uint32) for c in range(1, n + 1)}


@given(st.integers(1, 12), st.integers(1, 8), st.data())
def test_plain_sum_equals_sum_of_survivors(n, dim, data):
    inputs = _inputs(n, dim)
    drops = data.draw(st.dictionaries(st.integers(1, n), st.just(0)))
    out = run_round(
        PlainSum(RING, dim), inputs, round_id=1, rng_for=lambda c: SeededRandomSource(c), stages_completed=drops
    )
    survivors = set(inputs) - set(drops)
    if not survivors:
        assert isinstance(out.error, TooFewSurvivorsError) and out.total is None
        return
    assert out.survivors == frozenset(survivors)
    expected = RING.sum((inputs[c] for c in survivors), dim)
    assert np.array_equal(out.total, expected)
    assert all(out.bytes_up[c] == 1 + 4 * dim for c in survivors)


def test_min_survivors_abort_is_typed():
    out = run_round(
        PlainSum(RING, 2, min_survivors=3),
        _inputs(3, 2),
        round_id=1,
        rng_for=SeededRandomSource,
        stages_completed={1: 0},
    )
    assert isinstance(out.error, TooFewSurvivorsError)
    assert out.error.survivors == 2 and out.error.required == 3


def test_server_rejects_bad_messages():
    ps = PlainSum(RING, 2)
    good = ps.client(1, 5, SeededRandomSource(0)).start(np.zeros(2, dtype=np.uint32))[0]
    cases = [
        (Message(9, 0, 5, good.stage, good.payload), "not in the cohort"),
        (Message(1, 0, 4, good.stage, good.payload), "round 4"),
        (Message(1, 0, 5, "other", good.payload), "stage"),
        (Message(1, 0, 5, good.stage, b"\x02" + good.payload[1:]), "version"),
        (Message(1, 0, 5, good.stage, good.payload[:-1]), "bytes"),
    ]
    for msg, match in cases:
        server = ps.server([1, 2], 5)
        with pytest.raises(RemoteProtocolError, match=match) as e:
            server.receive(msg)
        assert e.value.peer == msg.sender
    server = ps.server([1, 2], 5)
    server.receive(good)
    with pytest.raises(RemoteProtocolError, match="duplicate"):
        server.receive(good)


def test_session_misuse_is_local_error():
    ps = PlainSum(RING, 2)
    client = ps.client(1, 1, SeededRandomSource(0))
    client.start(np.zeros(2, dtype=np.uint32))
    with pytest.raises(LocalProtocolError, match="twice"):
        client.start(np.zeros(2, dtype=np.uint32))
    with pytest.raises(LocalProtocolError, match="reserved"):
        ps.client(0, 1, SeededRandomSource(0))
    with pytest.raises(LocalProtocolError, match="distinct"):
        ps.server([1, 1], 1)
    with pytest.raises(LocalProtocolError, match="before"):
        ps.server([1], 1).result()
    server = ps.server([1], 1)
    server.close_stage()
    with pytest.raises(LocalProtocolError, match="closed"):
        server.receive(Message(1, 0, 1, "plain-input", b"\x01"))
    with pytest.raises(RemoteProtocolError):
        client.receive(Message(0, 1, 1, "x", b""))
    with pytest.raises(LocalProtocolError):
        PlainSum(RING, 0)
    with pytest.raises(LocalProtocolError):
        PlainSum(RING, 1, min_survivors=0)


def test_tamper_hook_can_drop_and_simulation_meters():
    dropped = run_round(
        PlainSum(RING, 3),
        _inputs(3, 3),
        round_id=1,
        rng_for=SeededRandomSource,
        tamper=lambda m: [] if m.sender == 2 else [m],
    )
    assert dropped.survivors == frozenset({1, 3})
    assert dropped.server_cpu_s >= 0 and set(dropped.client_cpu_s) == {1, 2, 3}


def test_client_may_not_address_peers():
    class Rogue:
        name = "rogue"
        ring = RING
        dim = 1

        def client(self, me, round_id, rng):
            class C:
                def start(self, x):
                    return [Message(me, 2, round_id, "s", b"")]

            return C()

        def server(self, cohort, round_id):
            return PlainSum(RING, 1).server(cohort, round_id)

    with pytest.raises(LocalProtocolError, match="server only"):
        run_round(Rogue(), _inputs(2, 1), round_id=1, rng_for=SeededRandomSource)


@pytest.mark.parametrize("backend", ["plain", "masking"])
def test_deferred_inputs_are_produced_once_when_asked_and_a_withdrawn_one_is_a_dropout(backend):
    """Each deferred input is called once, by its own session (plain: at start; masking: at the
    masked-input stage, after key setup); one that raises InputWithdrawnError sends nothing from
    then on, and the sum is the other clients'. Producing inputs is metered apart from the secure sum."""
    from secagg import InputWithdrawnError, MaskingSecureSum

    n, dim = 6, 5
    inputs = _inputs(n, dim)
    calls: list[int] = []

    def deferred(c):
        def produce():
            calls.append(c)
            if c == 4:
                raise InputWithdrawnError("client 4's training failed", client=4)
            return inputs[c]

        return produce

    ss = PlainSum(RING, dim) if backend == "plain" else MaskingSecureSum(RING, dim, graph="complete")
    out = run_round(ss, {c: deferred(c) for c in inputs}, round_id=1, rng_for=lambda c: SeededRandomSource(c))
    assert sorted(calls) == list(range(1, n + 1))  # each produced exactly once
    assert out.withdrawn == frozenset({4}) and out.survivors == frozenset(set(inputs) - {4})
    assert np.array_equal(out.total, RING.sum((inputs[c] for c in out.survivors), dim))
    assert set(out.input_cpu_s) == set(inputs) and all(t >= 0 for t in out.client_cpu_s.values())
    if backend == "masking":
        assert out.bytes_up[4] > 0  # it took part in key setup before its input was withdrawn
    else:
        assert out.bytes_up[4] == 0  # plain asks at start: it never sent anything
