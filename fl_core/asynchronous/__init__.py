"""Buffered asynchronous federated learning (FedBuff-style) with secure aggregation and DP, on a simulated clock.

Clients train at their own pace on the version they fetched; each buffer of K reports is
one secure-sum session (masking or Paillier, no trusted hardware) and one ledger round.
"""

from __future__ import annotations

from fl_core.asynchronous.client import AsyncClient, ClientRules, HeldUpdate
from fl_core.asynchronous.errors import ClientRefusal, DoubleApplyError
from fl_core.asynchronous.loop import AsyncFederation, AsyncStats, BufferResult
from fl_core.asynchronous.options import AsyncOptions, check_feasible, session_floor
from fl_core.asynchronous.runner import async_summary_fields, build_async_federation, execute_async
from fl_core.asynchronous.session import BufferOutcome, run_buffer_session
from fl_core.asynchronous.speeds import SpeedModel
from fl_core.asynchronous.staleness import StalenessWeight, parse_staleness
from fl_core.asynchronous.weighting import StalenessWeighted

__all__ = [
    "AsyncClient",
    "AsyncFederation",
    "AsyncOptions",
    "AsyncStats",
    "BufferOutcome",
    "BufferResult",
    "ClientRefusal",
    "ClientRules",
    "DoubleApplyError",
    "HeldUpdate",
    "SpeedModel",
    "StalenessWeight",
    "StalenessWeighted",
    "async_summary_fields",
    "build_async_federation",
    "check_feasible",
    "execute_async",
    "parse_staleness",
    "run_buffer_session",
    "session_floor",
]
