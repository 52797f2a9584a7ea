"""Epsilon against the server: each client's releases composed with no amplification by sampling.

The server chooses who trains and sees who is in each buffer (or round), so against the
server no amplification by sampling is claimed: every release a client's update is in is
charged in full (q = 1) under the zero-out relation (the client's update replaced by
nothing, L2 sensitivity C; Kairouz et al., ICML 2021, section 2), composed over the
releases that client joined; the run's figure is the maximum over clients. Events of
synchronous fixed-size or Poisson rounds are recharged the same way, so the two modes
compare on one scale.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dp.accountants import compute_epsilon
from dp.events import RoundEvent, Sampling

__all__ = ["as_seen_by_server", "epsilon_per_client", "epsilon_vs_server"]


def as_seen_by_server(event: RoundEvent) -> RoundEvent:
    """``event`` charged without amplification: full participation, rate 1 (the cohort is known)."""
    if event.sampling is Sampling.FULL and event.sampling_rate == 1.0:
        return event
    return dataclasses.replace(event, sampling=Sampling.FULL, sampling_rate=1.0)


def epsilon_per_client(
    records: Mapping[int, Sequence[RoundEvent]],
    delta: float,
    *,
    accountant: str = "pld",
    compose: Callable[[Sequence[RoundEvent]], float] | None = None,
) -> dict[int, float]:
    """Each client's epsilon against the server over the releases in its record.

    Clients whose records hold the same events (up to the round number) share one
    accountant call.
    """
    fn = compose or (lambda evs: compute_epsilon(evs, delta, accountant=accountant))
    cache: dict[frozenset[tuple[Any, int]], float] = {}
    out: dict[int, float] = {}
    for client, events in records.items():
        seen = [as_seen_by_server(e) for e in events]
        key = frozenset(Counter(dataclasses.replace(e, round=1) for e in seen).items())
        if key not in cache:
            cache[key] = fn(seen) if seen else 0.0
        out[client] = cache[key]
    return out


def epsilon_vs_server(records: Mapping[int, Sequence[RoundEvent]], delta: float, *, accountant: str = "pld") -> float:
    """The largest per-client epsilon against the server (0 when nobody released anything)."""
    per = epsilon_per_client(records, delta, accountant=accountant)
    return max(per.values(), default=0.0)
