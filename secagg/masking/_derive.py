"""Every key and seed of a masking round, each from HKDF with its own label and the round id.

Pairwise mask seeds also bind the digest of the round terms the deriving client used.
"""

from __future__ import annotations

import struct

from secagg.errors import LocalProtocolError
from secagg.masking.binding import TERMS_BYTES
from secagg.primitives import kdf, key_agreement, prg

__all__ = ["pairwise_seed", "self_mask_seed", "self_mask_commitment", "share_key"]


def pairwise_seed(
    s_key: key_agreement.KeyPair, peer_s_pk: bytes, *, round_id: int, me: int, peer: int, terms: bytes
) -> bytes:
    """PRG seed of the mask shared by ``me`` and ``peer`` (symmetric in the pair).

    ``terms`` is the 32-byte digest of the round terms the deriving party uses (its own
    :attr:`~secagg.masking.binding.TermsBinding.round`): the two ends agree on the seed
    only if they used the same terms. Context: ``round (8) || lo (4) || hi (4) || terms (32)``.
    """
    if len(terms) != TERMS_BYTES:
        raise LocalProtocolError(f"the terms digest must be {TERMS_BYTES} bytes, got {len(terms)}")
    lo, hi = min(me, peer), max(me, peer)
    secret = s_key.exchange(peer_s_pk)
    context = struct.pack("<QII", round_id, lo, hi) + terms
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
