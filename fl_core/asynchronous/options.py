"""The options of an asynchronous run and the checks that refuse impossible ones before anything runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fl_core.asynchronous.speeds import SpeedModel
from fl_core.asynchronous.staleness import StalenessWeight
from fl_core.errors import ConfigError

__all__ = ["AsyncOptions", "session_floor", "check_feasible"]


@dataclass(frozen=True)
class AsyncOptions:
    """How the server runs buffered asynchronous training (FedBuff-style).

    Attributes:
        buffer: K, the updates a buffer holds before it is applied (one secure-sum session).
        concurrency: C, clients checked in at once (training, or holding their update in the
            open buffer until its session ends). A buffer member keeps its place until then,
            so K <= C.
        staleness: the weight each client applies to its update (default FedBuff's 1/sqrt(1+s)).
        max_staleness: updates older than this many versions are refused (None: no bound).
        max_contributions: buffers one client's input may join (None: no cap); each client
            also enforces this cap on itself.
        client_max_epsilon: each client's own limit on its epsilon against the server, from its
            own record of the buffers its input joined (None: the default client limit of
            :mod:`dp.client_record` with distributed or local DP, none otherwise; ``inf``: none).
        dropout: probability that a member of a sealed buffer vanishes before its input
            leaves it (simulation); it keeps its update and reports it again later.
        speed: the simulated clock's per-client speed model.
        max_time_s: stop once the simulated clock passes this (None: no limit).
        max_consecutive_aborts: stop after this many buffer sessions in a row released nothing.
    """

    buffer: int = 10
    concurrency: int = 20
    staleness: StalenessWeight = field(default_factory=StalenessWeight)
    max_staleness: int | None = None
    max_contributions: int | None = None
    client_max_epsilon: float | None = None
    dropout: float = 0.0
    speed: SpeedModel = field(default_factory=SpeedModel.lognormal)
    max_time_s: float | None = None
    max_consecutive_aborts: int = 10

    def __post_init__(self) -> None:
        for name in ("buffer", "concurrency"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"--{name} must be an integer >= 1, got {v!r}", option=name)
        if self.buffer > self.concurrency:
            raise ConfigError(
                f"a buffer of {self.buffer} can never fill with concurrency {self.concurrency}: each member keeps "
                "its place until its buffer's secure-sum session ends; raise --concurrency or lower --buffer",
                option="buffer",
            )
        if self.max_staleness is not None and (
            isinstance(self.max_staleness, bool) or not isinstance(self.max_staleness, int) or self.max_staleness < 0
        ):
            raise ConfigError(f"--max-staleness must be an integer >= 0, got {self.max_staleness!r}",
                              option="max_staleness")
        if self.max_contributions is not None and (
            isinstance(self.max_contributions, bool)
            or not isinstance(self.max_contributions, int)
            or self.max_contributions < 1
        ):
            raise ConfigError(f"--max-contributions must be an integer >= 1, got {self.max_contributions!r}",
                              option="max_contributions")
        if self.client_max_epsilon is not None and not (
            isinstance(self.client_max_epsilon, (int, float)) and self.client_max_epsilon > 0
        ):
            raise ConfigError("client_max_epsilon must be > 0", option="client_max_epsilon")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"async dropout must be in [0, 1), got {self.dropout!r}", option="dropout")
        if self.max_time_s is not None and not (
            isinstance(self.max_time_s, (int, float)) and math.isfinite(self.max_time_s) and self.max_time_s > 0
        ):
            raise ConfigError("max_time_s must be a finite number > 0", option="max_time_s")
        if isinstance(self.max_consecutive_aborts, bool) or not (
            isinstance(self.max_consecutive_aborts, int) and self.max_consecutive_aborts >= 1
        ):
            raise ConfigError("max_consecutive_aborts must be an integer >= 1", option="max_consecutive_aborts")
        if not isinstance(self.staleness, StalenessWeight):
            raise ConfigError("staleness must be a StalenessWeight", option="staleness")
        if not isinstance(self.speed, SpeedModel):
            raise ConfigError("speed must be a SpeedModel", option="speed")


def session_floor(secure_sum: Any, buffer: int, min_survivors: int) -> int:
    """The fewest survivors a buffer session of ``buffer`` members may release with.

    The largest of: the masking threshold t for a cohort of ``buffer``, the secure sum's and
    the DP layer's minimum survivors, and 2 for a secure backend (never a sum of one update).
    """
    floor = max(1, int(min_survivors), int(getattr(secure_sum, "min_survivors", 1) or 1))
    params = getattr(secure_sum, "parameters", None)
    if callable(params):
        floor = max(floor, int(params(max(buffer, 2)).threshold))
    if getattr(secure_sum, "name", "plain") != "plain":
        floor = max(floor, 2)
    return floor


def check_feasible(options: AsyncOptions, *, population: int, secure_sum: Any, min_survivors: int) -> int:
    """Refuse settings no run could satisfy; return the session floor.

    Raises:
        ConfigError: concurrency above the population, a buffer below the secure sum's
            threshold or minimum survivors (or a one-update buffer with a secure backend),
            or a contribution cap that cannot fill one buffer.
    """
    k = options.buffer
    if options.concurrency > population:
        raise ConfigError(
            f"--concurrency {options.concurrency} exceeds the {population} clients", option="concurrency"
        )
    floor = session_floor(secure_sum, k, min_survivors)
    if k < floor:
        raise ConfigError(
            f"a buffer of {k} is below what its secure-sum session needs to release ({floor} survivors: the "
            f"secure sum's threshold, the DP minimum survivors, and never one update alone); raise --buffer",
            option="buffer",
        )
    return floor
