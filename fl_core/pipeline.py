"""The per-round pipeline stages between a client's float update and the server's average.

client:  delta -> clip -> (+ local noise) -> (rotate) -> encode into Z_2^b -> (+ integer noise share) -> secure sum
server:  ring sum -> decode -> (+ central noise) -> (rotate back) -> divide by the denominator -> average update

:func:`plan_for` sizes the ring: with ``bits=None`` it picks the narrowest ring that
provably cannot overflow for the run's clip, dimension, largest cohort, noise (sized for
the planned survivors minus colluders) and keeps the rounding inflation of the
sensitivity within 1%; in central and distributed mode it rotates updates with a public
randomised Hadamard transform first, so each coordinate needs far less headroom.

Each DP-dependent step is delegated to a :class:`PrivacyPolicy`; :class:`NoPrivacy`
is the non-private policy (it still clips, because the encoding needs a bound).
Both pipelines charge their process CPU to a :class:`CpuTimer`, per phase.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fl_core.errors import ConfigError
from fl_core.sampling import Cohort, Sampler, SamplingScheme
from secagg import EncodingPlan, FixedPointEncoder, RandomSource, RingVector, plan_encoding
from secagg.encoding import smallest_plan
from secagg.rotation import HadamardRotation

__all__ = [
    "PHASES",
    "ClipOutcome",
    "CpuTimer",
    "PrivacyPolicy",
    "NoPrivacy",
    "ClientPipeline",
    "ServerPipeline",
    "l2_clip",
    "plan_for",
]

MAX_INFLATION = 0.01
"""The rounding inflation of the L2 sensitivity :func:`plan_for` accepts when it picks the ring."""
ROTATION_CLAMP_PROB = 2.0**-20
"""Per update, the probability (over the public signs) that some rotated coordinate exceeds
the bound the ring is sized for (the client then clamps it and reports it)."""

PHASES = ("train", "clip", "noise", "encode", "mask", "unmask", "decode", "account", "eval")
"""The phases a round's CPU is charged to: ``mask`` is the clients' secure-sum sessions (key
agreement, shares, mask expansion), ``unmask`` the server's; ``noise`` is every DP noise draw
(client shares, local and central noise)."""


class CpuTimer:
    """Process CPU seconds per phase of one round (see :data:`PHASES`); a measurement, not a limit."""

    def __init__(self) -> None:
        self._s: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.process_time()
        try:
            yield
        finally:
            self.add(name, time.process_time() - t0)

    def add(self, name: str, seconds: float) -> None:
        self._s[name] = self._s.get(name, 0.0) + seconds

    def take(self) -> dict[str, float]:
        """The seconds charged since the last call, per phase (and start afresh)."""
        out, self._s = self._s, {}
        return out


@dataclass(frozen=True, slots=True)
class ClipOutcome:
    """A clipped update; ``saturated`` counts coordinates clamped to the encoding bound."""

    vector: npt.NDArray[np.float64]
    norm: float
    clipped: bool
    saturated: int = 0


def l2_clip(vec: npt.NDArray[Any], clip_norm: float) -> ClipOutcome:
    """Scale ``vec`` down to L2 norm ``clip_norm`` if it is longer (the non-DP clip)."""
    v = np.asarray(vec, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if norm > clip_norm:
        return ClipOutcome(v * (clip_norm / norm), norm, True)
    return ClipOutcome(v.copy(), norm, False)


class PrivacyPolicy(Protocol):
    """What the round loop asks of the DP layer. Implementations: NoPrivacy, fl_core.privacy.DPPolicy."""

    @property
    def mode(self) -> str: ...

    @property
    def clip_norm(self) -> float: ...

    @property
    def delta(self) -> float | None: ...

    @property
    def min_survivors(self) -> int:
        """A round with fewer survivors aborts before anything is released (0: never, see
        :attr:`releases_empty`)."""
        ...

    @property
    def releases_empty(self) -> bool:
        """Whether an empty cohort, or one nobody survived, releases the noise alone (the noised
        zero sum, divided and stepped as any round) instead of aborting (central mode, Poisson)."""
        ...

    def clip(self, vec: npt.NDArray[Any]) -> ClipOutcome: ...

    def encoding_bound(self) -> float:
        """The per-coordinate bound the encoding is sized for (>= the clip norm)."""
        ...

    def encoding_noise_std(self, sampler: Sampler) -> float:
        """Per-client integer-noise std per coordinate, in float units (0 if none): sizes the ring."""
        ...

    def local_noise(self, vec: npt.NDArray[np.float64], rng: RandomSource) -> npt.NDArray[np.float64]:
        """Local mode: the client's noised update; otherwise ``vec`` unchanged."""
        ...

    def client_integer_noise(
        self, dim: int, scale: float, sampler: Sampler, rng: RandomSource
    ) -> npt.NDArray[np.int64] | None: ...

    def rounding_norm_bound(self, scale: float, dim: int) -> float | None:
        """The L2 bound, in ring units, that the encoding of the first ``dim`` coordinates must round
        within (conditional rounding, charged by the accountant), or None for plain stochastic rounding."""
        ...

    def server_release(
        self, total: npt.NDArray[np.float64], sampler: Sampler, rng: RandomSource
    ) -> npt.NDArray[np.float64]:
        """Central mode: the decoded sum with the server's noise; otherwise ``total`` unchanged."""
        ...

    def round_event(
        self,
        *,
        round: int,  # noqa: A002
        cohort: Cohort,
        survivors: int,
        scale: float,
        dim: int,
        planned: bool,
        survivor_ids: tuple[int, ...] | None = None,
    ) -> Any:
        """The dp.events.RoundEvent for this round (``planned``: before it runs, worst case), or None.

        ``survivor_ids``: the clients whose update is in the sum (the event records them so that
        epsilon against the server can be composed per client)."""
        ...

    @property
    def extra_coordinates(self) -> int:
        """Coordinates appended to each update for DP side queries (adaptive clipping's count)."""
        ...

    def client_extra(self, clip: ClipOutcome) -> npt.NDArray[np.float64]:
        """The values a client appends (``extra_coordinates`` of them, each within the clip)."""
        ...

    def observe_extra(self, values: npt.NDArray[np.float64]) -> None:
        """The decoded, noised sum of the appended values; applied in :meth:`after_round`."""
        ...

    def after_round(self, clipped_fraction_estimate: float) -> None: ...


@dataclass
class NoPrivacy:
    """No differential privacy: updates are clipped to ``clip_norm`` only so they can be encoded.

    How many updates were clipped is reported each round (no silent saturation).
    """

    clip_norm: float = 10.0

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ConfigError(f"clip norm must be > 0, got {self.clip_norm}", option="clip")

    @property
    def mode(self) -> str:
        return "none"

    @property
    def delta(self) -> float | None:
        return None

    @property
    def min_survivors(self) -> int:
        return 1

    @property
    def releases_empty(self) -> bool:
        return False

    def clip(self, vec: npt.NDArray[Any]) -> ClipOutcome:
        return l2_clip(vec, self.clip_norm)

    def encoding_bound(self) -> float:
        return self.clip_norm

    def encoding_noise_std(self, sampler: Sampler) -> float:
        return 0.0

    def local_noise(self, vec: npt.NDArray[np.float64], rng: RandomSource) -> npt.NDArray[np.float64]:
        return vec

    def client_integer_noise(self, dim: int, scale: float, sampler: Sampler, rng: RandomSource) -> None:
        return None

    def rounding_norm_bound(self, scale: float, dim: int) -> float | None:
        return None

    def server_release(
        self, total: npt.NDArray[np.float64], sampler: Sampler, rng: RandomSource
    ) -> npt.NDArray[np.float64]:
        return total

    def round_event(self, **kwargs: Any) -> None:
        return None

    @property
    def extra_coordinates(self) -> int:
        return 0

    def client_extra(self, clip: ClipOutcome) -> npt.NDArray[np.float64]:
        return np.zeros(0)

    def observe_extra(self, values: npt.NDArray[np.float64]) -> None:
        return None

    def after_round(self, clipped_fraction_estimate: float) -> None:
        return None


@dataclass
class ClientPipeline:
    """clip -> local noise -> rotate -> encode -> integer noise, for one client's update."""

    policy: PrivacyPolicy
    encoder: FixedPointEncoder
    sampler: Sampler
    timer: CpuTimer = field(default_factory=CpuTimer)

    def run(self, delta: npt.NDArray[np.float32], rng: RandomSource) -> tuple[RingVector, ClipOutcome]:
        timer = self.timer
        plan = self.encoder.plan
        with timer.phase("clip"):
            clip = self.policy.clip(delta)
        with timer.phase("noise"):
            v = self.policy.local_noise(clip.vector, rng.spawn("local-noise"))
        with timer.phase("encode"):
            if plan.rotation is not None:
                # Orthogonal: the norm is unchanged up to float rounding, which the re-clip removes
                # (in place: the rotation returned a new vector; the same values as l2_clip).
                v = plan.rotation.forward(v)
                norm = float(np.linalg.norm(v))
                if norm > self.policy.clip_norm:
                    v *= self.policy.clip_norm / norm
            bound = plan.bound
            saturated = int(np.count_nonzero(np.abs(v) > bound))
            if saturated:
                # Only local noise or a rotated coordinate beyond its high-probability bound can
                # pass the bound (each planned with a small failure probability); the clamp moves
                # coordinates towards zero (the norm only shrinks) and it is counted.
                v = np.clip(v, -bound, bound)
                clip = ClipOutcome(clip.vector, clip.norm, clip.clipped, saturated)
            n_update = v.shape[0]
            if self.policy.extra_coordinates:
                v = np.concatenate([v, self.policy.client_extra(clip)])
            ints = self.encoder.encode_signed(
                v,
                rng.spawn("rounding"),
                max_norm=self.policy.rounding_norm_bound(plan.scale, n_update),
                norm_coordinates=n_update,
            )
        with timer.phase("noise"):
            noise = self.policy.client_integer_noise(v.shape[0], plan.scale, self.sampler, rng.spawn("integer-noise"))
        with timer.phase("encode"):
            if noise is not None:
                ints += noise  # the ring is Z_2^b: adding before or after mapping into it is the same
            ring_vec = self.encoder.ring.from_signed(ints)
        return ring_vec, clip


@dataclass
class ServerPipeline:
    """decode -> central noise -> divide by the denominator."""

    policy: PrivacyPolicy
    encoder: FixedPointEncoder
    sampler: Sampler
    timer: CpuTimer = field(default_factory=CpuTimer)

    def denominator(self, survivors: int) -> float:
        """Without DP: the number of survivors (plain FedAvg mean). With DP: the
        expected cohort size, a data-independent constant (the fixed-denominator
        estimator of DP-FedAvg), so the average is post-processing of the noisy sum."""
        if self.policy.mode == "none":
            return float(max(survivors, 1))
        if self.sampler.scheme is SamplingScheme.POISSON:
            return max(self.sampler.expected_cohort(), 1.0)
        return float(self.sampler.size)

    def run(self, total: RingVector, survivors: int, rng: RandomSource) -> npt.NDArray[np.float64]:
        with self.timer.phase("decode"):
            decoded = self.encoder.decode(total)
        with self.timer.phase("noise"):
            s = self.policy.server_release(decoded, self.sampler, rng)
        with self.timer.phase("decode"):
            extra = self.policy.extra_coordinates
            if extra:
                self.policy.observe_extra(s[-extra:])
                s = s[:-extra]
            rotation = self.encoder.plan.rotation
            if rotation is not None:
                s = rotation.inverse(s)
            return s / self.denominator(survivors)


def _min_scale(policy: PrivacyPolicy, dim: int) -> float:
    """The smallest power-of-two scale whose rounding inflation of the sensitivity is <= MAX_INFLATION."""
    c = policy.clip_norm
    scale = 2.0**-30
    while scale < 2.0**62:
        bound = policy.rounding_norm_bound(scale, dim)
        l2 = bound if bound is not None else c * scale + math.sqrt(dim)
        if l2 <= (1.0 + MAX_INFLATION) * c * scale:
            return scale
        scale *= 2.0
    return scale


def plan_for(policy: PrivacyPolicy, sampler: Sampler, dim: int, bits: int | None) -> EncodingPlan:
    """Size the fixed-point encoding for this run; typed error if it could overflow.

    ``bits=None``: in central and distributed mode, the narrowest ring (8, 16, 32 or 64
    bits) that cannot overflow and keeps the rounding inflation within
    :data:`MAX_INFLATION`; otherwise 32 bits. Central and distributed updates are rotated
    (:class:`secagg.rotation.HadamardRotation`) when that lowers the per-coordinate bound.
    """
    d = dim + policy.extra_coordinates
    bound = policy.encoding_bound()
    rotation = None
    coordinate_bound = None
    if policy.mode in ("central", "distributed") and dim >= 2:
        rot = HadamardRotation(dim)
        rb = rot.coordinate_bound(bound, ROTATION_CLAMP_PROB)
        if policy.extra_coordinates:
            rb = max(rb, bound / 2.0)  # the appended count is (bit - 1/2) * C
        if rb < bound:
            rotation, coordinate_bound = rot, rb
    common: dict[str, Any] = dict(
        clip_norm=bound,
        dim=d,
        max_clients=sampler.max_cohort(),
        noise_std=policy.encoding_noise_std(sampler),
        coordinate_bound=coordinate_bound,
        rotation=rotation,
    )
    if bits is None and policy.mode in ("central", "distributed"):
        return smallest_plan(min_scale=_min_scale(policy, dim), **common)
    return plan_encoding(bits=32 if bits is None else bits, **common)
