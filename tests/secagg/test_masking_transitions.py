"""Walks every (state, message kind) pair of both variants' transition tables: accepted iff the table says so.

Without identity keys the honest-but-curious table runs (four stages, no consistency
check); with identity keys the active table (five stages). Each variant is walked
against an independently written expected path and an honest round recorded in it.
"""

from __future__ import annotations

import pytest
from test_masking_support import identity_kw, make_inputs, record_honest_round, rngs

from secagg.errors import LocalProtocolError, RemoteProtocolError
from secagg.masking import (
    ACTIVE,
    HONEST_BUT_CURIOUS,
    ClientState,
    MaskingSecureSum,
    ServerState,
    Stage,
    TransitionTable,
    Variant,
    transitions_for,
    wire,
)
from secagg.protocol import SERVER, Message
from secagg.ring import RingSpec

RING = RingSpec(16)
IDS = [1, 2, 3, 4]
ROUND = 6
VARIANTS = [False, True]  # with identity keys?


def _spec(with_identities: bool) -> MaskingSecureSum:
    return MaskingSecureSum(RING, 5, graph="complete", **identity_kw(IDS, with_identities))  # type: ignore[arg-type]


def _record(with_identities: bool) -> tuple[dict[Stage, Message], dict[Stage, dict[int, Message]]]:
    """One honest round, driven by hand: server->client-1 messages and all client->server messages by stage."""
    to_one, up, server = record_honest_round(_spec(with_identities), IDS, ROUND)
    assert server.done  # type: ignore[attr-defined]
    return to_one, up


RECORDED = {v: _record(v) for v in VARIANTS}
CLIENT_PATH = {
    False: [ClientState.INIT, ClientState.ADVERTISED, ClientState.SHARED, ClientState.MASKED, ClientState.DONE],
    True: [
        ClientState.INIT,
        ClientState.ADVERTISED,
        ClientState.SHARED,
        ClientState.MASKED,
        ClientState.CHECKED,
        ClientState.DONE,
    ],
}
SERVER_PATH = {
    False: [ServerState.ADVERTISE, ServerState.SHARE, ServerState.MASKED, ServerState.UNMASK, ServerState.DONE],
    True: [
        ServerState.ADVERTISE,
        ServerState.SHARE,
        ServerState.MASKED,
        ServerState.CONSISTENCY,
        ServerState.UNMASK,
        ServerState.DONE,
    ],
}
STAGES = {
    False: [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING],
    True: [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASKING],
}


def _name(with_identities: bool) -> str:
    return "active" if with_identities else "honest-but-curious"


def _table(with_identities: bool) -> TransitionTable:
    return transitions_for(identity_keys=with_identities)


def test_each_spec_runs_the_table_of_its_threat_model() -> None:
    for with_identities, table, variant in [
        (False, HONEST_BUT_CURIOUS, Variant.HONEST_BUT_CURIOUS),
        (True, ACTIVE, Variant.ACTIVE),
    ]:
        spec = _spec(with_identities)
        assert spec.transitions is table and table.variant is variant
        assert list(table.stages) == STAGES[with_identities]
        assert spec.stages == tuple(s.value for s in STAGES[with_identities])
        # The two stage numbers transports rely on mean the same thing in both variants.
        assert spec.stages[spec.input_stage] == "masked-input"
        assert spec.stages[-1] == spec.final_stage == MaskingSecureSum.final_stage == "unmasking"
        assert {Stage(m.stage) for m in RECORDED[with_identities][0].values()} == set(STAGES[with_identities][1:])


def test_tables_are_read_only_data() -> None:
    for table in (HONEST_BUT_CURIOUS, ACTIVE):
        with pytest.raises(TypeError):
            table.client[(ClientState.MASKED, Stage.UNMASKING)] = ClientState.DONE  # type: ignore[index]
        with pytest.raises(TypeError):
            table.server_next[ServerState.MASKED] = ServerState.UNMASK  # type: ignore[index]


def _down(with_identities: bool, stage: Stage) -> Message:
    """The recorded server->client-1 message of ``stage``; a well-formed stand-in where the variant sends none."""
    to_one = RECORDED[with_identities][0]
    if stage in to_one:
        return to_one[stage]
    if stage is Stage.CONSISTENCY_CHECK:  # honest-but-curious: a well-formed list, refused by the table alone
        return Message(SERVER, 1, ROUND, stage.value, wire.encode_id_list(IDS))
    return Message(SERVER, 1, ROUND, stage.value, b"\x01")  # no server message in advertise


def _up(with_identities: bool, stage: Stage) -> Message:
    """Client 2's recorded message of ``stage``; a well-formed stand-in where the variant sends none."""
    up = RECORDED[with_identities][1]
    if 2 in up[stage]:
        return up[stage][2]
    assert stage is Stage.CONSISTENCY_CHECK and not with_identities
    return Message(2, SERVER, ROUND, stage.value, wire.encode_signature(b""))


def _client_in(with_identities: bool, state: ClientState):  # type: ignore[no-untyped-def]
    c = _spec(with_identities).client(1, ROUND, rngs(0)(1))  # same randomness: the recorded messages stay valid
    if state is ClientState.INIT:
        return c
    c.start(make_inputs(RING, 5, IDS, 0)[1])
    table = _table(with_identities)
    path = CLIENT_PATH[with_identities]
    for s in path[1 : path.index(state)]:
        stage = next(st for (cs, st) in table.client if cs is s)
        c.receive(_down(with_identities, stage))
    assert c.state is state
    return c


@pytest.mark.parametrize("with_identities", VARIANTS, ids=_name)
def test_client_table_is_a_path_through_every_state(with_identities: bool) -> None:
    table = _table(with_identities)
    assert [table.client[(s, st)] for (s, st) in table.client] == CLIENT_PATH[with_identities][2:]
    assert [st for (_, st) in table.client] == STAGES[with_identities][1:]


CLIENT_CASES = [(v, state, stage) for v in VARIANTS for state in CLIENT_PATH[v] for stage in Stage]


@pytest.mark.parametrize(
    "with_identities,state,stage", CLIENT_CASES, ids=[f"{_name(v)}-{s.value}-{st.value}" for v, s, st in CLIENT_CASES]
)
def test_client_state_times_message_kind(with_identities: bool, state: ClientState, stage: Stage) -> None:
    client = _client_in(with_identities, state)
    msg = _down(with_identities, stage)
    nxt = _table(with_identities).client.get((state, stage))
    if nxt is not None:
        out = client.receive(msg)
        assert client.state is nxt
        assert [m.stage for m in out] == [stage.value] and out[0].recipient == SERVER
    else:
        err = LocalProtocolError if state is ClientState.INIT else RemoteProtocolError
        with pytest.raises(err):
            client.receive(msg)
        assert client.state is state  # refused messages leave the session unchanged


def test_without_identity_keys_the_client_goes_from_masked_input_straight_to_unmasking() -> None:
    client = _client_in(False, ClientState.MASKED)
    with pytest.raises(RemoteProtocolError, match="unexpected consistency-check message in client state masked"):
        client.receive(_down(False, Stage.CONSISTENCY_CHECK))
    out = client.receive(_down(False, Stage.UNMASKING))
    assert client.state is ClientState.DONE and [m.stage for m in out] == ["unmasking"]


def test_with_identity_keys_the_consistency_stage_is_still_required() -> None:
    """A client that has not signed the survivor list refuses to unmask, even given a request
    carrying t valid signatures (recorded from an honest round of the same variant)."""
    client = _client_in(True, ClientState.MASKED)
    req = wire.decode_unmask_request(_down(True, Stage.UNMASKING).payload)
    assert len(req.signatures) == len(IDS)  # a genuine, fully signed request
    with pytest.raises(RemoteProtocolError, match="unexpected unmasking message in client state masked"):
        client.receive(_down(True, Stage.UNMASKING))
    assert client.state is ClientState.MASKED and client.revealed_b == client.revealed_sk == frozenset()
    client.receive(_down(True, Stage.CONSISTENCY_CHECK))
    client.receive(_down(True, Stage.UNMASKING))
    assert client.state is ClientState.DONE and client.revealed_b == frozenset(IDS) - {1}


def _server_in(with_identities: bool, state: ServerState):  # type: ignore[no-untyped-def]
    server = _spec(with_identities).server(IDS, ROUND)
    table, path = _table(with_identities), SERVER_PATH[with_identities]
    for s in path[: path.index(state)]:
        for m in RECORDED[with_identities][1][table.server_accepts[s]].values():
            server.receive(m)
    assert server.state is state
    return server


@pytest.mark.parametrize("with_identities", VARIANTS, ids=_name)
def test_server_table_is_a_path_through_every_state(with_identities: bool) -> None:
    table = _table(with_identities)
    s, seen = ServerState.ADVERTISE, []
    while s is not ServerState.DONE:
        seen.append(s)
        s = table.server_next[s]
    assert seen + [ServerState.DONE] == SERVER_PATH[with_identities]
    assert [table.server_accepts[s] for s in seen] == STAGES[with_identities] == list(table.stages)


SERVER_CASES = [(v, state, stage) for v in VARIANTS for state in SERVER_PATH[v] for stage in Stage]


@pytest.mark.parametrize(
    "with_identities,state,stage", SERVER_CASES, ids=[f"{_name(v)}-{s.value}-{st.value}" for v, s, st in SERVER_CASES]
)
def test_server_state_times_message_kind(with_identities: bool, state: ServerState, stage: Stage) -> None:
    server = _server_in(with_identities, state)
    msg = _up(with_identities, stage)
    if _table(with_identities).server_accepts.get(state) is stage:
        assert server.receive(msg) == []  # accepted; the stage waits for the others
        assert server.state is state
        with pytest.raises(RemoteProtocolError, match="duplicate"):
            server.receive(msg)
    else:
        with pytest.raises(RemoteProtocolError):
            server.receive(msg)
        assert server.state is state


@pytest.mark.parametrize("with_identities", VARIANTS, ids=_name)
def test_closing_the_masked_input_stage_sends_the_variants_next_request(with_identities: bool) -> None:
    """Without identity keys the server's answer to the last masked input is the unmasking
    request itself, carrying the survivor list; with identity keys it is the consistency check."""
    server = _server_in(with_identities, ServerState.MASKED)
    up = RECORDED[with_identities][1][Stage.MASKED_INPUT]
    out = [m for c in IDS for m in server.receive(up[c])]
    nxt = Stage.CONSISTENCY_CHECK if with_identities else Stage.UNMASKING
    assert sorted(m.recipient for m in out) == IDS and {m.stage for m in out} == {nxt.value}
    assert server.state is (ServerState.CONSISTENCY if with_identities else ServerState.UNMASK)
    if not with_identities:
        req = wire.decode_unmask_request(next(m for m in out if m.recipient == 1).payload)
        assert req.survivors == tuple(IDS) and req.b_ids == (2, 3, 4) and req.sk_ids == () and req.signatures == ()


def test_server_refuses_misaddressed_unknown_and_other_round() -> None:
    server = _server_in(False, ServerState.ADVERTISE)
    good = _up(False, Stage.ADVERTISE_KEYS)
    for bad, match in [
        (Message(2, 3, ROUND, good.stage, good.payload), "delivered to the server"),
        (Message(9, SERVER, ROUND, good.stage, good.payload), "not in the cohort"),
        (Message(2, SERVER, ROUND + 1, good.stage, good.payload), "round 7 in round 6"),
        (Message(2, SERVER, ROUND, good.stage, b"\x01" + good.payload[1:]), "version"),  # version 1: unbound
        (Message(2, SERVER, ROUND, good.stage, good.payload + b"x"), "trailing"),
        (Message(2, SERVER, ROUND, "no-such-stage", good.payload), "while the server is in stage"),
    ]:
        with pytest.raises(RemoteProtocolError, match=match):
            server.receive(bad)
    assert server.state is ServerState.ADVERTISE


@pytest.mark.parametrize("with_identities", VARIANTS, ids=_name)
def test_server_refuses_stage_participants_that_were_dropped(with_identities: bool) -> None:
    up = RECORDED[with_identities][1]
    server = _spec(with_identities).server(IDS, ROUND)
    for c in (1, 2, 3):
        server.receive(up[Stage.ADVERTISE_KEYS][c])
    server.close_stage()  # client 4 missed the deadline
    with pytest.raises(RemoteProtocolError, match="not a participant"):
        server.receive(up[Stage.SHARE_KEYS][4])


def test_client_refuses_foreign_sender_recipient_round_and_stage() -> None:
    client = _client_in(False, ClientState.ADVERTISED)
    good = _down(False, Stage.SHARE_KEYS)
    for bad, match in [
        (Message(2, 1, ROUND, good.stage, good.payload), "from the server only"),
        (Message(SERVER, 2, ROUND, good.stage, good.payload), "delivered to 1"),
        (Message(SERVER, 1, ROUND - 1, good.stage, good.payload), "round 5 in round 6"),
        (Message(SERVER, 1, ROUND, "bogus", good.payload), "unknown stage"),
        (Message(SERVER, 1, ROUND, good.stage, good.payload[:-1]), "malformed"),
    ]:
        with pytest.raises(RemoteProtocolError, match=match):
            client.receive(bad)
    assert client.state is ClientState.ADVERTISED


@pytest.mark.parametrize("with_identities", VARIANTS, ids=_name)
def test_done_server_refuses_more_and_close_is_idempotent(with_identities: bool) -> None:
    server = _server_in(with_identities, ServerState.DONE)
    assert server.close_stage() == []
    with pytest.raises(RemoteProtocolError, match="over"):
        server.receive(_up(with_identities, Stage.UNMASKING))
