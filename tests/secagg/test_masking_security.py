"""Security claims of the masking protocol, each by a test that fails if the claim is false."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats
from test_masking_support import Recorder, make_inputs, rngs, slow_sum

from dp.randomness import SeededRandomSource
from secagg.errors import RemoteProtocolError, TooFewSurvivorsError
from secagg.masking import MaskingSecureSum, generate_identities, wire
from secagg.protocol import SERVER, Message
from secagg.ring import RingSpec
from secagg.simulation import run_round

RING = RingSpec(32)
IDS = list(range(1, 7))


def _identity_spec(**kw: object) -> MaskingSecureSum:
    pub, sec = generate_identities(IDS, SeededRandomSource("identities"))
    return MaskingSecureSum(RING, 8, graph="complete", identities=pub, signing_keys=sec, **kw)


def _variant_spec(with_identities: bool) -> MaskingSecureSum:
    """Complete graph on IDS: the active variant with identity keys, else the honest-but-curious one."""
    return _identity_spec() if with_identities else MaskingSecureSum(RING, 8, graph="complete")


BOTH_VARIANTS = pytest.mark.parametrize("with_identities", [False, True], ids=["honest-but-curious", "active"])


def _replace(msg: Message, payload: bytes, **kw: object) -> Message:
    return dataclasses.replace(msg, payload=payload, **kw)


# -- one masked input looks uniform ------------------------------------------------------


def test_one_masked_input_is_indistinguishable_from_uniform() -> None:
    """Client 1's input is all zeros; its masked input's bytes pass a chi-square uniformity test."""
    dim = 1 << 15
    spec = MaskingSecureSum(RING, dim, graph="complete")
    inputs = {c: RING.zeros(dim) for c in (1, 2, 3)}
    rec = Recorder()
    out = run_round(spec, inputs, round_id=1, rng_for=rngs(11), tamper=rec)
    (masked,) = [m for m in rec.messages if m.stage == "masked-input" and m.sender == 1]
    counts = np.bincount(np.frombuffer(masked.payload[wire.MASKED_INPUT_HEADER_BYTES :], dtype=np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    # Negative control: the same test does reject the unmasked (all-zero) input.
    zero_counts = np.bincount(np.frombuffer(inputs[1].tobytes(), dtype=np.uint8), minlength=256)
    assert stats.chisquare(zero_counts + 1).pvalue < 1e-4
    assert np.array_equal(out.total, RING.zeros(dim))


# -- the server cannot obtain both shares of one client ---------------------------------------


def _rewrite_unmask(edit):  # type: ignore[no-untyped-def]
    def rewrite(msg: Message) -> list[Message] | None:
        if msg.stage == "unmasking" and msg.sender == SERVER and msg.recipient == 2:
            req = wire.decode_unmask_request(msg.payload)
            return [_replace(msg, wire.encode_unmask_request(edit(req)))]
        return None

    return rewrite


@BOTH_VARIANTS
def test_request_for_both_shares_of_one_client_is_refused(with_identities: bool) -> None:
    spec = _variant_spec(with_identities)
    both = _rewrite_unmask(lambda r: dataclasses.replace(r, sk_ids=r.sk_ids + (r.b_ids[0],)))
    with pytest.raises(RemoteProtocolError, match="both the self-mask share and the key share") as exc:
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(both))
    assert exc.value.peer == SERVER


@BOTH_VARIANTS
def test_key_share_of_a_survivor_is_refused(with_identities: bool) -> None:
    """Asking for s_sk of a survivor (moving it from b_ids to sk_ids) is refused too."""
    spec = _variant_spec(with_identities)
    move = _rewrite_unmask(lambda r: dataclasses.replace(r, b_ids=r.b_ids[1:], sk_ids=(r.b_ids[0],)))
    with pytest.raises(RemoteProtocolError, match="key share asked for a client that survived"):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(move))


@BOTH_VARIANTS
def test_self_mask_share_of_a_dropped_client_is_refused(with_identities: bool) -> None:
    spec = _variant_spec(with_identities)
    move = _rewrite_unmask(lambda r: dataclasses.replace(r, b_ids=r.b_ids + r.sk_ids, sk_ids=()))
    with pytest.raises(RemoteProtocolError, match="self-mask share asked for a client that dropped"):
        run_round(
            spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), stages_completed={5: 2},
            tamper=Recorder(move),
        )


def test_changed_survivor_list_between_check_and_unmasking_is_refused() -> None:
    """Active variant: the list in the unmasking request must be the one the client signed.
    (Without identity keys there is no earlier list; the request's own list gets the checks,
    see tests/secagg/test_masking_errors.py.)"""
    spec = _identity_spec()
    # Drop client 1 from the list and its signature with it, so the request still parses.
    change = _rewrite_unmask(lambda r: dataclasses.replace(r, survivors=r.survivors[1:], signatures=r.signatures[1:]))
    with pytest.raises(RemoteProtocolError, match="differs from the consistency check"):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(change))


@BOTH_VARIANTS
def test_shares_of_unknown_dealer_are_refused(with_identities: bool) -> None:
    spec = _variant_spec(with_identities)
    extra = _rewrite_unmask(lambda r: dataclasses.replace(r, b_ids=r.b_ids + (2,)))  # its own id: holds none
    with pytest.raises(RemoteProtocolError):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(extra))


@BOTH_VARIANTS
def test_repeated_id_in_request_is_refused(with_identities: bool) -> None:
    spec = _variant_spec(with_identities)
    dup = _rewrite_unmask(lambda r: dataclasses.replace(r, b_ids=r.b_ids + (r.b_ids[0],)))
    with pytest.raises(RemoteProtocolError, match="repeats"):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(dup))


@BOTH_VARIANTS
def test_honest_clients_reveal_one_kind_per_peer_in_normal_runs(with_identities: bool) -> None:
    spec = _variant_spec(with_identities)
    sessions = {}
    real_client = spec.client

    def spy(me, round_id, rng):  # type: ignore[no-untyped-def]
        sessions[me] = real_client(me, round_id, rng)
        return sessions[me]

    spec.client = spy  # type: ignore[method-assign]
    out = run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), stages_completed={3: 3, 4: 2})
    assert out.error is None
    for s in sessions.values():
        assert not (s.revealed_b & s.revealed_sk)


# -- consistency-check signatures ------------------------------------------------------------


def test_unmasking_without_enough_consistency_signatures_is_refused() -> None:
    spec = _identity_spec()
    drop = _rewrite_unmask(lambda r: dataclasses.replace(r, signatures=r.signatures[:2]))
    with pytest.raises(RemoteProtocolError, match="consistency signatures"):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(drop))


def test_forged_consistency_signature_is_refused() -> None:
    spec = _identity_spec()
    forge = _rewrite_unmask(
        lambda r: dataclasses.replace(r, signatures=((r.signatures[0][0], bytes(64)),) + r.signatures[1:])
    )
    with pytest.raises(RemoteProtocolError, match="consistency signature of client"):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(forge))


def test_server_rejects_bad_consistency_signature() -> None:
    spec = _identity_spec()

    def bad(msg: Message) -> list[Message] | None:
        if msg.stage == "consistency-check" and msg.sender == 3:
            return [_replace(msg, wire.encode_signature(bytes(64)))]
        return None

    with pytest.raises(RemoteProtocolError) as exc:
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(bad))
    assert exc.value.peer == 3


# -- replay from round r-1 ----------------------------------------------------------------


def _messages_of_round(spec: MaskingSecureSum, round_id: int) -> list[Message]:
    rec = Recorder()
    run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=round_id, rng_for=rngs(round_id), tamper=rec)
    return rec.messages


SERVER_STAGES = [(False, st) for st in ("share-keys", "masked-input", "unmasking")] + [
    (True, st) for st in ("share-keys", "masked-input", "consistency-check", "unmasking")
]
CLIENT_STAGES = [(False, st) for st in ("advertise-keys", "share-keys", "masked-input", "unmasking")] + [
    (True, st) for st in ("advertise-keys", "share-keys", "masked-input", "consistency-check", "unmasking")
]


def _case_id(case: tuple[bool, str]) -> str:
    return ("active-" if case[0] else "honest-but-curious-") + case[1]


@pytest.mark.parametrize("case", SERVER_STAGES, ids=_case_id)
def test_replayed_server_message_from_previous_round_is_rejected(case: tuple[bool, str]) -> None:
    with_identities, stage = case
    spec = _variant_spec(with_identities)
    old = {(m.stage, m.recipient): m for m in _messages_of_round(spec, 4) if m.sender == SERVER}

    def replay(msg: Message) -> list[Message] | None:
        if msg.sender == SERVER and msg.stage == stage and msg.recipient == 2:
            return [old[(stage, 2)]]
        return None

    with pytest.raises(RemoteProtocolError, match="round 4 in round 5"):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=5, rng_for=rngs(5), tamper=Recorder(replay))


@pytest.mark.parametrize("case", CLIENT_STAGES, ids=_case_id)
def test_replayed_client_message_from_previous_round_is_rejected(case: tuple[bool, str]) -> None:
    with_identities, stage = case
    spec = _variant_spec(with_identities)
    old = {(m.stage, m.sender): m for m in _messages_of_round(spec, 4) if m.recipient == SERVER}

    def replay(msg: Message) -> list[Message] | None:
        if msg.recipient == SERVER and msg.stage == stage and msg.sender == 2:
            return [old[(stage, 2)]]
        return None

    with pytest.raises(RemoteProtocolError, match="round 4 in round 5") as exc:
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=5, rng_for=rngs(5), tamper=Recorder(replay))
    assert exc.value.peer == 2


def test_share_ciphertext_from_previous_round_with_rewritten_round_id_is_rejected() -> None:
    """Even with the header's round id rewritten, the AEAD's associated data binds the old round."""
    spec = MaskingSecureSum(RING, 8, graph="complete")
    old = {m.recipient: m for m in _messages_of_round(spec, 4) if m.sender == SERVER and m.stage == "masked-input"}

    def replay(msg: Message) -> list[Message] | None:
        if msg.sender == SERVER and msg.stage == "masked-input" and msg.recipient == 2:
            return [_replace(msg, old[2].payload)]
        return None

    with pytest.raises(RemoteProtocolError, match="share ciphertext from client"):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=5, rng_for=rngs(4), tamper=Recorder(replay))


def test_advertisement_from_previous_round_with_rewritten_round_id_is_rejected() -> None:
    spec = _identity_spec()
    old = {m.sender: m for m in _messages_of_round(spec, 4) if m.stage == "advertise-keys"}

    def replay(msg: Message) -> list[Message] | None:
        if msg.stage == "advertise-keys" and msg.sender == 2:
            return [_replace(msg, old[2].payload)]
        return None

    with pytest.raises(RemoteProtocolError, match="not signed") as exc:
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=5, rng_for=rngs(5), tamper=Recorder(replay))
    assert exc.value.peer == 2


# -- tampered share ciphertext --------------------------------------------------------------


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_tampered_share_ciphertext_is_rejected(where: str) -> None:
    spec = MaskingSecureSum(RING, 8, graph="complete")

    def flip(msg: Message) -> list[Message] | None:
        if msg.sender == SERVER and msg.stage == "masked-input" and msg.recipient == 3:
            recs = list(wire.decode_sealed_shares(msg.payload).records)
            who, ct = recs[0]
            pos = {"first": 0, "middle": len(ct) // 2, "last": len(ct) - 1}[where]
            bad = bytearray(ct)
            bad[pos] ^= 0x01
            recs[0] = (who, bytes(bad))
            return [_replace(msg, wire.encode_sealed_shares(wire.SealedShares(tuple(recs))))]
        return None

    with pytest.raises(RemoteProtocolError, match="share ciphertext from client"):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(flip))


def test_share_moved_to_another_recipient_is_rejected() -> None:
    spec = MaskingSecureSum(RING, 8, graph="complete")
    sent: dict[int, Message] = {}

    def swap(msg: Message) -> list[Message] | None:
        if msg.sender == SERVER and msg.stage == "masked-input":
            sent[msg.recipient] = msg
            if msg.recipient == 3 and 2 in sent:
                theirs = dict(wire.decode_sealed_shares(sent[2].payload).records)
                recs = [(u, theirs.get(u, ct)) for u, ct in wire.decode_sealed_shares(msg.payload).records]
                return [_replace(msg, wire.encode_sealed_shares(wire.SealedShares(tuple(recs))))]
        return None

    with pytest.raises(RemoteProtocolError, match="share ciphertext"):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(swap))


# -- identity keys ------------------------------------------------------------------------


def test_advertisement_signed_by_wrong_identity_is_rejected_by_server() -> None:
    spec = _identity_spec()
    _, sec = generate_identities(IDS, SeededRandomSource("identities"))

    def resign(msg: Message) -> list[Message] | None:
        if msg.stage == "advertise-keys" and msg.sender == 2:
            adv = wire.decode_advertisement(msg.payload)
            wrong = sec[3].sign(wire.advertisement_signed_bytes(msg.round_id, 2, adv.c_pk, adv.s_pk))
            return [_replace(msg, wire.encode_advertisement(dataclasses.replace(adv, signature=wrong)))]
        return None

    with pytest.raises(RemoteProtocolError, match="not signed by the sender's identity key") as exc:
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(resign))
    assert exc.value.peer == 2


@pytest.mark.parametrize("attack", ["wrong-signer", "unsigned", "swapped-key"])
def test_advertisement_relayed_with_bad_signature_is_rejected_by_client(attack: str) -> None:
    spec = _identity_spec()
    _, sec = generate_identities(IDS, SeededRandomSource("identities"))

    def relay(msg: Message) -> list[Message] | None:
        if msg.stage == "share-keys" and msg.sender == SERVER and msg.recipient == 1:
            req = wire.decode_share_keys_request(msg.payload)
            peers = list(req.peers)
            v, adv = peers[0]
            if attack == "wrong-signer":
                adv = dataclasses.replace(
                    adv, signature=sec[v + 1].sign(wire.advertisement_signed_bytes(msg.round_id, v, adv.c_pk, adv.s_pk))
                )
            elif attack == "unsigned":
                adv = dataclasses.replace(adv, signature=b"")
            else:
                adv = dataclasses.replace(adv, s_pk=bytes([9]) + adv.s_pk[1:])
            peers[0] = (v, adv)
            return [_replace(msg, wire.encode_share_keys_request(dataclasses.replace(req, peers=tuple(peers))))]
        return None

    with pytest.raises(RemoteProtocolError, match="not signed by its identity key"):
        run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(relay))


# -- the graph comes from the round seed -------------------------------------------------------


def _sparse_spec() -> tuple[MaskingSecureSum, list[int]]:
    ids = list(range(1, 21))
    return MaskingSecureSum(RING, 4, graph="sparse", degree=6, threshold=4), ids


def test_graph_differing_from_round_seed_is_rejected() -> None:
    spec, ids = _sparse_spec()
    graph = spec.neighbours(ids, 1)
    outsider = min(set(ids) - graph[1] - {1})

    def swap(msg: Message) -> list[Message] | None:
        if msg.stage == "share-keys" and msg.sender == SERVER and msg.recipient == 1:
            req = wire.decode_share_keys_request(msg.payload)
            peers = list(req.peers)
            peers[0] = (outsider, peers[0][1])
            return [_replace(msg, wire.encode_share_keys_request(dataclasses.replace(req, peers=tuple(peers))))]
        return None

    with pytest.raises(RemoteProtocolError, match="differs from the graph derived from the round seed"):
        run_round(spec, make_inputs(RING, 4, ids, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(swap))


def test_graph_changes_with_round_and_public_seed_and_is_recomputable() -> None:
    spec, ids = _sparse_spec()
    g1, g2 = spec.neighbours(ids, 1), spec.neighbours(ids, 2)
    other = MaskingSecureSum(RING, 4, graph="sparse", degree=6, threshold=4, public_seed=b"beacon")
    assert g1 != g2 and g1 != other.neighbours(ids, 1)
    assert g1 == MaskingSecureSum(RING, 4, graph="sparse", degree=6, threshold=4).neighbours(ids, 1)
    assert all(u in g1[v] for u in ids for v in g1[u])  # symmetric


def test_server_claiming_a_different_cohort_is_caught() -> None:
    """Dropping a member from the cohort list changes the derived graph; peers no longer match."""
    spec, ids = _sparse_spec()

    def shrink(msg: Message) -> list[Message] | None:
        if msg.stage == "share-keys" and msg.sender == SERVER and msg.recipient == 1:
            req = wire.decode_share_keys_request(msg.payload)
            return [_replace(msg, wire.encode_share_keys_request(dataclasses.replace(req, cohort=req.cohort[:-1])))]
        return None

    with pytest.raises(RemoteProtocolError, match="graph derived from the round seed"):
        run_round(spec, make_inputs(RING, 4, ids, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(shrink))


# -- wrong shares never give a wrong sum --------------------------------------------------------


@BOTH_VARIANTS
@pytest.mark.parametrize("kind", ["b", "sk"])
def test_bad_share_in_unmasking_aborts_instead_of_a_wrong_sum(kind: str, with_identities: bool) -> None:
    spec = _variant_spec(with_identities)

    def corrupt(msg: Message) -> list[Message] | None:
        if msg.stage == "unmasking" and msg.recipient == SERVER:
            resp = wire.decode_unmask_response(msg.payload)
            bump = 1 << 100  # not a clamped bit of an X25519 scalar
            if kind == "b":
                resp = dataclasses.replace(resp, b_shares=tuple((u, (y + bump) % 2**256) for u, y in resp.b_shares))
            else:
                resp = dataclasses.replace(resp, sk_shares=tuple((u, (y + bump) % 2**256) for u, y in resp.sk_shares))
            return [_replace(msg, wire.encode_unmask_response(resp))]
        return None

    out = run_round(
        spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), stages_completed={6: 2},
        tamper=Recorder(corrupt),
    )
    assert out.total is None
    assert isinstance(out.error, RemoteProtocolError)
    assert "do not match" in str(out.error) or "invalid" in str(out.error)


@BOTH_VARIANTS
def test_dropping_every_unmasking_reply_aborts(with_identities: bool) -> None:
    spec = _variant_spec(with_identities)

    def drop(msg: Message) -> list[Message] | None:
        return [] if msg.stage == "unmasking" and msg.recipient == SERVER else None

    out = run_round(spec, make_inputs(RING, 8, IDS, 0), round_id=1, rng_for=rngs(0), tamper=Recorder(drop))
    assert isinstance(out.error, TooFewSurvivorsError) and out.total is None


def test_no_dropouts_gives_exact_sum_with_identities() -> None:
    spec = _identity_spec()
    inputs = make_inputs(RING, 8, IDS, 3)
    out = run_round(spec, inputs, round_id=1, rng_for=rngs(3), stages_completed={2: 3})
    assert np.array_equal(out.total, slow_sum(RING, inputs, IDS))
