"""Arithmetic in the ring Z_{2^b} on unsigned numpy vectors, where wrap-around is native."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.errors import ConfigurationError, LocalProtocolError

__all__ = ["RingSpec", "RingVector"]

RingVector = npt.NDArray[np.unsignedinteger]
"""A 1-D vector of ring elements stored in ``RingSpec.dtype``."""

_DTYPES: tuple[tuple[int, type[np.unsignedinteger]], ...] = (
    (8, np.uint8),
    (16, np.uint16),
    (32, np.uint32),
    (64, np.uint64),
)


@dataclass(frozen=True, slots=True)
class RingSpec:
    """The ring Z_{2^bits}, 1 <= bits <= 64.

    Elements are stored in the narrowest unsigned numpy dtype that holds ``bits``;
    when ``bits`` is narrower than that dtype, results are reduced with a mask.
    """

    bits: int

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise ConfigurationError(f"ring bits must be an int, got {type(self.bits).__name__}")
        if not 1 <= self.bits <= 64:
            raise ConfigurationError(f"ring bits must be in 1..64, got {self.bits}")

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        for width, dt in _DTYPES:
            if self.bits <= width:
                return np.dtype(dt)
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def native(self) -> bool:
        """True when the dtype's own wrap-around is reduction mod 2^bits."""
        return self.bits == self.dtype.itemsize * 8

    def bytes_per_element(self) -> int:
        return int(self.dtype.itemsize)

    def zeros(self, dim: int) -> RingVector:
        return np.zeros(dim, dtype=self.dtype)

    def reduce(self, v: RingVector) -> RingVector:
        """Reduce ``v`` (already of ``dtype``) mod 2^bits in place and return it."""
        if not self.native:
            np.bitwise_and(v, self.dtype.type(self.mask), out=v)
        return v

    def check(self, v: object, dim: int | None = None, *, what: str = "vector") -> RingVector:
        """Return ``v`` if it is a valid ring vector, else raise :class:`LocalProtocolError`."""
        if not isinstance(v, np.ndarray):
            raise LocalProtocolError(f"{what} must be a numpy array, got {type(v).__name__}")
        if v.dtype != self.dtype or v.ndim != 1:
            raise LocalProtocolError(
                f"{what} must be a 1-D {self.dtype} array for a {self.bits}-bit ring, got {v.ndim}-D {v.dtype}"
            )
        if dim is not None and v.shape[0] != dim:
            raise LocalProtocolError(f"{what} has length {v.shape[0]}, expected {dim}")
        if not self.native and v.size and int(v.max()) > self.mask:
            raise LocalProtocolError(f"{what} has elements outside Z_2^{self.bits}")
        return v

    def add_into(self, acc: RingVector, v: RingVector) -> RingVector:
        """``acc += v`` mod 2^bits, in place."""
        np.add(acc, v, out=acc)
        return self.reduce(acc)

    def sub_into(self, acc: RingVector, v: RingVector) -> RingVector:
        """``acc -= v`` mod 2^bits, in place."""
        np.subtract(acc, v, out=acc)
        return self.reduce(acc)

    def sum(self, vectors: Iterable[RingVector], dim: int) -> RingVector:
        acc = self.zeros(dim)
        for v in vectors:
            self.add_into(acc, v)
        return acc

    def from_signed(self, v: npt.NDArray[np.integer]) -> RingVector:
        """Two's complement: map signed integers (int64) into the ring.

        One cast: int64 to an unsigned type of w bits keeps the value mod 2^w (numpy casts as
        C does, and C defines signed-to-unsigned conversion modulo 2^w); a ring narrower than
        its type is then masked.
        """
        out = np.asarray(v, dtype=np.int64).astype(self.dtype)
        if not self.native:
            out &= self.dtype.type(self.mask)
        return out

    def to_signed(self, v: RingVector) -> npt.NDArray[np.int64]:
        """Inverse of :meth:`from_signed`: elements >= 2^(bits-1) are negative."""
        # Sign-extend: move bit b-1 to bit 63, reinterpret as int64, shift back arithmetically.
        shift = np.uint64(64 - self.bits)
        shifted = np.left_shift(v.astype(np.uint64), shift)
        return np.right_shift(shifted.view(np.int64), np.int64(64 - self.bits))

    def to_bytes(self, v: RingVector) -> bytes:
        """Little-endian fixed-width serialization."""
        return self.check(v).astype(self.dtype.newbyteorder("<"), copy=False).tobytes()

    def from_bytes(self, data: bytes, dim: int) -> RingVector:
        expected = dim * self.bytes_per_element()
        if len(data) != expected:
            raise LocalProtocolError(f"ring vector payload has {len(data)} bytes, expected {expected}")
        v = np.frombuffer(data, dtype=self.dtype.newbyteorder("<")).astype(self.dtype)
        if not self.native and v.size and int(v.max()) > self.mask:
            raise LocalProtocolError(f"payload has elements outside Z_2^{self.bits}")
        return v
