"""Packing ring vectors into Paillier plaintexts, many slots per plaintext (BatchCrypt-style).

Each ring element ``x`` in Z_{2^b} is placed in a slot of ``w`` bits, with ``w`` the bit
length of ``max_clients * (2^b - 1)``, as its **offset signed value** ``x_s + 2^(b-1)``
(``x_s`` in [-2^(b-1), 2^(b-1)) the two's-complement reading of ``x``; the slot value is
``x`` with its top bit flipped). The server completes the product of the ``n`` inputs
with a public constant holding ``(max_clients - n) * 2^(b-1)`` per slot, so a decrypted
slot holds exactly ``sum x_s + max_clients * 2^(b-1)``. Adding up to ``max_clients``
slots never carries out of a slot, and reducing a slot mod 2^b (and removing the
constant ``max_clients * 2^(b-1)``) gives the ring sum. A plaintext holds
``floor((key_bits - 1) / w)`` slots, so the packed sum stays below
``2^(key_bits - 1) <= n`` and never wraps mod ``n``.

Security:
    Whoever decrypts sees the whole plaintext, not only its low b bits per slot.
    With unsigned representatives (the previous layout) the bits above b counted,
    per coordinate, the clients holding a negative value: two cohorts with the same
    ring sum gave different plaintexts, an un-noised statistic beyond the sum. With
    the offset layout a slot is ``S + max_clients * 2^(b-1)`` where ``S`` is the
    integer sum of the signed values; whenever that sum does not wrap the ring
    (|S| < 2^(b-1), which :func:`secagg.encoding.plan_encoding` guarantees for
    encoded updates and their noise, except with its stated tail probability),
    ``S`` is the signed reading of the ring sum, so the plaintext is a function of
    the ring sum alone, and of the public ``max_clients``: not of the cohort size or
    of how the sum splits among clients.

Unlike BatchCrypt (Zhang et al., USENIX ATC 2020), the overflow bound is exact and the
offset is completed by the server, so no slot depends on the number of inputs.
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

    @property
    def offset(self) -> int:
        """2^(b-1): what a slot adds to the signed value it holds."""
        return 1 << (self.ring.bits - 1)

    def completion(self, inputs: int) -> mpz:
        """The public plaintext that completes a sum of ``inputs`` packed vectors: every slot
        holds ``(max_clients - inputs) * offset``, so each completed slot carries
        ``max_clients`` offsets whatever the cohort size.

        Raises:
            LocalProtocolError: ``inputs`` outside 1..max_clients.
        """
        if not 1 <= inputs <= self.max_clients:
            raise LocalProtocolError(f"a sum of {inputs} inputs; this plan sums 1..{self.max_clients}")
        per_slot = mpz((self.max_clients - inputs) * self.offset)
        out = mpz(0)
        for i in range(self.slots):
            out += per_slot << (i * self.slot_bits)
        return out

    def pack(self, v: RingVector) -> list[mpz]:
        """Pack a ring vector into ``plaintexts`` integers; slot ``i`` holds ``v[k*slots + i]``
        as its offset signed value (its top bit flipped; unused slots hold the offset alone)."""
        self.ring.check(v, self.dim, what="vector to pack")
        b, w, s = self.ring.bits, self.slot_bits, self.slots
        count = self.plaintexts
        padded = np.zeros(count * s, dtype=self.ring.dtype)
        padded[: self.dim] = v
        np.bitwise_xor(padded, self.ring.dtype.type(self.offset), out=padded)
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
        """Unpack completed sums (packed vectors plus :meth:`completion`) into the ring sum.

        Each slot, reduced mod 2^b, minus ``max_clients * offset`` is the ring sum.

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
        out = res[: self.dim].copy()
        if self.max_clients % 2:  # max_clients * 2^(b-1) is 2^(b-1) mod 2^b: flip the top bit back
            np.bitwise_xor(out, self.ring.dtype.type(self.offset), out=out)
        return out


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
