"""The mask generator: AES-128-CTR keystream expanded into Z_{2^b} and added in place.

Security:
    Assumption: AES-128 is a pseudorandom permutation, so AES-CTR under a key used
    once is a PRG (NIST SP 800-38A section 6.5; 128-bit security, matching X25519).
    Each 16-byte seed is a fresh HKDF output used for exactly one mask, so the
    all-zero initial counter block is never reused under one key. Guarantee: the
    mask is computationally indistinguishable from a uniform vector in Z_{2^b}.
    There is no modulo bias: each element is one little-endian machine word of
    keystream reduced mod 2^b, and 2^b divides the word size 2^w, so every
    residue has exactly 2^(w-b) preimages.

Speed: :func:`add_masks_into` walks the accumulator in cache-sized chunks and, for
each chunk, writes every mask's keystream with ``update_into`` into one
preallocated buffer viewed as the ring dtype and adds or subtracts it in place.
The chunk stays in cache while all masks are applied; no temporary of the
vector's size is ever created.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.primitives._errors import InvalidKeyError, PrimitiveError
from secagg.ring import RingSpec, RingVector

__all__ = [
    "SEED_BYTES",
    "CHUNK_BYTES",
    "ZERO_COUNTER",
    "MaskOp",
    "add_mask_into",
    "add_masks_into",
    "expand",
]

SEED_BYTES = 16
"""AES-128 key length: the PRG seed size."""
CHUNK_BYTES = 1 << 17
"""Accumulator bytes processed per step (128 KiB: chunk and keystream stay in L2)."""
ZERO_COUNTER = bytes(16)
"""The initial counter block: keys are single-use, so a fixed block is safe."""
_ZEROS = bytes(CHUNK_BYTES)

MaskOp = Literal["add", "sub"]


def add_masks_into(
    acc: RingVector,
    masks: Sequence[tuple[bytes, MaskOp]],
    ring: RingSpec,
    *,
    counter_block: bytes = ZERO_COUNTER,
) -> RingVector:
    """``acc += sum(+-PRG(seed))`` mod 2^bits, in place, streamed chunk by chunk.

    Args:
        acc: the accumulator, a 1-D vector of ``ring.dtype``.
        masks: (16-byte single-use seed, ``"add"`` or ``"sub"``) pairs.
        ring: the ring.
        counter_block: the initial 16-byte CTR block; the protocol always uses
            the all-zero block (keys are single-use); known-answer tests set it.

    Returns:
        ``acc``.

    Raises:
        InvalidKeyError: a seed is not 16 bytes.
        PrimitiveError: wrong accumulator dtype or shape, or unknown op.

    Security:
        See the module docstring: AES-128-CTR, NIST SP 800-38A; no modulo bias.
    """
    if acc.dtype != ring.dtype or acc.ndim != 1:
        raise PrimitiveError(f"accumulator must be a 1-D {ring.dtype} vector, got {acc.dtype}")
    streams = []
    for seed, op in masks:
        if len(seed) != SEED_BYTES:
            raise InvalidKeyError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        if op not in ("add", "sub"):
            raise PrimitiveError(f"op must be 'add' or 'sub', got {op!r}")
        enc = Cipher(algorithms.AES(seed), modes.CTR(counter_block)).encryptor()
        streams.append((enc, np.add if op == "add" else np.subtract))
    itemsize = ring.dtype.itemsize
    per_chunk = CHUNK_BYTES // itemsize
    buf = bytearray(CHUNK_BYTES + 15)  # update_into needs block_size - 1 spare bytes
    words = np.frombuffer(buf, dtype=ring.dtype.newbyteorder("<"), count=per_chunk)
    zeros = memoryview(_ZEROS)
    n = acc.shape[0]
    for start in range(0, n, per_chunk):
        m = min(per_chunk, n - start)
        part, ks, src = acc[start : start + m], words[:m], zeros[: m * itemsize]
        for enc, ufunc in streams:
            enc.update_into(src, buf)
            ufunc(part, ks, out=part)
    return ring.reduce(acc)


def add_mask_into(
    acc: RingVector,
    seed: bytes,
    ring: RingSpec,
    *,
    op: MaskOp = "add",
    counter_block: bytes = ZERO_COUNTER,
) -> RingVector:
    """``acc += PRG(seed)`` (or ``-=``) mod 2^bits, in place: one-mask :func:`add_masks_into`."""
    return add_masks_into(acc, [(seed, op)], ring, counter_block=counter_block)


def expand(seed: bytes, ring: RingSpec, dim: int, *, counter_block: bytes = ZERO_COUNTER) -> RingVector:
    """A fresh vector ``PRG(seed)`` of ``dim`` ring elements (allocates one vector)."""
    return add_mask_into(ring.zeros(dim), seed, ring, counter_block=counter_block)
