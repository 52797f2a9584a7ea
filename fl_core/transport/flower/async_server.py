"""The ServerApp side of asynchronous training on Flower: take reports as they arrive, one session per buffer.

The server keeps up to C SuperNodes training at once: each gets an ``async-train``
message with the current model and its version (:mod:`fl_core.transport.flower.async_node`).
Flower's message API lets the server pull replies as they arrive, so a fast node's report
fills the open buffer while slow nodes are still training. Once K reports are in, the
buffer's members form one secure-sum session, run with the synchronous round driver
(:class:`~fl_core.transport.flower.server.FlowerRoundDriver`; its opening carries the
buffer's base version instead of asking the nodes to train), and the buffer is applied
by the federation's ``finish_round``: decoded, divided by K, stepped, charged to the
ledger as one round at q = 1 and published as the next version. Members of a sealed
buffer keep their place in the concurrency until its session ends; a member that does not
answer a stage in time is a dropout of that session (handled by the protocol).

Security:
    As in :mod:`fl_core.asynchronous` (SECURITY.md, asynchronous secure aggregation): one
    session per buffer, the clients weight their own clipped updates and never send an
    update twice, the session never releases below its floor, the ledger charges each
    buffer without amplification to its survivors. Reports older than ``max-staleness``
    are refused by the server (counted). Paillier is not offered here yet: refused.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fl_core.config import RunConfig
from fl_core.errors import ConfigError, RoundFailedError
from fl_core.transport.flower.async_node import ASYNC_BASE_FIELD, ASYNC_TRAIN_STAGE, VERSION_FIELD
from fl_core.transport.flower.codec import (
    ERROR_FIELD,
    MESSAGE_TYPE,
    FlowerCodecError,
    StagePacket,
    decode_packet,
    encode_packet,
    vector_to_bytes,
)
from fl_core.transport.flower.options import FlowerOptions, config_to_json

__all__ = ["run_privagg_async"]

log = logging.getLogger("privagg.flower.async")


def run_privagg_async(
    grid: Any,
    cfg: RunConfig,
    options: FlowerOptions,
    *,
    task: Any = None,
    on_round: Callable[[Any, Any], None] | None = None,
    on_start: Callable[[Any], None] | None = None,
) -> Any:
    """Apply ``cfg.rounds`` buffers with the clients on the grid's SuperNodes; returns the run report.

    The asynchronous options come from ``cfg`` (``buffer``, ``concurrency``, ``max_staleness``,
    ``staleness``; :func:`fl_core.asynchronous.command.options_from_config`).

    Raises:
        ConfigError: impossible asynchronous settings, or the Paillier backend.
        NodeUnavailableError: not every client's SuperNode is connected.
    """
    from dp.errors import BudgetExceededError
    from fl_core.asynchronous.command import options_from_config
    from fl_core.asynchronous.loop import AsyncStats
    from fl_core.asynchronous.options import check_feasible
    from fl_core.asynchronous.runner import with_session_floor
    from fl_core.federation import RoundStart
    from fl_core.runner import build_federation
    from fl_core.sampling import Cohort, SamplingScheme
    from fl_core.transport.flower.server import (
        FlowerRoundDriver,
        GridLink,
        RunReport,
        _append,
        _pause_hook,
        discover_nodes,
        write_report,
    )

    if cfg.secure_sum == "paillier":
        raise ConfigError("asynchronous training on Flower runs with masking (or plain) for now", option="secure_sum")
    aopts = options_from_config(cfg)
    k, c_max = aopts.buffer, aopts.concurrency
    if c_max > cfg.clients:
        raise ConfigError(f"--concurrency {c_max} exceeds the {cfg.clients} clients", option="concurrency")
    run_cfg = cfg.replace(per_round=k, sampling_rate=None)
    out_dir = Path(options.output_dir) if options.output_dir else None
    progress = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        progress = out_dir / "progress.jsonl"
    fed, _data, extra = build_federation(run_cfg, task, role="server")
    fed.client_guard = None  # each client's own record and limit live on its node, not here
    stats = AsyncStats()
    results: list[Any] = []
    traces: list[Any] = []
    totals: dict[int, np.ndarray] = {}
    stopped: str | None = None
    try:
        with_session_floor(fed, run_cfg, k)
        check_feasible(
            aopts, population=cfg.clients, secure_sum=fed.secure_sum, min_survivors=fed.privacy.min_survivors
        )
        link = GridLink(grid, poll_interval=options.poll_interval)
        config_json = config_to_json(run_cfg)
        nodes = discover_nodes(link, cfg.clients, timeout=options.connect_timeout, config_json=config_json)
        if progress is not None:
            _append(progress, {"event": "nodes", "nodes": {str(c): n for c, n in nodes.items()}})
        if on_start is not None:
            on_start(fed)
        driver = FlowerRoundDriver(
            link, nodes, dataclasses.replace(options, advertise_ahead=False), on_stage=_pause_hook(options, progress)
        )
        select = fed.rng.spawn("async/select")
        training: dict[str, tuple[int, int, float]] = {}  # message id -> (client, version, sent at)
        waiting: list[int] = []  # reported, in the open buffer
        gone: set[int] = set()  # nodes that failed or timed out: never asked again
        last_progress = time.monotonic()
        while len(results) < cfg.rounds:
            busy = {c for c, _, _ in training.values()} | set(waiting)
            while len(training) + len(waiting) < c_max:
                idle = [c for c in sorted(nodes) if c not in busy and c not in gone]
                if not idle:
                    break
                c = idle[select.randbelow(len(idle))]
                mid = _send_train(link, nodes[c], c, fed, fed.round, config_json, options)
                if mid is None:
                    gone.add(c)
                    continue
                training[mid] = (c, fed.round, time.monotonic())
                busy.add(c)
                stats.check_ins += 1
            for rep in grid.pull_messages(list(training)) if training else []:
                mid = rep.metadata.reply_to_message_id
                if mid not in training:
                    continue
                c, version, _ = training.pop(mid)
                reason = _refusal(rep)
                if reason is not None:
                    log.warning("client %d did not train: %s", c, reason)
                    stats.refused_by_client["train"] += 1
                    gone.add(c)
                    continue
                stats.reports += 1
                staleness = fed.round - version
                if aopts.max_staleness is not None and staleness > aopts.max_staleness:
                    stats.refused_by_server["stale"] += 1
                    continue
                waiting.append(c)
                last_progress = time.monotonic()
            now = time.monotonic()
            for mid, (c, _, sent) in list(training.items()):
                if now - sent > options.train_timeout:
                    log.warning("client %d did not report within %.0f s: left out", c, options.train_timeout)
                    training.pop(mid)
                    gone.add(c)
            if len(waiting) >= k:
                members, waiting = tuple(sorted(waiting[:k])), waiting[k:]
                r = fed.round + 1
                start = RoundStart(
                    r, Cohort(members, SamplingScheme.FULL, 1.0, cfg.clients), attempt=fed.attempts.get(r, 0)
                )
                try:
                    _check_budget(fed, start)
                except BudgetExceededError as exc:
                    stopped = str(exc)
                    break
                stats.sessions += 1
                t0 = time.perf_counter()
                global_vec = fed.codec.flatten(fed.model)
                driver.opening_fields = {ASYNC_BASE_FIELD: fed.round}
                outcome, clipped, saturated, trace = driver.run(fed, start, global_vec, config_json)
                try:
                    res = fed.finish_round(start, outcome, global_vec, clipped=clipped, saturated=saturated, t0=t0)
                except RoundFailedError as exc:
                    log.warning("buffer %d released nothing: %s", r, exc)
                    stats.aborted_sessions += 1
                    continue
                stats.applied_buffers += 1
                stats.applied_updates += len(res.survivors)
                if outcome.total is not None:
                    totals[res.round] = np.asarray(outcome.total).copy()
                results.append(res)
                traces.append(trace)
                last_progress = time.monotonic()
                if progress is not None:
                    _append(progress, {"event": "round", "round": res.round, "survivors": list(res.survivors)})
                if on_round is not None:
                    on_round(res, fed)
                continue
            if not training and len(waiting) < k and all(c in gone or c in waiting for c in nodes):
                stopped = f"no node left to fill a buffer of {k} ({len(waiting)} waiting, {len(gone)} gone)"
                break
            if time.monotonic() - last_progress > options.train_timeout:
                stopped = f"no report for {options.train_timeout:.0f} s"
                break
            time.sleep(options.poll_interval)
    finally:
        fed.close()
    from fl_core.accounting import epsilon_report

    summary = {"schedule": "async", "buffer": k, "concurrency": c_max, "async_stats": stats.to_dict()}
    summary.update(epsilon_report(fed))  # epsilon per adversary, as privagg run --json reports it
    report = RunReport(
        run_cfg,
        results,
        traces,
        fed.codec.flatten(fed.model),
        totals,
        stopped=stopped,
        ledger=extra.get("ledger"),
        extra=summary,
        model=fed.model,
    )
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def _check_budget(fed: Any, start: Any) -> None:
    acc = fed.accounting
    if acc.budget is None:
        return
    planned = fed.privacy.round_event(
        round=start.round, cohort=start.cohort, survivors=len(start.cohort.members), scale=fed.plan.scale,
        dim=fed.dim, planned=True,
    )
    if planned is not None:
        acc.budget.check(acc.events, planned)


def _send_train(link: Any, node: int, client: int, fed: Any, version: int, config_json: str,
                options: FlowerOptions) -> str | None:
    """Push one ``async-train`` message; returns its message id (None if the SuperLink refused it)."""
    from flwr.app import Message as FlowerMessage

    packet = StagePacket(
        version,
        ASYNC_TRAIN_STAGE,
        (),
        {
            "config": config_json,
            "client": client,
            "global": vector_to_bytes(np.asarray(fed.codec.flatten(fed.model), dtype=np.float32)),
            "dim": fed.dim,
            VERSION_FIELD: version,
        },
    )
    msg = FlowerMessage(
        encode_packet(packet), dst_node_id=node, message_type=MESSAGE_TYPE, group_id="async-train",
        ttl=options.train_timeout + 60.0,
    )
    ids = [i for i in link.grid.push_messages([msg]) if i]
    return ids[0] if ids else None


def _refusal(rep: Any) -> str | None:
    """Why a node's reply to ``async-train`` is not a report (None: it trained)."""
    if rep.has_error():
        return str(rep.error.reason)
    try:
        packet = decode_packet(rep.content, stage=ASYNC_TRAIN_STAGE)
    except FlowerCodecError as exc:
        return str(exc)
    if ERROR_FIELD in packet.fields:
        return str(packet.fields[ERROR_FIELD])
    return None
