"""Cryptographic primitives of the masking protocol; the only secagg code importing cryptography.

Each module is small and known-answer tested (tests/vectors/masking/): AES-CTR
PRG, HKDF-SHA256, X25519, AES-GCM, Ed25519, and hand-written Shamir sharing.
"""

from __future__ import annotations

from secagg.primitives import aead, kdf, key_agreement, prg, shamir, signatures
from secagg.primitives._errors import (
    AuthenticationError,
    InvalidKeyError,
    PrimitiveError,
    ShareError,
)
from secagg.primitives.key_agreement import KeyPair
from secagg.primitives.signatures import SigningKey, generate_signing_key

__all__ = [
    "AuthenticationError",
    "InvalidKeyError",
    "KeyPair",
    "PrimitiveError",
    "ShareError",
    "SigningKey",
    "aead",
    "generate_signing_key",
    "kdf",
    "key_agreement",
    "prg",
    "shamir",
    "signatures",
]
