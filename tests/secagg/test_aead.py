"""AES-256-GCM share sealing: published vectors, round trip, and every binding of the associated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.primitives import AuthenticationError, InvalidKeyError, aead

PUBLISHED = json.loads((Path(__file__).parents[1] / "vectors" / "masking" / "published_vectors.json").read_text())


@pytest.mark.parametrize("case", PUBLISHED["gcm_aes256"]["cases"])
def test_gcm_published_vectors(case: dict) -> None:
    iv = bytes.fromhex(case["iv"])
    sealed = aead.seal(bytes.fromhex(case["key"]), iv, bytes.fromhex(case["plaintext"]), bytes.fromhex(case["aad"]))
    assert sealed == iv + bytes.fromhex(case["ciphertext"] + case["tag"])
    assert aead.open_sealed(bytes.fromhex(case["key"]), sealed, b"") == bytes.fromhex(case["plaintext"])


def test_associated_data_layout() -> None:
    ad = aead.associated_data(version=1, round_id=7, sender=3, recipient=11)
    assert ad == bytes([1]) + (7).to_bytes(8, "little") + (3).to_bytes(4, "little") + (11).to_bytes(4, "little")
    terms = bytes(range(32))
    assert aead.associated_data(version=2, round_id=7, sender=3, recipient=11, context=terms) == (
        bytes([2]) + ad[1:] + terms
    )


@given(pt=st.binary(max_size=200), key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12))
def test_round_trip(pt: bytes, key: bytes, nonce: bytes) -> None:
    ad = aead.associated_data(version=1, round_id=1, sender=2, recipient=3)
    assert aead.open_sealed(key, aead.seal(key, nonce, pt, ad), ad) == pt


@pytest.mark.parametrize(
    "other",
    [
        {"version": 2, "round_id": 5, "sender": 1, "recipient": 2},
        {"version": 1, "round_id": 4, "sender": 1, "recipient": 2},
        {"version": 1, "round_id": 5, "sender": 3, "recipient": 2},
        {"version": 1, "round_id": 5, "sender": 1, "recipient": 3},
        {"version": 1, "round_id": 5, "sender": 2, "recipient": 1},
        {"version": 1, "round_id": 5, "sender": 1, "recipient": 2, "context": bytes(32)},
        {"version": 1, "round_id": 5, "sender": 1, "recipient": 2, "context": b"\x01" + bytes(31)},
    ],
    ids=["version", "round", "sender", "recipient", "swapped", "context-missing", "context-other"],
)
def test_associated_data_binds_each_field(other: dict) -> None:
    key = bytes(range(32))
    ad = aead.associated_data(version=1, round_id=5, sender=1, recipient=2, context=b"\x02" + bytes(31))
    sealed = aead.seal(key, bytes(12), b"share", ad)
    assert aead.open_sealed(key, sealed, ad) == b"share"
    with pytest.raises(AuthenticationError):
        aead.open_sealed(key, sealed, aead.associated_data(**other))


@given(pos=st.integers(0, 12 + 5 + 15), bit=st.integers(0, 7))
def test_any_bit_flip_rejected(pos: int, bit: int) -> None:
    key, ad = bytes(range(32)), b"ad"
    sealed = bytearray(aead.seal(key, bytes(12), b"share", ad))
    sealed[pos] ^= 1 << bit
    with pytest.raises(AuthenticationError):
        aead.open_sealed(key, bytes(sealed), ad)


def test_truncated_rejected() -> None:
    with pytest.raises(AuthenticationError, match="shorter"):
        aead.open_sealed(bytes(32), bytes(20), b"")


@pytest.mark.parametrize("key,nonce", [(bytes(16), bytes(12)), (bytes(32), bytes(8))])
def test_seal_rejects_bad_key_or_nonce(key: bytes, nonce: bytes) -> None:
    with pytest.raises(InvalidKeyError):
        aead.seal(key, nonce, b"", b"")


def test_open_rejects_bad_key_length() -> None:
    with pytest.raises(InvalidKeyError):
        aead.open_sealed(bytes(16), bytes(40), b"")
