"""AES-256-GCM sealing of share messages with associated data binding the context.

Security:
    Assumption: AES-GCM is IND-CCA and INT-CTXT for unique (key, nonce) pairs
    (NIST SP 800-38D). The associated data binds the protocol version, the round
    id, the sender and the recipient (and, appended, whatever context the caller
    binds, e.g. a digest of the round's terms), so a ciphertext moved to another
    round or another pair of clients, or opened under another context, fails
    authentication. Keys are directional and
    derived per (round, sender, recipient); nonces are 12 random bytes on top.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.primitives._errors import AuthenticationError, InvalidKeyError

__all__ = ["KEY_BYTES", "NONCE_BYTES", "TAG_BYTES", "associated_data", "seal", "open_sealed"]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_AD = struct.Struct("<BQII")


def associated_data(*, version: int, round_id: int, sender: int, recipient: int, context: bytes = b"") -> bytes:
    """``version (1 byte) || round id (8) || sender (4) || recipient (4) || context``, little-endian.

    ``context`` must have a fixed length for a given ``version`` (the masking protocol's
    v2 appends the 32-byte digest of the terms the sealing client used).
    """
    return _AD.pack(version, round_id, sender, recipient) + bytes(context)


def seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """``nonce || AES-GCM(key, nonce, plaintext, ad)`` (ciphertext and 16-byte tag)."""
    if len(key) != KEY_BYTES:
        raise InvalidKeyError(f"AEAD key must be {KEY_BYTES} bytes, got {len(key)}")
    if len(nonce) != NONCE_BYTES:
        raise InvalidKeyError(f"AEAD nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, sealed: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`seal`; raises :class:`AuthenticationError` if anything was altered."""
    if len(key) != KEY_BYTES:
        raise InvalidKeyError(f"AEAD key must be {KEY_BYTES} bytes, got {len(key)}")
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise AuthenticationError("sealed message is shorter than nonce and tag")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)
    except InvalidTag as exc:
        raise AuthenticationError("share ciphertext failed authentication") from exc
