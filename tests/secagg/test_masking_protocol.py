"""End-to-end masking rounds: exact sums, dropouts at every stage, typed aborts, slow references."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import test_prg
from test_masking_support import Recorder, identity_kw, make_inputs, rngs, slow_sum, survival_oracle

from dp.randomness import SeededRandomSource
from secagg.errors import ConfigurationError, LocalProtocolError, TooFewSurvivorsError
from secagg.masking import GraphKind, MaskingSecureSum, TermsBinding, generate_identities, wire
from secagg.primitives import kdf, key_agreement
from secagg.protocol import SERVER
from secagg.ring import RingSpec
from secagg.simulation import run_round

RING = RingSpec(32)


@pytest.mark.parametrize("graph,n", [("complete", 3), ("complete", 8), ("sparse", 30)])
@pytest.mark.parametrize("with_identities", [False, True])
def test_exact_sum_without_dropouts(graph: str, n: int, with_identities: bool) -> None:
    ids = list(range(1, n + 1))
    kw = {}
    if with_identities:
        pub, sec = generate_identities(ids, SeededRandomSource("ids"))
        kw = {"identities": pub, "signing_keys": sec}
    spec = MaskingSecureSum(RING, 17, graph=graph, **kw)
    inputs = make_inputs(RING, 17, ids, n)
    out = run_round(spec, inputs, round_id=3, rng_for=rngs(n))
    assert out.error is None
    assert out.survivors == frozenset(ids)
    assert np.array_equal(out.total, slow_sum(RING, inputs, ids))
    assert out.stages == (5 if with_identities else 4)


@pytest.mark.parametrize("graph", ["complete", "sparse"])
def test_without_identity_keys_a_round_is_four_stages_with_no_consistency_check(graph: str) -> None:
    """Honest-but-curious variant: the unmasking request follows the masked inputs directly."""
    ids = list(range(1, 21))
    spec = MaskingSecureSum(RING, 5, graph=graph, degree=8 if graph == "sparse" else None)
    inputs = make_inputs(RING, 5, ids, 7)
    rec = Recorder()
    out = run_round(spec, inputs, round_id=2, rng_for=rngs(7), stages_completed={4: 2, 9: 3}, tamper=rec)
    assert out.error is None and out.stages == 4
    assert list(dict.fromkeys(m.stage for m in rec.messages)) == [
        "advertise-keys",
        "share-keys",
        "masked-input",
        "unmasking",
    ]
    # Client 4 vanished before its masked input, client 9 right after it (the simulator does not
    # deliver to it, so the recorder sees no request for 9). The survivor list in every request is
    # exactly the clients whose masked input arrived.
    requests = {m.recipient: m for m in rec.messages if m.stage == "unmasking" and m.sender == SERVER}
    assert sorted(requests) == [c for c in ids if c not in (4, 9)]
    survivors = [c for c in ids if c != 4]
    assert {wire.decode_unmask_request(m.payload).survivors for m in requests.values()} == {tuple(survivors)}
    assert out.survivors == frozenset(survivors)
    assert np.array_equal(out.total, slow_sum(RING, inputs, survivors))


def test_with_identity_keys_a_round_still_has_the_consistency_check() -> None:
    ids = list(range(1, 9))
    spec = MaskingSecureSum(RING, 5, graph="complete", **identity_kw(ids, True))  # type: ignore[arg-type]
    inputs = make_inputs(RING, 5, ids, 8)
    rec = Recorder()
    out = run_round(spec, inputs, round_id=2, rng_for=rngs(8), tamper=rec)
    assert out.error is None and out.stages == 5
    assert list(dict.fromkeys(m.stage for m in rec.messages)) == [
        "advertise-keys",
        "share-keys",
        "masked-input",
        "consistency-check",
        "unmasking",
    ]
    for m in rec.messages:
        if m.stage == "unmasking" and m.sender == SERVER:  # every request carries all 8 signatures
            assert len(wire.decode_unmask_request(m.payload).signatures) == 8


def test_sparse_graph_is_really_sparse_at_n30() -> None:
    spec = MaskingSecureSum(RING, 4, graph="sparse", corrupt_fraction=0.02, dropout_rate=0.05, security_bits=20)
    p = spec.parameters(30)
    assert p.graph is GraphKind.SPARSE and p.degree < 29
    graph = spec.neighbours(list(range(1, 31)), 0)
    assert all(len(nb) == p.degree for nb in graph.values())


STAGE_NAMES = {
    False: ["before advertising", "after advertising", "after sharing", "after masked input"],
    True: ["before advertising", "after advertising", "after sharing", "after masked input", "after consistency"],
}
"""Dropout schedule points per variant (False: no identity keys, four stages; True: five)."""
STAGE_CASES = [(v, s) for v in (False, True) for s in range(len(STAGE_NAMES[v]))]
STAGE_IDS = [("active-" if v else "honest-but-curious-") + STAGE_NAMES[v][s].replace(" ", "-") for v, s in STAGE_CASES]


@pytest.mark.parametrize("with_identities,stage", STAGE_CASES, ids=STAGE_IDS)
@pytest.mark.parametrize("graph", ["complete", "sparse"])
def test_one_dropout_at_each_stage(with_identities: bool, stage: int, graph: str) -> None:
    n = 12
    ids = list(range(1, n + 1))
    spec = MaskingSecureSum(
        RING,
        9,
        graph=graph,
        degree=8 if graph == "sparse" else None,
        **identity_kw(ids, with_identities),  # type: ignore[arg-type]
    )
    inputs = make_inputs(RING, 9, ids, stage)
    drops = {5: stage}
    rec = Recorder()
    out = run_round(spec, inputs, round_id=1, rng_for=rngs(stage), stages_completed=drops, tamper=rec)
    assert out.error is None
    expected = [c for c in ids if c != 5 or stage >= 3]  # in the sum once its masked input arrived
    assert out.survivors == frozenset(expected)
    assert np.array_equal(out.total, slow_sum(RING, inputs, expected))
    # Client 5 sent exactly the first ``stage`` messages of its variant, then vanished.
    assert [m.stage for m in rec.messages if m.sender == 5] == [st.value for st in spec.transitions.stages[:stage]]


@pytest.mark.parametrize("with_identities,stage", STAGE_CASES, ids=STAGE_IDS)
def test_too_many_dropouts_at_each_stage_abort_typed(with_identities: bool, stage: int) -> None:
    ids = list(range(1, 8))
    spec = MaskingSecureSum(RING, 5, graph="complete", **identity_kw(ids, with_identities))  # type: ignore[arg-type]
    inputs = make_inputs(RING, 5, ids, 0)  # t = 4 of 6 holders
    drops = {c: stage for c in (1, 2, 3, 4)}
    rec = Recorder()
    out = run_round(spec, inputs, round_id=1, rng_for=rngs(0), stages_completed=drops, tamper=rec)
    assert out.total is None
    assert isinstance(out.error, TooFewSurvivorsError)
    assert out.error.required == 4 and out.error.survivors < 4
    assert out.survivors == frozenset()
    if stage < 3:  # aborted before the masked-input stage closed: nobody was asked for a share
        assert not [m for m in rec.messages if m.stage == "unmasking"]


@pytest.mark.parametrize("with_identities", [False, True])
def test_never_partial_sum_when_exactly_below_threshold(with_identities: bool) -> None:
    """With t-1 holders left for one survivor's self mask, the round aborts instead of unmasking.

    Complete graph on 5, t = 3. Client 1 vanishes before its masked input, client 2 right
    after it: U3 = {2, 3, 4, 5}, but only 3, 4, 5 answer the unmasking stage (enough for the
    stage count), so survivor 3's self mask has exactly two holders left.
    """
    ids = list(range(1, 6))
    spec = MaskingSecureSum(RING, 3, graph="complete", **identity_kw(ids, with_identities))  # type: ignore[arg-type]
    inputs = make_inputs(RING, 3, ids, 1)
    drops = {1: 2, 2: 3}
    ok, _ = survival_oracle(spec, ids, 1, drops)
    out = run_round(spec, inputs, round_id=1, rng_for=rngs(1), stages_completed=drops)
    assert not ok
    assert isinstance(out.error, TooFewSurvivorsError) and out.total is None
    assert (out.error.survivors, out.error.required) == (2, 3) and "self mask has too few shares" in str(out.error)


def test_masked_input_matches_slow_reference() -> None:
    """The streamed, in-place masking equals x + PRG(b) +- PRG(s_uv) computed element by element.

    The pairwise seed's context ends with the round-terms digest the session is bound to."""
    ring = RingSpec(20)
    ids = [1, 2, 3, 4]
    terms = bytes(range(32, 64))
    spec = MaskingSecureSum(ring, 11, graph="complete").bound(TermsBinding(bytes(range(32)), terms))
    inputs = make_inputs(ring, 11, ids, 2)
    server = spec.server(ids, 9)
    clients = {c: spec.client(c, 9, rngs(2)(c)) for c in ids}
    pending = []
    for c in ids:
        pending += clients[c].start(inputs[c])
    captured = {}
    while pending:
        replies = []
        for m in pending:
            if m.recipient == SERVER:
                if m.stage == "masked-input":
                    captured[m.sender] = m.payload
                replies += server.receive(m)
            else:
                replies += clients[m.recipient].receive(m)
        pending = replies
    me = clients[2]
    b, s = me._b, me._s
    assert s is not None
    expect = [int(v) for v in inputs[2]]
    self_seed = kdf.derive(b, kdf.LABEL_SELF_MASK, struct.pack("<QI", 9, 2), length=16)
    masks = [test_prg.reference_expand(self_seed, ring, 11)]
    signs = [1]
    for v in (1, 3, 4):
        secret = key_agreement.shared_secret(s.private, me._peers[v].s_pk)
        context = struct.pack("<QII", 9, min(2, v), max(2, v)) + terms
        seed = kdf.derive(secret, kdf.LABEL_PAIRWISE_MASK, context, length=16)
        masks.append(test_prg.reference_expand(seed, ring, 11))
        signs.append(1 if 2 < v else -1)
    for mask, sign in zip(masks, signs):
        expect = [(e + sign * int(m)) % ring.modulus for e, m in zip(expect, mask)]
    got = ring.from_bytes(captured[2][wire.MASKED_INPUT_HEADER_BYTES :], 11)
    assert [int(v) for v in got] == expect
    assert np.array_equal(server.result(), slow_sum(ring, inputs, ids))


@pytest.mark.parametrize("bits", [1, 8, 13, 32, 64])
def test_ring_widths(bits: int) -> None:
    ring = RingSpec(bits)
    ids = [1, 2, 3, 4, 5]
    spec = MaskingSecureSum(ring, 7, graph="complete")
    inputs = make_inputs(ring, 7, ids, bits)
    out = run_round(spec, inputs, round_id=2, rng_for=rngs(bits), stages_completed={3: 3})
    assert np.array_equal(out.total, slow_sum(ring, inputs, ids))


def test_upload_is_under_4_1_bytes_per_parameter() -> None:
    dim = 20_000
    ids = list(range(1, 11))
    spec = MaskingSecureSum(RING, dim, graph="complete")
    out = run_round(spec, make_inputs(RING, dim, ids, 0), round_id=0, rng_for=rngs(0))
    assert max(out.bytes_up.values()) / dim <= 4.1


def test_bad_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="graph must be"):
        MaskingSecureSum(RING, 3, graph="ring")
    with pytest.raises(ConfigurationError, match="dim"):
        MaskingSecureSum(RING, 0)
    pub, sec = generate_identities([1, 2], SeededRandomSource(0))
    with pytest.raises(ConfigurationError, match="does not match"):
        MaskingSecureSum(RING, 3, identities=pub, signing_keys={1: sec[2]})
    with pytest.raises(ConfigurationError, match="threshold"):
        MaskingSecureSum(RING, 3, graph="complete", threshold=5).server([1, 2, 3], 0)


def test_session_misuse_is_local_error() -> None:
    spec = MaskingSecureSum(RING, 3, graph="complete")
    with pytest.raises(LocalProtocolError):
        spec.client(0, 0, SeededRandomSource(0))
    with pytest.raises(LocalProtocolError):
        spec.server([1, 1, 2], 0)
    pub, sec = generate_identities([1, 2, 3], SeededRandomSource(0))
    with pytest.raises(LocalProtocolError, match="has none"):
        MaskingSecureSum(RING, 3, identities=pub, signing_keys={1: sec[1]}).client(2, 0, SeededRandomSource(0))
    c = spec.client(1, 0, SeededRandomSource(0))
    with pytest.raises(LocalProtocolError):
        c.start(np.zeros(4, dtype=np.uint32))
    c.start(np.zeros(3, dtype=np.uint32))
    with pytest.raises(LocalProtocolError, match="twice"):
        c.start(np.zeros(3, dtype=np.uint32))
    server = spec.server([1, 2, 3], 0)
    with pytest.raises(LocalProtocolError, match="result"):
        server.result()


def test_deferred_inputs_are_produced_once_at_the_masked_input_stage_and_summed() -> None:
    """A simulation can pass inputs that are produced on demand: each client makes its input when it
    masks it (so no round holds every input at once); clients that drop before never make theirs."""
    ring = RingSpec(32)
    spec = MaskingSecureSum(ring, 16, graph="complete")
    ids = list(range(1, 9))
    made: list[int] = []
    values = make_inputs(ring, 16, ids, 3)

    def deferred(c: int):  # type: ignore[no-untyped-def]
        def produce() -> np.ndarray:
            made.append(c)
            return values[c]

        return produce

    drops = {2: 2, 5: 1}  # 2 leaves after sharing keys, 5 after advertising: neither masks an input
    out = run_round(spec, {c: deferred(c) for c in ids}, round_id=3, rng_for=rngs(1), stages_completed=drops)
    assert out.error is None and sorted(made) == sorted(out.survivors) == [1, 3, 4, 6, 7, 8]
    assert np.array_equal(out.total, slow_sum(ring, values, sorted(out.survivors)))
    bad = {c: deferred(c) for c in ids}
    bad[1] = lambda: np.zeros(3, dtype=np.uint32)  # the caller's producer returns a wrong vector
    with pytest.raises(LocalProtocolError, match="client input has length 3"):
        run_round(spec, bad, round_id=4, rng_for=rngs(1))
