"""The in-process clients' own privacy limit: one hash-chained record per client, checked before each round.

A :class:`ClientGuard` is the client side of a simulated federation: each client
keeps its own :class:`dp.client_record.ClientRecord` and refuses a round that would
take its epsilon against the server past its limit. The round loop
(:class:`fl_core.federation.Federation`) calls :meth:`ClientGuard.check` before the
client trains and :meth:`ClientGuard.charge` once its input is ready and before it
is sent; a refusal makes the client a dropout for that round.

Security:
    Assumption: the parameters the guard charges are the client's own (its DP
    configuration: noise multiplier, clip, min-survivors and colluders floor,
    mechanism, and the encoding scale of its own plan), never values the server
    reports about the round. Guarantee: no client's record exceeds its limit, and a
    client's data is not touched in a round it refuses (see :mod:`dp.client_record`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dp.calibration import DPConfig
from dp.client_record import DEFAULT_CLIENT_MAX_EPSILON, ClientRecord, client_round_event
from dp.errors import ClientBudgetExceededError
from dp.events import RoundEvent

__all__ = ["ClientGuard"]


@dataclass
class ClientGuard:
    """Every simulated client's own record and limit.

    Args:
        config: the DP configuration each client enforces (its floor).
        dim: the encoded vector's dimension (model plus side-query coordinates).
        scale: the encoding scale of the clients' plan.
        delta: the delta each client states its epsilon at.
        max_epsilon: each client's limit on its epsilon against the server.
        clip_norm: a callable giving the clip of the current round (adaptive clipping), or None.
    """

    config: DPConfig
    dim: int
    scale: float
    delta: float
    max_epsilon: float = DEFAULT_CLIENT_MAX_EPSILON
    clip_norm: Any = None
    records: dict[int, ClientRecord] = field(default_factory=dict)
    refusals: list[tuple[int, int]] = field(default_factory=list)
    _event: tuple[tuple[int, float | None], RoundEvent] | None = field(default=None, repr=False, compare=False)

    def record(self, client: int) -> ClientRecord:
        """``client``'s record (created empty on first use)."""
        rec = self.records.get(client)
        if rec is None:
            rec = self.records[client] = ClientRecord.create(client, delta=self.delta)
        return rec

    def event(self, round_id: int) -> RoundEvent:
        """What a client charges for round ``round_id``: its own floor, no amplification.

        The same for every client of the round: built once per (round, clip) and reused by
        every check and charge of that round.
        """
        clip = self.clip_norm() if callable(self.clip_norm) else None
        key = (round_id, clip)
        if self._event is None or self._event[0] != key:
            event = client_round_event(self.config, round=round_id, dim=self.dim, scale=self.scale, clip_norm=clip)
            self._event = (key, event)
        return self._event[1]

    def check(self, client: int, round_id: int) -> float:
        """Refuse (:class:`dp.errors.ClientBudgetExceededError`) before the client touches its data."""
        try:
            return self.record(client).check(self.event(round_id), max_epsilon=self.max_epsilon)
        except ClientBudgetExceededError:
            self.refusals.append((round_id, client))
            raise

    def charge(self, client: int, round_id: int) -> None:
        """Record the round: the client's input is ready and about to leave."""
        self.record(client).charge(self.event(round_id), max_epsilon=self.max_epsilon)

    def rounds_within_limit(self, *, cap: int = 10_000) -> int:
        """How many rounds a fresh client can join before its limit refuses (same parameters throughout)."""
        rec = ClientRecord.create("probe", delta=self.delta)
        event = self.event(1)
        n = 0
        while n < cap and rec.epsilon_if_charged(event) <= self.max_epsilon:
            rec.charge(event, max_epsilon=math.inf)
            n += 1
        return n

    def report(self) -> dict[str, Any]:
        """Summary of the clients' own books: the largest epsilon any client recorded, and refusals."""
        eps = [r.epsilon_vs_server() for r in self.records.values()]
        worst = max(eps, default=0.0)
        return {
            "client_max_epsilon": None if math.isinf(self.max_epsilon) else self.max_epsilon,
            "client_epsilon_max": None if math.isinf(worst) else worst,
            "clients_charged": sum(1 for r in self.records.values() if r.charges),
            "client_refusals": len(self.refusals),
        }
