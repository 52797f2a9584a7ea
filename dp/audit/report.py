"""Ledger audit: verify the chain, recompute epsilon from the records alone, flag disagreements.

Security:
    Assumption: the accountants in :mod:`dp.accountants` are correct upper
    bounds. Guarantee: a ledger that passes :func:`audit_ledger` has an intact
    hash chain (see :mod:`dp.ledger`) and every recorded cumulative epsilon equals,
    within :data:`AUDIT_RTOL` relative, what the recorded accountant gives for
    the recorded events; an epsilon that was under-reported (or over-reported)
    beyond that tolerance is listed in ``disagreements``. The recomputation uses nothing but
    the records, so a reader needs no access to the training run. Both views are
    audited: ``epsilon`` (against model users, amplified, capped by the server's)
    and ``epsilon_vs_server`` (per client, no amplification; :mod:`dp.adversary`),
    the latter recomputed from the survivor ids each record carries.
"""

from __future__ import annotations

import itertools
import math
import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dp.errors import AccountingError, ConfigurationError
from dp.events import RoundEvent
from dp.ledger import LedgerReport, TornTail, inspect_ledger

__all__ = ["AUDIT_RTOL", "DEFAULT_CHECKPOINTS", "AuditReport", "Disagreement", "RoundAudit", "audit_ledger"]

#: Relative tolerance between a recorded epsilon and its recomputation with the
#: same accountant (absorbs PLD discretisation differences between computing the
#: prefix alone and computing it inside the whole curve; see :func:`audit_ledger`).
AUDIT_RTOL = 1e-3
#: Absolute slack for epsilons near 0.
AUDIT_ATOL = 1e-9
#: PLD is recomputed exactly (as the writer did) at this many evenly spaced rounds,
#: always including the last; the RDP curve is recomputed at every round.
DEFAULT_CHECKPOINTS = 12


def _checkpoint_indices(n: int, k: int) -> list[int]:
    if k >= n:
        return list(range(n))
    return sorted({round(j * (n - 1) / (k - 1)) for j in range(k)} if k > 1 else {n - 1})

Curve = Callable[[Sequence[RoundEvent], float, str], list[float]]
Single = Callable[[Sequence[RoundEvent], float, str], float]


def _default_curve(events: Sequence[RoundEvent], delta: float, accountant: str) -> list[float]:
    from dp.accountants import epsilon_curve

    return epsilon_curve(events, delta, accountant=accountant)


def _default_single(events: Sequence[RoundEvent], delta: float, accountant: str) -> float:
    from dp.accountants import compute_epsilon

    return compute_epsilon(events, delta, accountant=accountant)


def _default_versions() -> dict[str, str]:
    from dp.accountants import ACCOUNTANT_VERSIONS

    return dict(ACCOUNTANT_VERSIONS)


@dataclass(frozen=True, slots=True)
class RoundAudit:
    """One round as audited.

    Attributes:
        round: round number.
        recorded: cumulative epsilon written in the ledger.
        cumulative: recomputed cumulative epsilon per accountant.
        increment: per-round epsilon: cumulative minus the previous cumulative, per accountant.
        survivors: survivors of the round.
        noise_multiplier: noise multiplier of the noise present.
        recorded_vs_server: cumulative epsilon against the server written in the ledger
            (None in records that predate it).
        vs_server: cumulative epsilon against the server recomputed (None without recomputation).
    """

    round: int
    recorded: float
    cumulative: dict[str, float]
    increment: dict[str, float]
    survivors: int
    noise_multiplier: float
    recorded_vs_server: float | None = None
    vs_server: float | None = None


@dataclass(frozen=True, slots=True)
class Disagreement:
    """A recorded epsilon that the records do not support.

    Attributes:
        round: the round.
        accountant: the accountant named in the record (the one recomputed), or
            ``"server"`` for the epsilon against the server.
        recorded: epsilon in the ledger.
        recomputed: epsilon from the events, same accountant, same delta.
        relative_error: (recorded - recomputed) / recomputed (negative: under-reported).
    """

    round: int
    accountant: str
    recorded: float
    recomputed: float
    relative_error: float


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Everything ``privagg audit`` reports about one ledger."""

    path: str
    verified: bool
    error: str | None
    first_bad_round: int | None
    ledger_id: str
    meta: dict[str, Any]
    rounds: int
    delta: float | None
    epsilon: float
    recomputed: dict[str, float | None]
    per_round: tuple[RoundAudit, ...]
    disagreements: tuple[Disagreement, ...]
    torn_tail: TornTail | None
    head_hash: str
    anchor_round: int | None
    accountant_notes: tuple[str, ...] = field(default_factory=tuple)
    rtol: float = AUDIT_RTOL
    epsilon_vs_server: float | None = None
    recomputed_vs_server: float | None = None
    vs_server_reason: str | None = None
    head_mismatch: bool = False

    @property
    def chain_verified(self) -> bool:
        """Every complete line verified (True also when only the given head was not found)."""
        return self.verified or self.head_mismatch
    @property
    def ok(self) -> bool:
        """Chain verified and every recorded epsilon agrees with its recomputation."""
        return self.verified and not self.disagreements

    @property
    def unpublished_rounds(self) -> tuple[int, ...]:
        """Rounds after the anchor: charged in the ledger, model update not published."""
        if self.anchor_round is None:
            return ()
        return tuple(r.round for r in self.per_round if r.round > self.anchor_round)

    def to_dict(self) -> dict[str, Any]:
        def num(x: float | None) -> float | str | None:
            if x is None:
                return None
            return "inf" if math.isinf(x) else x

        return {
            "path": self.path,
            "verified": self.verified,
            "chain_verified": self.chain_verified,
            "head_matches": None if self.anchor_round is None and not self.head_mismatch else not self.head_mismatch,
            "ok": self.ok,
            "error": self.error,
            "first_bad_round": self.first_bad_round,
            "ledger_id": self.ledger_id,
            "meta": self.meta,
            "rounds": self.rounds,
            "delta": self.delta,
            "epsilon": num(self.epsilon),
            "recomputed": {k: num(v) for k, v in self.recomputed.items()},
            "epsilon_vs_public": num(self.epsilon),
            "epsilon_vs_server": num(self.epsilon_vs_server),
            "epsilon_vs_server_recomputed": num(self.recomputed_vs_server),
            "epsilon_vs_server_reason": self.vs_server_reason,
            "rtol": self.rtol,
            "disagreements": [
                {"round": d.round, "accountant": d.accountant, "recorded": num(d.recorded),
                 "recomputed": num(d.recomputed), "relative_error": num(d.relative_error)}
                for d in self.disagreements
            ],
            "per_round": [
                {"round": r.round, "recorded": num(r.recorded),
                 "cumulative": {k: num(v) for k, v in r.cumulative.items()},
                 "increment": {k: num(v) for k, v in r.increment.items()},
                 "survivors": r.survivors, "noise_multiplier": r.noise_multiplier,
                 "recorded_vs_server": num(r.recorded_vs_server), "vs_server": num(r.vs_server)}
                for r in self.per_round
            ],
            "torn_tail": None if self.torn_tail is None else {
                "offset": self.torn_tail.offset, "length": self.torn_tail.length,
                "line": self.torn_tail.line, "round": self.torn_tail.round},
            "head_hash": self.head_hash,
            "anchor_round": self.anchor_round,
            "unpublished_rounds": list(self.unpublished_rounds),
            "accountant_notes": list(self.accountant_notes),
        }


def _close(a: float, b: float, rtol: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rtol * max(abs(a), abs(b)) + AUDIT_ATOL


def audit_ledger(
    path: str | os.PathLike[str],
    *,
    accountants: Sequence[str] = ("pld", "rdp"),
    expected_head: str | None = None,
    recompute: bool = True,
    rtol: float = AUDIT_RTOL,
    checkpoints: int | None = DEFAULT_CHECKPOINTS,
    curve: Curve | None = None,
    single: Single | None = None,
    versions: dict[str, str] | None = None,
) -> AuditReport:
    """Verify ``path`` and recompute its epsilons.

    The verified prefix of the chain is audited even when a later line is bad
    (``verified`` is then False and ``first_bad_round`` names the line). The RDP
    accountant's cumulative curve is recomputed at every round (vectorised). The
    PLD accountant is recomputed exactly as a writer does (``compute_epsilon`` on
    the prefix) at ``checkpoints`` evenly spaced rounds including the last, or at
    every round when ``checkpoints`` is None (slow: one PLD composition per round).
    A recorded epsilon is compared with the recomputation of the accountant named
    in its record wherever that recomputation exists; a difference beyond ``rtol``
    (relative) is listed in ``disagreements``. ``increment`` (the per-round
    epsilon) is given for every round where consecutive cumulatives exist.

    Args:
        path: the ledger.
        accountants: accountants to recompute with ("pld", "rdp").
        expected_head: a head hash kept outside the ledger (the published model's).
        recompute: False to only verify the chain (fast).
        rtol: relative tolerance (documented default :data:`AUDIT_RTOL`).
        checkpoints: how many rounds PLD is recomputed at (None: every round).
        curve, single, versions: injectable accountant functions (tests).

    Raises:
        LedgerError: the file cannot be read.
        ConfigurationError: rtol not in (0, 1), checkpoints < 1, or an unknown accountant.
    """
    if not 0.0 < rtol < 1.0:
        raise ConfigurationError(f"rtol must be in (0, 1), got {rtol}")
    if checkpoints is not None and checkpoints < 1:
        raise ConfigurationError(f"checkpoints must be >= 1 (or None for every round), "
                                 f"got {checkpoints}")
    for a in accountants:
        if a not in ("pld", "rdp"):
            raise ConfigurationError(f"accountant must be 'pld' or 'rdp', got {a!r}")
    rep: LedgerReport = inspect_ledger(path, expected_head=expected_head)
    curve_fn = curve or _default_curve
    single_fn = single or _default_single
    events = rep.events
    delta = rep.delta
    n = len(events)
    recomputed: dict[str, float | None] = {}
    cums: dict[str, dict[int, float]] = {}  # accountant -> record index -> cumulative epsilon
    notes: list[str] = []
    disagreements: list[Disagreement] = []
    server: list[float] = []
    reason: str | None = None
    wanted = list(dict.fromkeys([*accountants, *(r.accountant for r in rep.records
                                                 if r.accountant in ("pld", "rdp"))]))
    if recompute and n and delta is not None:
        from dp.adversary import epsilon_vs_server_curve, unbounded_reason

        try:
            server = epsilon_vs_server_curve(events, delta)
            reason = unbounded_reason(events)
        except AccountingError as exc:
            notes.append(f"server: cannot account these events: {exc}")
        vers = versions if versions is not None else _default_versions()
        for a in wanted:
            try:
                if a == "rdp" or checkpoints is None:
                    cums[a] = dict(enumerate(curve_fn(events, delta, a)))
                else:
                    idx = _checkpoint_indices(n, checkpoints)
                    cums[a] = {i: single_fn(events[: i + 1], delta, a) for i in idx}
                recomputed[a] = cums[a][n - 1]
            except AccountingError as exc:
                recomputed[a] = None
                notes.append(f"{a}: cannot account these events: {exc}")
        for name, ver in sorted({(r.accountant, r.accountant_version) for r in rep.records}):
            if name in vers and ver and ver != vers[name]:
                notes.append(f"records were written with {name} '{ver}'; recomputed with "
                             f"'{vers[name]}'")
            if name not in ("pld", "rdp"):
                notes.append(f"records name an unknown accountant {name!r}; not compared")
        from dp.accountants import abort_rule_unrecorded
        from dp.adversary import uncapped_round

        legacy = [e.round for e in events if abort_rule_unrecorded(e)]
        if legacy:
            notes.append(
                f"{len(legacy)} Poisson round(s) (first: round {legacy[0]}) do not record their abort rule "
                "(min_survivors; ledgers written before it was recorded): their epsilon against model users "
                "was computed without the abort term and is not a valid bound if the round aborted and "
                "redrew on too few survivors; rely on epsilon_vs_server for them"
            )
        capped = list(itertools.accumulate((not uncapped_round(e) for e in events), operator.and_))
        for i, rec in enumerate(rep.records):
            # Records that carry epsilon_vs_server state epsilon against model users capped by
            # it where the relations agree (a model user sees nothing the server does not; not
            # once a round's participation hides behind an abort rule, dp.adversary.capped_by_server);
            # older records do not.
            cap = server[i] if (server and rec.epsilon_vs_server is not None and capped[i]) else math.inf
            if server and rec.epsilon_vs_server is not None and not _close(rec.epsilon_vs_server, server[i], rtol):
                s_rel = ((rec.epsilon_vs_server - server[i]) / server[i]
                         if server[i] not in (0.0, math.inf) else math.inf)
                disagreements.append(Disagreement(rec.round, "server", rec.epsilon_vs_server, server[i], s_rel))
            name = rec.accountant
            got = cums.get(name, {}).get(i)
            if got is not None:
                got = min(got, cap)
            if got is None or _close(rec.epsilon, got, rtol):
                continue
            exact = got if name != "rdp" else min(single_fn(events[: i + 1], delta, name), cap)
            if _close(rec.epsilon, exact, rtol):
                continue
            rel = (rec.epsilon - exact) / exact if exact not in (0.0, math.inf) else math.inf
            disagreements.append(Disagreement(rec.round, name, rec.epsilon, exact, rel))
    per_round: list[RoundAudit] = []
    prev: dict[str, float] = {}
    for i, rec in enumerate(rep.records):
        cum = {a: c[i] for a, c in cums.items() if i in c and a in accountants}
        inc = {a: (v - prev.get(a, 0.0)) if not math.isinf(v) else math.inf
               for a, v in cum.items() if a == "rdp" or checkpoints is None}
        prev.update(cum)
        per_round.append(RoundAudit(rec.round, rec.epsilon, cum, inc, rec.event.survivors,
                                    rec.event.noise_multiplier, rec.epsilon_vs_server,
                                    server[i] if server else None))
    recomputed = {a: v for a, v in recomputed.items() if a in accountants}
    return AuditReport(
        path=str(path), verified=rep.verified, error=rep.error, first_bad_round=rep.first_bad_round,
        ledger_id=rep.ledger_id, meta=rep.meta, rounds=rep.rounds, delta=delta,
        epsilon=rep.epsilon, recomputed=recomputed, per_round=tuple(per_round),
        disagreements=tuple(disagreements), torn_tail=rep.torn_tail, head_hash=rep.head_hash,
        anchor_round=rep.anchor_round, accountant_notes=tuple(notes), rtol=rtol,
        epsilon_vs_server=rep.records[-1].epsilon_vs_server if rep.records else None,
        recomputed_vs_server=server[-1] if server else None, vs_server_reason=reason,
        head_mismatch=rep.head_mismatch,
    )
