"""A public random rotation (randomised Hadamard) that flattens a vector before fixed-point encoding.

The encoding must size the ring for the largest coordinate a clipped update can have.
Without a rotation that is the clip norm C itself (all the norm in one coordinate);
after ``x -> H D x / sqrt(m)`` (D random signs, H the m x m Hadamard matrix) every
coordinate is, with high probability, at most ``C sqrt(2 ln(2 d / beta) / m)``, a factor
of about sqrt(m / (2 ln(2d / beta))) smaller, so the same sum fits in fewer ring bits
(Suresh et al. 2017; the DDG paper, Kairouz, Liu, Steinke 2021, Sec. 4; TFF's
distributed DP). Any d is covered without padding: with m the largest power of two
<= d, the first window [0, m) is rotated, then the last window [d - m, d) (they
overlap when d is not a power of two); both are orthogonal, so the whole map is.

Security:
    The rotation is an orthogonal map, so it changes no L2 norm: the DP sensitivity of
    the clipped update is unchanged, and the rounding inflation and the noise are
    applied in the rotated domain, where the server also sums; it inverts the rotation
    after decoding (post-processing). The signs are derived from public data only
    (HKDF with its own label of the dimension and an optional public seed, expanded
    by AES-128-CTR): every party recomputes them, none receives them from the server.
    Nobody can pick them to harm privacy: the guarantee holds for every sign vector,
    because the norm is preserved exactly (a client re-clips the rotated vector, so
    float rounding cannot push it past C) and the per-coordinate bound is enforced by
    the client (a coordinate beyond it is clamped towards zero, which only shrinks the
    norm, and counted), never assumed. Signs that suit the data badly can only cost
    utility (more clamped coordinates), and the Hoeffding bound makes that rare for
    data chosen independently of the signs.
"""

from __future__ import annotations

import math
import struct
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from secagg.errors import ConfigurationError
from secagg.primitives import kdf, prg
from secagg.ring import RingSpec

__all__ = ["HadamardRotation"]

FloatArray = npt.NDArray[np.float64]


@lru_cache(maxsize=8)
def _hadamard(n: int) -> FloatArray:
    """Sylvester's Hadamard matrix of order n (a power of two), entries +-1."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    h.setflags(write=False)
    return h


_FACTOR_BITS = 4
"""H_m is applied as a Kronecker product of factors of order <= 2^4 = 16 (see :func:`_fwht`)."""


def _factors(m: int) -> tuple[int, ...]:
    """Powers of two, each <= 16, whose product is m (a power of two)."""
    k = m.bit_length() - 1
    out = [1 << _FACTOR_BITS] * (k // _FACTOR_BITS)
    if k % _FACTOR_BITS:
        out.append(1 << (k % _FACTOR_BITS))
    return tuple(out) or (1,)


def _fwht(x: FloatArray) -> FloatArray:
    """H_m x for m = len(x) a power of two (a new vector).

    H_m = H_{f_1} (x) ... (x) H_{f_r} with small factors f_i (:func:`_factors`): viewing x as
    an (f_1, rest) matrix, ``X^T H_{f_1}`` applies the first factor and moves its axis last, so
    r small matrix products apply every factor and bring the axes back in order. That is
    m (f_1 + ... + f_r) multiply-adds, against m (a + b) for two square factors.
    """
    m = x.shape[0]
    y = x
    for f in _factors(m):
        y = y.reshape(f, m // f).T @ _hadamard(f)
    return np.ascontiguousarray(y).reshape(m)


class HadamardRotation:
    """The randomised Hadamard rotation of ``dim``-vectors, with signs from public data.

    Args:
        dim: vector length (>= 1).
        public_seed: optional public randomness (e.g. a beacon value) mixed into the signs.

    Raises:
        ConfigurationError: ``dim`` < 1.
    """

    def __init__(self, dim: int, *, public_seed: bytes = b"") -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ConfigurationError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.window = 1 << (dim.bit_length() - 1)
        """m, the largest power of two <= dim: the size of each rotated window."""
        self.public_seed = bytes(public_seed)
        seed = kdf.derive(
            b"privagg public rotation", kdf.LABEL_ROTATION, struct.pack("<Q", dim) + self.public_seed, length=16
        )
        bits = prg.expand(seed, RingSpec(8), 2 * ((self.window + 7) // 8))
        signs = np.unpackbits(bits, bitorder="little").astype(np.float64) * 2.0 - 1.0
        self._signs = (signs[: self.window], signs[self.window : 2 * self.window])
        self._norm = 1.0 / math.sqrt(self.window)

    @property
    def windows(self) -> tuple[tuple[int, int], ...]:
        """The rotated windows, in the order they are applied."""
        m, d = self.window, self.dim
        return ((0, m),) if m == d else ((0, m), (d - m, d))

    def forward(self, x: npt.ArrayLike) -> FloatArray:
        """R x (a new float64 vector)."""
        y = np.array(x, dtype=np.float64)
        self._check(y)
        for (lo, hi), s in zip(self.windows, self._signs, strict=False):
            np.multiply(_fwht(y[lo:hi] * s), self._norm, out=y[lo:hi])
        return y

    def inverse(self, y: npt.ArrayLike) -> FloatArray:
        """R^T y = R^-1 y (a new float64 vector)."""
        x = np.array(y, dtype=np.float64)
        self._check(x)
        pairs = list(zip(self.windows, self._signs, strict=False))
        for (lo, hi), s in reversed(pairs):
            x[lo:hi] = _fwht(x[lo:hi]) * self._norm * s
        return x

    def coordinate_bound(self, norm: float, failure_prob: float) -> float:
        """A bound on every |(R x)_i| for ||x|| <= ``norm`` that fails with probability at most
        ``failure_prob`` over the signs, for x chosen independently of them.

        Each output coordinate is sum_j s_j a_j with independent signs and sum a_j^2 <= norm^2 / m
        (the window's input has norm <= ``norm``): Hoeffding gives P(|.| > t) <= 2 exp(-t^2 m / (2
        norm^2)); a union bound over the ``dim`` coordinates gives t = norm sqrt(2 ln(2 dim / p) / m).
        """
        if not (math.isfinite(norm) and norm > 0):
            raise ConfigurationError(f"norm must be finite and > 0, got {norm!r}")
        if not 0.0 < failure_prob < 1.0:
            raise ConfigurationError(f"failure_prob must be in (0, 1), got {failure_prob!r}")
        t = norm * math.sqrt(2.0 * math.log(2.0 * self.dim / failure_prob) / self.window)
        return min(norm, t)

    def _check(self, v: FloatArray) -> None:
        if v.ndim != 1 or v.shape[0] != self.dim:
            raise ConfigurationError(f"expected a vector of length {self.dim}, got shape {v.shape}")
