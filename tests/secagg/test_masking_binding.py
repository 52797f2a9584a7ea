"""The round-terms binding of the masking protocol, tested as the attacker.

Each client binds its session to digests of the terms it used (secagg.masking.binding):
the setup digest authenticates its sealed shares, the round digest keys its pairwise
masks. A server that gives clients different terms gets masks that do not cancel; these
tests check exactly what it gets instead, including when it declares a client dropped to
rebuild that client's mask key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from test_masking_support import make_inputs, rngs, slow_sum

from secagg.errors import ConfigurationError, LocalProtocolError, RemoteProtocolError
from secagg.masking import (
    UNBOUND,
    ClientState,
    MaskingClient,
    MaskingSecureSum,
    Stage,
    TermsBinding,
    digest_terms,
    wire,
)
from secagg.masking._derive import pairwise_seed
from secagg.primitives import key_agreement, prg
from secagg.protocol import SERVER, Message
from secagg.ring import RingSpec

VECTORS = Path(__file__).parents[1] / "vectors" / "masking"
OURS = json.loads((VECTORS / "masking_vectors.json").read_text())
PUBLISHED = json.loads((VECTORS / "published_vectors.json").read_text())

RING = RingSpec(32)
DIM = 6
ROUND = 4
SETUP = digest_terms(b'{"setup":1}', kind="setup")
D_BIG = digest_terms(b'{"clip":8}', kind="round")  # e.g. the large clip told to the victim
D_SMALL = digest_terms(b'{"clip":0.125}', kind="round")  # the small clip told to the others

Tamper = Callable[[Message], list[Message]]


def _spec(binding: TermsBinding = UNBOUND, **kw: object) -> MaskingSecureSum:
    return MaskingSecureSum(RING, DIM, graph="complete", **kw).bound(binding)  # type: ignore[arg-type]


def _run(
    bindings: Mapping[int, TermsBinding],
    server_binding: TermsBinding,
    inputs: Mapping[int, np.ndarray],
    *,
    tamper: Tamper | None = None,
) -> tuple[object, dict[int, MaskingClient], dict[int, Exception], list[Message]]:
    """One round where each client's session is bound to its own binding; returns the server, the
    clients, the errors each party raised (client id, or SERVER for refused uploads) and every message."""
    ids = sorted(bindings)
    server = _spec(server_binding).server(ids, ROUND)
    clients = {c: _spec(bindings[c]).client(c, ROUND, rngs(3)(c)) for c in ids}
    errors: dict[int, Exception] = {}
    log: list[Message] = []
    pending = [m for c in ids for m in clients[c].start(inputs[c])]
    while not server.done:  # type: ignore[attr-defined]
        if not pending:
            pending = list(server.close_stage())  # type: ignore[attr-defined]
            continue
        nxt: list[Message] = []
        for m in pending:
            for d in tamper(m) if tamper is not None else [m]:
                log.append(d)
                if d.recipient == SERVER:
                    try:
                        nxt += server.receive(d)  # type: ignore[attr-defined]
                    except RemoteProtocolError as exc:
                        errors.setdefault(SERVER, exc)
                elif d.recipient not in errors:
                    try:
                        nxt += clients[d.recipient].receive(d)
                    except RemoteProtocolError as exc:
                        errors[d.recipient] = exc
        pending = nxt
    return server, clients, errors, log


def _align_terms(digest: bytes, *, drop: Iterable[int] = ()) -> Tamper:
    """The attacker's rewrite: every masked input claims ``digest`` (so its own check passes); the
    masked inputs of ``drop`` are withheld (the server declares those clients dropped)."""
    dropped = set(drop)

    def tamper(m: Message) -> list[Message]:
        if m.stage != Stage.MASKED_INPUT.value or m.recipient != SERVER:
            return [m]
        if m.sender in dropped:
            return []
        p = m.payload
        start = wire.MASKED_INPUT_HEADER_BYTES - len(digest)
        return [dataclasses.replace(m, payload=p[:start] + digest + p[wire.MASKED_INPUT_HEADER_BYTES :])]

    return tamper


def _pair_mask(u: MaskingClient, v: MaskingClient, terms: bytes) -> np.ndarray:
    """PRG(s_uv) for the pair's X25519 secret under ``terms``, as u adds it (+ if u < v)."""
    s_u = u._s
    assert s_u is not None and v._s is not None
    seed = pairwise_seed(s_u, v._s.public, round_id=ROUND, me=u._me, peer=v._me, terms=terms)
    return prg.add_masks_into(RING.zeros(DIM), [(seed, "add" if u._me < v._me else "sub")], RING)


# -- known answers -----------------------------------------------------------------------------


def test_pairwise_seed_known_answers_bind_the_terms() -> None:
    """Label v2 with context round || lo || hi || terms, from RFC 7748 6.1's keys (independent HKDF)."""
    v = PUBLISHED[OURS["terms_binding"]["x25519"]]
    alice = key_agreement.keypair_from_private(bytes.fromhex(v["alice_private"]))
    bob_pk = bytes.fromhex(v["bob_public"])
    seeds = set()
    for case in OURS["terms_binding"]["pairwise_seeds"]:
        seed = pairwise_seed(
            alice, bob_pk, round_id=case["round"], me=case["lo"], peer=case["hi"], terms=bytes.fromhex(case["terms"])
        )
        assert seed.hex() == case["seed"]
        seeds.add(seed)
    assert len(seeds) == 2 + 1  # the same pair and round under two digests: two seeds


def test_terms_digest_known_answers() -> None:
    for case in OURS["terms_binding"]["terms_digests"]:
        assert digest_terms(bytes.fromhex(case["encoding"]), kind=case["kind"]).hex() == case["digest"]
    assert digest_terms(b"x", kind="setup") != digest_terms(b"x", kind="round")


def test_binding_refuses_malformed_digests() -> None:
    with pytest.raises(ConfigurationError, match="32 bytes"):
        TermsBinding(bytes(31))
    with pytest.raises(ConfigurationError, match="round terms digest"):
        TermsBinding(bytes(32), b"short")
    with pytest.raises(ConfigurationError, match="terms kind"):
        digest_terms(b"x", kind="other")
    with pytest.raises(ConfigurationError, match="TermsBinding"):
        MaskingSecureSum(RING, DIM).bound(b"raw")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        pairwise_seed(key_agreement.keypair_from_private(bytes(range(32))), bytes(32), round_id=1, me=1, peer=2,
                      terms=b"")


def test_bound_is_a_copy_sharing_the_parameters() -> None:
    spec = MaskingSecureSum(RING, DIM, graph="complete")
    other = spec.bound(TermsBinding(SETUP, D_BIG))
    assert spec.binding == UNBOUND and other.binding.round == D_BIG
    assert other.parameters(5) is spec.parameters(5)


# -- masks cancel exactly when the terms agree --------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 5), picks=st.lists(st.integers(0, 1), min_size=5, max_size=5), seed=st.integers(0, 50))
def test_masks_cancel_exactly_when_every_round_digest_agrees(n: int, picks: list[int], seed: int) -> None:
    """Any identical round digests: the exact sum. Any two that differ: an honest server aborts typed,
    and a server that makes every header claim one digest (to pass its own check) gets a vector
    that is not the sum."""
    ids = list(range(1, n + 1))
    pool = (D_BIG, D_SMALL)
    bindings = {c: TermsBinding(SETUP, pool[picks[c - 1]]) for c in ids}
    same = len({b.round for b in bindings.values()}) == 1
    inputs = make_inputs(RING, DIM, ids, seed)
    server, _, errors, _ = _run(bindings, TermsBinding(SETUP, None), inputs)  # no expected digest
    if same:
        assert not errors and np.array_equal(server.result(), slow_sum(RING, inputs, ids))  # type: ignore[attr-defined]
    else:
        with pytest.raises(RemoteProtocolError, match="different round terms"):
            server.result()  # type: ignore[attr-defined]
    attacker, _, errors, _ = _run(bindings, TermsBinding(SETUP, None), inputs, tamper=_align_terms(D_SMALL))
    assert not errors
    assert np.array_equal(attacker.result(), slow_sum(RING, inputs, ids)) == same  # type: ignore[attr-defined]


# -- detection: other setup terms, other round terms -------------------------------------------


def test_a_holder_with_other_setup_terms_refuses_the_shares_before_its_masked_input() -> None:
    """Client 1 was given other setup terms: it cannot open its neighbours' shares (nor they its own), so it
    stops at the masked-input request blaming the server, and no masked input of it ever exists."""
    other = digest_terms(b'{"setup":2}', kind="setup")
    bindings = {1: TermsBinding(other, D_BIG), 2: TermsBinding(SETUP, D_BIG), 3: TermsBinding(SETUP, D_BIG)}
    inputs = make_inputs(RING, DIM, [1, 2, 3], 1)
    server, clients, errors, log = _run(bindings, TermsBinding(SETUP, D_BIG), inputs)
    assert set(errors) >= {1, 2, 3}
    for c in (1, 2, 3):
        assert isinstance(errors[c], RemoteProtocolError) and errors[c].peer == SERVER
        assert "other round terms" in str(errors[c])
        assert clients[c].state is ClientState.SHARED  # unchanged: nothing was sent
    assert not [m for m in log if m.stage == Stage.MASKED_INPUT.value and m.recipient == SERVER]
    with pytest.raises(Exception):  # noqa: B017,PT011 - the round aborts, whatever the stage it stalls in
        server.result()  # type: ignore[attr-defined]


def test_the_server_refuses_a_masked_input_bound_to_other_terms_and_sums_the_rest() -> None:
    """An honest server expecting D_BIG refuses client 4's masked input (bound to D_SMALL): client 4 is a
    dropout, its masks are removed with its key shares, and the sum over the others is exact."""
    ids = [1, 2, 3, 4]
    bindings = {c: TermsBinding(SETUP, D_BIG) for c in ids}
    bindings[4] = TermsBinding(SETUP, D_SMALL)
    inputs = make_inputs(RING, DIM, ids, 2)
    server, clients, errors, _ = _run(bindings, TermsBinding(SETUP, D_BIG), inputs)
    assert isinstance(errors[SERVER], RemoteProtocolError) and errors[SERVER].peer == 4
    assert server.survivors == {1, 2, 3}  # type: ignore[attr-defined]
    assert np.array_equal(server.result(), slow_sum(RING, inputs, [1, 2, 3]))  # type: ignore[attr-defined]
    assert all(4 in clients[c].revealed_sk and 4 not in clients[c].revealed_b for c in (1, 2, 3))


def test_expect_terms_is_set_before_the_masked_inputs_only() -> None:
    ids = [1, 2, 3]
    inputs = make_inputs(RING, DIM, ids, 3)
    bindings = {c: TermsBinding(SETUP, D_BIG) for c in ids}
    # A session opened before the round's terms were known learns them later (key setup ahead).
    early = _spec(TermsBinding(SETUP, None)).server(ids, ROUND)
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        early.expect_terms(b"short")
    early.expect_terms(D_SMALL)
    clients = {c: _spec(bindings[c]).client(c, ROUND, rngs(3)(c)) for c in ids}
    pending = [m for c in ids for m in clients[c].start(inputs[c])]
    refused = 0
    while pending:
        nxt: list[Message] = []
        for m in pending:
            if m.recipient != SERVER:
                nxt += clients[m.recipient].receive(m)
                continue
            try:
                nxt += early.receive(m)
            except RemoteProtocolError:
                refused += 1
        pending = nxt
    assert refused == 3  # every masked input is bound to D_BIG, not the D_SMALL it was told to expect
    server = _spec(TermsBinding(SETUP, None)).server(ids, ROUND)
    _, _, _, log = _run(bindings, TermsBinding(SETUP, D_BIG), inputs)
    for m in log:
        if m.recipient == SERVER and m.stage in (Stage.ADVERTISE_KEYS.value, Stage.SHARE_KEYS.value):
            server.receive(m)
    server.receive(next(m for m in log if m.stage == Stage.MASKED_INPUT.value and m.recipient == SERVER))
    with pytest.raises(LocalProtocolError, match="after the masked-input stage began"):
        server.expect_terms(D_BIG)


def test_a_session_bound_to_setup_terms_only_refuses_to_mask() -> None:
    """Key setup ahead: shares are dealt, but no mask is derived before the round's terms are bound."""
    ids = [1, 2, 3]
    inputs = make_inputs(RING, DIM, ids, 4)
    bindings = {c: TermsBinding(SETUP, None) for c in ids}
    with pytest.raises(LocalProtocolError, match="no round terms"):
        _run(bindings, TermsBinding(SETUP, None), inputs)


# -- what a split-view server learns ----------------------------------------------------------------


def test_what_a_split_view_server_gets_is_the_sum_plus_masks_it_cannot_remove() -> None:
    """Victim 1 is bound to D_BIG, clients 2, 3, 4 to D_SMALL; the server makes every header claim D_SMALL
    so its own checks pass. Exactly:

    * all survive: released = x1 + ... + x4 + sum over v of (PRG(s_1v, D_BIG) - PRG(s_1v, D_SMALL)), signed
      as client 1 adds them; each difference needs X25519(s_sk_1, s_pk_v), which only 1 and v hold;
    * it declares client 2 dropped (the holders give it s_sk_2): after it removes every mask of 2's (under
      either digest), x1 + x3 + x4 + the differences of the pairs (1, 3) and (1, 4) stay, which s_sk_2 does
      not help remove;
    * it declares the victim dropped (it gets s_sk_1, so it could remove every mask of 1's): released =
      x2 + x3 + x4 exactly: the victim's input is not in it, and no holder revealed its self-mask share.
    """
    ids = [1, 2, 3, 4]
    bindings = {c: TermsBinding(SETUP, D_SMALL) for c in ids}
    bindings[1] = TermsBinding(SETUP, D_BIG)
    inputs = make_inputs(RING, DIM, ids, 5)

    def pads(clients: Mapping[int, MaskingClient], others: Iterable[int]) -> np.ndarray:
        out = RING.zeros(DIM)
        for v in others:
            RING.add_into(out, _pair_mask(clients[1], clients[v], D_BIG))
            RING.add_into(out, RING.reduce(-_pair_mask(clients[1], clients[v], D_SMALL)))
        return out

    server, clients, errors, _ = _run(bindings, TermsBinding(SETUP, None), inputs, tamper=_align_terms(D_SMALL))
    assert not errors and server.survivors == set(ids)  # type: ignore[attr-defined]
    residual = RING.reduce(server.result() - slow_sum(RING, inputs, ids))  # type: ignore[attr-defined]
    assert np.array_equal(residual, pads(clients, (2, 3, 4))) and np.any(residual != 0)

    unbound = TermsBinding(SETUP, None)
    server, clients, errors, _ = _run(bindings, unbound, inputs, tamper=_align_terms(D_SMALL, drop=[2]))
    assert server.survivors == {1, 3, 4}  # type: ignore[attr-defined]
    residual = RING.reduce(server.result() - slow_sum(RING, inputs, [1, 3, 4]))  # type: ignore[attr-defined]
    # With s_sk_2 (rebuilt from the holders' key shares) the server can also compute the pair (1, 2) under
    # D_BIG and take it off; what stays is the pairs (1, 3) and (1, 4).
    best = RING.reduce(residual - pads(clients, (2,)))
    assert np.array_equal(best, pads(clients, (3, 4))) and np.any(best != 0)
    assert all(clients[c].revealed_sk == {2} for c in (1, 3, 4))

    server, clients, errors, _ = _run(bindings, unbound, inputs, tamper=_align_terms(D_SMALL, drop=[1]))
    assert np.array_equal(server.result(), slow_sum(RING, inputs, [2, 3, 4]))  # type: ignore[attr-defined]
    assert all(1 not in clients[c].revealed_b and 1 in clients[c].revealed_sk for c in (2, 3, 4))


def test_the_unremovable_residual_looks_uniform() -> None:
    """The pad a split view leaves on the sum passes a chi-square uniformity test (the victim's input is zero)."""
    dim = 1 << 14
    ids = [1, 2, 3]
    bindings = {1: TermsBinding(SETUP, D_BIG), 2: TermsBinding(SETUP, D_SMALL), 3: TermsBinding(SETUP, D_SMALL)}
    inputs = {c: RING.zeros(dim) for c in ids}
    server = MaskingSecureSum(RING, dim, graph="complete").bound(TermsBinding(SETUP, None)).server(ids, ROUND)
    clients = {c: MaskingSecureSum(RING, dim, graph="complete").bound(bindings[c]).client(c, ROUND, rngs(6)(c))
               for c in ids}
    tamper = _align_terms(D_SMALL)
    pending = [m for c in ids for m in clients[c].start(inputs[c])]
    while pending:
        nxt: list[Message] = []
        for m in pending:
            for d in tamper(m):
                nxt += server.receive(d) if d.recipient == SERVER else clients[d.recipient].receive(d)
        pending = nxt
    counts = np.bincount(np.frombuffer(server.result().tobytes(), dtype=np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
