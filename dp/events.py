"""Immutable privacy events: one record per round of what noise was really present.

An event says which mechanism ran, with what sensitivity and noise, under which
sampling scheme, over how many clients (cohort and survivors). Accountants
compose events; the ledger stores them; epsilon is recomputable from events alone.

Security:
    For distributed noise the event carries the noise of the clients that
    completed the round minus the assumed colluders (``noise_variance`` is what
    an adversary who knows the colluders' shares still faces), never the
    planned cohort's.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from dp.errors import ConfigurationError

__all__ = ["DPMode", "Mechanism", "Sampling", "RoundEvent"]


class DPMode(str, Enum):
    """Where the client-level noise is added."""

    NONE = "none"
    CENTRAL = "central"  # the server adds Gaussian noise to the exact sum
    DISTRIBUTED = "distributed"  # clients add integer noise shares inside the secure sum
    LOCAL = "local"  # each client's update is noised to stand alone


class Mechanism(str, Enum):
    NONE = "none"
    GAUSSIAN = "gaussian"
    DISCRETE_GAUSSIAN = "discrete_gaussian"
    SKELLAM = "skellam"


class Sampling(str, Enum):
    """How the round's cohort was drawn from the population."""

    POISSON = "poisson"  # each client independently with probability q
    FIXED_SIZE = "fixed_size"  # exactly K clients uniformly without replacement
    FULL = "full"  # every client, every round (q = 1)


@dataclass(frozen=True, slots=True)
class RoundEvent:
    """What one round did, in the units of the mechanism.

    Attributes:
        round: 1-based round number.
        mode: where the noise was added.
        mechanism: the noise distribution.
        l2_sensitivity: L2 sensitivity of the released sum to one client (for
            distributed integer noise: in integer units, including the rounding
            inflation).
        l1_sensitivity: L1 sensitivity (needed by the Skellam bound; 0 if unused).
        noise_variance: variance per coordinate of the noise present in the
            released sum, in the same units as the sensitivities.
        clip_norm: the L2 clip applied to each update, in float units.
        clip_query_noise_multiplier: noise multiplier of the adaptive-clipping
            quantile query (0 when the clip is fixed).
        sampling: how the cohort was drawn.
        sampling_rate: q for Poisson; K/N for fixed-size; 1 for full.
        population: N, the number of clients that could be sampled.
        cohort: how many were sampled.
        survivors: how many completed the round (their updates are in the sum).
        colluders: clients assumed to collude with the server (their noise is not counted).
        dim: model dimension.
        cohort_ids: the ids of the clients the round asked for an update (sorted; empty
            when not known, e.g. a planned event or an older ledger).
        survivor_ids: the ids of the clients whose update is in the released sum (sorted;
            empty when not known). Accounting against the server charges each round to
            these clients only; a round without them is charged to its cohort, or to
            every client when that is not known either (see :mod:`dp.adversary`).
        min_survivors: the fewest survivors with which the round could release (fewer
            abort and the round is redrawn); 0 for a round without an abort rule (it
            would release noise alone for an empty sample), or one that does not record
            it (an older ledger). Under Poisson sampling the release decision can hinge
            on one client; :mod:`dp.accountants.aborts` charges that as delta.
        eligible: how many clients the cohort was drawn from (the population minus
            those left out by a participation cap or their own limit; the fewest over
            the round's attempts); 0 means the whole population.
        dropout: the per-client dropout probability the round was planned for (used
            with ``min_survivors``).
        releases_empty: the round records that it has no abort rule: an empty sample, or a
            cohort nobody survived, releases the noise alone (central mode under Poisson
            sampling) instead of being redrawn. Such a round is charged like any round,
            ``survivors == 0`` included; ``min_survivors`` is then 0.
    """

    round: int
    mode: DPMode
    mechanism: Mechanism
    l2_sensitivity: float
    noise_variance: float
    clip_norm: float
    sampling: Sampling
    sampling_rate: float
    population: int
    cohort: int
    survivors: int
    l1_sensitivity: float = 0.0
    clip_query_noise_multiplier: float = 0.0
    colluders: int = 0
    dim: int = 0
    cohort_ids: tuple[int, ...] = ()
    survivor_ids: tuple[int, ...] = ()
    min_survivors: int = 0
    eligible: int = 0
    dropout: float = 0.0
    releases_empty: bool = False

    def __post_init__(self) -> None:
        if self.round < 1:
            raise ConfigurationError(f"round must be >= 1, got {self.round}")
        for name in ("l2_sensitivity", "noise_variance", "clip_norm", "l1_sensitivity", "clip_query_noise_multiplier"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigurationError(f"{name} must be finite and >= 0, got {v!r}")
        if not 0.0 <= self.sampling_rate <= 1.0:
            raise ConfigurationError(f"sampling_rate must be in [0, 1], got {self.sampling_rate}")
        if self.sampling is Sampling.FULL and self.sampling_rate != 1.0:
            raise ConfigurationError("full participation must have sampling_rate 1")
        for name in ("population", "cohort", "survivors", "colluders", "dim"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must be >= 0")
        for name in ("min_survivors", "eligible"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ConfigurationError(f"{name} must be an integer >= 0, got {v!r}")
        if self.eligible > self.population:
            raise ConfigurationError(f"eligible ({self.eligible}) cannot exceed the population ({self.population})")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigurationError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.releases_empty, bool):
            raise ConfigurationError(f"releases_empty must be a bool, got {self.releases_empty!r}")
        if self.releases_empty and self.min_survivors:
            raise ConfigurationError(
                f"a round that releases the noise alone for an empty sample has no abort rule: "
                f"min_survivors must be 0, got {self.min_survivors}"
            )
        if self.survivors > self.cohort or self.cohort > self.population:
            raise ConfigurationError("need survivors <= cohort <= population")
        if self.mechanism is not Mechanism.NONE and self.l2_sensitivity <= 0:
            raise ConfigurationError("a noisy mechanism needs l2_sensitivity > 0")
        for name in ("cohort_ids", "survivor_ids"):
            ids = getattr(self, name)
            if isinstance(ids, list):  # e.g. RoundEvent(**event.to_dict())
                ids = tuple(ids)
                object.__setattr__(self, name, ids)
            if not isinstance(ids, tuple) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
                raise ConfigurationError(f"{name} must be a tuple of integer client ids, got {ids!r}")
            if any(b <= a for a, b in zip(ids, ids[1:], strict=False)):
                raise ConfigurationError(f"{name} must be sorted and without repeats")
        if self.cohort_ids and len(self.cohort_ids) != self.cohort:
            raise ConfigurationError(f"cohort_ids has {len(self.cohort_ids)} ids for a cohort of {self.cohort}")
        if self.survivor_ids and len(self.survivor_ids) != self.survivors:
            raise ConfigurationError(
                f"survivor_ids has {len(self.survivor_ids)} ids for {self.survivors} survivors"
            )
        if self.cohort_ids and self.survivor_ids and not set(self.survivor_ids) <= set(self.cohort_ids):
            raise ConfigurationError("survivor_ids must be a subset of cohort_ids")

    @property
    def noise_multiplier(self) -> float:
        """sigma / Delta_2 of the noise actually present (inf when noise-free sensitivity is 0)."""
        if self.mechanism is Mechanism.NONE:
            return 0.0
        return math.sqrt(self.noise_variance) / self.l2_sensitivity

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mode"] = self.mode.value
        d["mechanism"] = self.mechanism.value
        d["sampling"] = self.sampling.value
        d["cohort_ids"] = list(self.cohort_ids)
        d["survivor_ids"] = list(self.survivor_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundEvent:
        try:
            return cls(
                round=int(d["round"]),
                mode=DPMode(d["mode"]),
                mechanism=Mechanism(d["mechanism"]),
                l2_sensitivity=float(d["l2_sensitivity"]),
                noise_variance=float(d["noise_variance"]),
                clip_norm=float(d["clip_norm"]),
                sampling=Sampling(d["sampling"]),
                sampling_rate=float(d["sampling_rate"]),
                population=int(d["population"]),
                cohort=int(d["cohort"]),
                survivors=int(d["survivors"]),
                l1_sensitivity=float(d.get("l1_sensitivity", 0.0)),
                clip_query_noise_multiplier=float(d.get("clip_query_noise_multiplier", 0.0)),
                colluders=int(d.get("colluders", 0)),
                dim=int(d.get("dim", 0)),
                cohort_ids=tuple(int(i) for i in d.get("cohort_ids", ())),
                survivor_ids=tuple(int(i) for i in d.get("survivor_ids", ())),
                min_survivors=int(d.get("min_survivors", 0)),
                eligible=int(d.get("eligible", 0)),
                dropout=float(d.get("dropout", 0.0)),
                releases_empty=bool(d.get("releases_empty", False)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"malformed event record: {exc}") from exc
