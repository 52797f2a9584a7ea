"""X25519 key pairs from injected randomness, and the raw shared secret (RFC 7748).

Security:
    Assumption: the gap Diffie-Hellman problem is hard on Curve25519 (RFC 7748
    section 6.1). The raw shared secret is never used as a key directly: callers
    pass it through :func:`secagg.primitives.kdf.derive` with a purpose label.
    An all-zero shared secret (a small-order peer point) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secagg.primitives._errors import InvalidKeyError
from secagg.protocol import RandomSource

__all__ = ["KEY_BYTES", "KeyPair", "generate_keypair", "keypair_from_private", "shared_secret"]

KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An X25519 key pair: the raw 32-byte private scalar and public u-coordinate."""

    private: bytes
    public: bytes

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()}, private=<hidden>)"


def keypair_from_private(private: bytes) -> KeyPair:
    """The key pair whose private scalar is ``private`` (32 bytes)."""
    if len(private) != KEY_BYTES:
        raise InvalidKeyError(f"X25519 private key must be {KEY_BYTES} bytes, got {len(private)}")
    pub = X25519PrivateKey.from_private_bytes(private).public_key()
    return KeyPair(private=private, public=pub.public_bytes(Encoding.Raw, PublicFormat.Raw))


def generate_keypair(rng: RandomSource) -> KeyPair:
    """A fresh key pair whose private scalar is 32 bytes drawn from ``rng``."""
    return keypair_from_private(rng.random_bytes(KEY_BYTES))


def shared_secret(private: bytes, peer_public: bytes) -> bytes:
    """X25519(private, peer_public); raises :class:`InvalidKeyError` on a bad peer key."""
    if len(private) != KEY_BYTES or len(peer_public) != KEY_BYTES:
        raise InvalidKeyError(f"X25519 keys must be {KEY_BYTES} bytes")
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:  # all-zero output: small-order point
        raise InvalidKeyError(f"peer X25519 key is degenerate: {exc}") from exc
