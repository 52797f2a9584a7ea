"""Threshold Paillier decryption: t-of-m key dealing, decryption shares, proofs, combination.

Written by hand because no maintained Python library offers threshold Paillier with
share-correctness proofs; the construction follows Shoup, "Practical Threshold
Signatures" (EUROCRYPT 2000) as adapted to Paillier by Damgård and
Jurik ("A Generalisation, a Simplification and Some Applications of Paillier's
Probabilistic Public-Key System", PKC 2001, threshold variant) with ``s = 1``.

Security:
    Assumption: DCR, safe primes ``p = 2p' + 1``, ``q = 2q' + 1``, an honest dealer
    that erases ``p, q`` after dealing, and the random-oracle model for the Fiat-Shamir
    proofs. Guarantee: any ``t`` valid shares decrypt; ``t - 1`` shares reveal nothing
    about the secret exponent (Shamir sharing over Z_{n m'}). Each decryption share
    carries a non-interactive proof that ``log_{X^4}(Y^2) = log_v(v_i)`` (Chaum-Pedersen
    equality of discrete logs, as in Shoup 2000), taken over a random linear
    combination ``X = prod c_j^rho_j``, ``Y = prod d_j^rho_j`` of the whole batch
    (the small-exponents batch test of Bellare, Garay, Rabin, EUROCRYPT 1998) with
    128-bit ``rho_j`` derived by hashing the batch. A corrupted share passes with
    probability about 2^-128; a corruption by an element of order 2 passes but is
    cancelled by the squaring in :func:`combine`, so the result is never wrong.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz

from secagg.primitives.paillier_core import (
    PaillierError,
    PaillierPrivateKey,
    PaillierPublicKey,
    generate_keypair,
    randbelow,
)
from secagg.protocol import RandomSource

__all__ = [
    "ThresholdParams",
    "KeyShare",
    "ShareProof",
    "InvalidDecryptionShareError",
    "NotEnoughSharesError",
    "deal",
    "generate_threshold_key",
    "decryption_shares",
    "prove",
    "verify",
    "combine",
]

_RHO_BITS = 128
_CHALLENGE_BITS = 256
_ZK_SLACK_BITS = 128


class InvalidDecryptionShareError(PaillierError):
    """A decryption share failed its proof or is malformed. ``index`` names the decryptor."""

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(f"{message} (decryptor {index})")
        self.index = index


class NotEnoughSharesError(PaillierError):
    """Fewer valid decryption shares than the threshold: the ciphertexts cannot be decrypted."""

    def __init__(self, message: str, *, valid: int, required: int) -> None:
        super().__init__(message)
        self.valid = valid
        self.required = required


@dataclass(frozen=True, slots=True)
class ThresholdParams:
    """Public parameters of a t-of-m threshold key.

    Attributes:
        public_key: the Paillier public key.
        threshold: t, the number of shares needed to decrypt.
        parties: m, the number of decryptors (indices 1..m).
        v: the verification base, a random square of Z_{n^2}^*.
        verification_keys: ``v_i = v^(Delta s_i) mod n^2`` for i = 1..m.
    """

    public_key: PaillierPublicKey
    threshold: int
    parties: int
    v: mpz
    verification_keys: tuple[mpz, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= self.parties:
            raise PaillierError(f"need 1 <= t <= m, got t={self.threshold}, m={self.parties}")
        if len(self.verification_keys) != self.parties:
            raise PaillierError("one verification key per decryptor is required")

    @property
    def delta(self) -> int:
        """Delta = m!, which clears the denominators of the Lagrange coefficients."""
        return math.factorial(self.parties)

    def verification_key(self, index: int) -> mpz:
        if not 1 <= index <= self.parties:
            raise PaillierError(f"decryptor index must be in 1..{self.parties}, got {index}")
        return self.verification_keys[index - 1]


@dataclass(frozen=True, slots=True)
class KeyShare:
    """Decryptor ``index``'s secret share ``s_i = f(i) mod n m'`` of the decryption exponent."""

    params: ThresholdParams
    index: int
    secret: mpz

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.params.parties:
            raise PaillierError(f"share index must be in 1..{self.params.parties}, got {self.index}")

    def __repr__(self) -> str:
        p = self.params
        return f"KeyShare(index={self.index}, t={p.threshold}, m={p.parties}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class ShareProof:
    """Fiat-Shamir proof ``(e, z)`` that a batch of decryption shares is correct."""

    e: mpz
    z: mpz


def deal(
    sk: PaillierPrivateKey, *, threshold: int, parties: int, rng: RandomSource
) -> tuple[ThresholdParams, list[KeyShare]]:
    """Split the decryption exponent of ``sk`` into ``parties`` shares; any ``threshold`` decrypt.

    Raises:
        PaillierError: ``p`` or ``q`` is not a safe prime, or t/m are out of range.

    Security: the dealer sees the factorisation; it must erase ``sk`` afterwards.
    The secret is ``d`` with ``d = 0 mod m'`` and ``d = 1 mod n`` (Damgård-Jurik 2001, threshold variant).
    """
    if not 1 <= threshold <= parties:
        raise PaillierError(f"need 1 <= threshold <= parties, got {threshold} of {parties}")
    p, q, n = sk.p, sk.q, sk.public_key.n
    pp, qq = (p - 1) // 2, (q - 1) // 2
    if not (gmpy2.is_prime(pp, 40) and gmpy2.is_prime(qq, 40)):
        raise PaillierError("threshold dealing needs safe primes; generate the key with safe_primes=True")
    mprime = pp * qq
    nm = n * mprime
    d = mprime * gmpy2.invert(mprime, n)  # 0 mod m', 1 mod n
    coeffs = [d] + [randbelow(rng, nm) for _ in range(threshold - 1)]
    secrets = []
    for i in range(1, parties + 1):
        acc = mpz(0)
        for a in reversed(coeffs):
            acc = (acc * i + a) % nm
        secrets.append(acc)
    n2 = sk.public_key.n_squared
    while True:
        r = randbelow(rng, n2)
        if r > 1 and gmpy2.gcd(r, n) == 1:
            break
    v = r * r % n2
    delta = math.factorial(parties)
    vks = tuple(gmpy2.powmod(v, delta * s, n2) for s in secrets)
    params = ThresholdParams(sk.public_key, threshold, parties, v, vks)
    return params, [KeyShare(params, i + 1, s) for i, s in enumerate(secrets)]


def generate_threshold_key(
    rng: RandomSource,
    *,
    threshold: int,
    parties: int,
    key_bits: int = 2048,
    insecure_small_key_for_tests: bool = False,
) -> tuple[ThresholdParams, list[KeyShare]]:
    """Trusted-dealer generation: a safe-prime key, dealt and then forgotten."""
    sk = generate_keypair(
        rng,
        key_bits=key_bits,
        safe_primes=True,
        insecure_small_key_for_tests=insecure_small_key_for_tests,
    )
    return deal(sk, threshold=threshold, parties=parties, rng=rng)


def _powmod_secret(base: mpz, exp: int, mod: mpz) -> mpz:
    """``base^exp mod mod`` for a secret exponent via GMP's side-channel-silent ``mpz_powm_sec``."""
    if exp == 0:  # mpz_powm_sec needs a positive exponent; 0 happens with negligible probability
        return mpz(1)
    return gmpy2.powmod_sec(base, exp, mod)


def decryption_shares(share: KeyShare, ciphertexts: Sequence[int]) -> list[mpz]:
    """``d_j = c_j^(2 Delta s_i) mod n^2`` for each ciphertext."""
    pk = share.params.public_key
    exp = 2 * share.params.delta * share.secret
    out = []
    for c in ciphertexts:
        pk.check_ciphertext(c)
        out.append(_powmod_secret(mpz(c), exp, pk.n_squared))
    return out


def _int_bytes(x: int, width: int) -> bytes:
    return int(x).to_bytes(width, "big")


def _batch(
    params: ThresholdParams, index: int, context: bytes, cs: Sequence[int], ds: Sequence[int]
) -> tuple[bytes, mpz, mpz]:
    pk = params.public_key
    w = pk.ciphertext_bytes
    h = hashlib.sha256()
    h.update(b"privagg threshold paillier batch v1|")
    h.update(len(context).to_bytes(4, "big") + context)
    h.update(index.to_bytes(4, "big") + len(cs).to_bytes(8, "big"))
    for c in cs:
        h.update(_int_bytes(c, w))
    for d in ds:
        h.update(_int_bytes(d, w))
    digest = h.digest()
    rb = _RHO_BITS // 8
    stream = hashlib.shake_256(b"rho|" + digest).digest(rb * len(cs))
    n2 = pk.n_squared
    x, y = mpz(1), mpz(1)
    for j, (c, d) in enumerate(zip(cs, ds, strict=True)):
        rho = mpz.from_bytes(stream[j * rb : (j + 1) * rb], "big") | 1
        x = x * gmpy2.powmod(mpz(c), rho, n2) % n2
        y = y * gmpy2.powmod(mpz(d), rho, n2) % n2
    return digest, x, y


def _challenge(params: ThresholdParams, index: int, digest: bytes, elems: Sequence[mpz]) -> mpz:
    w = params.public_key.ciphertext_bytes
    h = hashlib.sha256(b"privagg threshold paillier challenge v1|" + digest + index.to_bytes(4, "big"))
    for e in elems:
        h.update(_int_bytes(e, w))
    return mpz.from_bytes(h.digest(), "big") >> (256 - _CHALLENGE_BITS)


def prove(
    share: KeyShare,
    ciphertexts: Sequence[int],
    shares: Sequence[int],
    rng: RandomSource,
    *,
    context: bytes,
) -> ShareProof:
    """Prove that ``shares`` were computed from ``ciphertexts`` with this decryptor's secret.

    ``context`` must bind the round and the key (the server and decryptors pass the same bytes).
    """
    params = share.params
    n2 = params.public_key.n_squared
    digest, x, y = _batch(params, share.index, context, ciphertexts, shares)
    x4, y2 = gmpy2.powmod(x, 4, n2), gmpy2.powmod(y, 2, n2)
    exp = params.delta * share.secret
    r_bits = int((params.delta * n2).bit_length()) + _CHALLENGE_BITS + _ZK_SLACK_BITS
    r = randbelow(rng, mpz(1) << r_bits)
    a, b = _powmod_secret(x4, r, n2), _powmod_secret(params.v, r, n2)
    vi = params.verification_key(share.index)
    e = _challenge(params, share.index, digest, (params.v, vi, x4, y2, a, b))
    return ShareProof(e, r + e * exp)


def verify(
    params: ThresholdParams,
    index: int,
    ciphertexts: Sequence[int],
    shares: Sequence[int],
    proof: ShareProof,
    *,
    context: bytes,
) -> None:
    """Check a batch of decryption shares from decryptor ``index``.

    Raises:
        InvalidDecryptionShareError: wrong count, a share out of range, or a bad proof.
    """
    pk = params.public_key
    n2 = pk.n_squared
    if len(shares) != len(ciphertexts):
        raise InvalidDecryptionShareError(f"{len(shares)} shares for {len(ciphertexts)} ciphertexts", index=index)
    for d in shares:
        if not 0 < d < n2:
            raise InvalidDecryptionShareError("decryption share out of range (0, n^2)", index=index)
    if not (0 <= proof.e < (mpz(1) << _CHALLENGE_BITS)) or proof.z < 0:
        raise InvalidDecryptionShareError("proof values out of range", index=index)
    digest, x, y = _batch(params, index, context, ciphertexts, shares)
    x4, y2 = gmpy2.powmod(x, 4, n2), gmpy2.powmod(y, 2, n2)
    vi = params.verification_key(index)
    try:
        a = gmpy2.powmod(x4, proof.z, n2) * gmpy2.powmod(y2, -proof.e, n2) % n2
        b = gmpy2.powmod(params.v, proof.z, n2) * gmpy2.powmod(vi, -proof.e, n2) % n2
    except (ValueError, ZeroDivisionError):
        raise InvalidDecryptionShareError("decryption share is not a unit of Z_{n^2}", index=index) from None
    if _challenge(params, index, digest, (params.v, vi, x4, y2, a, b)) != proof.e:
        raise InvalidDecryptionShareError("decryption share proof does not verify", index=index)


def lagrange_times_delta(indices: Sequence[int], i: int, delta: int) -> int:
    """``Delta * prod_{j != i} j / (j - i)``: integral because Delta = m! (Shoup 2000)."""
    num, den = delta, 1
    for j in indices:
        if j != i:
            num *= j
            den *= j - i
    if num % den:
        raise PaillierError("Lagrange coefficient is not integral: indices exceed the dealt parties")
    return num // den


def _combine_unchecked(params: ThresholdParams, shares: Mapping[int, Sequence[int]], count: int) -> list[mpz]:
    pk = params.public_key
    n, n2 = pk.n, pk.n_squared
    idx = sorted(shares)
    mus = {i: 2 * lagrange_times_delta(idx, i, params.delta) for i in idx}
    inv = gmpy2.invert(4 * params.delta * params.delta, n)
    out = []
    for j in range(count):
        pos, neg = mpz(1), mpz(1)
        for i in idx:
            mu = mus[i]
            if mu >= 0:
                pos = pos * gmpy2.powmod(mpz(shares[i][j]), mu, n2) % n2
            else:
                neg = neg * gmpy2.powmod(mpz(shares[i][j]), -mu, n2) % n2
        try:
            cp = pos * gmpy2.invert(neg, n2) % n2
        except (ValueError, ZeroDivisionError):
            raise PaillierError("decryption shares do not combine: a share is not a unit") from None
        if (cp - 1) % n:
            raise PaillierError("decryption shares are inconsistent: combined value is not 1 mod n")
        out.append((cp - 1) // n * inv % n)
    return out


def combine(params: ThresholdParams, shares: Mapping[int, Sequence[int]]) -> list[mpz]:
    """Combine verified decryption shares of ``threshold`` or more decryptors into plaintexts.

    Only the first ``threshold`` indices (sorted) are used.

    Raises:
        NotEnoughSharesError: fewer than ``threshold`` decryptors.
        PaillierError: shares of different lengths, or inconsistent shares.
    """
    t = params.threshold
    if len(shares) < t:
        raise NotEnoughSharesError(
            f"{len(shares)} decryption shares, {t} needed to decrypt", valid=len(shares), required=t
        )
    for i in shares:
        params.verification_key(i)  # index range check
    use = {i: shares[i] for i in sorted(shares)[:t]}
    counts = {len(v) for v in use.values()}
    if len(counts) != 1:
        raise PaillierError("decryption shares cover different numbers of ciphertexts")
    return _combine_unchecked(params, use, counts.pop())
