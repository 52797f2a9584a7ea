"""The server's privacy books for a run: epsilon against both adversaries, the budget, the cap, the ledger.

:class:`RunAccounting` plugs into :class:`fl_core.federation.Federation` through its
accounting hooks: ``epsilon_fn`` (the enforced epsilon), ``budget`` (checked before a
round runs), ``admit`` (leaves out of a drawn cohort the clients that reached their
participation cap) and ``ledger`` (each committed round is written with both
epsilons and the ids of who took part). :func:`epsilon_report` turns it into the
summary fields of ``privagg run --json``.

Security:
    Against the server, epsilon is composed per client over the rounds it survived in,
    without amplification (:mod:`dp.adversary`); against model users it is amplified
    where sampling is real, and never above the former. The budget is checked on the
    named adversary with the planned worst case of the next round (``min_survivors``
    honest shares, charged to every cohort member) before anything runs. The
    participation cap counts *admissions* (cohort memberships of rounds that were
    started, including ones that later aborted), which is what a client's own record
    charges (:mod:`dp.client_record`), so a capped honest run never makes a client
    refuse. Leaving a capped client out of a Poisson cohort only lowers its inclusion
    probability in that round, so the amplified bound against model users still holds
    (each round, conditioned on the past, is dominated by the rate-q subsampled
    mechanism; Zhu, Dong, Wang 2022 on adaptive composition of dominating pairs).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from dp.accountants import abort_delta, compute_epsilon
from dp.adversary import Adversary, ServerAccount, capped_by_server, public_unbounded_reason, unbounded_reason
from dp.errors import BudgetExceededError
from dp.events import RoundEvent
from dp.ledger import Ledger, LedgerRecord
from fl_core.errors import RoundFailedError
from fl_core.sampling import Cohort

__all__ = ["LedgerBooks", "RunAccounting", "epsilon_report"]


class RunAccounting:
    """Epsilon per adversary, the budget on the named one, and the participation cap.

    Args:
        delta: the run's delta.
        enforced: the adversary the budget (and ``epsilon``) is stated against.
        target: the budget (None: no budget, epsilon is still reported).
        accountant: ``"pld"`` or ``"rdp"`` for the epsilon against model users.
        cap: the most rounds a client may be admitted to (None: no cap).
        min_cohort: a drawn cohort (after the cap) smaller than this, empty included, cannot
            release (the noise is sized for ``min_survivors``): :meth:`check` aborts the attempt
            before any client touches its data or is charged, and the round loop redraws.
        planned: ``planned(round, cohort) -> RoundEvent``, the worst case of a round that
            can still release (``min_survivors`` honest shares). With a target enforced against
            the server, a client is admitted only if that event would keep its own epsilon
            within the target.
    """

    def __init__(
        self,
        *,
        delta: float,
        enforced: Adversary,
        target: float | None = None,
        accountant: str = "pld",
        cap: int | None = None,
        min_cohort: int = 1,
        planned: Callable[[int, Cohort], RoundEvent] | None = None,
    ) -> None:
        self.delta = delta
        self.enforced = Adversary(enforced)
        self.target = target
        self.accountant = accountant
        self.cap = cap
        self.min_cohort = min_cohort
        self._planned = planned
        self.too_small: list[int] = []
        self.admissions: Counter[int] = Counter()
        self.eligible: dict[int, int] = {}
        self.left_out: dict[int, tuple[int, ...]] = {}
        self._server = ServerAccount(delta)
        self._public_cache: tuple[tuple[int, int], float] | None = None

    # -- the two views ------------------------------------------------------

    def _sync(self, events: Sequence[RoundEvent]) -> ServerAccount:
        # The round loop only ever appends: continue from the last event seen (same object or
        # equal), else recompose from scratch.
        n = self._server.count
        last = self._server.last
        if len(events) >= n and (n == 0 or events[n - 1] is last or events[n - 1] == last):
            for e in events[n:]:
                self._server.add(e)
        else:
            self._server = ServerAccount(self.delta).extend(events)
        return self._server

    def epsilon_vs_server(self, events: Sequence[RoundEvent]) -> float:
        return self._sync(events).epsilon()

    def epsilon_vs_public(self, events: Sequence[RoundEvent]) -> float:
        key = (len(events), id(events[-1]) if events else 0)
        if self._public_cache is not None and self._public_cache[0] == key:
            return self._public_cache[1]
        value = self._public(events, lambda: self.epsilon_vs_server(events))
        self._public_cache = (key, value)
        return value

    def _public(self, events: Sequence[RoundEvent], server: Callable[[], float]) -> float:
        # As dp.adversary.epsilon_vs_public, with the server's number from the incremental account.
        public = compute_epsilon(events, self.delta, accountant=self.accountant)
        if public == 0.0 or not capped_by_server(events):
            return public
        return min(public, server())

    def epsilon(self, events: Sequence[RoundEvent]) -> float:
        """The enforced epsilon of ``events`` (the federation's ``epsilon_fn``)."""
        if self.enforced is Adversary.SERVER:
            return self.epsilon_vs_server(events)
        return self.epsilon_vs_public(events)

    # -- the budget ---------------------------------------------------------

    def check(self, events: Sequence[RoundEvent], planned: RoundEvent) -> float:
        """Epsilon (enforced) if ``planned`` runs; raise before it runs if that exceeds the target.

        Raises:
            RoundFailedError: the cohort is smaller than ``min_cohort`` (an abort: nothing ran).
            BudgetExceededError: the round would take the enforced epsilon past the target.
        """
        if planned.cohort < self.min_cohort:
            self.too_small.append(planned.round)
            raise RoundFailedError(
                f"round {planned.round}: the drawn cohort has {planned.cohort} clients, fewer than the "
                f"{self.min_cohort} survivors the noise is sized for; nothing ran, the round is redrawn",
                round=planned.round,
            )
        if self.enforced is Adversary.SERVER:
            eps = self._sync(events).epsilon_if(planned)
        else:
            eps = self._public([*events, planned], lambda: self._sync(events).epsilon_if(planned))
        if self.target is not None and eps > self.target:
            raise BudgetExceededError(
                f"round {planned.round} would take epsilon against the {self.enforced.value} to {eps:.4g} > "
                f"target {self.target:.4g} (delta={self.delta:g}); stopping before it runs. Raise "
                "--target-epsilon, raise the noise multiplier, or run fewer rounds.",
                epsilon_if_run=eps,
                target_epsilon=self.target,
            )
        return eps

    # -- the cap ------------------------------------------------------------

    def admit(self, round_id: int, cohort: Cohort) -> Cohort:
        """Leave out of ``cohort`` the clients already admitted ``cap`` times; count the rest.

        Clients admitted to an attempt that then aborts stay counted (their own records
        charge them too, conservatively).
        """
        kept = cohort.members
        capped = 0
        if self.cap is not None:
            kept = tuple(c for c in kept if self.admissions[c] < self.cap)
            capped = sum(1 for c, n in self.admissions.items() if n >= self.cap and 1 <= c <= cohort.population)
        eligible = cohort.population - capped
        if self.target is not None and self.enforced is Adversary.SERVER and self._planned is not None:
            event = self._planned(round_id, cohort)
            if kept:
                kept = tuple(c for c in kept if self._server.client_epsilon_if(c, event) <= self.target)
                if not kept:
                    self._stop_if_exhausted(event, cohort.population)
            eligible -= self._over_target(event, cohort.population)
        # The fewest clients any attempt of this round was drawn from (dp.accountants.aborts).
        self.eligible[round_id] = min(self.eligible.get(round_id, eligible), max(eligible, 0))
        out = tuple(c for c in cohort.members if c not in set(kept))
        if out:
            self.left_out[round_id] = tuple(sorted(set(self.left_out.get(round_id, ())) | set(out)))
        self.admissions.update(kept)
        return cohort if kept == cohort.members else dataclasses.replace(cohort, members=kept)

    def eligible_of(self, round_id: int) -> int:
        """How many clients round ``round_id``'s cohorts were drawn from (the fewest over its attempts;
        0 before any draw, read as the whole population)."""
        return self.eligible.get(round_id, 0)

    def _over_target(self, event: RoundEvent, population: int) -> int:
        """How many clients below the cap ``event`` would take past the target (left out of every draw)."""
        target = self.target or 0.0
        capped = {c for c, n in self.admissions.items() if self.cap is not None and n >= self.cap}
        charged = {c for c in self._server.per_client() if 1 <= c <= population}
        over = sum(1 for c in charged - capped if self._server.client_epsilon_if(c, event) > target)
        if self._server.client_epsilon_if(0, event) > target:  # 0 is no client: one never charged
            over += population - len(charged | {c for c in capped if 1 <= c <= population})
        return over

    def _stop_if_exhausted(self, event: RoundEvent, population: int) -> None:
        """Raise when no client of the population could join another round within the target."""
        worst = math.inf
        for c in range(1, population + 1):
            worst = min(worst, self._server.client_epsilon_if(c, event))
            if worst <= (self.target or 0.0):
                return
        raise BudgetExceededError(
            f"round {event.round}: every client would take its epsilon against the server past the target "
            f"{self.target:.4g} (the least it would reach is {worst:.4g}, delta={self.delta:g}); stopping before "
            "it runs. Raise --target-epsilon, raise the noise multiplier, or run fewer rounds.",
            epsilon_if_run=worst,
            target_epsilon=float(self.target or 0.0),
        )

    def resume(self, events: Sequence[RoundEvent]) -> None:
        """Count the admissions of a resumed ledger's rounds (their cohorts) toward the cap."""
        for e in events:
            self.admissions.update(e.cohort_ids)
        self._sync(events)


class LedgerBooks:
    """The ledger as the round loop sees it: each round written with both epsilons.

    The federation calls ``append(event, epsilon=..., delta=...)`` with its enforced
    epsilon; this adapter recomputes both views from the ledger's own records plus the
    event and writes them, so the record never depends on the caller's number.
    """

    def __init__(self, ledger: Ledger, accounting: RunAccounting) -> None:
        self._ledger = ledger
        self._acc = accounting

    def append(self, event: RoundEvent, *, epsilon: float, delta: float) -> LedgerRecord:
        events = [*self._ledger.events, event]
        server = self._acc.epsilon_vs_server(events)
        public = self._acc.epsilon_vs_public(events)
        return self._ledger.append(event, epsilon=public, delta=delta, epsilon_vs_server=server)

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def records(self) -> tuple[LedgerRecord, ...]:
        return self._ledger.records

    @property
    def events(self) -> list[RoundEvent]:
        return self._ledger.events

    @property
    def last_round(self) -> int:
        return self._ledger.last_round

    @property
    def epsilon(self) -> float:
        """The enforced epsilon after the last recorded round."""
        return self._acc.epsilon(self._ledger.events) if self._ledger.records else 0.0

    @property
    def head_hash(self) -> str:
        return self._ledger.head_hash

    @property
    def path(self) -> Any:
        return self._ledger.path

    @property
    def meta(self) -> dict[str, Any]:
        return self._ledger.meta

    def close(self) -> None:
        self._ledger.close()


def _num(x: float) -> float | None:
    return None if math.isinf(x) else float(x)


def epsilon_report(fed: Any) -> dict[str, Any]:
    """The per-adversary summary of a federation's run (empty when it is not a DP run).

    Keys: ``epsilon`` (the enforced one), ``epsilon_enforced_on``, ``epsilon_vs_server``
    (None when unbounded, with ``epsilon_vs_server_reason``), ``epsilon_vs_public``,
    ``participation_cap``, ``clients_left_out``, and the clients' own books
    (:meth:`fl_core.client_guard.ClientGuard.report`) when they keep one.
    """
    acc = getattr(getattr(fed, "accounting", None), "budget", None)
    if not isinstance(acc, RunAccounting):
        return {}
    events = list(fed.events)
    server = acc.epsilon_vs_server(events)
    public = acc.epsilon_vs_public(events)
    enforced = server if acc.enforced is Adversary.SERVER else public
    out: dict[str, Any] = {
        "epsilon": _num(enforced),
        "epsilon_enforced_on": acc.enforced.value,
        "epsilon_vs_server": _num(server),
        "epsilon_vs_public": _num(public),
        "target_epsilon": acc.target,
        "participation_cap": acc.cap,
        "clients_left_out": sum(len(v) for v in acc.left_out.values()),
        "attempts_too_small": len(acc.too_small),
        "epsilon_vs_public_abort_delta": abort_delta(events),
    }
    why_public = public_unbounded_reason(events, acc.delta) if math.isinf(public) else None
    if why_public is not None:
        out["epsilon_vs_public_reason"] = why_public
    if math.isinf(server):
        out["epsilon_vs_server_reason"] = unbounded_reason(events) or "no finite guarantee"
    guard = getattr(fed, "client_guard", None)
    if guard is not None and hasattr(guard, "report"):
        out.update(guard.report())
    return out
