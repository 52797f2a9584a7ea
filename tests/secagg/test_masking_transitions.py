"""Walks every (state, message kind) pair of both transition tables: accepted iff the table says so."""

from __future__ import annotations

import pytest
from test_masking_support import make_inputs, rngs

from secagg.errors import LocalProtocolError, RemoteProtocolError
from secagg.masking import (
    CLIENT_TRANSITIONS,
    SERVER_ACCEPTS,
    SERVER_NEXT,
    ClientState,
    MaskingSecureSum,
    ServerState,
    Stage,
)
from secagg.protocol import SERVER, Message
from secagg.ring import RingSpec

RING = RingSpec(16)
IDS = [1, 2, 3, 4]
ROUND = 6


def _spec() -> MaskingSecureSum:
    return MaskingSecureSum(RING, 5, graph="complete")


def _record() -> tuple[dict[Stage, Message], dict[Stage, dict[int, Message]]]:
    """One honest round, driven by hand: server->client-1 messages and all client->server messages by stage."""
    spec = _spec()
    inputs = make_inputs(RING, 5, IDS, 0)
    server = spec.server(IDS, ROUND)
    clients = {c: spec.client(c, ROUND, rngs(0)(c)) for c in IDS}
    to_one: dict[Stage, Message] = {}
    up: dict[Stage, dict[int, Message]] = {s: {} for s in Stage}
    pending = [m for c in IDS for m in clients[c].start(inputs[c])]
    while pending:
        nxt = []
        for m in pending:
            if m.recipient == SERVER:
                up[Stage(m.stage)][m.sender] = m
                nxt += server.receive(m)
            else:
                if m.recipient == 1:
                    to_one[Stage(m.stage)] = m
                nxt += clients[m.recipient].receive(m)
        pending = nxt
    assert server.done
    return to_one, up


TO_ONE, UP = _record()
CLIENT_PATH = [ClientState.INIT, ClientState.ADVERTISED, ClientState.SHARED, ClientState.MASKED,
               ClientState.CHECKED, ClientState.DONE]
SERVER_PATH = [ServerState.ADVERTISE, ServerState.SHARE, ServerState.MASKED, ServerState.CONSISTENCY,
               ServerState.UNMASK, ServerState.DONE]


def _client_in(state: ClientState):  # type: ignore[no-untyped-def]
    c = _spec().client(1, ROUND, rngs(0)(1))  # same randomness: the recorded messages stay valid
    if state is ClientState.INIT:
        return c
    c.start(make_inputs(RING, 5, IDS, 0)[1])
    for s in CLIENT_PATH[1 : CLIENT_PATH.index(state)]:
        stage = next(st for (cs, st) in CLIENT_TRANSITIONS if cs is s)
        c.receive(TO_ONE[stage])
    assert c.state is state
    return c


def test_client_table_is_a_path_through_every_state() -> None:
    assert [CLIENT_TRANSITIONS[(s, st)] for (s, st) in CLIENT_TRANSITIONS] == CLIENT_PATH[2:]
    assert set(TO_ONE) == {st for (_, st) in CLIENT_TRANSITIONS}


@pytest.mark.parametrize("state", list(ClientState), ids=lambda s: s.value)
@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.value)
def test_client_state_times_message_kind(state: ClientState, stage: Stage) -> None:
    client = _client_in(state)
    msg = TO_ONE.get(stage) or Message(SERVER, 1, ROUND, stage.value, b"\x01")  # no server msg in advertise
    nxt = CLIENT_TRANSITIONS.get((state, stage))
    if nxt is not None:
        out = client.receive(msg)
        assert client.state is nxt
        assert [m.stage for m in out] == [stage.value] and out[0].recipient == SERVER
    else:
        err = LocalProtocolError if state is ClientState.INIT else RemoteProtocolError
        with pytest.raises(err):
            client.receive(msg)
        assert client.state is state  # refused messages leave the session unchanged


def _server_in(state: ServerState):  # type: ignore[no-untyped-def]
    server = _spec().server(IDS, ROUND)
    for s in SERVER_PATH[: SERVER_PATH.index(state)]:
        for m in UP[SERVER_ACCEPTS[s]].values():
            server.receive(m)
    assert server.state is state
    return server


def test_server_table_is_a_path_through_every_state() -> None:
    s, seen = ServerState.ADVERTISE, []
    while s is not ServerState.DONE:
        seen.append(s)
        s = SERVER_NEXT[s]
    assert seen + [ServerState.DONE] == SERVER_PATH
    assert set(SERVER_ACCEPTS.values()) == set(Stage)


@pytest.mark.parametrize("state", list(ServerState), ids=lambda s: s.value)
@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.value)
def test_server_state_times_message_kind(state: ServerState, stage: Stage) -> None:
    server = _server_in(state)
    msg = UP[stage][2]
    if SERVER_ACCEPTS.get(state) is stage:
        assert server.receive(msg) == []  # accepted; the stage waits for the others
        assert server.state is state
        with pytest.raises(RemoteProtocolError, match="duplicate"):
            server.receive(msg)
    else:
        with pytest.raises(RemoteProtocolError):
            server.receive(msg)
        assert server.state is state


def test_server_refuses_misaddressed_unknown_and_other_round() -> None:
    server = _server_in(ServerState.ADVERTISE)
    good = UP[Stage.ADVERTISE_KEYS][2]
    for bad, match in [
        (Message(2, 3, ROUND, good.stage, good.payload), "delivered to the server"),
        (Message(9, SERVER, ROUND, good.stage, good.payload), "not in the cohort"),
        (Message(2, SERVER, ROUND + 1, good.stage, good.payload), "round 7 in round 6"),
        (Message(2, SERVER, ROUND, good.stage, b"\x02" + good.payload[1:]), "version"),
        (Message(2, SERVER, ROUND, good.stage, good.payload + b"x"), "trailing"),
        (Message(2, SERVER, ROUND, "no-such-stage", good.payload), "while the server is in stage"),
    ]:
        with pytest.raises(RemoteProtocolError, match=match):
            server.receive(bad)
    assert server.state is ServerState.ADVERTISE


def test_server_refuses_stage_participants_that_were_dropped() -> None:
    server = _spec().server(IDS, ROUND)
    for c in (1, 2, 3):
        server.receive(UP[Stage.ADVERTISE_KEYS][c])
    server.close_stage()  # client 4 missed the deadline
    with pytest.raises(RemoteProtocolError, match="not a participant"):
        server.receive(UP[Stage.SHARE_KEYS][4])


def test_client_refuses_foreign_sender_recipient_round_and_stage() -> None:
    client = _client_in(ClientState.ADVERTISED)
    good = TO_ONE[Stage.SHARE_KEYS]
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


def test_done_server_refuses_more_and_close_is_idempotent() -> None:
    server = _server_in(ServerState.DONE)
    assert server.close_stage() == []
    with pytest.raises(RemoteProtocolError, match="over"):
        server.receive(UP[Stage.UNMASKING][2])
