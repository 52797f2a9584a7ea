"""Injected random sources: the OS CSPRNG for production, a seeded one for reproducibility.

Security:
    :class:`SystemRandomSource` reads ``os.urandom`` (the kernel CSPRNG) and is
    the default everywhere noise or masks are drawn. :class:`SeededRandomSource`
    is deterministic (SHAKE-256 keyed by the seed, expanded per label) and exists for
    tests and reproducible experiments; noise drawn from it is only as secret as
    the seed, so a run with a published seed gives no privacy.
    :meth:`RandomSource.generator` expands 16 fresh bytes of a source with
    AES-128 in counter mode (``randomgen.AESCounter``, AES-NI; checked against
    FIPS-197 and pyca/cryptography in the tests) into a numpy ``Generator``, so
    numpy's vectorised samplers draw from a CSPRNG in bulk: the stream is
    computationally indistinguishable from uniform for anyone without the key
    (AES as a PRF, as for the masks of the secure sum), and each key is used for
    one generator only.
"""

from __future__ import annotations

import abc
import hashlib
import os

import numpy as np
import numpy.typing as npt
from randomgen import AESCounter

__all__ = ["RandomSource", "SystemRandomSource", "SeededRandomSource", "uniform_from_bytes"]

_TWO_53 = float(1 << 53)
_SMALL = 256  # below this, uniform() reads the source directly (keying AES costs more)


def uniform_from_bytes(data: bytes, size: int) -> npt.NDArray[np.float64]:
    """``size`` uniforms in [0, 1) from ``8 * size`` random bytes (53-bit resolution)."""
    words = np.frombuffer(data, dtype="<u8", count=size)
    return (words >> np.uint64(11)).astype(np.float64) / _TWO_53


class RandomSource(abc.ABC):
    """Abstract base: subclasses provide :meth:`random_bytes` and :meth:`spawn`."""

    @abc.abstractmethod
    def random_bytes(self, n: int) -> bytes:
        """``n`` random bytes."""

    @abc.abstractmethod
    def spawn(self, label: str) -> RandomSource:
        """An independent child source (deterministic per label when seeded)."""

    def uniform(self, size: int) -> npt.NDArray[np.float64]:
        """``size`` independent uniforms in [0, 1) with 53-bit resolution."""
        if size <= _SMALL:
            return uniform_from_bytes(self.random_bytes(8 * size), size)
        return self.generator().random(size)

    def generator(self) -> np.random.Generator:
        """A numpy Generator on AES-128-CTR keyed by 16 fresh bytes of this source (CSPRNG in bulk).

        Deterministic for a seeded source; a new key (and stream) at every call.
        """
        key = int.from_bytes(self.random_bytes(16), "little")
        return np.random.Generator(AESCounter(key=key, counter=0))

    def uint64(self, size: int) -> npt.NDArray[np.uint64]:
        return np.frombuffer(self.random_bytes(8 * size), dtype="<u8").astype(np.uint64)

    def randbelow(self, n: int) -> int:
        """Uniform integer in [0, n) without modulo bias (rejection sampling)."""
        if n <= 0:
            raise ValueError(f"randbelow needs n > 0, got {n}")
        k = max(1, (n - 1).bit_length())
        nbytes = (k + 7) // 8
        while True:
            r = int.from_bytes(self.random_bytes(nbytes), "little") & ((1 << k) - 1)
            if r < n:
                return r

    def numpy_generator(self) -> np.random.Generator:
        """A numpy Generator seeded from this source (for shuffles and partitions, not noise)."""
        return np.random.Generator(np.random.PCG64(int.from_bytes(self.random_bytes(16), "little")))


class SystemRandomSource(RandomSource):
    """The operating system's CSPRNG (``os.urandom``)."""

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def spawn(self, label: str) -> SystemRandomSource:
        return SystemRandomSource()

    def __repr__(self) -> str:
        return "SystemRandomSource()"


class SeededRandomSource(RandomSource):
    """Deterministic stream from a seed: for tests and reproducible experiments only.

    The stream is SHAKE-256(seed-derived key || block counter), read in fixed 64 KiB
    blocks (so the stream does not depend on how it is consumed);
    children from :meth:`spawn` are keyed by (key, label) and are independent of
    the parent's stream position. A block is squeezed only as far as it has been read
    (a SHAKE output is a prefix of any longer one), so a source that draws a key or
    two does not pay for 64 KiB.
    """

    _BLOCK = 1 << 16
    _FIRST = 1 << 10  # bytes of a block squeezed at first; doubled as reads go further

    def __init__(self, seed: int | bytes | str) -> None:
        if isinstance(seed, int):
            material = b"int:" + str(seed).encode()
        elif isinstance(seed, str):
            material = b"str:" + seed.encode()
        else:
            material = b"bytes:" + bytes(seed)
        self._start(hashlib.sha256(b"privagg seeded source v1|" + material).digest())

    def _start(self, key: bytes) -> None:
        self._key = key
        self._counter = 0  # the block being read
        self._pos = 0  # bytes of it read so far
        self._squeezed = b""  # its first bytes (a prefix of the whole block)

    @classmethod
    def _from_key(cls, key: bytes) -> SeededRandomSource:
        obj = cls.__new__(cls)
        obj._start(key)
        return obj

    def random_bytes(self, n: int) -> bytes:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        chunks = []
        while n > 0:
            if self._pos == self._BLOCK:
                self._counter, self._pos, self._squeezed = self._counter + 1, 0, b""
            end = min(self._BLOCK, self._pos + n)
            if end > len(self._squeezed):
                size = min(self._BLOCK, max(end, self._FIRST, 2 * len(self._squeezed)))
                self._squeezed = hashlib.shake_256(self._key + self._counter.to_bytes(8, "little")).digest(size)
            chunks.append(self._squeezed[self._pos : end])
            n -= end - self._pos
            self._pos = end
        return b"".join(chunks)

    def spawn(self, label: str) -> SeededRandomSource:
        return SeededRandomSource._from_key(hashlib.sha256(self._key + b"|spawn|" + label.encode()).digest())

    def __repr__(self) -> str:
        return "SeededRandomSource(<seed>)"
