"""Fixed-point encoding of float vectors into Z_{2^b}, and the solver that sizes it.

This is the only module that knows scale, bits and headroom. A plan is accepted
only if the worst-case sum of ``max_clients`` encodings (plus the configured
integer-noise tail) fits the signed range of the ring; otherwise a typed
:class:`~secagg.errors.EncodingOverflowError` names the knob to change.

:func:`smallest_plan` is the solver: it picks the narrowest ring (8, 16, 32 or 64
bits: the widths a vector is stored and sent in) whose overflow-free scale still
reaches the scale the caller needs (e.g. for a bounded rounding inflation).

Security:
    Stochastic rounding is unbiased (E[enc(x)] = x * scale) and draws from the
    injected random source. Conditional rounding (``max_norm``) re-rounds until the
    rounded vector's L2 norm is within a bound (Kairouz, Liu, Steinke 2021, Thm. 1
    and Sec. 4.1): the bound then holds for every output, which is what lets the DP
    layer charge it instead of the worst case C * scale + sqrt(d). Wrap-around is refused by construction: ``encode``
    rejects any coordinate beyond the bound the plan was sized for, so a sum can
    only wrap if the integer noise exceeds its tail bound, which happens with
    probability at most ``failure_prob`` (union bound over coordinates, assuming
    sub-Gaussian noise with the stated standard deviation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.errors import EncodingOverflowError
from secagg.protocol import RandomSource
from secagg.ring import RingSpec, RingVector
from secagg.rotation import HadamardRotation

__all__ = ["RING_WIDTHS", "EncodingPlan", "FixedPointEncoder", "plan_encoding", "smallest_plan"]

RING_WIDTHS: tuple[int, ...] = (8, 16, 32, 64)
"""The ring widths :func:`smallest_plan` tries: a ring's elements are stored and sent in
whole bytes, so a narrower ring inside the same width would save nothing on the wire."""
_MAX_ROUNDINGS = 64


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
        rotation: the public rotation applied to the leading ``rotation.dim`` coordinates
            before encoding (``bound`` is then the rotated coordinate bound), or None.
    """

    ring: RingSpec
    scale: float
    bound: float
    dim: int
    max_clients: int
    noise_std: float = 0.0
    tail: float = 0.0
    failure_prob: float = 0.0
    rotation: HadamardRotation | None = None

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
    rotation: HadamardRotation | None = None,
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
        rotation: recorded in the plan (the caller rotates, and enforces
            ``coordinate_bound`` on the rotated coordinates).

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
    if rotation is not None and rotation.dim > dim:
        raise EncodingOverflowError(f"the rotation covers {rotation.dim} > dim={dim} coordinates", knob="dim")
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
        plan = EncodingPlan(ring, scale, bound, dim, n, noise_std, tail, failure_prob, rotation)
        while plan.worst_case() > limit:  # guard float rounding at the boundary
            scale /= 2.0
            plan = EncodingPlan(ring, scale, bound, dim, n, noise_std, tail, failure_prob, rotation)
        if bound * scale < min_levels:
            raise EncodingOverflowError(
                f"a {bits}-bit ring leaves only {bound * scale:.1f} levels for |x| <= {bound} with "
                f"{n} clients (need >= {min_levels}); increase bits or reduce max_clients/noise",
                knob="bits",
            )
        return plan
    if not (math.isfinite(scale) and scale > 0):
        raise EncodingOverflowError(f"scale must be finite and > 0, got {scale}", knob="scale")
    plan = EncodingPlan(ring, float(scale), bound, dim, n, noise_std, tail, failure_prob, rotation)
    if plan.worst_case() > limit:
        raise EncodingOverflowError(
            f"scale {scale} with {n} clients, |x| <= {bound} and noise std {noise_std} reaches "
            f"{plan.worst_case():.3g} > 2^{bits - 1}-1: the sum could wrap; lower scale or raise bits",
            knob="scale",
        )
    return plan


def smallest_plan(
    *,
    clip_norm: float,
    dim: int,
    max_clients: int,
    min_scale: float,
    noise_std: float = 0.0,
    coordinate_bound: float | None = None,
    failure_prob: float = 2.0**-40,
    rotation: HadamardRotation | None = None,
    widths: Sequence[int] = RING_WIDTHS,
) -> EncodingPlan:
    """The plan on the narrowest ring of ``widths`` whose overflow-free scale is >= ``min_scale``.

    Each width is solved by :func:`plan_encoding` (the largest power-of-two scale that
    cannot wrap for these clients, bound and noise); the first whose scale reaches
    ``min_scale`` wins.

    Raises:
        EncodingOverflowError: no width reaches ``min_scale`` (``knob="bits"``).
    """
    if not (math.isfinite(min_scale) and min_scale > 0):
        raise EncodingOverflowError(f"min_scale must be finite and > 0, got {min_scale}", knob="scale")
    reasons = []
    for bits in sorted(widths):
        try:
            plan = plan_encoding(
                clip_norm=clip_norm, dim=dim, max_clients=max_clients, bits=bits, noise_std=noise_std,
                coordinate_bound=coordinate_bound, failure_prob=failure_prob, min_levels=1, rotation=rotation,
            )  # fmt: skip
        except EncodingOverflowError as exc:
            reasons.append(f"{bits} bits: {exc}")
            continue
        if plan.scale >= min_scale:
            return plan
        reasons.append(f"{bits} bits: scale {plan.scale:g}")
    raise EncodingOverflowError(
        f"no ring reaches the scale {min_scale:.4g} needed for {max_clients} clients, dim {dim}, "
        f"noise std {noise_std:g} ({'; '.join(reasons)}); lower the cohort size or the noise",
        knob="bits",
    )


class FixedPointEncoder:
    """Encode floats to ring elements by stochastic rounding; decode sums back."""

    def __init__(self, plan: EncodingPlan) -> None:
        self.plan = plan
        self.ring = plan.ring

    def encode(
        self,
        x: npt.ArrayLike,
        rng: RandomSource,
        *,
        max_norm: float | None = None,
        norm_coordinates: int | None = None,
    ) -> RingVector:
        """Encode one client's vector: :meth:`encode_signed`, mapped into the ring.

        Raises:
            EncodingOverflowError: see :meth:`encode_signed`.
        """
        return self.ring.from_signed(
            self.encode_signed(x, rng, max_norm=max_norm, norm_coordinates=norm_coordinates)
        )

    def encode_signed(
        self,
        x: npt.ArrayLike,
        rng: RandomSource,
        *,
        max_norm: float | None = None,
        norm_coordinates: int | None = None,
    ) -> npt.NDArray[np.int64]:
        """The stochastically rounded integers of one client's vector (before the ring), so a
        caller can add integer noise to them and map the sum into the ring once.

        Args:
            x: the vector (float), every |x_i| within the plan's bound.
            rng: randomness of the stochastic rounding.
            max_norm: conditional rounding: re-round until the L2 norm of the rounded
                integers (over the first ``norm_coordinates``, default all) is at most
                this (Kairouz, Liu, Steinke 2021, Sec. 4.1). None: one rounding.

        Raises:
            EncodingOverflowError: wrong length, a non-finite value, or a coordinate
                beyond the plan's bound (clip before encoding); conditional rounding that
                failed 64 times (a bound below the vector's own scaled norm).
        """
        v = np.asarray(x, dtype=np.float64)
        if v.ndim != 1 or v.shape[0] != self.plan.dim:
            raise EncodingOverflowError(f"expected a vector of length {self.plan.dim}, got shape {v.shape}", knob="dim")
        peak = float(np.max(np.abs(v))) if v.size else 0.0
        if not peak <= self.plan.bound:  # a NaN makes the maximum NaN, so it fails this too
            if not np.all(np.isfinite(v)):
                raise EncodingOverflowError("input has NaN or Inf values", knob="input")
            raise EncodingOverflowError(
                f"input coordinate {peak:.6g} exceeds the encoding bound {self.plan.bound:.6g}; "
                "clip the update first or plan with a larger clip_norm",
                knob="clip_norm",
            )
        y = v * self.plan.scale
        floor = np.floor(y)
        frac = y - floor
        n = v.shape[0] if norm_coordinates is None else norm_coordinates
        for _ in range(_MAX_ROUNDINGS):
            ints = floor + (rng.uniform(v.shape[0]) < frac)  # float64 integers, exact below 2^53
            if max_norm is None:
                break
            head = ints[:n]
            # Float sum of squares: relative error below n * 2^-53; demand that much margin.
            if float(head @ head) * (1.0 + n * 2.0**-52) <= max_norm * max_norm:
                break
        else:
            raise EncodingOverflowError(
                f"conditional rounding exceeded the norm bound {max_norm:.6g} {_MAX_ROUNDINGS} times: the bound "
                "is below what the plan's scale and the input's norm allow",
                knob="scale",
            )
        return ints.astype(np.int64)

    def encode_integers(self, ints: npt.NDArray[np.integer]) -> RingVector:
        """Map signed integers (e.g. integer noise) into the ring."""
        return self.ring.from_signed(np.asarray(ints, dtype=np.int64))

    def decode(self, total: RingVector) -> npt.NDArray[np.float64]:
        """Decode a ring vector (an encoding or a sum of encodings) to floats."""
        self.ring.check(total, self.plan.dim, what="encoded sum")
        return self.ring.to_signed(total).astype(np.float64) / self.plan.scale
