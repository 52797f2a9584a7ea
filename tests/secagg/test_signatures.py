"""Ed25519 identity keys: RFC 8032 vectors, forgery and wrong-key rejection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource
from secagg.primitives import AuthenticationError, InvalidKeyError, SigningKey, generate_signing_key, signatures

PUBLISHED = json.loads((Path(__file__).parents[1] / "vectors" / "masking" / "published_vectors.json").read_text())


@pytest.mark.parametrize("case", PUBLISHED["rfc8032_71_ed25519"]["cases"])
def test_rfc8032_vectors(case: dict) -> None:
    key = SigningKey.from_seed(bytes.fromhex(case["secret"]))
    msg = bytes.fromhex(case["message"])
    assert key.public.hex() == case["public"]
    assert key.sign(msg).hex() == case["signature"]
    signatures.verify(key.public, msg, bytes.fromhex(case["signature"]))


@given(msg=st.binary(max_size=100), seed=st.integers(0, 2**32))
def test_sign_verify_and_wrong_key_rejected(msg: bytes, seed: int) -> None:
    rng = SeededRandomSource(seed)
    a, b = generate_signing_key(rng), generate_signing_key(rng)
    sig = a.sign(msg)
    signatures.verify(a.public, msg, sig)
    with pytest.raises(AuthenticationError):
        signatures.verify(b.public, msg, sig)
    with pytest.raises(AuthenticationError):
        signatures.verify(a.public, msg + b"x", sig)


def test_bad_public_key_length() -> None:
    with pytest.raises(InvalidKeyError):
        signatures.verify(bytes(31), b"", bytes(64))


def test_bad_seed_length() -> None:
    with pytest.raises(InvalidKeyError):
        SigningKey.from_seed(bytes(31))


def test_repr_hides_seed() -> None:
    key = SigningKey.from_seed(bytes(32))
    assert key.seed.hex() not in repr(key)


def test_invalid_public_point_is_reported_as_invalid_key() -> None:
    # 32 bytes that do not decode to a curve point (y >= p) are a key error or a failed verification.
    with pytest.raises((InvalidKeyError, AuthenticationError)):
        signatures.verify(b"\xff" * 32, b"", bytes(64))
