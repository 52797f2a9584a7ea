"""X25519 key pairs from injected randomness, and the raw shared secret (RFC 7748).

Security:
    Assumption: the gap Diffie-Hellman problem is hard on Curve25519 (RFC 7748
    section 6.1). The raw shared secret is never used as a key directly: callers
    pass it through :func:`secagg.primitives.kdf.derive` with a purpose label.
    An all-zero shared secret (a small-order peer point) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secagg.primitives._errors import InvalidKeyError
from secagg.protocol import RandomSource

__all__ = ["KEY_BYTES", "KeyPair", "generate_keypair", "keypair_from_private", "shared_secret"]

KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An X25519 key pair: the raw 32-byte private scalar and public u-coordinate.

    The parsed private key is kept, so repeated :meth:`exchange` calls do not
    re-derive it (parsing an X25519 private key costs a scalar multiplication).
    """

    private: bytes
    public: bytes
    _key: X25519PrivateKey = field(repr=False, compare=False)

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519(private, peer_public); raises :class:`InvalidKeyError` on a bad peer key."""
        if len(peer_public) != KEY_BYTES:
            raise InvalidKeyError(f"X25519 public keys must be {KEY_BYTES} bytes")
        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # all-zero output: small-order point
            raise InvalidKeyError(f"peer X25519 key is degenerate: {exc}") from exc

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()}, private=<hidden>)"


def keypair_from_private(private: bytes) -> KeyPair:
    """The key pair whose private scalar is ``private`` (32 bytes)."""
    if len(private) != KEY_BYTES:
        raise InvalidKeyError(f"X25519 private key must be {KEY_BYTES} bytes, got {len(private)}")
    key = X25519PrivateKey.from_private_bytes(private)
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KeyPair(private=private, public=pub, _key=key)


def generate_keypair(rng: RandomSource) -> KeyPair:
    """A fresh key pair whose private scalar is 32 bytes drawn from ``rng``."""
    return keypair_from_private(rng.random_bytes(KEY_BYTES))


def shared_secret(private: bytes, peer_public: bytes) -> bytes:
    """X25519(private, peer_public); raises :class:`InvalidKeyError` on a bad peer key."""
    if len(private) != KEY_BYTES:
        raise InvalidKeyError(f"X25519 private key must be {KEY_BYTES} bytes, got {len(private)}")
    return keypair_from_private(private).exchange(peer_public)
