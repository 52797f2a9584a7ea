"""Wire format: fixed-width round trip for every payload kind, and exact sizes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource
from secagg.paillier import CiphertextOutOfRangeError, MalformedCiphertextError, wire
from secagg.primitives.paillier_core import generate_keypair

PK = generate_keypair(SeededRandomSource("wire"), key_bits=256, insecure_small_key_for_tests=True).public_key


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(list(wire.Kind)),
    round_id=st.integers(-(2**63), 2**63 - 1),
    sender=st.integers(-(2**63), 2**63 - 1),
    data=st.data(),
    trailer=st.binary(max_size=40),
)
def test_round_trip(kind, round_id, sender, data, trailer):
    hi = int(PK.n) - 1 if kind is wire.Kind.PLAINTEXTS else int(PK.n_squared) - 1
    lo = 0 if kind is wire.Kind.PLAINTEXTS else 1
    values = data.draw(st.lists(st.integers(lo, hi), max_size=8))
    blob = wire.encode(kind, PK, round_id=round_id, sender=sender, values=values, trailer=trailer)
    width = PK.plaintext_bytes if kind is wire.Kind.PLAINTEXTS else PK.ciphertext_bytes
    assert len(blob) == wire.HEADER_BYTES + width * len(values) + len(trailer)
    out = wire.decode(
        blob, kind, PK, round_id=round_id, sender=sender, count=len(values), peer=sender, trailer=bool(trailer)
    )
    assert [int(v) for v in out.values] == values and out.trailer == trailer


def test_plaintext_at_or_above_n_is_out_of_range():
    blob = wire.encode(wire.Kind.PLAINTEXTS, PK, round_id=1, sender=-1, values=[int(PK.n)])
    with pytest.raises(CiphertextOutOfRangeError) as ei:
        wire.decode(blob, wire.Kind.PLAINTEXTS, PK, round_id=1, sender=-1, count=1, peer=-1)
    assert ei.value.peer == -1


def test_missing_trailer_space_is_malformed():
    blob = wire.encode(wire.Kind.DECRYPTION_SHARES, PK, round_id=1, sender=-1, values=[5, 6])
    with pytest.raises(MalformedCiphertextError, match="or more"):
        wire.decode(blob[:-1], wire.Kind.DECRYPTION_SHARES, PK, round_id=1, sender=-1, count=2, peer=-1, trailer=True)
