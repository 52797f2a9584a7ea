"""Wire formats of the masking protocol: one version byte, then fixed little-endian fields.

Every payload starts with :data:`VERSION`. Decoders check lengths exactly and
raise :class:`WireFormatError`; sessions turn that into ``RemoteProtocolError``
naming the sender.

Version 2 (version 1 had neither): the masked input's header carries the 32-byte
digest of the round terms its client bound its masks to, and sealed shares are
authenticated with the dealer's setup-terms digest appended to their associated data
(:mod:`secagg.masking.binding`). A version-1 peer is refused, never reinterpreted.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from secagg.masking.binding import TERMS_BYTES
from secagg.primitives import ShareError, shamir
from secagg.primitives.key_agreement import KEY_BYTES
from secagg.primitives.signatures import SIGNATURE_BYTES

__all__ = [
    "MASKED_INPUT_HEADER_BYTES",
    "VERSION",
    "WireFormatError",
    "Advertisement",
    "ShareKeysRequest",
    "SealedShares",
    "SharePlaintext",
    "MaskedInputHeader",
    "UnmaskRequest",
    "UnmaskResponse",
    "encode_advertisement",
    "decode_advertisement",
    "encode_share_keys_request",
    "decode_share_keys_request",
    "encode_sealed_shares",
    "decode_sealed_shares",
    "encode_share_plaintext",
    "decode_share_plaintext",
    "encode_masked_input",
    "decode_masked_input",
    "encode_id_list",
    "decode_id_list",
    "encode_signature",
    "decode_signature",
    "encode_unmask_request",
    "decode_unmask_request",
    "encode_unmask_response",
    "decode_unmask_response",
    "advertisement_signed_bytes",
    "consistency_signed_bytes",
]

VERSION = 2
COMMITMENT_BYTES = 32
_E = shamir.ELEMENT_BYTES


_U32 = struct.Struct("<I")
_REC = struct.Struct("<IH")


class WireFormatError(ValueError):
    """A payload does not parse; the sender is to blame."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        if not data or data[0] != VERSION:
            got = data[0] if data else None
            raise WireFormatError(f"unsupported wire version {got}, expected {VERSION}")
        self._data = memoryview(data)
        self._pos = 1

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise WireFormatError("payload truncated")
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def u32(self) -> int:
        if self._pos + 4 > len(self._data):
            raise WireFormatError("payload truncated")
        (v,) = _U32.unpack_from(self._data, self._pos)
        self._pos += 4
        return int(v)

    def ids(self) -> tuple[int, ...]:
        m = self.u32()
        if m > (len(self._data) - self._pos) // 4:
            raise WireFormatError("id list longer than the payload")
        return struct.unpack(f"<{m}I", self.take(4 * m))

    def rest(self) -> memoryview:
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out

    def end(self) -> None:
        if self._pos != len(self._data):
            raise WireFormatError(f"{len(self._data) - self._pos} trailing bytes")


def _ids(ids: Sequence[int]) -> bytes:
    return struct.pack(f"<I{len(ids)}I", len(ids), *ids)


@dataclass(frozen=True, slots=True)
class Advertisement:
    """A client's two X25519 public keys and (with identity keys) its Ed25519 signature."""

    c_pk: bytes
    s_pk: bytes
    signature: bytes = b""


def advertisement_signed_bytes(round_id: int, sender: int, c_pk: bytes, s_pk: bytes) -> bytes:
    return b"privagg/secagg/v1/advertise" + struct.pack("<QI", round_id, sender) + c_pk + s_pk


def consistency_signed_bytes(round_id: int, survivors: Sequence[int]) -> bytes:
    return b"privagg/secagg/v1/consistency" + struct.pack("<Q", round_id) + _ids(survivors)


def _adv_body(a: Advertisement) -> bytes:
    return a.c_pk + a.s_pk + bytes([len(a.signature)]) + a.signature


def _read_adv(r: _Reader) -> Advertisement:
    c_pk, s_pk = r.take(KEY_BYTES), r.take(KEY_BYTES)
    siglen = r.take(1)[0]
    if siglen not in (0, SIGNATURE_BYTES):
        raise WireFormatError(f"signature length {siglen}")
    return Advertisement(c_pk, s_pk, r.take(siglen))


def encode_advertisement(a: Advertisement) -> bytes:
    return bytes([VERSION]) + _adv_body(a)


def decode_advertisement(data: bytes) -> Advertisement:
    r = _Reader(data)
    a = _read_adv(r)
    r.end()
    return a


@dataclass(frozen=True, slots=True)
class ShareKeysRequest:
    """Server -> client: the cohort (to recompute the graph) and the neighbours' keys."""

    cohort: tuple[int, ...]
    peers: tuple[tuple[int, Advertisement], ...]


def encode_share_keys_request(req: ShareKeysRequest) -> bytes:
    parts = [bytes([VERSION]), _ids(req.cohort), struct.pack("<I", len(req.peers))]
    for v, a in req.peers:
        parts.append(struct.pack("<I", v) + _adv_body(a))
    return b"".join(parts)


def decode_share_keys_request(data: bytes) -> ShareKeysRequest:
    r = _Reader(data)
    cohort = r.ids()
    m = r.u32()
    if m > len(cohort):
        raise WireFormatError("more peers than cohort members")
    peers = tuple((r.u32(), _read_adv(r)) for _ in range(m))
    r.end()
    return ShareKeysRequest(cohort, peers)


@dataclass(frozen=True, slots=True)
class SealedShares:
    """Sealed share records: (other party, ciphertext); up from a dealer, down to a holder."""

    records: tuple[tuple[int, bytes], ...]


def encode_sealed_shares(s: SealedShares) -> bytes:
    parts = [bytes([VERSION]), struct.pack("<I", len(s.records))]
    for who, ct in s.records:
        parts.append(struct.pack("<IH", who, len(ct)) + ct)
    return b"".join(parts)


def decode_sealed_shares(data: bytes) -> SealedShares:
    r = _Reader(data)
    m = r.u32()
    recs = []
    for _ in range(m):
        who, n = _REC.unpack(r.take(6))
        recs.append((int(who), r.take(int(n))))
    r.end()
    return SealedShares(tuple(recs))


@dataclass(frozen=True, slots=True)
class SharePlaintext:
    """Inside a sealed record: dealer, holder, share of b_u, share of s_sk_u."""

    dealer: int
    holder: int
    b_share: int
    sk_share: int


def encode_share_plaintext(p: SharePlaintext) -> bytes:
    return (
        bytes([VERSION])
        + struct.pack("<II", p.dealer, p.holder)
        + shamir.element_to_bytes(p.b_share)
        + shamir.element_to_bytes(p.sk_share)
    )


def decode_share_plaintext(data: bytes) -> SharePlaintext:
    r = _Reader(data)
    dealer, holder = r.u32(), r.u32()
    try:
        b, sk = shamir.element_from_bytes(r.take(_E)), shamir.element_from_bytes(r.take(_E))
    except ShareError as exc:
        raise WireFormatError(str(exc)) from exc
    r.end()
    return SharePlaintext(dealer, holder, b, sk)


@dataclass(frozen=True, slots=True)
class MaskedInputHeader:
    """The self-mask commitment and the digest of the round terms the client's masks are bound to."""

    commitment: bytes
    terms: bytes


_PAD = bytes(7)
MASKED_INPUT_HEADER_BYTES = 1 + len(_PAD) + COMMITMENT_BYTES + TERMS_BYTES
"""Version, 7 reserved zero bytes, commitment, terms digest: 72 bytes, so the vector starts 8-byte aligned."""


def encode_masked_input(commitment: bytes, terms: bytes, vector_bytes: bytes | memoryview) -> bytes:
    """Header then the little-endian vector bytes, assembled with a single copy (``commitment`` and ``terms``
    are 32 bytes each, by construction: an HKDF output and a :class:`~secagg.masking.binding.TermsBinding` digest)."""
    return b"".join((bytes([VERSION]), _PAD, commitment, terms, vector_bytes))


def decode_masked_input(data: bytes) -> tuple[MaskedInputHeader, memoryview]:
    """The header and a zero-copy (aligned) view of the vector bytes."""
    r = _Reader(data)
    if r.take(len(_PAD)) != _PAD:
        raise WireFormatError("reserved bytes of the masked input header are not zero")
    head = MaskedInputHeader(r.take(COMMITMENT_BYTES), r.take(TERMS_BYTES))
    return head, r.rest()


def encode_id_list(ids: Sequence[int]) -> bytes:
    return bytes([VERSION]) + _ids(ids)


def decode_id_list(data: bytes) -> tuple[int, ...]:
    r = _Reader(data)
    ids = r.ids()
    r.end()
    return ids


def encode_signature(sig: bytes) -> bytes:
    return bytes([VERSION, len(sig)]) + sig


def decode_signature(data: bytes) -> bytes:
    r = _Reader(data)
    n = r.take(1)[0]
    if n not in (0, SIGNATURE_BYTES):
        raise WireFormatError(f"signature length {n}")
    sig = r.take(n)
    r.end()
    return sig


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Server -> holder: whose self-mask shares and whose key shares to reveal.

    ``signatures`` are the consistency-check signatures on the survivor list
    (active variant); empty without identity keys, where no consistency round runs.
    """

    survivors: tuple[int, ...]
    b_ids: tuple[int, ...]
    sk_ids: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...]


def encode_unmask_request(req: UnmaskRequest) -> bytes:
    parts = [bytes([VERSION]), _ids(req.survivors), _ids(req.b_ids), _ids(req.sk_ids)]
    parts.append(struct.pack("<I", len(req.signatures)))
    for who, sig in req.signatures:
        parts.append(struct.pack("<I", who) + sig)
    return b"".join(parts)


def decode_unmask_request(data: bytes) -> UnmaskRequest:
    r = _Reader(data)
    survivors, b_ids, sk_ids = r.ids(), r.ids(), r.ids()
    m = r.u32()
    if m > len(survivors):
        raise WireFormatError("more signatures than survivors")
    sigs = tuple((r.u32(), r.take(SIGNATURE_BYTES)) for _ in range(m))
    r.end()
    return UnmaskRequest(survivors, b_ids, sk_ids, sigs)


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Holder -> server: revealed shares, dealer -> field element, by kind."""

    b_shares: tuple[tuple[int, int], ...]
    sk_shares: tuple[tuple[int, int], ...]


def encode_unmask_response(resp: UnmaskResponse) -> bytes:
    parts = [bytes([VERSION])]
    for group in (resp.b_shares, resp.sk_shares):
        parts.append(struct.pack("<I", len(group)))
        for who, y in group:
            parts.append(struct.pack("<I", who) + shamir.element_to_bytes(y))
    return b"".join(parts)


def decode_unmask_response(data: bytes) -> UnmaskResponse:
    r = _Reader(data)
    groups: list[tuple[tuple[int, int], ...]] = []
    for _ in range(2):
        m = r.u32()
        items = []
        for _ in range(m):
            who = r.u32()
            try:
                items.append((who, shamir.element_from_bytes(r.take(_E))))
            except ShareError as exc:
                raise WireFormatError(str(exc)) from exc
        groups.append(tuple(items))
    r.end()
    return UnmaskResponse(groups[0], groups[1])
