"""Record-level DP on Flower: a node's Opacus accountant survives the ClientApp process of each round.

Flower runs every message in a fresh ClientApp process, so the node's
:class:`~fl_core.record_dp.RecordDP` (one Opacus accountant per client, composed over the
rounds it trains in) would start empty every round and under-report. The node keeps its
client's accountant history and its count of DP-SGD trainings in ``context.state``
(:class:`RecordState`), restores them into the freshly built ``RecordDP`` before training
and saves them after, and reports its record-level epsilon in the round's reply. The server
gathers the latest report of each client into the run summary (max and median, as
``privagg run`` prints them).

Security:
    The record-level epsilon is each node's own account of its own DP-SGD, computed by
    Opacus on the node; the server reports what the nodes claim and cannot check it (the
    client-level epsilon in the server's ledger does not depend on these reports).
    The history lives in the SuperNode's memory: a SuperNode that restarts starts a new
    accountant (under-reporting from then on), like any Flower node state. Tests:
    tests/integration/test_flower_record.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RECORD_EPSILON", "RECORD_STEPS", "RecordState", "capture", "restore", "summarize"]

RECORD_EPSILON = "record_epsilon"
RECORD_STEPS = "record_steps"
_STATE = "privagg.record_dp"


@dataclass(frozen=True, slots=True)
class RecordState:
    """One client's record-DP accountant: its history (noise multiplier, sample rate, steps) and trainings."""

    client: int
    calls: int
    history: tuple[tuple[float, float, int], ...]

    def to_record(self) -> Any:
        from flwr.app import ConfigRecord

        return ConfigRecord(
            {
                "client": self.client,
                "calls": self.calls,
                "h_noise": [float(h[0]) for h in self.history],
                "h_rate": [float(h[1]) for h in self.history],
                "h_steps": [int(h[2]) for h in self.history],
            }
        )

    @classmethod
    def from_record(cls, rec: Any) -> RecordState:
        hist = tuple(
            (float(z), float(q), int(n)) for z, q, n in zip(rec["h_noise"], rec["h_rate"], rec["h_steps"], strict=True)
        )
        return cls(int(rec["client"]), int(rec["calls"]), hist)


def restore(record_dp: Any, client: int, state: RecordState | None) -> None:
    """Put ``client``'s kept accountant into a freshly built ``RecordDP`` (nothing to do before its first round).

    The accountant is keyed by the client id, as the runner keys it, so the labels Opacus'
    generators are seeded from continue exactly as in one long-lived process.
    """
    if state is None or state.client != client:
        return
    record_dp.restore_client(client, state.calls, state.history)


def capture(record_dp: Any, client: int) -> tuple[RecordState, dict[str, Any]]:
    """``client``'s accountant after training, and the reply fields reporting its record-level epsilon."""
    calls, history = record_dp.client_state(client)
    state = RecordState(client, calls, history)
    fields = {RECORD_EPSILON: float(record_dp.epsilon(client)), RECORD_STEPS: int(record_dp.steps(client))}
    return state, fields


def load_state(context: Any) -> RecordState | None:
    rec = context.state.config_records.get(_STATE)
    return RecordState.from_record(rec) if rec is not None else None


def save_state(context: Any, state: RecordState | None) -> None:
    if state is None:
        context.state.config_records.pop(_STATE, None)
    else:
        context.state.config_records[_STATE] = state.to_record()


def summarize(record_dp: Any, reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The run summary's ``record_level`` entry from each client's latest report (as ``privagg run`` gives it)."""
    rep: dict[str, Any] = dict(record_dp.report()["record_level"])
    rep.pop("per_client", None)
    eps = {c: float(r[RECORD_EPSILON]) for c, r in sorted(reports.items())}
    per = sorted(eps.values())
    rep["epsilon_max"] = max(per, default=0.0)
    rep["epsilon_median"] = per[len(per) // 2] if per else 0.0
    rep["clients_trained"] = len(per)
    rep["per_client"] = {
        str(c): {"epsilon": eps[c], "steps": int(reports[c].get(RECORD_STEPS, 0))} for c in sorted(reports)
    }
    rep["source"] = "reported by each node (Opacus accountant kept in the SuperNode's state)"
    return rep
