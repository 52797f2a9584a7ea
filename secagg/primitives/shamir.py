"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

Written by hand because neither ``cryptography`` nor the standard library offers
secret sharing, and the alternatives either split a secret into 16-byte chunks
over GF(2^128) (one polynomial per chunk) or pull in a large dependency. A prime
just above 2^256 holds a whole 32-byte secret in one field element, so each share
is one element and reconstruction is one Lagrange interpolation with Python ints.
The code is kept tiny on purpose (split, reconstruct, cached Lagrange weights).

Security:
    Assumption: none beyond uniform coefficients (information-theoretic).
    Guarantee: any t-1 shares are independent of the secret; any t shares
    determine it (Shamir, CACM 1979). Coefficients are drawn by rejection
    sampling from the injected random source, so they are uniform in the field.
    x-coordinates are the holders' client ids (non-zero, distinct). Shares carry
    no integrity: the protocol authenticates them in transit (AEAD) and checks
    reconstructed secrets against public commitments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from secagg.primitives._errors import ShareError
from secagg.protocol import RandomSource

__all__ = [
    "PRIME",
    "ELEMENT_BYTES",
    "SECRET_BYTES",
    "split",
    "reconstruct",
    "lagrange_at_zero",
    "element_to_bytes",
    "element_from_bytes",
]

PRIME = (1 << 256) + 297
"""The smallest prime above 2^256 (checked in tests/secagg/test_shamir.py)."""
ELEMENT_BYTES = 33
SECRET_BYTES = 32
_MAX_X = 1 << 32


def _random_element(rng: RandomSource) -> int:
    while True:  # rejection sampling: accept with probability ~1/2, no modulo bias
        r = int.from_bytes(rng.random_bytes(ELEMENT_BYTES), "little") & ((1 << 257) - 1)
        if r < PRIME:
            return r


def split(secret: bytes, holders: Sequence[int], threshold: int, rng: RandomSource) -> dict[int, int]:
    """Share ``secret`` among ``holders`` so that any ``threshold`` of them recover it.

    Args:
        secret: exactly 32 bytes.
        holders: distinct x-coordinates in 1..2^32-1 (client ids).
        threshold: t, with 1 <= t <= len(holders).
        rng: source of the polynomial's coefficients.

    Returns:
        holder -> share value (a field element).
    """
    if len(secret) != SECRET_BYTES:
        raise ShareError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    xs = list(holders)
    if len(set(xs)) != len(xs) or any(not 0 < x < _MAX_X for x in xs):
        raise ShareError("holders must be distinct x-coordinates in 1..2^32-1")
    if not 1 <= threshold <= len(xs):
        raise ShareError(f"threshold must be in 1..{len(xs)}, got {threshold}")
    coeffs = [int.from_bytes(secret, "little")]
    coeffs += [_random_element(rng) for _ in range(threshold - 1)]
    shares: dict[int, int] = {}
    top_first = coeffs[::-1]
    for x in xs:
        y = 0
        for c in top_first:  # Horner over the integers (x < 2^32: y stays small), one reduction
            y = y * x + c
        shares[x] = y % PRIME
    return shares


@lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Weights w_i with f(0) = sum w_i f(x_i) for any polynomial of degree < len(xs).

    w_i = prod_{j != i} x_j / (x_j - x_i); the denominators are inverted together
    with one modular exponentiation (Montgomery's batch-inversion trick).
    """
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        nums.append(num)
        dens.append(den)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    weights = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        weights[i] = nums[i] * inv % PRIME * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(weights)


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """Recover the 32-byte secret from at least ``threshold`` shares.

    The ``threshold`` shares with the smallest x are used, so repeated holder
    sets hit the Lagrange cache.

    Raises:
        ShareError: too few shares, bad coordinates, or values that cannot come
            from a 32-byte secret (the shares were altered).
    """
    if threshold < 1 or len(shares) < threshold:
        raise ShareError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    xs = tuple(sorted(shares)[:threshold])
    if any(not 0 < x < _MAX_X for x in xs):
        raise ShareError("share x-coordinates must be in 1..2^32-1")
    ys = [shares[x] for x in xs]
    if any(not 0 <= y < PRIME for y in ys):
        raise ShareError("share value outside the field")
    secret = sum(w * y for w, y in zip(lagrange_at_zero(xs), ys, strict=True)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ShareError("shares are inconsistent: the interpolated secret exceeds 32 bytes")
    return secret.to_bytes(SECRET_BYTES, "little")


def element_to_bytes(y: int) -> bytes:
    """Fixed 33-byte little-endian encoding of a field element."""
    if not 0 <= y < PRIME:
        raise ShareError("value outside the field")
    return y.to_bytes(ELEMENT_BYTES, "little")


def element_from_bytes(data: bytes) -> int:
    """Inverse of :func:`element_to_bytes`; refuses non-canonical encodings."""
    if len(data) != ELEMENT_BYTES:
        raise ShareError(f"field element must be {ELEMENT_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "little")
    if y >= PRIME:
        raise ShareError("field element encoding is not canonical (>= p)")
    return y
