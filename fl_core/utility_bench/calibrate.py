"""Noise calibration: the smallest noise multiplier whose accounted epsilon meets a target.

The accountant (:func:`dp.accountants.compute_epsilon`) is the only judge: the
calibration builds the round events a run *will* produce and bisects the noise
multiplier on them, so the predicted epsilon is computed exactly as the round
loop will charge it. When the round loop's privacy policy can describe its own
events (``fl_core.privacy``), those events are used (this covers the Skellam
scale and rounding inflation of the distributed mode and the adaptive clip's
count query); otherwise the events are built here for the Gaussian mechanism
(central: Poisson rate q; local: no amplification, q = 1).

The bisection is written here (about 20 lines) rather than taken from a
library because it must run on the project's own accountant and events; it is
monotone because more noise never costs more epsilon.

Security:
    Assumption: the events built here match what the round loop records; the
    run's own ledger epsilon is reported beside the prediction, so any gap is
    visible. Guarantee: ``epsilon(noise_multiplier) <= target`` when every
    round has the calibration's survivor count. Under Poisson sampling with
    distributed noise the noise actually present grows with the survivors,
    so the calibration assumes one standard deviation fewer than expected;
    a run with unusually small cohorts can still cost a little more, and the
    reported epsilon is always the accounted one from the run's ledger.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_core.config import RunConfig
from fl_core.errors import ConfigError

__all__ = ["Calibration", "bisect_noise", "calibrate_noise", "calibration_survivors", "predicted_epsilon"]

_Z_LO, _Z_HI = 0.05, 1e4


@dataclass(frozen=True, slots=True)
class Calibration:
    """The result of calibrating one cell.

    Attributes:
        noise_multiplier: the chosen noise std / clip.
        predicted_epsilon: the accountant's epsilon for the run with that noise.
        target_epsilon: what was asked for.
        accountant: accountant name.
        source: ``"policy"`` (the round loop's own events) or ``"gaussian"`` (built here).
    """

    noise_multiplier: float
    predicted_epsilon: float
    target_epsilon: float
    accountant: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "predicted_epsilon": self.predicted_epsilon,
            "target_epsilon": self.target_epsilon,
            "accountant": self.accountant,
            "source": self.source,
        }


def bisect_noise(
    epsilon_of: Callable[[float], float], target: float, *, rel_tol: float = 1e-3, max_iter: int = 60
) -> tuple[float, float]:
    """Smallest noise multiplier z (to ``rel_tol``) with ``epsilon_of(z) <= target``.

    ``epsilon_of`` must be non-increasing in z. The bracket grows by doubling from
    z = 1 (never below 0.05, where accountants get slow and epsilon is useless,
    nor above 1e4), then shrinks geometrically. Returns ``(z, epsilon_of(z))``.

    Raises:
        ConfigError: the target is not reachable with z <= 1e4.
    """
    if not (target > 0 and math.isfinite(target)):
        raise ConfigError(f"target epsilon must be a positive number, got {target}", option="epsilons")
    z = 1.0
    e = epsilon_of(z)
    if e <= target:
        hi, eps_hi, lo = z, e, z / 2
        while True:
            lo = max(lo, _Z_LO)  # the last step down lands exactly on the floor
            e = epsilon_of(lo)
            if e > target:
                break  # the answer is in (lo, hi]: bisect below
            if lo <= _Z_LO:
                return lo, e  # the floor itself meets the target
            hi, eps_hi, lo = lo, e, lo / 2
    else:
        lo, hi = z, 2 * z
        while True:
            if lo >= _Z_HI:
                raise ConfigError(
                    f"target epsilon {target} is not reachable even with noise multiplier {_Z_HI}; "
                    "raise the target or use fewer rounds",
                    option="epsilons",
                )
            hi = min(hi, _Z_HI)
            eps_hi = epsilon_of(hi)
            if eps_hi <= target:
                break
            lo, hi = hi, 2 * hi
    for _ in range(max_iter):
        if hi / lo <= 1.0 + rel_tol:
            break
        mid = math.sqrt(lo * hi)
        e = epsilon_of(mid)
        if e <= target:
            hi, eps_hi = mid, e
        else:
            lo = mid
    return hi, eps_hi


def _gaussian_events(cfg: RunConfig, z: float) -> list[Any]:
    """Gaussian events for ``cfg`` (the accountant applies the mode's rules, e.g. no amplification for local)."""
    from dp.events import DPMode, Mechanism, RoundEvent, Sampling

    n = cfg.clients
    if cfg.sampling_rate is not None and cfg.sampling_rate < 1.0:
        sampling, q, k = Sampling.POISSON, cfg.sampling_rate, max(1, round(cfg.sampling_rate * n))
    elif cfg.per_round is not None and cfg.per_round < n:
        sampling, q, k = Sampling.FIXED_SIZE, cfg.per_round / n, cfg.per_round
    else:
        sampling, q, k = Sampling.FULL, 1.0, n
    clip = cfg.clip if cfg.clip is not None else 1.0
    mode = {"local": DPMode.LOCAL, "distributed": DPMode.DISTRIBUTED}.get(cfg.dp, DPMode.CENTRAL)
    return [
        RoundEvent(
            round=r,
            mode=mode,
            mechanism=Mechanism.GAUSSIAN,
            l2_sensitivity=clip,
            noise_variance=(z * clip) ** 2,
            clip_norm=clip,
            sampling=sampling,
            sampling_rate=q,
            population=n,
            cohort=k,
            survivors=k,
        )
        for r in range(1, cfg.rounds + 1)
    ]


def calibration_survivors(expected_cohort: float, *, poisson: bool) -> int:
    """How many survivors a round is calibrated for: mean - 1 sd under Poisson sampling, else the cohort.

    Only the distributed mode's noise depends on it (each survivor adds a share); calibrating
    a little below the mean keeps a typical run's accounted epsilon at or under the target.
    """
    if poisson:
        return max(1, math.floor(expected_cohort - math.sqrt(expected_cohort)))
    return max(1, round(expected_cohort))


def _policy_events_fn(cfg: RunConfig, data: Any, scratch: Path) -> Callable[[float], list[Any]]:
    """A function z -> the round loop's own events for ``cfg`` with noise multiplier z.

    It builds the run's :class:`~fl_core.federation.Federation` (with the plain sum: the
    encoding and the noise do not depend on the backend) and asks its privacy policy for
    the event of a round in which the expected cohort took part and survived.

    Raises:
        ConfigError: the round loop cannot run this mode (not wired).
    """
    from fl_core.runner import build_federation
    from fl_core.sampling import Cohort

    calls = [0]

    def events(z: float) -> list[Any]:
        calls[0] += 1  # a fresh ledger path per call: nothing is ever appended to it
        c = cfg.replace(
            noise_multiplier=z,
            target_epsilon=None,
            secure_sum="plain",
            ledger=str(scratch / f"ledger-{calls[0]}.jsonl"),
        )
        fed, _data, _extra = build_federation(c, data)
        sampler = fed.sampler
        k = calibration_survivors(sampler.expected_cohort(), poisson=sampler.scheme.value == "poisson")
        k = max(k, int(getattr(fed.privacy, "min_survivors", 1)))
        cohort = Cohort(tuple(range(1, k + 1)), sampler.scheme, sampler.rate, sampler.population)
        out = []
        for r in range(1, c.rounds + 1):
            ev = fed.privacy.round_event(
                round=r, cohort=cohort, survivors=k, scale=fed.plan.scale, dim=fed.dim, planned=False
            )
            if ev is not None:
                out.append(ev)
        ledger = getattr(fed.accounting, "ledger", None)
        if ledger is not None and hasattr(ledger, "close"):
            ledger.close()
        return out

    events(1.0)  # raises now if the mode is not wired
    return events


def predicted_epsilon(events: list[Any], delta: float, accountant: str) -> float:
    from dp.accountants import compute_epsilon

    return float(compute_epsilon(events, delta, accountant=accountant))


def calibrate_noise(
    cfg: RunConfig,
    target_epsilon: float,
    *,
    data: Any,
    accountant: str = "pld",
    rel_tol: float = 1e-3,
) -> Calibration:
    """Calibrate ``cfg``'s noise multiplier so the run's accounted epsilon is at most ``target_epsilon``.

    Args:
        cfg: the run (its ``dp`` mode, sampling, rounds, clip, delta are used).
        target_epsilon: the epsilon to meet at ``cfg.delta``.
        data: the run's :class:`~fl_core.data.FederatedData` (to build the run's policy).
        accountant: ``pld`` or ``rdp``.
        rel_tol: relative precision of the noise multiplier.

    Raises:
        ConfigError: ``cfg.dp`` is ``none``, or the target cannot be reached.
    """
    if cfg.dp == "none":
        raise ConfigError("a non-private run has no noise to calibrate", option="dp")
    with tempfile.TemporaryDirectory(prefix="privagg-calibration-") as scratch:
        source = "policy"
        events_of: Callable[[float], list[Any]]
        try:
            events_of = _policy_events_fn(cfg, data, Path(scratch))
        except ConfigError:
            source = "gaussian"

            def events_of(z: float) -> list[Any]:
                return _gaussian_events(cfg, z)

        def eps(z: float) -> float:
            return predicted_epsilon(events_of(z), cfg.delta, accountant)

        z, e = bisect_noise(eps, target_epsilon, rel_tol=rel_tol)
    return Calibration(z, e, target_epsilon, accountant, source)
