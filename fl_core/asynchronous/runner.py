"""Build and execute an asynchronous run from a :class:`~fl_core.config.RunConfig` and :class:`AsyncOptions`."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

from fl_core.accounting import epsilon_report
from fl_core.asynchronous.loop import AsyncFederation, BufferResult, client_limit
from fl_core.asynchronous.options import AsyncOptions, session_floor
from fl_core.backends import BackendRequest, build_secure_sum
from fl_core.config import RunConfig
from fl_core.data import FederatedData
from fl_core.errors import ConfigError
from fl_core.runner import RunSummary, build_federation, remove_if_header_only

__all__ = ["async_summary_fields", "build_async_federation", "execute_async", "with_session_floor"]


def build_async_federation(
    cfg: RunConfig, options: AsyncOptions, data: FederatedData | None = None, *, open_ledger: bool = True
) -> tuple[AsyncFederation, FederatedData | None, dict[str, Any]]:
    """Everything an asynchronous run needs, built from ``cfg`` and ``options`` (nothing runs yet).

    The federation is built as a synchronous one with fixed cohorts of K (so the encoding,
    the DP noise and the secure sum are sized for one buffer) and the DP minimum survivors
    allowing for ``options.dropout``; the secure sum is then rebuilt so that its clients
    refuse to help unmask fewer than the session floor (never one update alone).

    Raises:
        ConfigError: impossible settings, before any data is touched by training.
    """
    if options.buffer > cfg.clients:
        raise ConfigError(f"--buffer {options.buffer} exceeds the {cfg.clients} clients", option="buffer")
    if options.concurrency > cfg.clients:
        raise ConfigError(
            f"--concurrency {options.concurrency} exceeds the {cfg.clients} clients", option="concurrency"
        )
    # The run's privacy options apply here too: the participation cap and each client's own limit.
    if options.max_contributions is None and cfg.max_participation is not None:
        options = dataclasses.replace(options, max_contributions=cfg.max_participation)
    if options.client_max_epsilon is None and cfg.client_max_epsilon is not None:
        options = dataclasses.replace(options, client_max_epsilon=cfg.client_max_epsilon)
    sync_cfg = cfg.replace(per_round=options.buffer, sampling_rate=None, dropout=options.dropout)
    fed, data, extra = build_federation(sync_cfg, data, open_ledger=open_ledger)
    # The asynchronous clients keep their own records (fl_core.asynchronous.client); the synchronous
    # round's client guard is never consulted here, so it must not appear in the summary either.
    fed.client_guard = None
    try:
        with_session_floor(fed, cfg, options.buffer)
        afed = AsyncFederation(fed, options)
    except BaseException:
        fed.close()
        ledger = fed.accounting.ledger
        if ledger is not None and extra.get("_ledger_created"):
            remove_if_header_only(ledger.path)  # refused before any round: leave nothing behind
        raise
    return afed, data, extra


def with_session_floor(fed: Any, cfg: RunConfig, buffer: int) -> int:
    """Give ``fed``'s masking clients the session floor as their ``min_survivors``; returns the floor.

    The secure sum is rebuilt (same ring, dimension and graph) when its clients would help
    unmask fewer inputs than the floor: never one update alone, never fewer than the DP
    minimum survivors.
    """
    floor = session_floor(fed.secure_sum, buffer, fed.privacy.min_survivors)
    if int(getattr(fed.secure_sum, "min_survivors", 1) or 1) < floor and cfg.secure_sum != "plain":
        fed.secure_sum = build_secure_sum(
            cfg.secure_sum,
            BackendRequest(
                ring=fed.plan.ring,
                dim=fed.plan.dim,
                max_clients=buffer,
                rng=fed.rng.spawn("secure-sum-setup/async"),
                options={"graph": cfg.graph, "min_survivors": floor},
            ),
        )
    return floor


def execute_async(
    cfg: RunConfig,
    options: AsyncOptions,
    *,
    on_buffer: Callable[[BufferResult], None] | None = None,
    data: FederatedData | None = None,
) -> RunSummary:
    """Run ``cfg.rounds`` buffers asynchronously; the summary's JSON adds the asynchronous fields."""
    afed, data, extra = build_async_federation(cfg, options, data)
    extra = {k: v for k, v in extra.items() if k not in ("_ledger_created",)}
    t0 = time.perf_counter()
    stop_reason = None
    from dp.errors import BudgetExceededError

    try:
        for res in afed.buffers(cfg.rounds):
            if on_buffer is not None:
                on_buffer(res)
    except BudgetExceededError as exc:
        stop_reason = str(exc)
    finally:
        afed.fed.close()
    extra.pop("_record_dp", None)
    if stop_reason is None and afed.stop_reason is not None:
        stop_reason = afed.stop_reason
    if stop_reason is not None:
        extra["stopped"] = stop_reason
    extra.update(async_summary_fields(afed))
    fed = afed.fed
    sampling = {"scheme": "async-arrivals", "rate": 1.0, "population": fed.sampler.population}
    return RunSummary(
        cfg,
        [b.round for b in afed.history],
        time.perf_counter() - t0,
        fed.dim,
        extra,
        sizes=list(data.client_sizes) if data is not None else [],
        sampling=sampling,
    )


def async_summary_fields(afed: AsyncFederation) -> dict[str, Any]:
    """The asynchronous fields of a run's JSON (simulated time, staleness, epsilon against the server, counters)."""
    o = afed.options
    hist = afed.history
    stal = [s for b in hist for s in b.staleness]
    fed = afed.fed
    out: dict[str, Any] = {
        "mode": "async",
        "buffer": o.buffer,
        "concurrency": o.concurrency,
        "max_staleness": o.max_staleness,
        "staleness_weighting": o.staleness.describe(),
        "max_contributions": o.max_contributions,
        "session_floor": afed.floor,
        "simulated_time_s": round(afed.now if not hist else hist[-1].sim_time_s, 3),
        "per_round_simulated_time_s": [round(b.sim_time_s, 3) for b in hist],
        "staleness_mean": (sum(stal) / len(stal)) if stal else None,
        "staleness_max": max(stal) if stal else None,
        "speed": o.speed.describe(),
        "async_stats": afed.stats.to_dict(),
    }
    if fed.privacy.delta is not None and fed.privacy.mode != "none":
        # The same fields as a synchronous run: epsilon (the enforced one, by default against the
        # server: the largest over clients of the buffers each joined), epsilon_enforced_on,
        # epsilon_vs_server (None when unbounded, with epsilon_vs_server_reason), epsilon_vs_public.
        out.update(epsilon_report(fed))
        # ... and the clients' own books (each AsyncClient's record), named as ClientGuard.report names them.
        own = afed.client_epsilons()
        own_max = max(own.values(), default=0.0)
        limit = client_limit(o, fed.privacy.mode)
        out["client_max_epsilon"] = None if math.isinf(limit) else limit
        out["client_epsilon_max"] = None if math.isinf(own_max) else own_max
        out["clients_charged"] = len(own)
        out["client_refusals"] = int(afed.stats.refused_by_client.get("budget", 0))
        counts: dict[int, int] = {}
        for b in hist:
            for c in b.survivors:
                counts[c] = counts.get(c, 0) + 1
        out["contributions_max"] = max(counts.values(), default=0)
    return out
