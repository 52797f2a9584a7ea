"""Packing ring vectors into Paillier plaintexts, many slots per plaintext (BatchCrypt-style).

Each ring element ``x`` in Z_{2^b} is placed, as its unsigned representative, in a slot
of ``w`` bits with ``w`` the bit length of ``max_clients * (2^b - 1)``. Adding up to
``max_clients`` packed plaintexts therefore never carries out of a slot, and reducing
each slot of the sum mod 2^b gives exactly the ring sum: two's-complement integers
(negative values, integer DP noise) work unchanged, because the ring already
represents them. A plaintext holds ``floor((key_bits - 1) / w)`` slots, so the packed
sum stays below ``2^(key_bits - 1) <= n`` and never wraps mod ``n``.

Unlike BatchCrypt (Zhang et al., USENIX ATC 2020), which packs quantised
values with sign bits and padding, we pack unsigned ring representatives: no offset,
no sign handling, and the overflow bound is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gmpy2 import mpz

from secagg.errors import EncodingOverflowError, LocalProtocolError
from secagg.ring import RingSpec, RingVector

__all__ = ["PackingPlan", "plan_packing"]


@dataclass(frozen=True, slots=True)
class PackingPlan:
    """A validated packing layout.

    Attributes:
        ring: the ring of the packed elements.
        dim: vector length.
        key_bits: bit length of the Paillier modulus.
        max_clients: the most packed vectors that may be summed.
        slot_bits: ``w``, bits per slot.
        slots: slots per plaintext.
    """

    ring: RingSpec
    dim: int
    key_bits: int
    max_clients: int
    slot_bits: int
    slots: int

    @property
    def plaintexts(self) -> int:
        """Plaintexts (and ciphertexts) per vector."""
        return -(-self.dim // self.slots)

    @property
    def packed_bits(self) -> int:
        return self.slots * self.slot_bits

    @property
    def _slot_bytes_total(self) -> int:
        return (self.packed_bits + 7) // 8

    def pack(self, v: RingVector) -> list[mpz]:
        """Pack a ring vector into ``plaintexts`` integers; slot ``i`` holds ``v[k*slots + i]``."""
        self.ring.check(v, self.dim, what="vector to pack")
        b, w, s = self.ring.bits, self.slot_bits, self.slots
        count = self.plaintexts
        padded = np.zeros(count * s, dtype=self.ring.dtype)
        padded[: self.dim] = v
        item = self.ring.dtype.itemsize
        raw = padded.astype(self.ring.dtype.newbyteorder("<"), copy=False).view(np.uint8)
        out: list[mpz] = []
        chunk = max(1, (1 << 22) // (s * w))  # bound temporary memory to a few MB
        for start in range(0, count, chunk):
            k = min(chunk, count - start)
            block = raw[start * s * item : (start + k) * s * item].reshape(k, s, item)
            bits = np.unpackbits(block, axis=2, bitorder="little")[:, :, :b]
            slots = np.zeros((k, s, w), dtype=np.uint8)
            slots[:, :, :b] = bits
            flat = slots.reshape(k, s * w)
            packed = np.packbits(flat, axis=1, bitorder="little")
            out.extend(mpz.from_bytes(row.tobytes(), "little") for row in packed)
        return out

    def unpack(self, plaintexts: Sequence[int]) -> RingVector:
        """Unpack (summed) plaintexts; each slot mod 2^b gives the ring sum of the packed vectors.

        Raises:
            EncodingOverflowError: a plaintext exceeds the packed range (some input was
                not a packed vector of this plan, or the key is wrong).
        """
        if len(plaintexts) != self.plaintexts:
            raise LocalProtocolError(f"{len(plaintexts)} plaintexts, expected {self.plaintexts}")
        b, w, s = self.ring.bits, self.slot_bits, self.slots
        nbytes = self._slot_bytes_total
        limit = mpz(1) << self.packed_bits
        for m in plaintexts:
            if not 0 <= m < limit:
                raise EncodingOverflowError(
                    "a decrypted plaintext exceeds the packed range: an input was not a packed "
                    "vector of this plan (or it was encrypted under another key)",
                    knob="max_clients",
                )
        item = self.ring.dtype.itemsize
        res = np.empty(len(plaintexts) * s, dtype=self.ring.dtype)
        chunk = max(1, (1 << 22) // (s * w))
        for start in range(0, len(plaintexts), chunk):
            part = plaintexts[start : start + chunk]
            k = len(part)
            raw = np.frombuffer(b"".join(int(m).to_bytes(nbytes, "little") for m in part), dtype=np.uint8)
            bits = np.unpackbits(raw.reshape(k, nbytes), axis=1, bitorder="little")[:, : s * w]
            low = np.zeros((k, s, item * 8), dtype=np.uint8)
            low[:, :, :b] = bits.reshape(k, s, w)[:, :, :b]
            vals = np.packbits(low, axis=2, bitorder="little").reshape(k * s * item)
            res[start * s : (start + k) * s] = vals.view(self.ring.dtype.newbyteorder("<"))
        return res[: self.dim].copy()


def plan_packing(ring: RingSpec, dim: int, *, key_bits: int, max_clients: int) -> PackingPlan:
    """Derive slot width and slot count so a sum of ``max_clients`` vectors cannot overflow.

    Raises:
        EncodingOverflowError: ``dim`` or ``max_clients`` < 1, or a single slot does not
            fit in the plaintext space (``knob`` names what to change).
    """
    if dim < 1:
        raise EncodingOverflowError(f"dim must be >= 1, got {dim}", knob="dim")
    if max_clients < 1:
        raise EncodingOverflowError(f"max_clients must be >= 1, got {max_clients}", knob="max_clients")
    w = (max_clients * ring.mask).bit_length()
    slots = (key_bits - 1) // w
    if slots < 1:
        raise EncodingOverflowError(
            f"a {w}-bit slot ({ring.bits}-bit values, {max_clients} clients) does not fit a "
            f"{key_bits}-bit Paillier plaintext; lower max_clients or raise key_bits",
            knob="max_clients",
        )
    return PackingPlan(ring, dim, key_bits, max_clients, w, slots)
