"""One test per refusal of the masking sessions that other files do not already reach."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_masking_support import identity_kw, make_inputs, record_honest_round, rngs

from dp.randomness import SeededRandomSource
from secagg.errors import RemoteProtocolError
from secagg.masking import ClientState, MaskingSecureSum, ServerState, Stage, generate_identities, wire
from secagg.primitives import aead
from secagg.protocol import Message
from secagg.ring import RingSpec

RING = RingSpec(16)
IDS = [1, 2, 3, 4, 5]
ROUND = 3


def _spec(**kw: object) -> MaskingSecureSum:
    return MaskingSecureSum(RING, 4, graph="complete", **kw)


def _honest(spec: MaskingSecureSum) -> tuple[dict[Stage, Message], dict[Stage, dict[int, Message]]]:
    down, up, _ = record_honest_round(spec, IDS, ROUND)
    return down, up


SPEC = _spec()  # no identity keys: the honest-but-curious variant, four stages
DOWN, UP = _honest(SPEC)
SPEC_ID = _spec(**identity_kw(IDS, True))  # identity keys: the active variant, five stages
DOWN_ID, UP_ID = _honest(SPEC_ID)


def _client_before(stage: Stage, spec: MaskingSecureSum = SPEC, down: dict[Stage, Message] = DOWN):  # type: ignore[no-untyped-def]
    """Client 1, fed the recorded server messages of every stage before ``stage`` in its variant."""
    order = list(spec.transitions.stages[1:])  # the stages in which the server writes to clients
    c = spec.client(1, ROUND, rngs(0)(1))
    c.start(make_inputs(RING, 4, IDS, 0)[1])
    for s in order[: order.index(stage)]:
        c.receive(down[s])
    return c


def _refused(
    stage: Stage, payload: bytes, match: str, spec: MaskingSecureSum = SPEC, down: dict[Stage, Message] = DOWN
) -> None:
    client = _client_before(stage, spec, down)
    before = client.state
    with pytest.raises(RemoteProtocolError, match=match):
        client.receive(dataclasses.replace(down[stage], payload=payload))
    assert client.state is before
    assert client.revealed_b == client.revealed_sk == frozenset()


# -- client, ShareKeys --------------------------------------------------------------------


def _share_keys(**changes: object) -> bytes:
    req = wire.decode_share_keys_request(DOWN[Stage.SHARE_KEYS].payload)
    return wire.encode_share_keys_request(dataclasses.replace(req, **changes))


def test_client_refuses_unsorted_cohort() -> None:
    _refused(Stage.SHARE_KEYS, _share_keys(cohort=(2, 1, 3, 4, 5)), "not sorted")


def test_client_refuses_cohort_without_itself() -> None:
    _refused(Stage.SHARE_KEYS, _share_keys(cohort=(2, 3, 4, 5, 6)), "misses this client")


def test_client_refuses_a_cohort_below_its_floor() -> None:
    req = wire.decode_share_keys_request(DOWN[Stage.SHARE_KEYS].payload)
    _refused(Stage.SHARE_KEYS, _share_keys(cohort=(1,), peers=req.peers[:0]), "cohort of 1 clients, below")


def test_client_refuses_too_few_neighbours() -> None:
    req = wire.decode_share_keys_request(DOWN[Stage.SHARE_KEYS].payload)
    _refused(Stage.SHARE_KEYS, _share_keys(peers=req.peers[:2]), "threshold is 3")


def test_client_refuses_repeated_keys() -> None:
    req = wire.decode_share_keys_request(DOWN[Stage.SHARE_KEYS].payload)
    (v0, a0), (v1, a1) = req.peers[0], req.peers[1]
    peers = ((v0, a0), (v1, dataclasses.replace(a1, c_pk=a0.c_pk))) + req.peers[2:]
    _refused(Stage.SHARE_KEYS, _share_keys(peers=peers), "repeat other keys")


def test_client_refuses_degenerate_peer_key() -> None:
    req = wire.decode_share_keys_request(DOWN[Stage.SHARE_KEYS].payload)
    v0, a0 = req.peers[0]
    peers = ((v0, dataclasses.replace(a0, c_pk=bytes(32))),) + req.peers[1:]
    _refused(Stage.SHARE_KEYS, _share_keys(peers=peers), "degenerate")


def test_client_refuses_peer_without_identity_key() -> None:
    pub, sec = generate_identities(IDS, SeededRandomSource("ids"))
    spec = _spec(identities={c: k for c, k in pub.items() if c != 2}, signing_keys={1: sec[1]})
    client = spec.client(1, ROUND, rngs(0)(1))
    client.start(make_inputs(RING, 4, IDS, 0)[1])
    with pytest.raises(RemoteProtocolError, match="client 2 has no identity key"):
        client.receive(DOWN[Stage.SHARE_KEYS])


# -- client, MaskedInputCollection --------------------------------------------------------


def _sealed(records: tuple[tuple[int, bytes], ...]) -> bytes:
    return wire.encode_sealed_shares(wire.SealedShares(records))


def _records() -> tuple[tuple[int, bytes], ...]:
    return wire.decode_sealed_shares(DOWN[Stage.MASKED_INPUT].payload).records


def test_client_refuses_shares_from_non_neighbours() -> None:
    _refused(Stage.MASKED_INPUT, _sealed(((9, b"x"),) + _records()[1:]), "not neighbours")


def test_client_refuses_too_few_share_holders() -> None:
    _refused(Stage.MASKED_INPUT, _sealed(_records()[:2]), "threshold is 3")


def test_client_refuses_share_naming_wrong_parties() -> None:
    """A dealer that seals a share naming another holder is caught after decryption."""
    client = _client_before(Stage.MASKED_INPUT)
    recs = list(_records())
    dealer = recs[0][0]
    key = client._open_keys[dealer]  # the honest key: the ciphertext authenticates
    pt = wire.encode_share_plaintext(wire.SharePlaintext(dealer, 4, 1, 2))
    ad = aead.associated_data(
        version=wire.VERSION, round_id=ROUND, sender=dealer, recipient=1, context=client._binding.setup
    )
    recs[0] = (dealer, aead.seal(key, bytes(12), pt, ad))
    with pytest.raises(RemoteProtocolError, match="wrong parties"):
        client.receive(dataclasses.replace(DOWN[Stage.MASKED_INPUT], payload=_sealed(tuple(recs))))
    assert client.state is ClientState.SHARED


# -- client, ConsistencyCheck (active variant): the survivor list is checked before signing ------


def test_client_refuses_unsorted_or_foreign_survivor_list() -> None:
    _refused(Stage.CONSISTENCY_CHECK, wire.encode_id_list([1, 2, 9]), "sorted subset", SPEC_ID, DOWN_ID)


def test_client_refuses_survivor_list_without_itself() -> None:
    _refused(Stage.CONSISTENCY_CHECK, wire.encode_id_list([2, 3, 4]), "omits this client", SPEC_ID, DOWN_ID)


def test_client_refuses_survivor_list_below_threshold() -> None:
    _refused(Stage.CONSISTENCY_CHECK, wire.encode_id_list([1, 2]), "below the threshold", SPEC_ID, DOWN_ID)


def test_client_refuses_consistency_signatures_from_non_survivors() -> None:
    client = _client_before(Stage.UNMASKING, SPEC_ID, DOWN_ID)
    req = wire.decode_unmask_request(DOWN_ID[Stage.UNMASKING].payload)
    bad = dataclasses.replace(req, signatures=req.signatures[:-1] + ((77, bytes(64)),))
    with pytest.raises(RemoteProtocolError, match="non-survivors"):
        client.receive(dataclasses.replace(DOWN_ID[Stage.UNMASKING], payload=wire.encode_unmask_request(bad)))
    assert client.state is ClientState.CHECKED


# -- client, Unmasking without a consistency round (honest-but-curious variant) ------------------
# The unmasking request is where the survivor list first arrives: every check the consistency
# stage applies runs here, one test per refusal.


def _unmask_request(down: dict[Stage, Message] = DOWN, **changes: object) -> bytes:
    req = wire.decode_unmask_request(down[Stage.UNMASKING].payload)
    return wire.encode_unmask_request(dataclasses.replace(req, **changes))


def test_honest_but_curious_client_is_in_state_masked_when_unmasking_arrives() -> None:
    """Control for the refusals below: the recorded request itself is accepted in state MASKED."""
    client = _client_before(Stage.UNMASKING)
    assert client.state is ClientState.MASKED
    assert Stage.CONSISTENCY_CHECK not in DOWN and wire.decode_unmask_request(DOWN[Stage.UNMASKING].payload).survivors
    client.receive(DOWN[Stage.UNMASKING])
    assert client.state is ClientState.DONE and client.revealed_b == {2, 3, 4, 5}


@pytest.mark.parametrize(
    "survivors", [(2, 1, 3, 4, 5), (1, 2, 3, 3, 4), (1, 2, 3, 4, 9)], ids=["unsorted", "repeat", "foreign"]
)
def test_unmasking_request_with_unsorted_or_foreign_survivor_list_is_refused(survivors: tuple[int, ...]) -> None:
    _refused(Stage.UNMASKING, _unmask_request(survivors=survivors), "not a sorted subset of the cohort")


def test_unmasking_request_with_survivor_list_without_this_client_is_refused() -> None:
    _refused(Stage.UNMASKING, _unmask_request(survivors=(2, 3, 4, 5)), "survivor list omits this client")


def test_unmasking_request_with_survivor_list_below_threshold_is_refused() -> None:
    # b_ids stay within the survivor list, so only the threshold check can refuse it.
    _refused(Stage.UNMASKING, _unmask_request(survivors=(1, 2), b_ids=(2,), sk_ids=(3, 4, 5)), "below the threshold 3")


def test_unmasking_request_with_survivor_list_below_min_survivors_is_refused() -> None:
    """The DP guard: 4 survivors pass the threshold (3) but not min_survivors (5)."""
    spec = _spec(min_survivors=5)
    down, _ = _honest(spec)
    payload = _unmask_request(down, survivors=(1, 2, 3, 4), b_ids=(2, 3, 4), sk_ids=(5,))
    _refused(Stage.UNMASKING, payload, "4 survivors, below the 5 the round requires", spec, down)


# -- server ---------------------------------------------------------------------------------


def _server_at(state: ServerState, spec: MaskingSecureSum = SPEC, up: dict[Stage, dict[int, Message]] = UP):  # type: ignore[no-untyped-def]
    """A server fed every recorded client message of the stages before ``state`` in its variant."""
    server = spec.server(IDS, ROUND)
    table, s = spec.transitions, ServerState.ADVERTISE
    while s is not state:
        for m in up[table.server_accepts[s]].values():
            server.receive(m)
        s = table.server_next[s]
    assert server.state is state
    return server


def _server_refuses(state: ServerState, stage: Stage, payload: bytes, match: str) -> None:
    server = _server_at(state)
    with pytest.raises(RemoteProtocolError, match=match) as exc:
        server.receive(dataclasses.replace(UP[stage][2], payload=payload))
    assert exc.value.peer == 2 and server.state is state


def test_server_refuses_shares_not_addressed_to_the_neighbours() -> None:
    recs = wire.decode_sealed_shares(UP[Stage.SHARE_KEYS][2].payload).records
    _server_refuses(ServerState.SHARE, Stage.SHARE_KEYS, _sealed(recs[:-1]), "exactly the sender's neighbours")


def test_server_refuses_masked_input_of_wrong_length() -> None:
    payload = UP[Stage.MASKED_INPUT][2].payload
    _server_refuses(ServerState.MASKED, Stage.MASKED_INPUT, payload[:-2], "expected 8")


def test_server_refuses_masked_input_outside_a_narrow_ring() -> None:
    spec = MaskingSecureSum(RingSpec(12), 4, graph="complete")
    _, up = _honest(spec)
    server = _server_at(ServerState.MASKED, spec, up)
    payload = wire.encode_masked_input(bytes(32), bytes(32), np.array([0, 0, 0, 5000], dtype="<u2").tobytes())
    with pytest.raises(RemoteProtocolError, match="outside Z_2"):
        server.receive(dataclasses.replace(up[Stage.MASKED_INPUT][2], payload=payload))
    assert server.state is ServerState.MASKED


def test_server_refuses_unmasking_response_that_does_not_answer() -> None:
    resp = wire.decode_unmask_response(UP[Stage.UNMASKING][2].payload)
    bad = wire.encode_unmask_response(dataclasses.replace(resp, b_shares=resp.b_shares[:-1]))
    _server_refuses(ServerState.UNMASK, Stage.UNMASKING, bad, "does not answer")


def test_server_result_reports_invalid_shares() -> None:
    server = _server_at(ServerState.UNMASK)
    for c, m in UP[Stage.UNMASKING].items():
        resp = wire.decode_unmask_response(m.payload)
        huge = tuple((u, (1 << 256) + 5) for u, _ in resp.b_shares)  # not a polynomial through a 32-byte secret
        server.receive(
            dataclasses.replace(m, payload=wire.encode_unmask_response(dataclasses.replace(resp, b_shares=huge)))
        )
    assert server.done
    with pytest.raises(RemoteProtocolError, match="invalid|do not match"):
        server.result()


def test_client_refuses_degenerate_mask_key_at_masking_time() -> None:
    """A neighbour's s_pk of small order passes the key checks but cannot give a pairwise mask."""
    req = wire.decode_share_keys_request(DOWN[Stage.SHARE_KEYS].payload)
    v0, a0 = req.peers[0]
    peers = ((v0, dataclasses.replace(a0, s_pk=bytes(32))),) + req.peers[1:]
    client = SPEC.client(1, ROUND, rngs(0)(1))
    client.start(make_inputs(RING, 4, IDS, 0)[1])
    client.receive(dataclasses.replace(DOWN[Stage.SHARE_KEYS], payload=_share_keys(peers=peers)))
    with pytest.raises(RemoteProtocolError, match="mask key"):
        client.receive(DOWN[Stage.MASKED_INPUT])
    assert client.state is ClientState.SHARED
