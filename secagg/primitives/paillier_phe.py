"""Conversion of Paillier keys and raw ciphertexts to and from python-paillier (``phe``).

Both libraries use ``g = n + 1`` and the same decryption, so a raw ciphertext of
either decrypts with the other under the same key (checked by the known-answer tests).

Security: importing a ``phe`` public key yields a standard-mode key unless an ``rng`` is
given, in which case a fresh DJN base ``h_s = (-x^2)^n mod n^2`` is derived (DJN 2010);
anyone may derive one, since ``h_s`` is an n-th residue whatever ``x`` is.
"""

from __future__ import annotations

from typing import Any

import gmpy2
from gmpy2 import mpz

from secagg.primitives.paillier_core import (
    PaillierPrivateKey,
    PaillierPublicKey,
    check_key_bits,
    randbelow,
)
from secagg.protocol import RandomSource

__all__ = [
    "from_phe_public",
    "from_phe_private",
    "to_phe_public",
    "to_phe_private",
    "to_phe_ciphertext",
]


def to_phe_public(pk: PaillierPublicKey) -> Any:
    """A ``phe.paillier.PaillierPublicKey`` with the same modulus."""
    from phe import paillier

    return paillier.PaillierPublicKey(int(pk.n))


def to_phe_private(sk: PaillierPrivateKey) -> Any:
    """A ``phe.paillier.PaillierPrivateKey`` with the same factorisation."""
    from phe import paillier

    return paillier.PaillierPrivateKey(to_phe_public(sk.public_key), int(sk.p), int(sk.q))


def from_phe_public(
    phe_pk: Any, *, rng: RandomSource | None = None, insecure_small_key_for_tests: bool = False
) -> PaillierPublicKey:
    """Import a ``phe`` public key (``g`` must be ``n + 1``, which ``phe`` always uses).

    With ``rng``, also derive a DJN base so the fast encryption mode is available.

    Raises:
        ConfigurationError: the key is below 2048 bits (without the testing flag).
        PaillierError: the key does not use ``g = n + 1``.
    """
    from secagg.primitives.paillier_core import PaillierError

    n = mpz(int(phe_pk.n))
    if int(phe_pk.g) != int(n) + 1:
        raise PaillierError("only keys with g = n + 1 can be imported")
    check_key_bits(int(n.bit_length()), insecure_small_key_for_tests=insecure_small_key_for_tests)
    if rng is None:
        return PaillierPublicKey(n)
    while True:
        x = randbelow(rng, n)
        if x > 1 and gmpy2.gcd(x, n) == 1:
            break
    hs = gmpy2.powmod((-x * x) % n, n, n * n)
    return PaillierPublicKey(n, hs, -(-int(n.bit_length()) // 2))


def from_phe_private(
    phe_sk: Any, *, rng: RandomSource | None = None, insecure_small_key_for_tests: bool = False
) -> PaillierPrivateKey:
    """Import a ``phe`` private key (and its public key, see :func:`from_phe_public`)."""
    pk = from_phe_public(phe_sk.public_key, rng=rng, insecure_small_key_for_tests=insecure_small_key_for_tests)
    return PaillierPrivateKey(pk, mpz(int(phe_sk.p)), mpz(int(phe_sk.q)))


def to_phe_ciphertext(pk: PaillierPublicKey, c: int) -> Any:
    """Wrap a raw ciphertext of an integer plaintext as a ``phe.paillier.EncryptedNumber``."""
    from phe import paillier

    pk.check_ciphertext(c)
    return paillier.EncryptedNumber(to_phe_public(pk), int(c), 0)
