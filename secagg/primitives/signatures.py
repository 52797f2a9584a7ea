"""Ed25519 identity keys: signing key advertisements and consistency-check lists (RFC 8032).

Security:
    Assumption: Ed25519 is EUF-CMA (RFC 8032 section 8). Identity public keys are
    distributed out of band (a PKI); with them, the server cannot inject or swap
    a client's advertised keys (Bonawitz et al. CCS 2017, section 6, active model).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secagg.primitives._errors import AuthenticationError, InvalidKeyError
from secagg.protocol import RandomSource

__all__ = ["SIGNATURE_BYTES", "SigningKey", "generate_signing_key", "verify"]

SIGNATURE_BYTES = 64
_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 key pair: the 32-byte seed (RFC 8032 private key) and public key."""

    seed: bytes
    public: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        if len(seed) != _KEY_BYTES:
            raise InvalidKeyError(f"Ed25519 seed must be {_KEY_BYTES} bytes, got {len(seed)}")
        pub = Ed25519PrivateKey.from_private_bytes(seed).public_key()
        return cls(seed=seed, public=pub.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.hex()}, seed=<hidden>)"


def generate_signing_key(rng: RandomSource) -> SigningKey:
    """A fresh identity key from 32 bytes of ``rng``."""
    return SigningKey.from_seed(rng.random_bytes(_KEY_BYTES))


def verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Return if ``signature`` is valid for ``message`` under ``public``, else raise.

    Raises:
        AuthenticationError: bad signature (a check that must not be ignored
            raises instead of returning a bool).
        InvalidKeyError: ``public`` is not a 32-byte Ed25519 key.
    """
    if len(public) != _KEY_BYTES:
        raise InvalidKeyError(f"Ed25519 public key must be {_KEY_BYTES} bytes, got {len(public)}")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature as exc:
        raise AuthenticationError("signature does not verify under the identity key") from exc
    except ValueError as exc:
        raise InvalidKeyError(f"invalid Ed25519 public key: {exc}") from exc
