"""Synchronous rounds under the same simulated clock as the asynchronous loop, so the two modes compare.

A round lasts as long as its slowest member takes to download, train and upload (the
same per-client speed model and draws as an asynchronous run), plus the secure-sum
exchanges that must follow the last input, or until a deadline: members still
training at the deadline drop out before their input (the round goes on without them
if enough survive). The key setup of masking (advertise, share keys) runs while the
cohort trains, as the key-setup-ahead transport does, so only the masked input and the
unmasking follow the slowest member.

The round itself is the federation's own (``begin_round``, ``client_contribution``,
the transport, ``finish_round``): only time is added.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from fl_core.asynchronous.speeds import SpeedModel
from fl_core.errors import ConfigError, RoundFailedError
from fl_core.federation import Federation, RoundResult
from secagg import RingVector, SecAggError

__all__ = ["SyncClock", "SyncRound", "clocked_rounds", "sync_exchanges_after_input", "sync_simulated_time"]


def sync_exchanges_after_input(secure_sum: Any) -> int:
    """Exchanges a synchronous round needs after its slowest member's input (key setup ran ahead)."""
    stages = tuple(getattr(secure_sum, "stages", ()))
    stage = int(getattr(secure_sum, "input_stage", 0))
    if stages and stage >= 1:
        return max(1, len(stages) - stage)
    return 2 if getattr(secure_sum, "name", "") == "paillier" else 1


class SyncClock:
    """Per-member task times of synchronous rounds, drawn like the asynchronous loop's.

    Args:
        speed: the speed model.
        population: number of clients.
        rng: the schedule's random source (the same label scheme as the asynchronous loop:
            base times from ``rng.spawn("speeds")``).
        exchanges: secure-sum exchanges after the slowest input.
        deadline_s: members slower than this drop out (None: wait for everyone).
    """

    def __init__(
        self, speed: SpeedModel, population: int, rng: Any, *, exchanges: int = 1, deadline_s: float | None = None
    ) -> None:
        if deadline_s is not None and not deadline_s > 0:
            raise ConfigError(f"a round deadline must be > 0, got {deadline_s!r}", option="deadline")
        self.speed = speed
        self.rng = rng
        self.base_s: npt.NDArray[Any] = speed.base_times(population, rng.spawn("speeds"))
        self.exchanges = exchanges
        self.deadline_s = deadline_s

    def task_times(self, members: tuple[int, ...], round_id: int, attempt: int = 0) -> dict[int, float]:
        """Each member's time for round ``round_id`` (its ``attempt``-th try)."""
        return {
            c: float(self.base_s[c - 1] * self.speed.jitter(self.rng.spawn(f"sync-task/{c}/{round_id}/{attempt}")))
            for c in members
        }

    def round_time(self, times: dict[int, float]) -> float:
        """Seconds from the round's start to its release."""
        slowest = max(times.values(), default=0.0)
        if self.deadline_s is not None:
            slowest = min(slowest, self.deadline_s)
        return slowest + self.exchanges * self.speed.stage_s

    def late(self, times: dict[int, float]) -> tuple[int, ...]:
        """Members still training at the deadline."""
        if self.deadline_s is None:
            return ()
        return tuple(sorted(c for c, t in times.items() if t > self.deadline_s))


@dataclass(frozen=True)
class SyncRound:
    """One synchronous round under the clock."""

    round: RoundResult
    duration_s: float
    sim_time_s: float
    late: tuple[int, ...]


def clocked_rounds(
    fed: Federation, n: int, clock: SyncClock, *, start_s: float = 0.0, max_consecutive_aborts: int = 10
) -> Iterator[SyncRound]:
    """Run ``n`` committed synchronous rounds of ``fed``, each timed by ``clock``.

    An attempt that aborts (too few members before the deadline, a secure-sum abort)
    changes nothing but the clock (its time was spent) and is retried with a fresh
    cohort, as :meth:`Federation.rounds` does; more than ``max_consecutive_aborts``
    in a row raise :class:`~fl_core.errors.RoundFailedError`.
    """
    now = start_s
    done = aborts = 0
    while done < n:
        t0 = time.perf_counter()
        start = fed.begin_round()
        members = start.cohort.members
        if start.skipped:
            done += 1
            yield SyncRound(fed.run_round(), 0.0, now, ())
            continue
        times = clock.task_times(members, start.round, start.attempt)
        late = clock.late(times)
        global_vec = fed.codec.flatten(fed.model)
        inputs: dict[int, RingVector] = {}
        clipped = saturated = 0
        for c in members:
            if c in late:
                inputs[c] = fed.encoder.ring.zeros(fed.plan.dim)  # never sent: the member drops before its input
                continue
            vec, clip = fed.client_contribution(c, start.round, global_vec, fed.client_data[c - 1])
            inputs[c] = vec
            clipped += int(clip.clipped)
            saturated += clip.saturated
        stage = int(getattr(fed.secure_sum, "input_stage", 0))
        r = start.round

        def rng_for(c: int, r: int = r) -> Any:
            return fed.secagg_rng(c, r)

        duration = clock.round_time(times)
        now += duration
        try:
            try:
                outcome = fed.transport.run(
                    fed.secure_sum,
                    inputs,
                    round_id=start.round,
                    rng_for=rng_for,
                    stages_completed={c: stage for c in late},
                )
            except SecAggError as exc:
                fed.abort_round(start, f"secure sum failed: {exc}")
                raise RoundFailedError(f"round {r}: secure sum failed: {exc}", round=r) from exc
            res = fed.finish_round(start, outcome, global_vec, clipped=clipped, saturated=saturated, t0=t0)
        except RoundFailedError:
            aborts += 1
            if aborts > max_consecutive_aborts:
                raise
            continue
        aborts = 0
        done += 1
        yield SyncRound(res, duration, now, late)


def sync_simulated_time(
    cohorts: list[tuple[int, tuple[int, ...]]], clock: SyncClock, on_round: Callable[[int, float], None] | None = None
) -> float:
    """Simulated time of already-run synchronous rounds without a deadline (``(round, members)`` pairs).

    Without a deadline time does not change what a round computes, so a run's clock can be
    read afterwards from its cohorts alone.
    """
    total = 0.0
    for r, members in cohorts:
        d = clock.round_time(clock.task_times(members, r)) if members else 0.0
        total += d
        if on_round is not None:
            on_round(r, total)
    return total
