"""Compact binary serialization of Paillier keys, threshold parameters and key shares.

Format: ``b"PAIL"``, a version byte, a kind byte, then fields; integers are
big-endian with a 4-byte length prefix. A private key or a key share is secret:
store it like any private key (the format does not encrypt it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from gmpy2 import mpz

from secagg.paillier.errors import KeyFormatError
from secagg.primitives.paillier_core import PaillierError, PaillierPrivateKey, PaillierPublicKey
from secagg.primitives.paillier_threshold import KeyShare, ThresholdParams

__all__ = [
    "dump_public_key",
    "load_public_key",
    "dump_private_key",
    "load_private_key",
    "dump_threshold_params",
    "load_threshold_params",
    "dump_key_share",
    "load_key_share",
    "public_key_sha256",
]

_MAGIC = b"PAIL"
_VERSION = 1
_PUBLIC, _PRIVATE, _PARAMS, _SHARE = 1, 2, 3, 4


def _int(x: int | None) -> bytes:
    if x is None:
        return (0).to_bytes(4, "big")
    data = int(x).to_bytes(max(1, (int(x).bit_length() + 7) // 8), "big")
    return len(data).to_bytes(4, "big") + data


def _u32(x: int) -> bytes:
    return int(x).to_bytes(4, "big")


class _Reader:
    def __init__(self, data: bytes, kind: int) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise KeyFormatError(f"key material must be bytes, got {type(data).__name__}")
        self.data = bytes(data)
        if len(self.data) < 6 or self.data[:4] != _MAGIC:
            raise KeyFormatError("not a privagg Paillier key (bad magic)")
        if self.data[4] != _VERSION:
            raise KeyFormatError(f"unsupported key format version {self.data[4]}, expected {_VERSION}")
        if self.data[5] != kind:
            raise KeyFormatError(f"key material of kind {self.data[5]}, expected kind {kind}")
        self.pos = 6

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise KeyFormatError("key material is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def integer(self) -> mpz | None:
        n = self.u32()
        return mpz.from_bytes(self.take(n), "big") if n else None

    def required(self, what: str) -> mpz:
        v = self.integer()
        if v is None:
            raise KeyFormatError(f"key material lacks {what}")
        return v

    def blob(self) -> bytes:
        return self.take(self.u32())

    def end(self) -> None:
        if self.pos != len(self.data):
            raise KeyFormatError(f"{len(self.data) - self.pos} trailing bytes after the key")


def _header(kind: int) -> bytes:
    return _MAGIC + bytes([_VERSION, kind])


def dump_public_key(pk: PaillierPublicKey) -> bytes:
    return _header(_PUBLIC) + _int(pk.n) + _int(pk.hs) + _u32(pk.djn_exponent_bits)


def public_key_sha256(pk: PaillierPublicKey) -> str:
    """Hex SHA-256 of :func:`dump_public_key` ``(pk)``: the fingerprint a client pins out of band.

    It covers the whole serialized key (modulus, DJN base and exponent size), so a key
    that differs in any field has another fingerprint.
    """
    return hashlib.sha256(dump_public_key(pk)).hexdigest()


def load_public_key(data: bytes) -> PaillierPublicKey:
    """Parse a public key. Raises KeyFormatError if the bytes are not a valid public key."""
    r = _Reader(data, _PUBLIC)
    n = r.required("the modulus")
    hs = r.integer()
    bits = r.u32()
    r.end()
    try:
        return PaillierPublicKey(n, hs, bits)
    except PaillierError as exc:
        raise KeyFormatError(f"invalid public key: {exc}") from exc


def dump_private_key(sk: PaillierPrivateKey) -> bytes:
    pub = dump_public_key(sk.public_key)
    return _header(_PRIVATE) + _u32(len(pub)) + pub + _int(sk.p) + _int(sk.q)


def load_private_key(data: bytes) -> PaillierPrivateKey:
    r = _Reader(data, _PRIVATE)
    pk = load_public_key(r.blob())
    p, q = r.required("p"), r.required("q")
    r.end()
    try:
        return PaillierPrivateKey(pk, p, q)
    except PaillierError as exc:
        raise KeyFormatError(f"invalid private key: {exc}") from exc


def dump_threshold_params(params: ThresholdParams) -> bytes:
    pub = dump_public_key(params.public_key)
    out = [
        _header(_PARAMS),
        _u32(len(pub)),
        pub,
        _u32(params.threshold),
        _u32(params.parties),
        _int(params.v),
    ]
    out.extend(_int(v) for v in params.verification_keys)
    return b"".join(out)


def load_threshold_params(data: bytes) -> ThresholdParams:
    r = _Reader(data, _PARAMS)
    pk = load_public_key(r.blob())
    t, m = r.u32(), r.u32()
    if not 1 <= t <= m <= 1024:
        raise KeyFormatError(f"invalid threshold {t} of {m}")
    v = r.required("the verification base")
    vks: Sequence[mpz] = [r.required("a verification key") for _ in range(m)]
    r.end()
    return ThresholdParams(pk, t, m, v, tuple(vks))  # t, m and the key count are checked above


def dump_key_share(share: KeyShare) -> bytes:
    params = dump_threshold_params(share.params)
    return _header(_SHARE) + _u32(len(params)) + params + _u32(share.index) + _int(share.secret)


def load_key_share(data: bytes) -> KeyShare:
    r = _Reader(data, _SHARE)
    params = load_threshold_params(r.blob())
    index = r.u32()
    secret = r.required("the secret share")
    r.end()
    try:
        return KeyShare(params, index, secret)
    except PaillierError as exc:
        raise KeyFormatError(f"invalid key share: {exc}") from exc
