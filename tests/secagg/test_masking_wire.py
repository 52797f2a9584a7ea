"""Wire formats: round trips for every message, and malformed payloads refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.masking import wire
from secagg.primitives import shamir

keys = st.binary(min_size=32, max_size=32)
sigs = st.sampled_from([b"", bytes(range(64))])
u32 = st.integers(0, 2**32 - 1)
ids = st.lists(u32, max_size=10)
ONE = (1).to_bytes(4, "little")
V = bytes([wire.VERSION])
elems = st.integers(0, shamir.PRIME - 1)
advs = st.builds(wire.Advertisement, keys, keys, sigs)


@given(advs)
def test_advertisement_round_trip(a: wire.Advertisement) -> None:
    assert wire.decode_advertisement(wire.encode_advertisement(a)) == a


@given(st.lists(st.integers(1, 2**32 - 1), max_size=8), st.lists(st.tuples(u32, advs), max_size=8))
def test_share_keys_request_round_trip(cohort: list[int], peers: list) -> None:
    if len(peers) > len(cohort):
        cohort = cohort + list(range(1, len(peers) - len(cohort) + 1))
    req = wire.ShareKeysRequest(tuple(cohort), tuple(peers))
    assert wire.decode_share_keys_request(wire.encode_share_keys_request(req)) == req


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=200)), max_size=6))
def test_sealed_shares_round_trip(recs: list) -> None:
    s = wire.SealedShares(tuple(recs))
    assert wire.decode_sealed_shares(wire.encode_sealed_shares(s)) == s


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), elems, elems)
def test_share_plaintext_round_trip(d: int, h: int, b: int, sk: int) -> None:
    p = wire.SharePlaintext(d, h, b, sk)
    assert wire.decode_share_plaintext(wire.encode_share_plaintext(p)) == p


@given(ids)
def test_id_list_round_trip(xs: list[int]) -> None:
    assert wire.decode_id_list(wire.encode_id_list(xs)) == tuple(xs)


@given(sigs)
def test_signature_round_trip(s: bytes) -> None:
    assert wire.decode_signature(wire.encode_signature(s)) == s


@given(ids, ids, ids, st.data())
def test_unmask_request_round_trip(surv: list[int], b: list[int], sk: list[int], data: st.DataObject) -> None:
    signers = data.draw(st.lists(st.integers(0, 2**32 - 1), max_size=len(surv)))
    req = wire.UnmaskRequest(tuple(surv), tuple(b), tuple(sk), tuple((s, bytes(64)) for s in signers))
    assert wire.decode_unmask_request(wire.encode_unmask_request(req)) == req


@given(st.lists(st.tuples(u32, elems), max_size=5), st.lists(st.tuples(st.integers(0, 9), elems), max_size=5))
def test_unmask_response_round_trip(b: list, sk: list) -> None:
    r = wire.UnmaskResponse(tuple(b), tuple(sk))
    assert wire.decode_unmask_response(wire.encode_unmask_response(r)) == r


def test_masked_input_view() -> None:
    head, body = wire.decode_masked_input(wire.encode_masked_input(bytes(32), bytes(range(32)), b"abcd"))
    assert head.commitment == bytes(32) and head.terms == bytes(range(32)) and bytes(body) == b"abcd"


@pytest.mark.parametrize(
    "decode,payload,match",
    [
        (wire.decode_advertisement, b"", "version"),
        (wire.decode_advertisement, b"\x01" + bytes(65), "version"),  # version 1: no terms binding
        (wire.decode_advertisement, b"\x03" + bytes(65), "version"),
        (wire.decode_advertisement, V + bytes(64), "truncated"),
        (wire.decode_advertisement, V + bytes(64) + b"\x05" + bytes(5), "signature length"),
        (wire.decode_advertisement, V + bytes(65) + b"!", "trailing"),
        (wire.decode_id_list, V + (1000).to_bytes(4, "little"), "longer than the payload"),
        (wire.decode_share_keys_request, V + bytes(4) + (1).to_bytes(4, "little"), "more peers"),
        (wire.decode_signature, V + b"\x07" + bytes(7), "signature length"),
        (wire.decode_unmask_request, V + bytes(12) + (1).to_bytes(4, "little"), "more signatures"),
        (wire.decode_share_plaintext, V + bytes(8) + shamir.PRIME.to_bytes(33, "little") + bytes(33), "canon"),
        (wire.decode_unmask_response, V + ONE + bytes(4) + b"\xff" * 33 + bytes(4), "canonical"),
        (wire.decode_sealed_shares, V + ONE + bytes(4) + (9).to_bytes(2, "little"), "truncated"),
    ],
)
def test_malformed_payloads_refused(decode, payload: bytes, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(wire.WireFormatError, match=match):
        decode(payload)


def test_masked_input_reserved_bytes_must_be_zero_and_vector_is_aligned() -> None:
    payload = wire.encode_masked_input(bytes(32), bytes(32), bytes(16))
    assert wire.MASKED_INPUT_HEADER_BYTES == 72 and wire.MASKED_INPUT_HEADER_BYTES % 8 == 0
    with pytest.raises(wire.WireFormatError, match="reserved"):
        wire.decode_masked_input(payload[:1] + b"\x01" + payload[2:])
