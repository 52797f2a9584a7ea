"""The Flower ServerApp side of privagg: sampling, the secure-sum server session, decoding, the ledger.

The ServerApp's main function runs the same round as the in-process
:class:`~fl_core.federation.Federation` (``begin_round`` -> the clients'
contributions and secure-sum sessions -> ``finish_round``), with the clients on
SuperNodes. Each protocol stage is one Flower message round: the server sends each
node the secure-sum messages addressed to it, waits for the replies until the stage
deadline, feeds them to its :class:`secagg.ServerSession`, and calls
``close_stage()`` when the deadline passes with nodes missing - a node that does
not answer in time is a dropout, handled by the protocol (mirroring
:func:`secagg.run_round`, the in-process reference pump).

Security:
    The server only ever holds what the secure sum releases: the sum over the
    survivors (noised by the clients' shares in distributed DP) and the survivor
    set; it never sees an individual update unless the backend is ``plain``. A node
    may speak only for its own client id (learned at start-up from its
    ``partition-id``): a reply carrying messages of another sender is refused, and a
    message failing the session's checks is dropped without aborting the round
    (the sender becomes a dropout) - tests/integration/test_flower.py::test_driver_refuses_spoofed_sender.
    The ledger is charged by ``finish_round`` with the survivors' noise only, before
    the model is published. Transport security (TLS, SuperNode authentication) is
    Flower's; see docs/flower.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fl_core.config import RunConfig
from fl_core.errors import ConfigError, FLError
from fl_core.transport.flower.ahead import AHEAD_STAGE, AheadPipeline
from fl_core.transport.flower.client import HELLO, ROUND, STAGE, TRAIN_STAGE
from fl_core.transport.flower.codec import (
    FlowerCodecError,
    StagePacket,
    decode_packet,
    encode_packet,
    vector_to_bytes,
)
from fl_core.transport.flower.options import FlowerOptions, config_to_json, parse_run_config
from secagg import Message, RoundOutcome, SecAggError

__all__ = ["FlowerRoundDriver", "GridLink", "NodeUnavailableError", "RunReport", "app", "run_privagg"]

log = logging.getLogger("privagg.flower")


class NodeUnavailableError(FLError):
    """Not enough SuperNodes (or nodes with the right partition ids) answered at start-up."""


class GridLink:
    """Sends one message to each of several nodes and collects the replies until a deadline.

    Replies are pulled every ``poll_interval`` seconds (Flower's own
    ``send_and_receive`` polls every 3 s, which would add up to 3 s per protocol stage).
    Error replies and replies arriving after the deadline count as no answer.
    """

    def __init__(self, grid: Any, *, poll_interval: float) -> None:
        self.grid = grid
        self.poll_interval = poll_interval

    def exchange(self, message_type: str, contents: Mapping[int, Any], *, group: str, timeout: float) -> dict[int, Any]:
        """Send ``contents[node]`` to each node; return node -> reply for those that answered in time."""
        if not contents:
            return {}
        from flwr.app import Message as FlowerMessage

        msgs = [
            FlowerMessage(content, dst_node_id=node, message_type=message_type, group_id=group, ttl=timeout + 60.0)
            for node, content in contents.items()
        ]
        ids = [i for i in self.grid.push_messages(msgs) if i]
        pending = set(ids)
        replies: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for rep in self.grid.pull_messages(list(pending)):
                pending.discard(rep.metadata.reply_to_message_id)
                node = int(rep.metadata.src_node_id)
                if rep.has_error():
                    log.warning("node %s answered %s with an error: %s", node, message_type, rep.error.reason)
                    continue
                replies[node] = rep
            if pending:
                time.sleep(self.poll_interval)
        if pending:
            log.info("%d of %d nodes did not answer %s within %.1f s", len(pending), len(ids), message_type, timeout)
        return replies


def discover_nodes(link: GridLink, clients: int, *, timeout: float) -> dict[int, int]:
    """Wait for ``clients`` SuperNodes and learn each one's client id: returns client -> node id.

    Raises:
        NodeUnavailableError: too few nodes connected, or the partition ids do not
            cover clients 1..``clients`` exactly once.
    """
    deadline = time.monotonic() + timeout
    nodes: list[int] = []
    while time.monotonic() < deadline:
        nodes = sorted(int(n) for n in link.grid.get_node_ids())
        if len(nodes) >= clients:
            break
        time.sleep(0.5)
    if len(nodes) < clients:
        raise NodeUnavailableError(
            f"{len(nodes)} SuperNodes connected within {timeout:.0f} s, the run needs {clients} "
            "(start one flower-supernode per client, or lower clients)"
        )
    hello = encode_packet(StagePacket(0, "hello"))
    left = max(1.0, deadline - time.monotonic())
    replies = link.exchange(HELLO, {n: hello for n in nodes}, group="hello", timeout=left)
    by_client: dict[int, int] = {}
    for node, rep in sorted(replies.items()):
        try:
            c = decode_packet(rep.content, stage="hello").fields.get("client")
        except FlowerCodecError as exc:
            log.warning("node %s sent an unusable hello: %s", node, exc)
            continue
        if not isinstance(c, int) or not 1 <= c <= clients:
            raise NodeUnavailableError(f"node {node} claims client {c!r}; partition-id must be in 0..{clients - 1}")
        if c in by_client:
            raise NodeUnavailableError(
                f"nodes {by_client[c]} and {node} both claim client {c} (partition-id {c - 1}): give each node its own"
            )
        by_client[c] = node
    missing = sorted(set(range(1, clients + 1)) - set(by_client))
    if missing:
        raise NodeUnavailableError(
            f"no SuperNode answered for clients {missing} (partition-ids {[m - 1 for m in missing]})"
        )
    return by_client


StageHook = Callable[[int, str, frozenset[int]], None]
"""Called as ``hook(round, stage, answered)`` after each stage's replies are processed."""


@dataclass
class RoundTrace:
    """Transport-level facts about one round (beside the Federation's RoundResult)."""

    round: int
    stages: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    wall_s: float = 0.0


class FlowerRoundDriver:
    """Runs the secure-sum part of a privagg round over Flower messages.

    Args:
        link: the grid link.
        nodes: client id -> Flower node id.
        options: the transport options (timeouts).
        on_stage: optional hook after each stage (progress reports, the test pause).
    """

    def __init__(
        self, link: GridLink, nodes: Mapping[int, int], options: FlowerOptions, *, on_stage: StageHook | None = None
    ) -> None:
        self.link = link
        self.nodes = dict(nodes)
        self.clients = {n: c for c, n in self.nodes.items()}
        self.options = options
        self.on_stage = on_stage
        self._pipeline = AheadPipeline(enabled=options.advertise_ahead)

    def _accept(
        self,
        server: Any,
        replies: Mapping[int, Any],
        *,
        round_id: int,
        stage: str,
        outcome: RoundOutcome,
        trace: RoundTrace,
        on_fields: Callable[[int, Mapping[str, Any]], None] | None = None,
    ) -> tuple[list[Message], frozenset[int]]:
        out: list[Message] = []
        answered: set[int] = set()
        for node in sorted(replies, key=lambda n: self.clients.get(n, 0)):
            c = self.clients.get(node)
            if c is None or c not in outcome.bytes_up:
                trace.rejected.append(f"node {node}: not in the cohort")
                continue
            try:
                packet = decode_packet(replies[node].content, round_id=round_id, stage=stage)
            except FlowerCodecError as exc:
                trace.rejected.append(f"client {c}: {exc}")
                continue
            if any(m.sender != c for m in packet.messages):
                trace.rejected.append(f"client {c}: reply carries messages of another sender (refused)")
                continue
            answered.add(c)
            if on_fields is not None:
                on_fields(c, packet.fields)
            for m in packet.messages:
                outcome.bytes_up[c] += m.size
                t = time.process_time()
                try:
                    out.extend(server.receive(m))
                except SecAggError as exc:  # a bad peer message: that client becomes a dropout
                    trace.rejected.append(f"client {c}: {type(exc).__name__}: {exc}")
                finally:
                    outcome.server_cpu_s += time.process_time() - t
        return out, frozenset(answered)

    def run(
        self,
        fed: Any,
        start: Any,
        global_vec: np.ndarray,
        config_json: str,
        *,
        next_members: tuple[int, ...] | None = None,
    ) -> tuple[RoundOutcome, int, int, RoundTrace]:
        """One round's secure sum: returns (outcome, clipped count, saturated count, trace).

        ``next_members``: the next round's cohort; when given (and the backend allows it),
        its members run the next round's input-free stages during this round's exchanges
        (:mod:`fl_core.transport.flower.ahead`).
        """
        r = start.round
        members: tuple[int, ...] = tuple(start.cohort.members)
        trace = RoundTrace(r)
        t0 = time.perf_counter()
        outcome = RoundOutcome(total=None, survivors=frozenset(), error=None)
        for c in members:
            outcome.bytes_up[c] = 0
            outcome.bytes_down[c] = 0
            outcome.client_cpu_s[c] = 0.0
        pre = self._pipeline.take(r, members)
        first: list[Message] = []
        t = time.process_time()
        if pre is not None:
            server, first = pre.server, list(pre.pending)
            for c in members:
                outcome.bytes_up[c] += pre.bytes_up.get(c, 0)
                outcome.bytes_down[c] += pre.bytes_down.get(c, 0)
            trace.stages.extend(pre.stages)
        else:
            server = fed.secure_sum.server(members, r)
        outcome.server_cpu_s += time.process_time() - t
        counts = {"clipped": 0, "saturated": 0}

        def clip_fields(c: int, f: Mapping[str, Any]) -> None:
            counts["clipped"] += int(bool(f.get("clipped", False)))
            counts["saturated"] += int(f.get("saturated", 0))

        gbytes = vector_to_bytes(np.asarray(global_vec, dtype=np.float32))
        firsts: dict[int, list[Message]] = {}
        for m in first:
            if m.recipient in outcome.bytes_down:
                firsts.setdefault(m.recipient, []).append(m)
                outcome.bytes_down[m.recipient] += m.size
        # With stages run ahead, only the members the server still has messages for open the
        # round (the others dropped out of a stage run ahead); otherwise every member does.
        openers = [c for c in members if c in firsts] if pre is not None else list(members)
        opening = {
            c: StagePacket(
                r,
                TRAIN_STAGE,
                tuple(firsts.get(c, ())),
                {"config": config_json, "client": c, "global": gbytes, "dim": fed.dim},
            )
            for c in openers
        }
        to_clients = self._round_trip(
            ROUND, fed, server, r, TRAIN_STAGE, opening, config_json, next_members, outcome, trace, clip_fields
        )
        step, idle = 0, 0
        while not server.done:
            if not to_clients:
                t = time.process_time()
                to_clients.extend(server.close_stage())
                outcome.server_cpu_s += time.process_time() - t
                if server.done:
                    break
                if not to_clients:
                    idle += 1
                    if idle > 2:
                        raise RoundStalledError(f"round {r}: the server session closed a stage and sent nothing")
                    continue
            idle = 0
            step += 1
            if step > 64:
                raise RoundStalledError(f"round {r} did not finish within 64 stages")
            batch, to_clients = to_clients, []
            stage = batch[0].stage
            by_client: dict[int, list[Message]] = {}
            for m in batch:
                if m.recipient in self.nodes and m.recipient in outcome.bytes_down:
                    by_client.setdefault(m.recipient, []).append(m)
                    outcome.bytes_down[m.recipient] += m.size
            packets = {c: StagePacket(r, stage, tuple(ms)) for c, ms in by_client.items()}
            to_clients = self._round_trip(
                STAGE, fed, server, r, stage, packets, config_json, next_members, outcome, trace, None
            )
        outcome.stages = step + 1
        t = time.process_time()
        try:
            outcome.total = server.result()
            outcome.survivors = server.survivors
        except SecAggError as exc:
            outcome.error = exc
        outcome.server_cpu_s += time.process_time() - t
        trace.wall_s = time.perf_counter() - t0
        return outcome, counts["clipped"], counts["saturated"], trace

    def _round_trip(
        self,
        message_type: str,
        fed: Any,
        server: Any,
        r: int,
        stage: str,
        packets: Mapping[int, StagePacket],
        config_json: str,
        next_members: tuple[int, ...] | None,
        outcome: RoundOutcome,
        trace: RoundTrace,
        on_fields: Callable[[int, Mapping[str, Any]], None] | None,
    ) -> list[Message]:
        """One exchange of round ``r`` (plus the next round's ahead request); returns the server's next messages."""
        ahead = self._pipeline.request(fed, r + 1, config_json, next_members)
        contents = {
            self.nodes[c]: encode_packet(StagePacket(p.round_id, p.stage, p.messages, {**p.fields, **ahead.get(c, {})}))
            for c, p in packets.items()
        }
        standalone = {self.nodes[c]: c for c in ahead if c not in packets and c in self.nodes}
        for n, c in standalone.items():
            contents[n] = encode_packet(StagePacket(r + 1, AHEAD_STAGE, (), ahead[c]))
        timeout = self.options.train_timeout if message_type == ROUND else self.options.stage_timeout
        ahead_replies: dict[int, Mapping[str, Any]] = {}

        def fields_of(c: int, f: Mapping[str, Any]) -> None:
            ahead_replies[c] = f
            if on_fields is not None:
                on_fields(c, f)

        ts = time.perf_counter()
        replies = self.link.exchange(message_type, contents, group=str(r), timeout=timeout)
        own = {n: rep for n, rep in replies.items() if n not in standalone}
        out, answered = self._accept(
            server, own, round_id=r, stage=stage, outcome=outcome, trace=trace, on_fields=fields_of
        )
        self._stage_done(trace, r, stage, answered, time.perf_counter() - ts)
        if ahead:
            for n, c in standalone.items():
                if n not in replies:
                    continue
                try:
                    ahead_replies[c] = decode_packet(replies[n].content, round_id=r + 1, stage=AHEAD_STAGE).fields
                except FlowerCodecError as exc:
                    trace.rejected.append(f"client {c} (round {r + 1}, ahead): {exc}")
            self._pipeline.collect(ahead_replies, trace.rejected)
        return out

    def _stage_done(self, trace: RoundTrace, r: int, stage: str, answered: frozenset[int], wall: float) -> None:
        trace.stages.append({"stage": stage, "answered": sorted(answered), "wall_s": round(wall, 3)})
        if self.on_stage is not None:
            self.on_stage(r, stage, answered)


class RoundStalledError(FLError):
    """The secure-sum server session stopped making progress (a backend bug, never a dropout)."""


@dataclass
class RunReport:
    """What a privagg run on Flower did (returned by :func:`run_privagg`, written to ``output_dir``)."""

    config: RunConfig
    results: list[Any]
    traces: list[RoundTrace]
    final: np.ndarray
    totals: dict[int, np.ndarray]
    stopped: str | None = None
    ledger: str | None = None

    def to_json(self) -> dict[str, Any]:
        rounds = []
        for res, tr in zip(self.results, self.traces, strict=False):
            rounds.append(
                {
                    "round": res.round,
                    "cohort": list(res.cohort),
                    "survivors": list(res.survivors),
                    "epsilon": res.epsilon,
                    "metrics": res.metrics,
                    "bytes_up_per_client": res.bytes_up_per_client,
                    "wall_s": round(res.wall_s, 3),
                    "secure_sum_wall_s": round(tr.wall_s, 3),
                    "stages": tr.stages,
                    "rejected": tr.rejected,
                }
            )
        return {
            "config": self.config.to_dict(),
            "rounds": rounds,
            "stopped": self.stopped,
            "ledger": self.ledger,
            "dim": int(self.final.size),
        }


def _pause_hook(options: FlowerOptions, progress: Path | None) -> StageHook:
    point = options.pause_point()

    def hook(r: int, stage: str, answered: frozenset[int]) -> None:
        if progress is not None:
            _append(progress, {"event": "stage", "round": r, "stage": stage, "answered": sorted(answered)})
        if point is not None and point == (r, stage):
            if progress is not None:
                _append(progress, {"event": "paused", "round": r, "stage": stage})
            resume = Path(options.resume_file)
            deadline = time.monotonic() + options.stage_timeout
            while not resume.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if progress is not None:
                _append(progress, {"event": "resumed", "round": r, "stage": stage, "by_file": resume.exists()})

    return hook


def _append(path: Path, record: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({**record, "t": time.time()}) + "\n")


def run_privagg(grid: Any, cfg: RunConfig, options: FlowerOptions) -> RunReport:
    """Run ``cfg.rounds`` privagg rounds with the clients on the grid's SuperNodes.

    Raises:
        NodeUnavailableError: not every client's SuperNode is connected.
        fl_core.errors.RoundFailedError: a round aborted (e.g. too few survivors);
            the model and the ledger keep the last committed round.
    """
    from dp.errors import BudgetExceededError
    from fl_core.runner import build_federation

    if cfg.secure_sum == "paillier":
        raise ConfigError(
            "the paillier backend is not supported on Flower yet: its key must be distributed to the nodes "
            "(use secure-sum masking)",
            option="secure_sum",
        )
    out_dir = Path(options.output_dir) if options.output_dir else None
    progress = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        progress = out_dir / "progress.jsonl"
    fed, _data, extra = build_federation(cfg)
    link = GridLink(grid, poll_interval=options.poll_interval)
    nodes = discover_nodes(link, cfg.clients, timeout=options.connect_timeout)
    if progress is not None:
        _append(progress, {"event": "nodes", "nodes": {str(c): n for c, n in nodes.items()}})
    driver = FlowerRoundDriver(link, nodes, options, on_stage=_pause_hook(options, progress))
    config_json = config_to_json(cfg)
    results: list[Any] = []
    traces: list[RoundTrace] = []
    totals: dict[int, np.ndarray] = {}
    stopped = None
    for i in range(cfg.rounds):
        t0 = time.perf_counter()
        try:
            start = fed.begin_round()
        except BudgetExceededError as exc:
            stopped = str(exc)
            break
        if start.skipped:
            results.append(fed._skip(start, t0))  # nobody sampled: nothing runs, nothing is released
            traces.append(RoundTrace(start.round))
            continue
        global_vec = fed.codec.flatten(fed.model)
        nxt = None
        if i + 1 < cfg.rounds and options.advertise_ahead:
            nxt = tuple(fed.cohort_of(start.round + 1).members) or None
        outcome, clipped, saturated, trace = driver.run(fed, start, global_vec, config_json, next_members=nxt)
        res = fed.finish_round(start, outcome, global_vec, clipped=clipped, saturated=saturated, t0=t0)
        if outcome.total is not None:
            totals[res.round] = np.asarray(outcome.total).copy()
        results.append(res)
        traces.append(trace)
        if progress is not None:
            _append(progress, {"event": "round", "round": res.round, "survivors": list(res.survivors)})
    report = RunReport(
        cfg, results, traces, fed.codec.flatten(fed.model), totals, stopped=stopped, ledger=extra.get("ledger")
    )
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def write_report(report: RunReport, out_dir: Path) -> None:
    """Write ``final.npy`` (global weights), ``sum-round-R.npy`` (each secure sum) and ``summary.json``."""
    np.save(out_dir / "final.npy", report.final)
    for r, total in report.totals.items():
        np.save(out_dir / f"sum-round-{r}.npy", total)
    (out_dir / "summary.json").write_text(json.dumps(report.to_json(), indent=2, default=str), encoding="utf-8")


def main(grid: Any, context: Any) -> None:
    """The ServerApp main: parse the run config, then run privagg (or the FedAvg baseline)."""
    cfg, options = parse_run_config(dict(context.run_config))
    if options.mode == "fedavg":
        from fl_core.transport.flower.baseline import run_fedavg

        res = run_fedavg(grid, cfg, timeout=options.train_timeout)
        if options.output_dir:
            out = Path(options.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / "final.npy", res.pop("final"))
            (out / "summary.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
        return
    run_privagg(grid, cfg, options)


def _make_app() -> Any:
    from flwr.serverapp import ServerApp

    app = ServerApp()
    app.main()(main)
    return app


app = _make_app()
"""The ServerApp object (``[tool.flwr.app.components] serverapp``)."""
