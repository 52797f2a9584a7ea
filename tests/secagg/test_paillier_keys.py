"""Key serialization: round trips for every key kind, and a typed error for every malformation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource
from secagg.paillier import (
    KeyFormatError,
    dump_key_share,
    dump_private_key,
    dump_public_key,
    dump_threshold_params,
    generate_keypair,
    generate_threshold_key,
    load_key_share,
    load_private_key,
    load_public_key,
    load_threshold_params,
)
from secagg.primitives.paillier_core import PaillierPublicKey

SK = generate_keypair(SeededRandomSource("keys"), key_bits=512, insecure_small_key_for_tests=True)
PARAMS, SHARES = generate_threshold_key(
    SeededRandomSource("tkeys"), threshold=2, parties=3, key_bits=256, insecure_small_key_for_tests=True
)


def test_round_trips():
    assert load_public_key(dump_public_key(SK.public_key)) == SK.public_key
    std = PaillierPublicKey(SK.public_key.n)
    assert load_public_key(dump_public_key(std)) == std
    sk2 = load_private_key(dump_private_key(SK))
    assert sk2.public_key == SK.public_key and sk2.p == SK.p and sk2.q == SK.q
    assert load_threshold_params(dump_threshold_params(PARAMS)) == PARAMS
    for s in SHARES:
        assert load_key_share(dump_key_share(s)) == s


def test_public_key_is_compact():
    # magic+version+kind (6) + n (4+64) + hs (4+128) + exponent bits (4)
    assert len(dump_public_key(SK.public_key)) == 6 + 68 + 132 + 4


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "magic"),
        (b"XXXX\x01\x01", "magic"),
        (b"PAIL\x02\x01", "version"),
        (b"PAIL\x01\x02", "kind"),
        (b"PAIL\x01\x01", "truncated"),
        (b"PAIL\x01\x01\x00\x00\x00\x00", "modulus"),
    ],
)
def test_malformed_public_keys(data, match):
    with pytest.raises(KeyFormatError, match=match):
        load_public_key(data)


def test_trailing_bytes_and_wrong_type():
    with pytest.raises(KeyFormatError, match="trailing"):
        load_public_key(dump_public_key(SK.public_key) + b"\x00")
    with pytest.raises(KeyFormatError, match="bytes"):
        load_public_key("not bytes")  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(cut=st.integers(min_value=1, max_value=100))
def test_truncation_is_always_a_typed_error(cut):
    blob = dump_private_key(SK)
    with pytest.raises(KeyFormatError):
        load_private_key(blob[:-cut])


def test_semantically_invalid_keys():
    good = dump_private_key(SK)
    # swap q for q + 2: p q != n
    pub = dump_public_key(SK.public_key)
    q = int(SK.q) + 2
    qb = q.to_bytes((q.bit_length() + 7) // 8, "big")
    bad = (
        good[: 6 + 4 + len(pub)] + good[6 + 4 + len(pub) : 6 + 4 + len(pub) + 4 + 32] + len(qb).to_bytes(4, "big") + qb
    )
    with pytest.raises(KeyFormatError, match="invalid private key"):
        load_private_key(bad)
    even = (1000).to_bytes(2, "big")
    with pytest.raises(KeyFormatError, match="invalid public key"):
        load_public_key(b"PAIL\x01\x01" + len(even).to_bytes(4, "big") + even + b"\x00" * 8)


def test_invalid_threshold_material():
    blob = dump_threshold_params(PARAMS)
    pub_len = int.from_bytes(blob[6:10], "big")
    at = 10 + pub_len
    bad = blob[:at] + (5).to_bytes(4, "big") + blob[at + 4 :]  # t = 5 > m = 3
    with pytest.raises(KeyFormatError, match="threshold"):
        load_threshold_params(bad)
    share = dump_key_share(SHARES[0])
    plen = int.from_bytes(share[6:10], "big")
    bad_share = share[: 10 + plen] + (9).to_bytes(4, "big") + share[10 + plen + 4 :]
    with pytest.raises(KeyFormatError, match="invalid key share"):
        load_key_share(bad_share)
    with pytest.raises(KeyFormatError, match="kind"):
        load_key_share(blob)
