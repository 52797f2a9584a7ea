"""Fixed-width wire format of Paillier messages: ciphertexts, plaintexts, decryption shares.

Layout: version (1) | kind (1) | key fingerprint (16) | round id (8, signed) |
sender (8, signed) | count (4) | ``count`` big-endian integers of a fixed width |
kind-specific trailer. Ciphertexts and shares are ``len(n^2)`` bytes wide, plaintexts
``len(n)``. Every field is checked on receipt and a failure blames the sender.

Security: the header binds each payload to the key, the round and the sender, so a
payload replayed into another round, or made under another key, is refused with a
typed error; ciphertext integrity against an active network attacker is the
transport's job (authenticated channels).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from gmpy2 import mpz

from secagg.paillier.errors import (
    CiphertextOutOfRangeError,
    KeyMismatchError,
    MalformedCiphertextError,
    WrongRoundError,
)
from secagg.primitives.paillier_core import PaillierPublicKey

__all__ = ["VERSION", "Kind", "Payload", "encode", "decode", "HEADER_BYTES"]

VERSION = 1
_HEADER = struct.Struct(">BB16sqqI")
HEADER_BYTES = _HEADER.size


class Kind(IntEnum):
    """What a payload carries."""

    CLIENT_CIPHERTEXTS = 1
    DECRYPT_REQUEST = 2
    PLAINTEXTS = 3
    DECRYPTION_SHARES = 4


def _width(pk: PaillierPublicKey, kind: Kind) -> int:
    return pk.plaintext_bytes if kind is Kind.PLAINTEXTS else pk.ciphertext_bytes


@dataclass(frozen=True, slots=True)
class Payload:
    """A decoded payload: the integers and the trailer bytes that follow them."""

    values: list[mpz]
    trailer: bytes


def encode(
    kind: Kind,
    pk: PaillierPublicKey,
    *,
    round_id: int,
    sender: int,
    values: Sequence[int],
    trailer: bytes = b"",
) -> bytes:
    """Serialize ``values`` under a header binding them to ``pk``, ``round_id``, ``sender``."""
    w = _width(pk, kind)
    head = _HEADER.pack(VERSION, int(kind), pk.fingerprint, round_id, sender, len(values))
    return head + b"".join(mpz(v).to_bytes(w, "big") for v in values) + trailer


def decode(
    payload: bytes,
    kind: Kind,
    pk: PaillierPublicKey,
    *,
    round_id: int,
    sender: int,
    count: int,
    peer: int,
    trailer: bool = False,
) -> Payload:
    """Parse and check a payload; every failure raises a typed error blaming ``peer``.

    Raises:
        MalformedCiphertextError: short payload, wrong version/kind/sender/count/length.
        KeyMismatchError: made under another public key.
        WrongRoundError: the header names another round.
        CiphertextOutOfRangeError: a ciphertext or share outside (0, n^2), or a plaintext >= n.
    """
    if len(payload) < HEADER_BYTES:
        raise MalformedCiphertextError(f"payload of {len(payload)} bytes is shorter than the header", peer=peer)
    version, k, fp, rid, snd, cnt = _HEADER.unpack_from(payload)
    if version != VERSION:
        raise MalformedCiphertextError(f"wire version {version}, expected {VERSION}", peer=peer)
    if k != kind:
        raise MalformedCiphertextError(f"payload kind {k}, expected {int(kind)} ({kind.name})", peer=peer)
    if fp != pk.fingerprint:
        raise KeyMismatchError("payload was made under a different Paillier public key", peer=peer)
    if rid != round_id:
        raise WrongRoundError(f"payload for round {rid} received in round {round_id}", peer=peer)
    if snd != sender:
        raise MalformedCiphertextError(f"payload names sender {snd} but came from {sender}", peer=peer)
    if cnt != count:
        raise MalformedCiphertextError(f"payload has {cnt} values, expected {count}", peer=peer)
    w = _width(pk, kind)
    end = HEADER_BYTES + count * w
    if len(payload) < end or (not trailer and len(payload) != end):
        raise MalformedCiphertextError(
            f"payload has {len(payload)} bytes, expected {end}{' or more' if trailer else ''}",
            peer=peer,
        )
    view = memoryview(payload)
    values = [mpz.from_bytes(view[o : o + w], "big") for o in range(HEADER_BYTES, end, w)]
    if kind is Kind.PLAINTEXTS:
        bound = pk.n
        for v in values:
            if v >= bound:
                raise CiphertextOutOfRangeError("plaintext out of range [0, n)", peer=peer)
    else:
        bound = pk.n_squared
        for v in values:
            if not 0 < v < bound:
                raise CiphertextOutOfRangeError("ciphertext out of range (0, n^2)", peer=peer)
    return Payload(values, bytes(view[end:]))
