"""HKDF-SHA256 (RFC 5869) key derivation with one label constant per purpose.

Every key the masking protocol derives goes through :func:`derive` with one of the
``LABEL_*`` constants below, so a key made for one purpose can never be mistaken
for a key made for another (domain separation).

Security:
    Assumption: HMAC-SHA256 is a PRF and HKDF an extractor for the X25519 shared
    secret (RFC 5869 section 3; Krawczyk, CRYPTO 2010). Guarantee: outputs for
    distinct (label, context) pairs are independent uniform keys. Reference: RFC 5869.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.primitives._errors import PrimitiveError

__all__ = [
    "LABEL_PAIRWISE_MASK",
    "LABEL_SELF_MASK",
    "LABEL_SHARE_ENCRYPTION",
    "LABEL_GRAPH",
    "LABEL_SELF_MASK_COMMITMENT",
    "LABEL_ROTATION",
    "LABEL_TERMS",
    "LABELS",
    "hkdf_sha256",
    "derive",
]

LABEL_PAIRWISE_MASK = b"privagg/secagg/v2/pairwise-mask"
"""PRG seed of the pairwise mask s_uv from the X25519 secret of s_sk_u and s_pk_v.

v2: the context ends with the 32-byte digest of the round terms each client used
(v1's context was the round and the pair only), so clients that used different terms
derive different masks, which do not cancel."""
LABEL_SELF_MASK = b"privagg/secagg/v1/self-mask"
"""PRG seed of the self mask from the 32-byte secret b_u."""
LABEL_SHARE_ENCRYPTION = b"privagg/secagg/v1/share-encryption"
"""AEAD key for the Shamir shares sent from one client to another."""
LABEL_GRAPH = b"privagg/secagg/v1/graph"
"""Seed of the SecAgg+ neighbour graph, from public round data only."""
LABEL_SELF_MASK_COMMITMENT = b"privagg/secagg/v1/self-mask-commitment"
"""Commitment to b_u sent with the masked input, checked after reconstruction."""
LABEL_ROTATION = b"privagg/secagg/v1/rotation"
"""Seed of the public random signs of the encoding's Hadamard rotation, from public data only."""
LABEL_TERMS = b"privagg/secagg/v1/terms"
"""Digest of a canonical encoding of the terms a client checked and used (a public value, not a key)."""

LABELS: tuple[bytes, ...] = (
    LABEL_PAIRWISE_MASK,
    LABEL_SELF_MASK,
    LABEL_SHARE_ENCRYPTION,
    LABEL_GRAPH,
    LABEL_SELF_MASK_COMMITMENT,
    LABEL_ROTATION,
    LABEL_TERMS,
)


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int = 32) -> bytes:
    """Plain HKDF-SHA256 (extract then expand), exactly as RFC 5869 defines it."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive(secret: bytes, label: bytes, context: bytes = b"", *, length: int = 32) -> bytes:
    """Derive a ``length``-byte key for the purpose ``label`` bound to ``context``.

    ``info`` is ``label || 0x00 || context``: labels contain no zero byte, so the
    split between label and context is unambiguous.

    Security:
        Distinct labels or contexts give independent keys (RFC 5869 section 3.2).
        The salt is empty (RFC 5869 section 3.1 allows it when the input is
        already a uniformly random or Diffie-Hellman secret).
    """
    if label not in LABELS:
        raise PrimitiveError(f"unknown HKDF label {label!r}; use one of the LABEL_* constants")
    return hkdf_sha256(secret, salt=None, info=label + b"\x00" + context, length=length)
