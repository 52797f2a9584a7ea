"""The asynchronous side of ``privagg run``: options from the run configuration, the run, its output.

``privagg run --mode async`` calls :func:`execute_async_command`; a synchronous run adds
:func:`sync_simulated_time` to its JSON so both modes report simulated time on one clock.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from fl_core.asynchronous.options import AsyncOptions
from fl_core.asynchronous.speeds import SpeedModel, parse_speed
from fl_core.asynchronous.staleness import parse_staleness
from fl_core.asynchronous.sync_clock import SyncClock
from fl_core.errors import ConfigError

__all__ = ["execute_async_command", "options_from_config", "sync_simulated_time"]

# Exchanges of a synchronous round after its slowest member's input (key setup runs ahead).
_SYNC_EXCHANGES = {"masking": 2, "paillier": 2, "plain": 1}


def _int_or_none(cfg: Any, name: str) -> int | None:
    v = getattr(cfg, name, None)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"--{name.replace('_', '-')} must be an integer, got {v!r}", option=name)
    return v


def options_from_config(cfg: Any) -> AsyncOptions:
    """The :class:`AsyncOptions` of ``cfg`` (its ``buffer``, ``concurrency``, ``max_staleness``,
    ``staleness``, ``speed``, ``dropout``, ``max_participation``, ``client_max_epsilon``).

    Defaults: a buffer of 10 (at most the clients), concurrency twice the buffer (at most the clients).

    Raises:
        ConfigError: an impossible or unreadable setting (before anything runs).
    """
    buffer = _int_or_none(cfg, "buffer")
    concurrency = _int_or_none(cfg, "concurrency")
    if buffer is None:
        buffer = min(10, cfg.clients)
    if concurrency is None:
        concurrency = min(2 * buffer, cfg.clients)
    return AsyncOptions(
        buffer=buffer,
        concurrency=concurrency,
        staleness=parse_staleness(getattr(cfg, "staleness", "fedbuff") or "fedbuff"),
        max_staleness=_int_or_none(cfg, "max_staleness"),
        max_contributions=cfg.max_participation,
        client_max_epsilon=cfg.client_max_epsilon,
        dropout=cfg.dropout,
        speed=speed_of(cfg),
    )


def speed_of(cfg: Any) -> SpeedModel:
    """The run's speed model (default: log-normal, median 10 s, sigma 1)."""
    text = getattr(cfg, "speed", None)
    return parse_speed(text) if text else SpeedModel.lognormal()


def sync_simulated_time(cfg: Any, results: Any) -> float:
    """Simulated seconds of a synchronous run's attempts (committed and aborted), on the asynchronous clock.

    Without a deadline, time does not change what a round computes, so the clock is read
    from the attempts' cohorts: each lasts as long as its slowest member plus the secure-sum
    exchanges after the last input; client speeds are drawn as :class:`AsyncFederation` does.
    """
    from fl_core.runner import make_rng

    clock = SyncClock(
        speed_of(cfg),
        cfg.clients,
        make_rng(cfg.seed).spawn("async"),
        exchanges=_SYNC_EXCHANGES.get(cfg.secure_sum, 1),
    )
    total = 0.0
    for r in results:
        if r.cohort and not getattr(r, "skipped", False):
            total += clock.round_time(clock.task_times(tuple(r.cohort), r.round, getattr(r, "attempt", 0)))
    return round(total, 3)


def execute_async_command(cfg: Any, as_json: bool, *, out: Any = None) -> None:
    """Run ``cfg`` asynchronously and print the summary (JSON: one object as the last stdout line).

    Raises:
        ConfigError: ``--out``/``--resume`` (not supported in asynchronous mode yet), or impossible options.
    """
    from fl_core.asynchronous.runner import execute_async

    if out is not None:
        raise ConfigError(
            "--mode async keeps no run folder yet (no --out or --resume): its ledger is --ledger", option="out"
        )
    options = options_from_config(cfg)
    planned = cfg.rounds

    def progress(b: Any) -> None:
        acc = b.metrics.get("accuracy")
        eps = b.epsilon
        sys.stderr.write(
            f"buffer {b.buffer}/{planned}  t={b.sim_time_s:.0f}s"
            + (f"  acc {acc:.3f}" if acc is not None else "")
            + (f"  eps {eps:.3f}" if eps is not None else "")
            + "\n"
        )
        sys.stderr.flush()

    summary = execute_async(cfg, options, on_buffer=progress)
    result = summary.to_json()
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return
    acc = result.get("accuracy")
    lines = [
        f"privagg run --mode async: {result['rounds']} buffers of {options.buffer} "
        f"(concurrency {options.concurrency}), "
        f"{cfg.clients} clients",
        f"  simulated time: {result['simulated_time_s']:.0f} s   staleness mean {result['staleness_mean']}",
        f"  test accuracy: {acc:.4f}" if acc is not None else "  no evaluation",
    ]
    if result.get("epsilon_enforced_on"):
        srv, pub = result.get("epsilon_vs_server"), result.get("epsilon_vs_public")
        lines.append(
            f"  privacy: epsilon = {result['epsilon']:.3f} at delta = {cfg.delta:g} "
            f"(the budget holds against the {result['epsilon_enforced_on']})"
        )
        lines.append(
            f"    against the server: {'unbounded (it sees the exact sum)' if srv is None else f'{srv:.3f}'}"
            + (f"   against model users: {pub:.3f}" if pub is not None else "")
        )
    if result.get("ledger"):
        lines.append(f"  ledger: {result['ledger']}")
    if result.get("stopped"):
        lines.append(f"  stopped early: {result['stopped']}")
    if cfg.secure_sum == "plain":
        lines.append("  note: the plain sum is an insecure baseline; the server saw every update")
    print("\n".join(lines))
