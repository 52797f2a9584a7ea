"""The mask generator: AES-256-CTR keystream expanded into Z_{2^b} and added in place.

Security:
    Assumption: AES-256 is a pseudorandom permutation, so AES-CTR under a key used
    once is a PRG (NIST SP 800-38A section 6.5). Each 32-byte seed is a fresh HKDF
    output used for exactly one mask, so the all-zero counter block is never reused
    under one key. Guarantee: the mask is computationally indistinguishable from a
    uniform vector in Z_{2^b}. There is no modulo bias: each element is one
    little-endian machine word of keystream reduced mod 2^b, and 2^b divides the
    word size 2^w, so every residue has exactly 2^(w-b) preimages.

Speed: the keystream is written by ``update_into`` into one preallocated chunk
buffer, viewed as the ring dtype and added to (or subtracted from) the
accumulator slice in place; no temporary of the vector's size is created.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.primitives._errors import InvalidKeyError, PrimitiveError
from secagg.ring import RingSpec, RingVector

__all__ = ["SEED_BYTES", "CHUNK_BYTES", "ZERO_COUNTER", "add_mask_into", "expand"]

SEED_BYTES = 32
"""AES-256 key length: the PRG seed size."""
CHUNK_BYTES = 1 << 18
"""Keystream produced per call (256 KiB: fits in L2 cache)."""
ZERO_COUNTER = bytes(16)
"""The initial counter block: keys are single-use, so a fixed block is safe."""
_ZEROS = bytes(CHUNK_BYTES)


def add_mask_into(
    acc: RingVector,
    seed: bytes,
    ring: RingSpec,
    *,
    op: Literal["add", "sub"] = "add",
    counter_block: bytes = ZERO_COUNTER,
) -> RingVector:
    """``acc += PRG(seed)`` (or ``-=``) mod 2^bits, in place, streamed in chunks.

    Args:
        acc: the accumulator, a 1-D vector of ``ring.dtype``.
        seed: a 32-byte single-use key (an HKDF output).
        ring: the ring.
        op: ``"add"`` or ``"sub"``.
        counter_block: the initial 16-byte CTR block; the protocol always uses
            the all-zero block (keys are single-use); known-answer tests set it.

    Returns:
        ``acc``.

    Raises:
        InvalidKeyError: the seed is not 32 bytes.
        PrimitiveError: wrong accumulator dtype or shape, or unknown op.

    Security:
        See the module docstring: AES-256-CTR, NIST SP 800-38A; no modulo bias.
    """
    if len(seed) != SEED_BYTES:
        raise InvalidKeyError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if acc.dtype != ring.dtype or acc.ndim != 1:
        raise PrimitiveError(f"accumulator must be a 1-D {ring.dtype} vector, got {acc.dtype}")
    if op not in ("add", "sub"):
        raise PrimitiveError(f"op must be 'add' or 'sub', got {op!r}")
    ufunc: np.ufunc = np.add if op == "add" else np.subtract
    itemsize = ring.dtype.itemsize
    per_chunk = CHUNK_BYTES // itemsize
    enc = Cipher(algorithms.AES(seed), modes.CTR(counter_block)).encryptor()
    buf = bytearray(CHUNK_BYTES + 15)  # update_into needs block_size - 1 spare bytes
    words = np.frombuffer(buf, dtype=ring.dtype.newbyteorder("<"), count=per_chunk)
    zeros = memoryview(_ZEROS)
    n = acc.shape[0]
    for start in range(0, n, per_chunk):
        m = min(per_chunk, n - start)
        enc.update_into(zeros[: m * itemsize], buf)
        part = acc[start : start + m]
        ufunc(part, words[:m], out=part)
    return ring.reduce(acc)


def expand(
    seed: bytes, ring: RingSpec, dim: int, *, counter_block: bytes = ZERO_COUNTER
) -> RingVector:
    """A fresh vector ``PRG(seed)`` of ``dim`` ring elements (allocates one vector)."""
    return add_mask_into(ring.zeros(dim), seed, ring, counter_block=counter_block)
