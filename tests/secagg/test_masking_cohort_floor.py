"""A client checks the cohort size and the Shamir threshold against its own floor before dealing shares.

The attack (issue 14, finding 5): the threshold t is derived from the cohort list the
server sends. A server claiming the cohort is {victim, colluder} makes t = 1, so the
colluder's single share rebuilds the victim's self-mask seed and mask key, and the server
strips both masks off the victim's masked input: no unmasking stage is needed, so the
victim's ``min_survivors`` check (at unmasking) never gets a say.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource
from fl_core.backends import BackendRequest, build_secure_sum
from secagg.errors import ConfigurationError, RemoteProtocolError
from secagg.masking import MaskingSecureSum, Stage, wire
from secagg.masking._derive import pairwise_seed, self_mask_seed, share_key
from secagg.primitives import aead, key_agreement, prg, shamir
from secagg.protocol import SERVER, Message
from secagg.ring import RingSpec

RING = RingSpec(32)
DIM = 16
VICTIM, COLLUDER, ROUND = 1, 2, 7


def _deliver(sessions: dict[int, object], server: object, msgs: list[Message], log: list[Message]) -> list[Message]:
    out: list[Message] = []
    for m in msgs:
        log.append(m)
        target = server if m.recipient == SERVER else sessions[m.recipient]
        out += target.receive(m)  # type: ignore[attr-defined]
    return out


def _attack(victim_spec: MaskingSecureSum) -> np.ndarray:
    """Run the lying server's round against a victim configured by ``victim_spec``; return what it recovers."""
    lying = MaskingSecureSum(RING, DIM, graph="complete")  # the server's own settings: no floor
    secret_input = np.arange(1000, 1000 + DIM, dtype=np.uint32)
    victim = victim_spec.client(VICTIM, ROUND, SeededRandomSource("victim"))
    colluder = lying.client(COLLUDER, ROUND, SeededRandomSource("colluder"))
    server = lying.server([VICTIM, COLLUDER], ROUND)
    log: list[Message] = []
    pending = victim.start(secret_input) + colluder.start(RING.zeros(DIM))
    sessions = {VICTIM: victim, COLLUDER: colluder}
    while pending:
        pending = _deliver(sessions, server, pending, log)
        if any(m.stage == Stage.MASKED_INPUT.value and m.sender == VICTIM for m in log):
            break  # the attacker has what it needs: no unmasking stage is ever run
    up = {(m.stage, m.sender): m for m in log if m.recipient == SERVER}
    adv = {c: wire.decode_advertisement(up[(Stage.ADVERTISE_KEYS.value, c)].payload) for c in (VICTIM, COLLUDER)}
    # The colluder replays its own randomness: its share-encryption key pair comes first.
    c_colluder = key_agreement.generate_keypair(SeededRandomSource("colluder"))
    (record,) = wire.decode_sealed_shares(up[(Stage.SHARE_KEYS.value, VICTIM)].payload).records
    assert record[0] == COLLUDER
    key = share_key(c_colluder.exchange(adv[VICTIM].c_pk), round_id=ROUND, sender=VICTIM, recipient=COLLUDER)
    # The terms digests are public (the server knows the terms it announced).
    terms = victim_spec.binding
    assert terms.round is not None
    ad = aead.associated_data(
        version=wire.VERSION, round_id=ROUND, sender=VICTIM, recipient=COLLUDER, context=terms.setup
    )
    share = wire.decode_share_plaintext(aead.open_sealed(key, record[1], ad))
    b = shamir.reconstruct({COLLUDER: share.b_share}, 1)
    s_victim = key_agreement.keypair_from_private(shamir.reconstruct({COLLUDER: share.sk_share}, 1))
    _, body = wire.decode_masked_input(up[(Stage.MASKED_INPUT.value, VICTIM)].payload)
    y = np.frombuffer(body, dtype="<u4").astype(np.uint32)
    masks: list[tuple[bytes, prg.MaskOp]] = [
        (self_mask_seed(b, round_id=ROUND, owner=VICTIM), "sub"),
        (
            pairwise_seed(s_victim, adv[COLLUDER].s_pk, round_id=ROUND, me=VICTIM, peer=COLLUDER, terms=terms.round),
            "sub",
        ),
    ]
    recovered = prg.add_masks_into(y, masks, RING)
    return recovered


def test_client_refuses_a_claimed_two_member_cohort_before_any_share_leaves() -> None:
    """The victim needs 10 survivors; the server claims a cohort of two. The victim refuses the
    share-keys request (blaming the server), so no share of its secrets ever exists."""
    victim_spec = MaskingSecureSum(RING, DIM, graph="complete", min_survivors=10)
    with pytest.raises(RemoteProtocolError, match="cohort of 2 clients, below this client's floor of 10") as exc:
        _attack(victim_spec)
    assert exc.value.peer == SERVER


def test_the_attack_recovers_the_exact_input_from_a_client_without_a_floor() -> None:
    """Control: the same attacker against a client whose floor admits a pair recovers the input bit
    for bit. This is what a client with ``min_survivors=10`` suffered before the floor check."""
    victim_spec = MaskingSecureSum(RING, DIM, graph="complete", min_survivors=1)
    recovered = _attack(victim_spec)
    assert recovered.tolist() == list(range(1000, 1000 + DIM))


def test_client_refuses_a_threshold_below_its_own_floor() -> None:
    """A server whose own settings give t = 2 for a cohort of 4 (explicit threshold) is refused by a
    client whose own floor is t >= 3."""
    server_spec = MaskingSecureSum(RING, DIM, graph="complete", threshold=2)
    client_spec = MaskingSecureSum(RING, DIM, graph="complete", threshold=2, min_threshold=3)
    ids = [1, 2, 3, 4]
    server = server_spec.server(ids, ROUND)
    clients = {c: client_spec.client(c, ROUND, SeededRandomSource(f"c{c}")) for c in ids}
    pending = [m for c in ids for m in clients[c].start(RING.zeros(DIM))]
    share_requests: list[Message] = []
    for m in pending:
        share_requests += server.receive(m)
    with pytest.raises(RemoteProtocolError, match="threshold 2 for a cohort of 4, below this client's floor of 3"):
        clients[1].receive(share_requests[0])
    assert clients[1].state.value == "advertised"  # unchanged: nothing was dealt


def test_default_floors_follow_min_survivors_and_the_own_parameter_choice() -> None:
    spec = MaskingSecureSum(RING, DIM, min_survivors=30)
    assert spec.min_cohort == 30
    assert spec.min_threshold == spec.parameters(30).threshold
    assert MaskingSecureSum(RING, DIM).min_cohort == 2
    explicit = MaskingSecureSum(RING, DIM, min_survivors=5, min_cohort=40, min_threshold=12)
    assert (explicit.min_cohort, explicit.min_threshold) == (40, 12)
    # A forced threshold that no (k, t) admits at the floor leaves t fixed by the options.
    assert MaskingSecureSum(RING, DIM, threshold=9).min_threshold == 1


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3"])
def test_floor_options_must_be_positive_ints(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="min_cohort"):
        MaskingSecureSum(RING, DIM, min_cohort=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="min_threshold"):
        MaskingSecureSum(RING, DIM, min_threshold=bad)  # type: ignore[arg-type]


def test_backend_options_carry_the_floors() -> None:
    options = {"min_survivors": 8, "min_cohort": "20", "min_threshold": 6}
    req = BackendRequest(RING, DIM, 50, SeededRandomSource(0), options)
    ss = build_secure_sum("masking", req)
    assert isinstance(ss, MaskingSecureSum) and (ss.min_cohort, ss.min_threshold) == (20, 6)


@settings(max_examples=60, deadline=None)
@given(
    floor=st.integers(2, 300),
    extra=st.integers(0, 400),
    graph=st.sampled_from(["sparse", "complete"]),
    degree=st.one_of(st.none(), st.sampled_from([4, 8, 16])),
    corrupt=st.sampled_from([0.0, 0.05, 0.2]),
    dropout=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_default_threshold_floor_never_refuses_an_honest_cohort_at_or_above_the_floor(
    floor: int, extra: int, graph: str, degree: int | None, corrupt: float, dropout: float
) -> None:
    """t grows with n for fixed options, so the derived default floor only refuses shrunken cohorts."""
    spec = MaskingSecureSum(
        RING, DIM, graph=graph, degree=degree, corrupt_fraction=corrupt, dropout_rate=dropout, min_survivors=floor
    )
    assert spec.parameters(floor + extra).threshold >= spec.min_threshold


def test_client_refuses_a_cohort_its_own_options_cannot_serve() -> None:
    """A forced threshold of 5 admits no (k, t) for a cohort of 4 (k = 3): refused as unusable."""
    client_spec = MaskingSecureSum(RING, DIM, graph="complete", threshold=5)
    server_spec = MaskingSecureSum(RING, DIM, graph="complete", threshold=2)
    ids = [1, 2, 3, 4]
    server = server_spec.server(ids, ROUND)
    victim = client_spec.client(1, ROUND, SeededRandomSource("c1"))
    others = {c: server_spec.client(c, ROUND, SeededRandomSource(f"c{c}")) for c in ids[1:]}
    requests: list[Message] = []
    for m in victim.start(RING.zeros(DIM)) + [m for c in ids[1:] for m in others[c].start(RING.zeros(DIM))]:
        requests += server.receive(m)
    (mine,) = [m for m in requests if m.recipient == 1]
    with pytest.raises(RemoteProtocolError, match="unusable cohort"):
        victim.receive(mine)
