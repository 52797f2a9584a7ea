"""Paillier primitives: key generation, key-size policy, both encryption modes, CRT decryption."""

from __future__ import annotations

import math

import gmpy2
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource
from secagg.errors import ConfigurationError
from secagg.primitives.paillier_core import (
    MIN_KEY_BITS,
    EncryptionMode,
    Encryptor,
    FixedBaseTable,
    PaillierError,
    PaillierPrivateKey,
    PaillierPublicKey,
    check_key_bits,
    decrypt,
    decrypt_many,
    generate_keypair,
    randbelow,
    random_prime,
    random_safe_prime,
    security_bits,
)

SK = generate_keypair(SeededRandomSource("core test key"), key_bits=512, insecure_small_key_for_tests=True)
PK = SK.public_key


def slow_decrypt(sk: PaillierPrivateKey, c: int) -> int:
    """Textbook decryption without CRT: m = L(c^lambda mod n^2) * mu mod n (Paillier 1999, sec. 3)."""
    n = int(sk.public_key.n)
    lam = math.lcm(int(sk.p) - 1, int(sk.q) - 1)
    mu = pow((pow(n + 1, lam, n * n) - 1) // n, -1, n)
    return ((pow(int(c), lam, n * n) - 1) // n) * mu % n


def test_key_below_2048_bits_is_refused_without_testing_flag():
    with pytest.raises(ConfigurationError, match="2048"):
        generate_keypair(SeededRandomSource(1), key_bits=1024)
    with pytest.raises(ConfigurationError, match="2048"):
        check_key_bits(2046)
    check_key_bits(MIN_KEY_BITS)  # accepted


def test_key_bits_must_be_an_even_int():
    with pytest.raises(ConfigurationError, match="int"):
        check_key_bits(2048.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="even"):
        check_key_bits(2049, insecure_small_key_for_tests=True)
    with pytest.raises(ConfigurationError, match="even"):
        check_key_bits(64, insecure_small_key_for_tests=True)


def test_security_level_table_matches_nist_sp800_57():
    assert security_bits(2048) == 112
    assert security_bits(3072) == 128
    assert security_bits(7680) == 192
    assert security_bits(1024) == 80
    assert security_bits(512) == 0


def test_keygen_is_deterministic_for_a_seed_and_well_formed():
    a = generate_keypair(SeededRandomSource("k"), key_bits=512, insecure_small_key_for_tests=True)
    b = generate_keypair(SeededRandomSource("k"), key_bits=512, insecure_small_key_for_tests=True)
    assert a.public_key == b.public_key and a.p == b.p
    assert a.public_key.bits == 512
    assert gmpy2.is_prime(a.p) and gmpy2.is_prime(a.q) and a.p != a.q
    assert a.p.bit_length() == a.q.bit_length() == 256
    assert a.public_key.djn_exponent_bits == 256


def test_safe_prime_keygen():
    sk = generate_keypair(SeededRandomSource("s"), key_bits=512, safe_primes=True, insecure_small_key_for_tests=True)
    for p in (sk.p, sk.q):
        assert gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)


@settings(max_examples=20, deadline=None)
@given(bits=st.integers(min_value=16, max_value=300), seed=st.integers(0, 2**32))
def test_random_primes_have_exact_size(bits, seed):
    p = random_prime(bits, SeededRandomSource(seed))
    assert gmpy2.is_prime(p) and p.bit_length() == bits and p >> (bits - 2) == 3


@settings(max_examples=10, deadline=None)
@given(bits=st.integers(min_value=16, max_value=200), seed=st.integers(0, 2**32))
def test_random_safe_primes(bits, seed):
    p = random_safe_prime(bits, SeededRandomSource(seed))
    assert p.bit_length() == bits and gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)


def test_tiny_prime_sizes_are_refused():
    with pytest.raises(PaillierError):
        random_prime(8, SeededRandomSource(1))
    with pytest.raises(PaillierError):
        random_safe_prime(8, SeededRandomSource(1))


@settings(max_examples=30, deadline=None)
@given(bound=st.integers(min_value=1, max_value=2**300), seed=st.integers(0, 2**32))
def test_randbelow_in_range(bound, seed):
    r = randbelow(SeededRandomSource(seed), bound)
    assert 0 <= r < bound


def test_randbelow_refuses_empty_range():
    with pytest.raises(PaillierError):
        randbelow(SeededRandomSource(1), 0)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(min_value=0), seed=st.integers(0, 2**32), mode=st.sampled_from(list(EncryptionMode)))
def test_encrypt_decrypt_round_trip_both_modes(m, seed, mode):
    m %= int(PK.n)
    c = Encryptor(PK, mode=mode).encrypt_many([m], SeededRandomSource(seed))[0]
    assert decrypt(SK, c) == m
    assert slow_decrypt(SK, c) == m  # CRT fast path agrees with the textbook formula


@settings(max_examples=25, deadline=None)
@given(ms=st.lists(st.integers(min_value=0, max_value=2**200), min_size=1, max_size=6), seed=st.integers(0, 2**32))
def test_homomorphic_addition(ms, seed):
    cs = Encryptor(PK).encrypt_many(ms, SeededRandomSource(seed))
    acc = cs[0]
    for c in cs[1:]:
        acc = PK.add(acc, c)
    assert decrypt(SK, acc) == sum(ms) % PK.n


def test_encryption_is_randomised():
    enc = Encryptor(PK)
    rng = SeededRandomSource(3)
    a, b = enc.encrypt_many([5, 5], rng)
    assert a != b
    assert decrypt_many(SK, [a, b]) == [5, 5]


@settings(max_examples=40, deadline=None)
@given(
    exponent_bits=st.integers(min_value=1, max_value=300),
    window=st.integers(min_value=1, max_value=9),
    data=st.data(),
)
def test_fixed_base_table_matches_powmod(exponent_bits, window, data):
    n2 = PK.n_squared
    table = FixedBaseTable.build(PK.hs, n2, exponent_bits=exponent_bits, window=window)
    e = data.draw(st.integers(min_value=0, max_value=2**exponent_bits - 1))
    assert table.pow(e) == pow(int(PK.hs), e, int(n2))


def test_fixed_base_table_rejects_bad_parameters():
    with pytest.raises(PaillierError):
        FixedBaseTable.build(PK.hs, PK.n_squared, exponent_bits=10, window=0)
    with pytest.raises(PaillierError):
        FixedBaseTable.build(PK.hs, PK.n_squared, exponent_bits=0, window=4)
    table = FixedBaseTable.build(PK.hs, PK.n_squared, exponent_bits=10, window=4)
    with pytest.raises(PaillierError):
        table.pow(1 << 10)


def test_djn_randomizers_equal_hs_to_the_drawn_exponent():
    """The batch digit path reproduces h_s^r for the exponents the rng yields (reference: pow)."""
    enc = Encryptor(PK)
    nbytes = (PK.djn_exponent_bits + 7) // 8
    got = enc.randomizers(5, SeededRandomSource("r"))
    raw = SeededRandomSource("r").random_bytes(5 * nbytes)
    for i, g in enumerate(got):
        e = int.from_bytes(raw[i * nbytes : (i + 1) * nbytes], "big")
        assert g == pow(int(PK.hs), e, int(PK.n_squared))


def test_precomputed_randomness_is_used_once():
    enc = Encryptor(PK)
    rng = SeededRandomSource(9)
    enc.precompute(3, rng)
    assert enc.pool_size == 3
    cs = enc.encrypt_many([1, 2], rng)
    assert enc.pool_size == 1
    cs += enc.encrypt_many([3, 4], rng)  # one pooled, one fresh
    assert enc.pool_size == 0
    assert decrypt_many(SK, cs) == [1, 2, 3, 4]
    assert len(set(cs)) == 4
    with pytest.raises(PaillierError):
        enc.precompute(-1, rng)


def test_encryptor_refuses_bad_plaintext_and_mode():
    enc = Encryptor(PK)
    with pytest.raises(PaillierError, match="plaintext"):
        enc.encrypt_many([PK.n], SeededRandomSource(1))
    with pytest.raises(PaillierError, match="plaintext"):
        enc.encrypt_many([-1], SeededRandomSource(1))
    with pytest.raises(PaillierError, match="EncryptionMode"):
        Encryptor(PK, mode="djn")  # type: ignore[arg-type]
    with pytest.raises(PaillierError, match="DJN"):
        Encryptor(PaillierPublicKey(PK.n), mode=EncryptionMode.DJN)


def test_raw_encrypt_checks_inputs():
    r = 12345
    c = PK.raw_encrypt(7, r)
    assert c == (1 + 7 * int(PK.n)) * pow(r, int(PK.n), int(PK.n_squared)) % int(PK.n_squared)
    assert PK.raw_encrypt(7, r, mode=EncryptionMode.DJN) == (1 + 7 * int(PK.n)) * pow(
        int(PK.hs), r, int(PK.n_squared)
    ) % int(PK.n_squared)
    with pytest.raises(PaillierError, match="unit"):
        PK.raw_encrypt(7, 0)
    with pytest.raises(PaillierError, match="unit"):
        PK.raw_encrypt(7, int(SK.p))
    with pytest.raises(PaillierError, match="DJN"):
        PaillierPublicKey(PK.n).raw_encrypt(7, r, mode=EncryptionMode.DJN)
    with pytest.raises(PaillierError, match="plaintext"):
        PK.raw_encrypt(PK.n, r)


def test_decrypt_refuses_out_of_range_ciphertext():
    for bad in (0, PK.n_squared, PK.n_squared + 5, -1):
        with pytest.raises(PaillierError, match="out of range"):
            decrypt(SK, bad)


def test_public_key_validation():
    with pytest.raises(PaillierError, match="odd"):
        PaillierPublicKey(mpz(1000))
    with pytest.raises(PaillierError, match="unit"):
        PaillierPublicKey(PK.n, mpz(1), 256)
    with pytest.raises(PaillierError, match="unit"):
        PaillierPublicKey(PK.n, SK.p, 256)
    with pytest.raises(PaillierError, match="DJN exponent"):
        PaillierPublicKey(PK.n, PK.hs, 100)


def test_private_key_must_match():
    with pytest.raises(PaillierError, match="p q = n"):
        PaillierPrivateKey(PK, SK.p, SK.p)
    with pytest.raises(PaillierError, match="p q = n"):
        PaillierPrivateKey(PK, SK.p, SK.q + 2)
    swapped = PaillierPrivateKey(PK, SK.q, SK.p)
    assert swapped.p == SK.p  # normalised to p < q


def test_fingerprint_binds_the_modulus():
    other = generate_keypair(SeededRandomSource("other"), key_bits=512, insecure_small_key_for_tests=True)
    assert PK.fingerprint != other.public_key.fingerprint
    assert len(PK.fingerprint) == 16
    assert PK.ciphertext_bytes == 128 and PK.plaintext_bytes == 64


@pytest.mark.parametrize("mode", list(EncryptionMode))
def test_decryption_proof_verifies_and_binds_the_plaintext(mode):
    cs = Encryptor(PK, mode=mode).encrypt_many([0, 9, int(PK.n) - 1], SeededRandomSource(4))
    for c in cs:
        m, root = SK.decrypt_with_proof(c)
        PK.check_decryption(c, m, root)
        with pytest.raises(PaillierError, match="does not match"):
            PK.check_decryption(c, (m + 1) % PK.n, root)
        with pytest.raises(PaillierError, match="does not match"):
            PK.check_decryption(c, m, (root + 1) % PK.n or 1)
    with pytest.raises(PaillierError, match="proof value out of range"):
        PK.check_decryption(cs[0], 0, 0)
    with pytest.raises(PaillierError, match="proof value out of range"):
        PK.check_decryption(cs[0], 0, PK.n)


def test_private_key_needs_gcd_n_phi_one():
    # 5 divides 11 - 1, so gcd(55, 4 * 10) = 5
    with pytest.raises(PaillierError, match="gcd"):
        PaillierPrivateKey(PaillierPublicKey(mpz(55)), mpz(5), mpz(11))
