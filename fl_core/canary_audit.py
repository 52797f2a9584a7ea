"""Empirical privacy audit: canary clients through the real client pipeline, one-run lower bound on epsilon.

Each of ``m`` canary clients is included in the round independently with
probability 1/2 (fair coins from the injected random source). An included canary
submits an update of norm ``2 C`` along its own direction, which goes through the
same steps as a real client's update: :func:`dp.clipping.clip_l2` (to norm C),
:class:`secagg.FixedPointEncoder` (stochastic rounding into the ring), in
``distributed`` mode a Skellam noise share sized by :func:`dp.calibration.distributed_noise`,
the secure sum (:class:`secagg.PlainSum`: masking cancels, so the sum is the same),
decoding, and in ``central`` mode the server's float-safe Gaussian noise
(:func:`dp.noise.add_gaussian_noise`). The auditor then scores each canary by the
released sum's component along its direction and computes the one-run lower
bound of Steinke, Nasr, Jagielski 2023 (:mod:`dp.audit.one_run`).

Canary directions are random signed standard basis vectors on distinct
coordinates (``dim >= canaries``): they are orthogonal, so canaries do not
interfere with each other's scores, and for the isotropic noise used here every
unit direction is equivalent. Coordinates with no included canary carry pure
noise; a one-sided chi-square test on them checks that the noise present is not
below what the accounting claims (the planted ``halve-noise`` bug fails it, and
the one-run bound exceeds the accounted epsilon in most seeds at claimed
epsilon 2 with 10^4 canaries; see SECURITY.md, ledger section).

Security:
    Assumption: the canaries' coins are secret from the pipeline. Guarantee: if
    the pipeline's release is (eps, delta)-DP per client, ``epsilon_lower`` exceeds
    eps with probability at most 5% (Steinke, Nasr, Jagielski, NeurIPS 2023,
    Section 3, main theorem for (eps, delta)-DP); the noise test has false-alarm
    probability at most ``noise_alpha`` when the noise is Gaussian with at least the
    claimed variance. A passing audit does not prove the claim; it only fails to
    refute it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from dp.accountants import analytic_gaussian_epsilon, compute_epsilon
from dp.audit.one_run import OneRunAudit, audit_from_scores
from dp.calibration import DPConfig, distributed_noise, make_round_event, min_scale_for_inflation
from dp.clipping import clip_l2
from dp.events import DPMode, RoundEvent, Sampling
from dp.noise import add_gaussian_noise, gaussian_grid, skellam
from dp.randomness import RandomSource
from fl_core.errors import ConfigError
from secagg import FixedPointEncoder, PlainSum, plan_encoding, run_round

__all__ = ["AuditMode", "CanaryAuditConfig", "CanaryAuditResult", "PlantedBug",
           "noise_multiplier_for_epsilon", "run_canary_audit"]


#: Smallest noise multiplier audited (one Gaussian release at z = 0.2 already has epsilon ~ 25).
MIN_NOISE_MULTIPLIER = 0.2


class AuditMode(str, Enum):
    CENTRAL = "central"
    DISTRIBUTED = "distributed"


class PlantedBug(str, Enum):
    """Deliberate faults for testing that the audit catches them (never for real runs)."""

    NONE = "none"
    HALVE_NOISE = "halve-noise"  # the noise std actually added is half what the accounting claims


@dataclass(frozen=True, slots=True)
class CanaryAuditConfig:
    """What to audit.

    Attributes:
        canaries: m, the number of canary clients (>= 2).
        noise_multiplier: z claimed by the accounting (noise std / clip).
        clip: the L2 clip C.
        dim: model dimension (>= canaries; default: canaries).
        delta: delta of the claim.
        mode: central (server noise) or distributed (Skellam shares inside the sum).
        bits: ring width of the encoding.
        confidence: of the one-run bound.
        noise_alpha: false-alarm level of the noise-variance test.
        batch: clients per secure-sum batch (memory bound; the sum is linear).
        bug: a planted fault (tests only).
    """

    canaries: int
    noise_multiplier: float
    clip: float = 1.0
    dim: int | None = None
    delta: float = 1e-5
    mode: AuditMode = AuditMode.CENTRAL
    bits: int = 32
    confidence: float = 0.95
    noise_alpha: float = 1e-6
    batch: int = 256
    bug: PlantedBug = PlantedBug.NONE

    def __post_init__(self) -> None:
        if self.canaries < 2:
            raise ConfigError(f"need at least 2 canaries, got {self.canaries}", option="canaries")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= MIN_NOISE_MULTIPLIER):
            raise ConfigError(f"noise multiplier must be finite and >= {MIN_NOISE_MULTIPLIER} (below it the "
                              f"claimed epsilon is beyond what an audit can say), got {self.noise_multiplier}",
                              option="noise_multiplier")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip must be finite and > 0, got {self.clip}", option="clip")
        if self.dim is not None and self.dim < self.canaries:
            raise ConfigError(f"dim ({self.dim}) must be >= canaries ({self.canaries}): each "
                              "canary gets its own coordinate", option="dim")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}", option="delta")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}", option="batch")

    @property
    def resolved_dim(self) -> int:
        return self.canaries if self.dim is None else self.dim


@dataclass(frozen=True, slots=True)
class CanaryAuditResult:
    """The audit's findings.

    Attributes:
        epsilon_lower: one-run lower bound at ``confidence``.
        epsilon_accounted: epsilon the accountant charges for the round (PLD/RDP via
            :func:`dp.accountants.compute_epsilon` on the round's event).
        violation: epsilon_lower > epsilon_accounted (the claim is refuted).
        noise_std_claimed: per-coordinate noise std the accounting assumes, float units.
        noise_std_measured: estimated from the coordinates with no included canary.
        noise_p_value: P[chi-square <= observed] under "noise std >= claimed".
        noise_too_small: noise_p_value < noise_alpha.
        flagged: violation or noise_too_small.
        one_run: details of the bound (m, r, v, per guess count).
        event: the round's privacy event.
        included: how many canaries were in the sum.
        seconds: wall time.
    """

    epsilon_lower: float
    epsilon_accounted: float
    violation: bool
    noise_std_claimed: float
    noise_std_measured: float
    noise_p_value: float
    noise_too_small: bool
    flagged: bool
    one_run: OneRunAudit
    event: RoundEvent
    included: int
    seconds: float
    config: CanaryAuditConfig

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "epsilon_lower": self.epsilon_lower,
            "epsilon_accounted": self.epsilon_accounted,
            "confidence": self.one_run.confidence,
            "violation": self.violation,
            "noise_std_claimed": self.noise_std_claimed,
            "noise_std_measured": self.noise_std_measured,
            "noise_p_value": self.noise_p_value,
            "noise_too_small": self.noise_too_small,
            "flagged": self.flagged,
            "canaries": c.canaries,
            "included": self.included,
            "guesses": self.one_run.r,
            "correct": self.one_run.v,
            "per_guess_count": [list(t) for t in self.one_run.per_guess_count],
            "noise_multiplier": c.noise_multiplier,
            "clip": c.clip,
            "dim": c.resolved_dim,
            "delta": c.delta,
            "mode": c.mode.value,
            "planted_bug": c.bug.value,
            "event": self.event.to_dict(),
            "seconds": self.seconds,
        }


def noise_multiplier_for_epsilon(epsilon: float, delta: float) -> float:
    """The z whose single full-participation Gaussian release has exactly ``epsilon`` at ``delta``.

    Uses the analytic Gaussian mechanism (Balle & Wang 2018) and bisection.

    Raises:
        ConfigError: epsilon not finite and > 0, or delta not in (0, 1).
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"epsilon must be finite and > 0, got {epsilon}", option="epsilon")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), got {delta}", option="delta")
    lo, hi = 1e-3, 1.0
    while analytic_gaussian_epsilon([hi], delta) > epsilon:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if analytic_gaussian_epsilon([mid], delta) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi  # the smaller-epsilon side: never claims more noise than needed for epsilon


def _encode_sum(
    encoder: FixedPointEncoder,
    ids: list[int],
    update_of: Callable[[int], npt.NDArray[np.float64]],
    noise_variance: float,
    rng: RandomSource,
    batch: int,
) -> npt.NDArray[Any]:
    """Run each client's clipped update through encode (+ noise share) and the secure sum."""
    ring = encoder.ring
    dim = encoder.plan.dim
    total = ring.zeros(dim)
    summer = PlainSum(ring, dim)
    for start in range(0, len(ids), batch):
        inputs = {}
        for cid in ids[start:start + batch]:
            crng = rng.spawn(f"client/{cid}")
            x = encoder.encode(update_of(cid), crng.spawn("rounding"))
            if noise_variance > 0:
                ring.add_into(x, encoder.encode_integers(skellam(dim, noise_variance,
                                                                 crng.spawn("noise"))))
            inputs[cid] = x
        outcome = run_round(summer, inputs, round_id=1, rng_for=lambda c: rng.spawn(f"sum/{c}"))
        if outcome.total is None:  # pragma: no cover - PlainSum aborts only below min_survivors
            raise ConfigError(f"the secure sum aborted: {outcome.error}", option="batch")
        ring.add_into(total, outcome.total)
    return total


def run_canary_audit(config: CanaryAuditConfig, rng: RandomSource) -> CanaryAuditResult:
    """Run one audited round and return the lower bound against the accounted epsilon.

    Raises:
        ConfigError: an invalid configuration (e.g. an encoding that cannot hold the sum).
    """
    t0 = time.perf_counter()
    m, d, c, z = config.canaries, config.resolved_dim, config.clip, config.noise_multiplier
    bug_factor = 0.5 if config.bug is PlantedBug.HALVE_NOISE else 1.0
    coins = rng.spawn("coins")
    included = (np.frombuffer(coins.random_bytes(m), dtype=np.uint8) & 1).astype(bool)
    gen = rng.spawn("directions").numpy_generator()
    coord = gen.permutation(d)[:m]
    sign = np.where(gen.integers(0, 2, size=m) == 1, 1.0, -1.0)
    n_in = int(included.sum())
    ids = [int(i) + 1 for i in np.flatnonzero(included)]

    def update_of(cid: int) -> npt.NDArray[np.float64]:
        raw = np.zeros(d)
        raw[coord[cid - 1]] = 2.0 * c * sign[cid - 1]  # twice the clip: clipping must act
        return clip_l2(raw, c).vector

    if config.mode is AuditMode.CENTRAL:
        dp_cfg = DPConfig(mode=DPMode.CENTRAL, noise_multiplier=z, clip_norm=c, expected_cohort=m)
        try:
            plan = plan_encoding(clip_norm=c, dim=d, max_clients=m, bits=config.bits)
        except Exception as exc:  # secagg's EncodingOverflowError names the knob
            raise ConfigError(f"cannot encode the canary sum: {exc}", option="bits") from exc
        encoder = FixedPointEncoder(plan)
        total = _encode_sum(encoder, ids, update_of, 0.0, rng, config.batch)
        std = z * c
        grid = gaussian_grid(std, grid_bits=dp_cfg.grid_bits)
        release = add_gaussian_noise(encoder.decode(total), bug_factor * std, rng.spawn("server"),
                                     grid_bits=dp_cfg.grid_bits).values
        event = make_round_event(dp_cfg, round=1, sampling=Sampling.FULL, sampling_rate=1.0,
                                 population=m, cohort=m, survivors=n_in, dim=d,
                                 granularity=grid.granularity)
        claimed_std = grid.std
    else:
        planned = max(1, m // 2 - 3 * math.isqrt(m))  # noise is sized for this many survivors
        dp_cfg = DPConfig(mode=DPMode.DISTRIBUTED, noise_multiplier=z, clip_norm=c,
                          expected_cohort=m, min_survivors=planned)
        scale = 2.0 ** math.ceil(math.log2(min_scale_for_inflation(c, d, max_inflation=0.01)))
        dn = distributed_noise(dp_cfg, scale=scale, dim=d)
        try:
            plan = plan_encoding(clip_norm=c, dim=d, max_clients=m, bits=config.bits, scale=scale,
                                 noise_std=dn.per_client_std_float)
        except Exception as exc:
            raise ConfigError(f"cannot encode the canary sum: {exc}", option="bits") from exc
        encoder = FixedPointEncoder(plan)
        share_var = dn.per_client_variance * bug_factor**2
        total = _encode_sum(encoder, ids, update_of, share_var, rng, config.batch)
        release = encoder.decode(total)
        event = make_round_event(dp_cfg, round=1, sampling=Sampling.FULL, sampling_rate=1.0,
                                 population=m, cohort=m, survivors=n_in, dim=d, scale=scale)
        claimed_std = math.sqrt(event.noise_variance) / scale
    eps_acc = compute_epsilon([event], config.delta)
    scores = sign * release[coord] / c
    one = audit_from_scores(scores, included, delta=config.delta, confidence=config.confidence,
                            guess_counts=[max(2, round(0.03 * m))])
    mask = np.ones(d, dtype=bool)
    mask[coord[included]] = False
    pure = release[mask]
    stat = float(np.sum(pure * pure)) / claimed_std**2
    p_noise = float(stats.chi2.cdf(stat, df=pure.size))
    measured = math.sqrt(float(np.mean(pure * pure)))
    violation = one.epsilon_lower > eps_acc
    too_small = p_noise < config.noise_alpha
    return CanaryAuditResult(
        epsilon_lower=one.epsilon_lower, epsilon_accounted=eps_acc, violation=violation,
        noise_std_claimed=claimed_std, noise_std_measured=measured, noise_p_value=p_noise,
        noise_too_small=too_small, flagged=violation or too_small, one_run=one, event=event,
        included=n_in, seconds=time.perf_counter() - t0, config=config,
    )
