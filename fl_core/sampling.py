"""Client sampling per round: Poisson at rate q, fixed-size cohorts, or everyone.

The scheme is recorded with each round because the accountant treats them
differently (Poisson subsampling vs sampling without replacement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from fl_core.errors import ConfigError
from secagg import RandomSource

__all__ = ["SamplingScheme", "Sampler", "Cohort"]


class SamplingScheme(str, Enum):
    POISSON = "poisson"
    FIXED_SIZE = "fixed_size"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class Cohort:
    """The clients sampled for one round (1-based ids) and how they were drawn."""

    members: tuple[int, ...]
    scheme: SamplingScheme
    rate: float
    population: int


@dataclass(frozen=True, slots=True)
class Sampler:
    """Draws one cohort per round from ``population`` clients numbered 1..population.

    Use :meth:`poisson`, :meth:`fixed_size` or :meth:`full` to build one.
    """

    scheme: SamplingScheme
    population: int
    rate: float = 1.0
    size: int = 0

    @classmethod
    def poisson(cls, population: int, rate: float) -> Sampler:
        if not 0.0 < rate <= 1.0:
            raise ConfigError(f"sampling rate must be in (0, 1], got {rate}", option="sampling_rate")
        _check_population(population)
        return cls(SamplingScheme.POISSON, population, rate=rate)

    @classmethod
    def fixed_size(cls, population: int, size: int) -> Sampler:
        _check_population(population)
        if not 1 <= size <= population:
            raise ConfigError(f"per-round cohort must be in 1..{population}, got {size}", option="per_round")
        if size == population:
            return cls(SamplingScheme.FULL, population, rate=1.0, size=size)
        return cls(SamplingScheme.FIXED_SIZE, population, rate=size / population, size=size)

    @classmethod
    def full(cls, population: int) -> Sampler:
        _check_population(population)
        return cls(SamplingScheme.FULL, population, rate=1.0, size=population)

    def max_cohort(self) -> int:
        """An upper bound the encoding is sized for (Poisson: mean + 10 sd + 10, capped)."""
        if self.scheme is SamplingScheme.POISSON:
            mean = self.rate * self.population
            return min(self.population, math.ceil(mean + 10 * math.sqrt(mean) + 10))
        return self.size

    def expected_cohort(self) -> float:
        return self.rate * self.population if self.scheme is SamplingScheme.POISSON else float(self.size)

    def sample(self, rng: RandomSource) -> Cohort:
        if self.scheme is SamplingScheme.POISSON:
            u = rng.uniform(self.population)
            members = tuple(int(i) + 1 for i in (u < self.rate).nonzero()[0])
        elif self.scheme is SamplingScheme.FULL:
            members = tuple(range(1, self.population + 1))
        else:
            # Partial Fisher-Yates with unbiased integers from the injected source.
            pool = list(range(1, self.population + 1))
            for i in range(self.size):
                j = i + rng.randbelow(self.population - i)  # type: ignore[attr-defined]
                pool[i], pool[j] = pool[j], pool[i]
            members = tuple(sorted(pool[: self.size]))
        return Cohort(members, self.scheme, self.rate, self.population)


def _check_population(population: int) -> None:
    if population < 1:
        raise ConfigError(f"clients must be >= 1, got {population}", option="clients")
