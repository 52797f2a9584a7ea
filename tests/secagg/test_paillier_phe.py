"""Known answers and interoperability with python-paillier (phe), same keys both ways."""

from __future__ import annotations

import json
import pathlib

import pytest
from gmpy2 import mpz
from phe import paillier

from dp.randomness import SeededRandomSource
from secagg.errors import ConfigurationError
from secagg.primitives.paillier_core import (
    EncryptionMode,
    Encryptor,
    PaillierError,
    PaillierPrivateKey,
    PaillierPublicKey,
    generate_keypair,
)
from secagg.primitives.paillier_phe import (
    from_phe_private,
    from_phe_public,
    to_phe_ciphertext,
    to_phe_private,
    to_phe_public,
)

VEC = pathlib.Path(__file__).resolve().parents[1] / "vectors" / "paillier"
KEYS = json.loads((VEC / "keys_2048.json").read_text())
KAT = json.loads((VEC / "kat_phe_2048.json").read_text())


def committed_key(name: str) -> PaillierPrivateKey:
    k = KEYS[name]
    pk = PaillierPublicKey(mpz(k["n"]), mpz(k["hs"]), k["djn_exponent_bits"])
    return PaillierPrivateKey(pk, mpz(k["p"]), mpz(k["q"]))


SK = committed_key("single")
PK = SK.public_key


def test_standard_encryption_matches_phe_known_answers():
    for case in KAT["cases"]:
        m, r = int(case["m"]), int(case["r"])
        assert PK.raw_encrypt(m, r) == int(case["c_standard"])
        assert SK.decrypt(int(case["c_standard"])) == m


def test_djn_encryption_matches_known_answers():
    for case in KAT["cases"]:
        m, e = int(case["m"]), int(case["djn_exponent"])
        assert PK.raw_encrypt(m, e, mode=EncryptionMode.DJN) == int(case["c_djn"])
        assert SK.decrypt(int(case["c_djn"])) == m


def test_phe_made_ciphertexts_decrypt_with_privagg():
    for case in KAT["phe_encrypted"]:
        assert SK.decrypt(int(case["c"])) == int(case["m"])


@pytest.mark.parametrize("mode", list(EncryptionMode))
def test_privagg_ciphertexts_decrypt_with_phe(mode):
    phe_sk = to_phe_private(SK)
    ms = [0, 1, 65535, 2**2000 + 7]
    cs = Encryptor(PK, mode=mode).encrypt_many(ms, SeededRandomSource("x"))
    assert [phe_sk.decrypt(to_phe_ciphertext(PK, c)) for c in cs] == ms
    assert [phe_sk.raw_decrypt(int(c)) for c in cs] == ms


def test_fresh_phe_key_round_trips_both_ways():
    phe_pk, phe_sk = paillier.generate_paillier_keypair(n_length=2048)
    sk = from_phe_private(phe_sk, rng=SeededRandomSource(1))
    assert sk.public_key.n == phe_pk.n and sk.public_key.hs is not None
    c = phe_pk.encrypt(424242).ciphertext()
    assert sk.decrypt(c) == 424242
    ours = Encryptor(sk.public_key).encrypt_many([99], SeededRandomSource(2))[0]
    assert phe_sk.decrypt(to_phe_ciphertext(sk.public_key, ours)) == 99
    back = to_phe_private(sk)
    assert back.p == phe_sk.p and back.q == phe_sk.q and to_phe_public(sk.public_key) == phe_pk


def test_import_without_rng_gives_standard_mode_only():
    pk = from_phe_public(to_phe_public(PK))
    assert pk.hs is None and pk.supports(EncryptionMode.STANDARD) and not pk.supports(EncryptionMode.DJN)


def test_import_refuses_small_keys_and_foreign_g():
    small_pk, small_sk = paillier.generate_paillier_keypair(n_length=512)
    with pytest.raises(ConfigurationError, match="2048"):
        from_phe_public(small_pk)
    assert from_phe_private(small_sk, insecure_small_key_for_tests=True).public_key.bits == 512

    class Odd:
        n = int(PK.n)
        g = int(PK.n) + 2

    with pytest.raises(PaillierError, match="g = n"):
        from_phe_public(Odd())


def test_to_phe_ciphertext_checks_range():
    with pytest.raises(PaillierError, match="out of range"):
        to_phe_ciphertext(PK, 0)


def test_committed_keys_are_reproducible():
    """Provenance: the committed keys are exactly what the recorded seeds produce."""
    again = generate_keypair(SeededRandomSource(KEYS["single"]["seed"]), key_bits=2048)
    assert again.public_key == PK and again.p == SK.p


@pytest.mark.slow
def test_committed_safe_prime_key_is_reproducible():
    safe = committed_key("safe")
    again = generate_keypair(SeededRandomSource(KEYS["safe"]["seed"]), key_bits=2048, safe_primes=True)
    assert again.public_key == safe.public_key and again.p == safe.p
