"""X25519 key agreement: RFC 7748 vectors, symmetry, degenerate peer keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource
from secagg.primitives import InvalidKeyError, key_agreement

PUBLISHED = json.loads((Path(__file__).parents[1] / "vectors" / "masking" / "published_vectors.json").read_text())


def test_rfc7748_section_5_2() -> None:
    v = PUBLISHED["rfc7748_52_x25519"]
    assert key_agreement.shared_secret(bytes.fromhex(v["scalar"]), bytes.fromhex(v["u"])).hex() == v["output"]


def test_rfc7748_section_6_1() -> None:
    v = PUBLISHED["rfc7748_61_x25519_dh"]
    alice = key_agreement.keypair_from_private(bytes.fromhex(v["alice_private"]))
    bob = key_agreement.keypair_from_private(bytes.fromhex(v["bob_private"]))
    assert alice.public.hex() == v["alice_public"] and bob.public.hex() == v["bob_public"]
    assert key_agreement.shared_secret(alice.private, bob.public).hex() == v["shared"]
    assert key_agreement.shared_secret(bob.private, alice.public).hex() == v["shared"]


@given(seed=st.integers(0, 2**32))
def test_agreement_is_symmetric(seed: int) -> None:
    rng = SeededRandomSource(seed)
    a, b = key_agreement.generate_keypair(rng), key_agreement.generate_keypair(rng)
    assert key_agreement.shared_secret(a.private, b.public) == key_agreement.shared_secret(b.private, a.public)


def test_small_order_point_refused() -> None:
    with pytest.raises(InvalidKeyError, match="degenerate"):
        key_agreement.shared_secret(bytes(range(32)), bytes(32))


def test_wrong_lengths_refused() -> None:
    with pytest.raises(InvalidKeyError):
        key_agreement.shared_secret(bytes(31), bytes(32))
    with pytest.raises(InvalidKeyError):
        key_agreement.keypair_from_private(bytes(16))


def test_repr_hides_private() -> None:
    kp = key_agreement.keypair_from_private(bytes(range(32)))
    assert kp.private.hex() not in repr(kp)


def test_exchange_refuses_wrong_peer_length() -> None:
    kp = key_agreement.keypair_from_private(bytes(range(32)))
    with pytest.raises(InvalidKeyError, match="32 bytes"):
        kp.exchange(bytes(31))
