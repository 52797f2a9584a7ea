"""Every key and seed of a masking round, each from HKDF with its own label and the round id."""

from __future__ import annotations

import struct

from secagg.primitives import kdf, key_agreement, prg

__all__ = ["pairwise_seed", "self_mask_seed", "self_mask_commitment", "share_key"]


def pairwise_seed(s_key: key_agreement.KeyPair, peer_s_pk: bytes, *, round_id: int, me: int, peer: int) -> bytes:
    """PRG seed of the mask shared by ``me`` and ``peer`` (symmetric in the pair)."""
    lo, hi = min(me, peer), max(me, peer)
    secret = s_key.exchange(peer_s_pk)
    context = struct.pack("<QII", round_id, lo, hi)
    return kdf.derive(secret, kdf.LABEL_PAIRWISE_MASK, context, length=prg.SEED_BYTES)


def self_mask_seed(b: bytes, *, round_id: int, owner: int) -> bytes:
    context = struct.pack("<QI", round_id, owner)
    return kdf.derive(b, kdf.LABEL_SELF_MASK, context, length=prg.SEED_BYTES)


def self_mask_commitment(b: bytes, *, round_id: int, owner: int) -> bytes:
    return kdf.derive(b, kdf.LABEL_SELF_MASK_COMMITMENT, struct.pack("<QI", round_id, owner))


def share_key(secret: bytes, *, round_id: int, sender: int, recipient: int) -> bytes:
    """Directional AEAD key for shares sent from ``sender`` to ``recipient``.

    ``secret`` is X25519(c_sk, peer c_pk), the same on both ends.
    """
    return kdf.derive(secret, kdf.LABEL_SHARE_ENCRYPTION, struct.pack("<QII", round_id, sender, recipient))
