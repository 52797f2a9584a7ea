"""Fixed-point encoding of float vectors into Z_{2^b}, and the solver that sizes it.

This is the only module that knows scale, bits and headroom. A plan is accepted
only if the worst-case sum of ``max_clients`` encodings (plus the configured
integer-noise tail) fits the signed range of the ring; otherwise a typed
:class:`~secagg.errors.EncodingOverflowError` names the knob to change.

Security:
    Stochastic rounding is unbiased (E[enc(x)] = x * scale) and draws from the
    injected random source. Wrap-around is refused by construction: ``encode``
    rejects any coordinate beyond the bound the plan was sized for, so a sum can
    only wrap if the integer noise exceeds its tail bound, which happens with
    probability at most ``failure_prob`` (union bound over coordinates, assuming
    sub-Gaussian noise with the stated standard deviation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.errors import EncodingOverflowError
from secagg.protocol import RandomSource
from secagg.ring import RingSpec, RingVector

__all__ = ["EncodingPlan", "FixedPointEncoder", "plan_encoding"]


@dataclass(frozen=True, slots=True)
class EncodingPlan:
    """A validated fixed-point configuration.

    Attributes:
        ring: the ring Z_{2^bits}.
        scale: ring units per float unit (a power of two); the quantum is 1/scale.
        bound: the largest |x_i| that :meth:`FixedPointEncoder.encode` accepts.
        dim: vector length.
        max_clients: how many encodings may be summed.
        noise_std: standard deviation, in float units, of the integer noise one
            client adds per coordinate (0 when none).
        tail: the multiple of the summed noise standard deviation reserved as headroom.
        failure_prob: the probability bound that the noise exceeds ``tail`` sigmas.
    """

    ring: RingSpec
    scale: float
    bound: float
    dim: int
    max_clients: int
    noise_std: float = 0.0
    tail: float = 0.0
    failure_prob: float = 0.0

    @property
    def quantum(self) -> float:
        return 1.0 / self.scale

    @property
    def limit(self) -> int:
        """Largest magnitude representable in two's complement: 2^(b-1) - 1."""
        return (1 << (self.ring.bits - 1)) - 1

    def worst_case(self) -> float:
        """Worst-case |coordinate| of the sum of ``max_clients`` noisy encodings."""
        n = self.max_clients
        per_client = math.ceil(self.bound * self.scale)
        noise = self.tail * math.sqrt(n) * self.noise_std * self.scale
        return n * per_client + noise

    def headroom_bits(self) -> float:
        return math.log2(self.limit / max(self.worst_case(), 1.0))


def _tail_multiplier(dim: int, failure_prob: float) -> float:
    # P(|N(0, s^2)| > t s) <= 2 exp(-t^2 / 2); union bound over dim coordinates.
    return math.sqrt(2.0 * math.log(2.0 * dim / failure_prob))


def plan_encoding(
    *,
    clip_norm: float,
    dim: int,
    max_clients: int,
    bits: int = 32,
    scale: float | None = None,
    noise_std: float = 0.0,
    coordinate_bound: float | None = None,
    failure_prob: float = 2.0**-40,
    min_levels: int = 256,
) -> EncodingPlan:
    """Choose (or check) the scale so that no sum can wrap around the ring.

    Args:
        clip_norm: L2 bound C of each client's update (so every |x_i| <= C).
        dim: vector length.
        max_clients: the most encodings that will ever be summed.
        bits: ring width b.
        scale: a fixed scale to check instead of solving for one.
        noise_std: per-client integer-noise standard deviation per coordinate, in float units.
        coordinate_bound: a tighter per-coordinate bound than ``clip_norm``, if
            the caller enforces one; defaults to ``clip_norm``.
        failure_prob: allowed probability that noise exceeds its headroom.
        min_levels: the solver refuses a plan with fewer than this many
            quantisation levels across ``[0, bound]`` (too coarse to be useful).

    Raises:
        EncodingOverflowError: the configuration could wrap (``knob`` names what to change).
    """
    ring = RingSpec(bits)
    for name, value in (("clip_norm", clip_norm), ("noise_std", noise_std)):
        if not math.isfinite(value) or value < 0:
            raise EncodingOverflowError(f"{name} must be finite and >= 0, got {value}", knob=name)
    if clip_norm <= 0:
        raise EncodingOverflowError(f"clip_norm must be > 0, got {clip_norm}", knob="clip_norm")
    if dim < 1:
        raise EncodingOverflowError(f"dim must be >= 1, got {dim}", knob="dim")
    if max_clients < 1:
        raise EncodingOverflowError(f"max_clients must be >= 1, got {max_clients}", knob="max_clients")
    if not 0.0 < failure_prob < 1.0:
        raise EncodingOverflowError(f"failure_prob must be in (0, 1), got {failure_prob}", knob="failure_prob")
    bound = clip_norm if coordinate_bound is None else coordinate_bound
    if not (math.isfinite(bound) and 0 < bound <= clip_norm):
        raise EncodingOverflowError(f"coordinate_bound must be in (0, clip_norm], got {bound}", knob="coordinate_bound")
    tail = _tail_multiplier(dim, failure_prob) if noise_std > 0 else 0.0
    limit = (1 << (bits - 1)) - 1
    n = max_clients
    if scale is None:
        denom = n * bound + tail * math.sqrt(n) * noise_std
        room = limit - n  # each client's ceil() may add one unit
        if room <= 0:
            raise EncodingOverflowError(
                f"a {bits}-bit ring cannot hold the sum of {n} clients; increase bits", knob="bits"
            )
        best = room / denom
        scale = 2.0 ** math.floor(math.log2(best))
        plan = EncodingPlan(ring, scale, bound, dim, n, noise_std, tail, failure_prob)
        while plan.worst_case() > limit:  # guard float rounding at the boundary
            scale /= 2.0
            plan = EncodingPlan(ring, scale, bound, dim, n, noise_std, tail, failure_prob)
        if bound * scale < min_levels:
            raise EncodingOverflowError(
                f"a {bits}-bit ring leaves only {bound * scale:.1f} levels for |x| <= {bound} with "
                f"{n} clients (need >= {min_levels}); increase bits or reduce max_clients/noise",
                knob="bits",
            )
        return plan
    if not (math.isfinite(scale) and scale > 0):
        raise EncodingOverflowError(f"scale must be finite and > 0, got {scale}", knob="scale")
    plan = EncodingPlan(ring, float(scale), bound, dim, n, noise_std, tail, failure_prob)
    if plan.worst_case() > limit:
        raise EncodingOverflowError(
            f"scale {scale} with {n} clients, |x| <= {bound} and noise std {noise_std} reaches "
            f"{plan.worst_case():.3g} > 2^{bits - 1}-1: the sum could wrap; lower scale or raise bits",
            knob="scale",
        )
    return plan


class FixedPointEncoder:
    """Encode floats to ring elements by stochastic rounding; decode sums back."""

    def __init__(self, plan: EncodingPlan) -> None:
        self.plan = plan
        self.ring = plan.ring

    def encode(self, x: npt.ArrayLike, rng: RandomSource) -> RingVector:
        """Encode one client's vector.

        Raises:
            EncodingOverflowError: wrong length, a non-finite value, or a coordinate
                beyond the plan's bound (clip before encoding).
        """
        v = np.asarray(x, dtype=np.float64)
        if v.ndim != 1 or v.shape[0] != self.plan.dim:
            raise EncodingOverflowError(f"expected a vector of length {self.plan.dim}, got shape {v.shape}", knob="dim")
        if not np.all(np.isfinite(v)):
            raise EncodingOverflowError("input has NaN or Inf values", knob="input")
        peak = float(np.max(np.abs(v))) if v.size else 0.0
        if peak > self.plan.bound:
            raise EncodingOverflowError(
                f"input coordinate {peak:.6g} exceeds the encoding bound {self.plan.bound:.6g}; "
                "clip the update first or plan with a larger clip_norm",
                knob="clip_norm",
            )
        y = v * self.plan.scale
        floor = np.floor(y)
        up = rng.uniform(v.shape[0]) < (y - floor)
        ints = floor.astype(np.int64) + up.astype(np.int64)
        return self.ring.from_signed(ints)

    def encode_integers(self, ints: npt.NDArray[np.integer]) -> RingVector:
        """Map signed integers (e.g. integer noise) into the ring."""
        return self.ring.from_signed(np.asarray(ints, dtype=np.int64))

    def decode(self, total: RingVector) -> npt.NDArray[np.float64]:
        """Decode a ring vector (an encoding or a sum of encodings) to floats."""
        self.ring.check(total, self.plan.dim, what="encoded sum")
        return self.ring.to_signed(total).astype(np.float64) / self.plan.scale
