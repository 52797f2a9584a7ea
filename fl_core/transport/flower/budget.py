"""A node's own privacy budget: its hash-chained record of the rounds it joined, and the limit it enforces.

A node keeps a :class:`dp.client_record.ClientRecord` (in its Flower state, or in the
file its node config names) and refuses a round that would take its epsilon against
the server past its own limit, before it trains: it is then a dropout for that round
and the round goes on without it. It charges the round once its input is ready and
before anything derived from it leaves (the reply that carries the masked or encrypted
input, or, without key setup ahead, the round's opening reply: conservative).

Node config keys (docs/flower.md, "Node configuration"):

* ``max-epsilon``: the limit on the node's epsilon against the server, at
  ``privacy-delta``. Default :data:`dp.client_record.DEFAULT_CLIENT_MAX_EPSILON` (10)
  for distributed and local DP; without the key, central-mode and non-DP runs are not
  limited (the server sees the update un-noised, no epsilon is claimed). With the key,
  such runs are refused (their epsilon against the server is infinite).
* ``privacy-record``: a file for the record (created if missing, verified when loaded,
  appended and fsync'd per charge), so the budget survives a SuperNode restart; without
  it the record lives in the SuperNode's memory (``context.state``).
* ``privacy-delta``: the delta the node states its epsilon at (default 1e-5); the
  server's delta is not used.

Security:
    Every number charged is the node's own: its DP configuration after its policy floor
    (:mod:`fl_core.transport.flower.policy`: noise multiplier, min survivors, colluders,
    mechanism), the clip it enforces, and its own encoding scale and dimension; the round
    is charged with no amplification by sampling (the server picks the cohort). A node
    restarted without ``privacy-record`` forgets its record (documented limit).
    Tests: tests/integration/test_flower_budget.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fl_core.errors import ConfigError
from fl_core.transport.flower.policy import NodePolicyError

__all__ = [
    "MAX_EPSILON",
    "PRIVACY_DELTA",
    "PRIVACY_RECORD",
    "NodeBudget",
    "load_record",
    "node_budget",
    "node_limit",
]

MAX_EPSILON = "max-epsilon"
PRIVACY_RECORD = "privacy-record"
PRIVACY_DELTA = "privacy-delta"


def node_limit(node_config: Any, dp_mode: str) -> tuple[float, bool]:
    """(limit, explicit): the node's ``max-epsilon``, or the default for ``dp_mode``.

    Raises:
        ConfigError: ``max-epsilon`` is not a number > 0 (``inf``: no limit).
    """
    from dp.client_record import DEFAULT_CLIENT_MAX_EPSILON

    value = (node_config or {}).get(MAX_EPSILON)
    if value is None:
        return (DEFAULT_CLIENT_MAX_EPSILON if dp_mode in ("distributed", "local") else math.inf), False
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf, True
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not value > 0:
        raise ConfigError(f"{MAX_EPSILON} must be a number > 0 (inf: no limit), got {value!r}", option=MAX_EPSILON)
    return float(value), True


def _delta(node_config: Any) -> float:
    from dp.client_record import DEFAULT_CLIENT_DELTA

    value = (node_config or {}).get(PRIVACY_DELTA, DEFAULT_CLIENT_DELTA)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{PRIVACY_DELTA} must be a number in (0, 1), got {value!r}", option=PRIVACY_DELTA)
    return float(value)


def load_record(node_config: Any, client: int, kept: bytes | None) -> Any:
    """The node's record: from its ``privacy-record`` file, else from its Flower state, else a new one.

    Raises:
        ConfigError: a malformed ``privacy-delta``.
        dp.errors.LedgerError: the record does not verify, or belongs to another client or delta.
    """
    from dp.client_record import ClientRecord

    delta = _delta(node_config)
    path = (node_config or {}).get(PRIVACY_RECORD)
    if path:
        return ClientRecord.open(str(path), client=str(client), delta=delta)
    if kept:
        return ClientRecord.from_bytes(kept, client=str(client), delta=delta)
    return ClientRecord.create(str(client), delta=delta)


@dataclass
class NodeBudget:
    """The client guard of a node's federation (``Federation.client_guard``): check before training, charge after.

    ``event_for(round)`` is the round as this node charges it (None without DP: nothing to
    charge); ``on_charge(record)`` keeps the record as soon as a round is charged.
    """

    record: Any
    max_epsilon: float
    event_for: Callable[[int], Any]
    on_charge: Callable[[Any], None] | None = None

    def check(self, client: int, round_id: int) -> None:
        """Raises ``dp.errors.ClientBudgetExceededError`` when the round would pass the limit (nothing is charged)."""
        event = self.event_for(round_id)
        if event is not None:
            self.record.check(event, max_epsilon=self.max_epsilon)

    def charge(self, client: int, round_id: int) -> None:
        """Append the round to the record (and keep it) before anything derived from the input leaves."""
        event = self.event_for(round_id)
        if event is None:
            return
        self.record.charge(event, max_epsilon=self.max_epsilon)
        if self.on_charge is not None:
            self.on_charge(self.record)


def node_budget(
    fed: Any,
    node_config: Any,
    client: int,
    kept: bytes | None,
    *,
    on_charge: Callable[[Any], None] | None = None,
) -> NodeBudget:
    """The budget guard of a node whose federation ``fed`` was built from the checked configuration.

    Raises:
        NodePolicyError: the node sets ``max-epsilon`` and the run has no DP (its update
            would leave it un-noised).
        ConfigError, dp.errors.LedgerError: see :func:`node_limit` and :func:`load_record`.
    """
    from dp.client_record import client_round_event

    policy = fed.privacy
    limit, explicit = node_limit(node_config, policy.mode)
    if policy.mode == "none" and explicit and math.isfinite(limit):
        raise NodePolicyError(
            f"this node keeps a privacy limit ({MAX_EPSILON}={limit}); a run without DP would send its update "
            "un-noised: refused"
        )
    record = load_record(node_config, client, kept)

    def event_for(round_id: int) -> Any:
        if policy.mode == "none":
            return None
        return client_round_event(
            policy.config,
            round=round_id,
            dim=int(fed.plan.dim),
            scale=float(fed.plan.scale) if policy.mode == "distributed" else None,
            clip_norm=float(policy.clip_norm),
        )

    return NodeBudget(record, limit, event_for, on_charge)
