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
    Flower's; see docs/flower.md. Paillier: the server builds its secure sum from the
    public key the key-holder SuperNodes publish and asks them for the round's one
    decryption (:mod:`fl_core.transport.flower.paillier`); it never holds or loads a
    private key or a key share.
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
from fl_core.errors import FLError
from fl_core.transport.flower.ahead import AHEAD_STAGE, AheadPipeline
from fl_core.transport.flower.codec import (
    ATTEMPT_FIELD,
    CLIP_FIELD,
    ERROR_FIELD,
    MESSAGE_TYPE,
    SIGNATURE_FIELD,
    TRAIN_STAGE,
    FlowerCodecError,
    StagePacket,
    decode_packet,
    encode_packet,
    vector_to_bytes,
)
from fl_core.transport.flower.options import FlowerOptions, config_to_json
from fl_core.transport.flower.paillier import HOLDER_ROLE, PUBLIC_KEY_FIELD, HolderRouter, KeyHolders, key_holders_from
from fl_core.transport.flower.record import RECORD_EPSILON, RECORD_STEPS
from secagg import Message, RoundOutcome, SecAggError
from secagg.pump import pump_stages

__all__ = [
    "FlowerRoundDriver",
    "GridLink",
    "NodeUnavailableError",
    "RunReport",
    "discover_nodes",
    "discover_roster",
    "run_privagg",
]

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

    def exchange(
        self, contents: Mapping[int, Any], *, group: str, timeout: float, message_type: str = MESSAGE_TYPE
    ) -> dict[int, Any]:
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


def discover_nodes(link: GridLink, clients: int, *, timeout: float, config_json: str | None = None) -> dict[int, int]:
    """Wait for ``clients`` SuperNodes and learn each one's client id: returns client -> node id.

    Raises:
        NodeUnavailableError: too few nodes connected, or the partition ids do not
            cover clients 1..``clients`` exactly once.
    """
    return discover_roster(link, clients, timeout=timeout, key_holders=False, config_json=config_json)[0]


def discover_roster(
    link: GridLink, clients: int, *, timeout: float, key_holders: bool, config_json: str | None = None
) -> tuple[dict[int, int], KeyHolders | None]:
    """Learn the client nodes (client -> node id) and, with ``key_holders``, the Paillier key holders.

    Client nodes answer the hello with their client id, key-holder nodes with their role
    and public key material. With ``config_json`` the hello carries the run configuration
    and each client node loads and checks its own data first: a node whose data path is
    missing (or whose loader returns no dataset) refuses here, with its reason, instead of
    failing in a round; and every node's samples must have one shape and dtype. With
    ``key_holders`` the server waits (until ``timeout``) for every holder of the key (1,
    or m of a t-of-m key) and starts with at least t. Key-holder nodes are never clients;
    in a run without them they are ignored.

    Raises:
        NodeUnavailableError: too few nodes connected, a node refused the hello (its reason
            is in the message), the partition ids do not cover clients 1..``clients``
            exactly once, or (``key_holders``) fewer holders than a decryption needs answered.
        DataError: the nodes' samples differ in shape or dtype.
        fl_core.transport.flower.paillier.KeyHolderSetupError: the holders do not form one key.
    """
    from fl_core.errors import DataError

    deadline = time.monotonic() + timeout
    want = clients + (1 if key_holders else 0)
    nodes: list[int] = []
    while time.monotonic() < deadline:
        nodes = sorted(int(n) for n in link.grid.get_node_ids())
        if len(nodes) >= want:
            break
        time.sleep(0.5)
    if len(nodes) < want:
        raise NodeUnavailableError(
            f"{len(nodes)} SuperNodes connected within {timeout:.0f} s, the run needs {clients}"
            + (" clients and the Paillier key holders" if key_holders else "")
            + " (start one flower-supernode per client, or lower clients)"
        )
    hellos: dict[int, Mapping[str, Any]] = {}
    refusals: dict[int, str] = {}
    asked: set[int] = set()

    def ask(new: list[int]) -> None:
        hello = encode_packet(StagePacket(0, "hello", (), {"config": config_json} if config_json else {}))
        left = max(1.0, deadline - time.monotonic())
        asked.update(new)
        for node, rep in link.exchange({n: hello for n in new}, group="hello", timeout=left).items():
            try:
                fields = decode_packet(rep.content, stage="hello").fields
            except FlowerCodecError as exc:
                log.warning("node %s sent an unusable hello: %s", node, exc)
                continue
            if ERROR_FIELD in fields:
                refusals[node] = str(fields[ERROR_FIELD])
                log.warning("node %s refused the hello: %s", node, refusals[node])
                continue
            hellos[node] = fields

    ask(nodes)
    holders = key_holders_from(hellos) if key_holders else None
    while key_holders and (holders is None or len(holders.nodes) < holders.expected):
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
        new = sorted(int(n) for n in link.grid.get_node_ids() if int(n) not in asked)
        if new:
            ask(new)
            holders = key_holders_from(hellos)
    by_client: dict[int, int] = {}
    for node, fields in sorted(hellos.items()):
        if fields.get("role") == HOLDER_ROLE:
            continue
        c = fields.get("client")
        if not isinstance(c, int) or not 1 <= c <= clients:
            raise NodeUnavailableError(f"node {node} claims client {c!r}; partition-id must be in 0..{clients - 1}")
        if c in by_client:
            raise NodeUnavailableError(
                f"nodes {by_client[c]} and {node} both claim client {c} (partition-id {c - 1}): give each node its own"
            )
        by_client[c] = node
    missing = sorted(set(range(1, clients + 1)) - set(by_client))
    if missing:
        why = "".join(f"; node {n} refused: {reason}" for n, reason in sorted(refusals.items()))
        raise NodeUnavailableError(
            f"no SuperNode answered for clients {missing} (partition-ids {[m - 1 for m in missing]}){why}"
        )
    shapes: dict[str, list[int]] = {}
    for c, node in sorted(by_client.items()):
        sig = hellos[node].get(SIGNATURE_FIELD)
        if sig:
            shapes.setdefault(str(sig), []).append(c)
    if len(shapes) > 1:
        raise DataError(
            "the nodes' data have different sample shapes or dtypes ("
            + "; ".join(f"clients {cs}: {sig}" for sig, cs in sorted(shapes.items(), key=lambda kv: -len(kv[1])))
            + "): every node's load_data must return samples of one shape and dtype (the clients train one model)",
            function="load_data",
        )
    if key_holders:
        start_holder = (
            'start them with --node-config \'privagg-role="key-holder" paillier-key-file="/path/key"\' '
            "(key files from `privagg keygen paillier`)"
        )
        if holders is None:
            raise NodeUnavailableError(
                f"no Paillier key-holder SuperNode answered within {timeout:.0f} s: {start_holder}"
            )
        if len(holders.nodes) < holders.needed:
            raise NodeUnavailableError(
                f"{len(holders.nodes)} of the key's {holders.expected} key holders answered, a decryption needs "
                f"{holders.needed}: {start_holder}"
            )
        if len(holders.nodes) < holders.expected:
            log.warning(
                "%d of %d key holders answered (holders %s); the run tolerates %d more missing",
                len(holders.nodes),
                holders.expected,
                sorted(holders.nodes),
                len(holders.nodes) - holders.needed,
            )
    return by_client, holders


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
        holders: the route to the Paillier key holders (its decryption exchanges are
            recorded in the round's trace as stage ``decrypt``, answered by holder ids).
        opening_fields: extra fields of every opening message (Paillier: the public key).

    After each round, ``record_reports`` holds each client's latest record-level DP report
    (epsilon, steps), when the run has record-level DP.
    """

    def __init__(
        self,
        link: GridLink,
        nodes: Mapping[int, int],
        options: FlowerOptions,
        *,
        on_stage: StageHook | None = None,
        holders: HolderRouter | None = None,
        opening_fields: Mapping[str, Any] | None = None,
    ) -> None:
        self.link = link
        self.nodes = dict(nodes)
        self.clients = {n: c for c, n in self.nodes.items()}
        self.options = options
        self.on_stage = on_stage
        self.holders = holders
        self.opening_fields = dict(opening_fields or {})
        self.record_reports: dict[int, dict[str, Any]] = {}
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
            if ERROR_FIELD in packet.fields:  # the node refused or failed (e.g. its train_fn raised): a dropout
                reason = str(packet.fields[ERROR_FIELD])
                log.warning("round %d: client %d dropped out at stage %s: %s", round_id, c, stage, reason)
                trace.rejected.append(f"client {c}: dropped out: {reason}")
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
        expect = getattr(server, "expect_terms", None)
        if expect is not None:
            # Masked inputs must be bound to the terms this server announces and charges (its clip
            # included); one bound to other terms is refused (fl_core.binding). A session opened
            # ahead, before this round's clip was known, learns them here.
            expect(fed.terms_binding().round)
        outcome.server_cpu_s += time.process_time() - t
        counts = {"clipped": 0, "saturated": 0}

        def clip_fields(c: int, f: Mapping[str, Any]) -> None:
            counts["clipped"] += int(bool(f.get("clipped", False)))
            counts["saturated"] += int(f.get("saturated", 0))
            eps = f.get(RECORD_EPSILON)
            if isinstance(eps, float) and not isinstance(eps, bool):
                self.record_reports[c] = {RECORD_EPSILON: eps, RECORD_STEPS: int(f.get(RECORD_STEPS, 0))}

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
                {
                    "config": config_json,
                    "client": c,
                    "global": gbytes,
                    "dim": fed.dim,
                    CLIP_FIELD: float(fed.privacy.clip_norm),
                    ATTEMPT_FIELD: int(getattr(start, "attempt", 0)),
                    **self.opening_fields,
                },
            )
            for c in openers
        }
        to_clients = self._round_trip(
            True, fed, server, r, TRAIN_STAGE, opening, config_json, next_members, outcome, trace, clip_fields
        )
        self._holder_stages(trace, r)

        def deliver(batch: list[Message], step: int) -> list[Message]:
            stage = batch[0].stage
            by_client: dict[int, list[Message]] = {}
            for m in batch:
                if m.recipient in self.nodes and m.recipient in outcome.bytes_down:
                    by_client.setdefault(m.recipient, []).append(m)
                    outcome.bytes_down[m.recipient] += m.size
            packets = {c: StagePacket(r, stage, tuple(ms)) for c, ms in by_client.items()}
            out = self._round_trip(
                False, fed, server, r, stage, packets, config_json, next_members, outcome, trace, None
            )
            self._holder_stages(trace, r)
            return out

        pumped = pump_stages(
            server,
            to_clients,
            deliver,
            on_close=lambda: self._holder_stages(trace, r),
            stalled=lambda why: RoundStalledError(f"round {r}: {why}"),
        )
        outcome.server_cpu_s += pumped.close_cpu_s
        step = pumped.steps
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
        opening: bool,
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
        timeout = self.options.train_timeout if opening else self.options.stage_timeout
        ahead_replies: dict[int, Mapping[str, Any]] = {}

        def fields_of(c: int, f: Mapping[str, Any]) -> None:
            ahead_replies[c] = f
            if on_fields is not None:
                on_fields(c, f)

        ts = time.perf_counter()
        replies = self.link.exchange(contents, group=str(r), timeout=timeout)
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

    def _holder_stages(self, trace: RoundTrace, r: int) -> None:
        """Record the key holders' decryption exchanges of this round (answered: holder ids)."""
        if self.holders is None:
            return
        stages, rejected = self.holders.take()
        trace.rejected.extend(rejected)
        for st in stages:
            self._stage_done(trace, r, st["stage"], frozenset(st["answered"]), st["wall_s"])

    def _stage_done(self, trace: RoundTrace, r: int, stage: str, answered: frozenset[int], wall: float) -> None:
        trace.stages.append({"stage": stage, "answered": sorted(answered), "wall_s": round(wall, 3)})
        if self.on_stage is not None:
            self.on_stage(r, stage, answered)


class RoundStalledError(FLError):
    """The secure-sum server session stopped making progress (a backend bug, never a dropout)."""


_PRIVACY_KEYS = (
    "epsilon",
    "epsilon_enforced_on",
    "epsilon_vs_server",
    "epsilon_vs_server_reason",
    "epsilon_vs_public",
    "target_epsilon",
    "participation_cap",
    "clients_left_out",
    "attempts_too_small",
)


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
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level summary fields: with DP, epsilon per adversary (``epsilon``, ``epsilon_enforced_on``,
    ``epsilon_vs_server`` - None when unbounded, with ``epsilon_vs_server_reason`` - and
    ``epsilon_vs_public``: :func:`fl_core.accounting.epsilon_report`, as ``privagg run --json``)."""
    model: Any = None
    """The global model after the last committed round (the task's own model object)."""

    @property
    def privacy(self) -> dict[str, Any]:
        """The run's epsilon per adversary (empty without DP); see ``extra``."""
        return {k: v for k, v in self.extra.items() if k in _PRIVACY_KEYS}

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
            **self.extra,
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


def run_privagg(
    grid: Any,
    cfg: RunConfig,
    options: FlowerOptions,
    *,
    task: Any = None,
    on_round: Callable[[Any, Any], None] | None = None,
    on_start: Callable[[Any], None] | None = None,
) -> RunReport:
    """Run ``cfg.rounds`` privagg rounds with the clients on the grid's SuperNodes.

    ``task`` is the user's :class:`fl_core.task.Task` (its ``make_model`` is the global model,
    its ``evaluate`` runs here after each round; the server loads no client data); None runs
    privagg's built-in demo configured by ``cfg``. ``on_round(result, fed)`` is called after
    each committed round.

    With ``secure-sum = "paillier"`` the key holders are SuperNodes of their own (see
    :mod:`fl_core.transport.flower.paillier`): the server learns their public key at
    start-up, builds its secure sum from it, and sends it to the clients each round.

    Raises:
        NodeUnavailableError: not every client's SuperNode is connected (or, Paillier,
            fewer key holders than a decryption needs).
        fl_core.transport.flower.paillier.KeyHolderSetupError: the key holders do not form one key.
        ConfigError: the holders' key cannot serve the run (e.g. a test-size key without
            ``insecure-small-key-for-tests``).
        fl_core.errors.TooManyAbortsError: more than ``cfg.max_consecutive_aborts``
            attempts in a row aborted; the model and the ledger keep the last committed round.
        fl_core.errors.RoundFailedError: a Paillier round aborted after its decryption request
            (the key holders decrypt one sum per round id, so it cannot be retried).

    An aborted attempt (too few survivors, a failed secure sum, a drawn cohort too small
    to release) released nothing and changed neither the model nor the ledger; the round
    is attempted again with a fresh cohort, its opening naming the next attempt number
    (each node keys its randomness by it). The summary counts ``rounds_aborted`` and lists
    ``aborted_attempts`` (round, attempt, cohort, reason, the exchanges).
    """
    from dp.errors import BudgetExceededError
    from fl_core.accounting import epsilon_report
    from fl_core.errors import RoundFailedError, TooManyAbortsError
    from fl_core.runner import build_federation

    out_dir = Path(options.output_dir) if options.output_dir else None
    progress = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        progress = out_dir / "progress.jsonl"
    link = GridLink(grid, poll_interval=options.poll_interval)
    router: HolderRouter | None = None
    opening: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    if cfg.secure_sum == "paillier":
        from fl_core.backend_paillier import keys_from
        from fl_core.transport.flower.paillier import server_factory
        from secagg.paillier import public_key_sha256

        nodes, holders = discover_roster(
            link, cfg.clients, timeout=options.connect_timeout, key_holders=True, config_json=config_to_json(cfg)
        )
        if holders is None:  # pragma: no cover - discover_roster raises first
            raise NodeUnavailableError("no Paillier key holders")
        router = HolderRouter(link, holders, options.stage_timeout)
        factory = server_factory(
            holders,
            router,
            verify_decryption=options.verify_decryption,
            insecure_small_key_for_tests=options.insecure_small_key_for_tests,
        )
        with keys_from(factory):  # the server builds its secure sum from the holders' public key only
            fed, _data, extra = build_federation(cfg, task, role="server")
        opening[PUBLIC_KEY_FIELD] = holders.public_key_bytes
        summary["key_holders"] = {
            "public_key_sha256": public_key_sha256(holders.public_key),
            "key_bits": holders.public_key.bits,
            "threshold": None if holders.params is None else f"{holders.needed}/{holders.expected}",
            "holders": sorted(holders.nodes),
        }
    else:
        fed, _data, extra = build_federation(cfg, task, role="server")
        nodes = discover_nodes(link, cfg.clients, timeout=options.connect_timeout, config_json=config_to_json(cfg))
    # Each client's own record and limit live on its node (fl_core.transport.flower.budget); the
    # server holds none, so its summary reports none.
    fed.client_guard = None
    if progress is not None:
        _append(progress, {"event": "nodes", "nodes": {str(c): n for c, n in nodes.items()}})
    if on_start is not None:
        on_start(fed)
    driver = FlowerRoundDriver(
        link, nodes, options, on_stage=_pause_hook(options, progress), holders=router, opening_fields=opening
    )
    config_json = config_to_json(cfg)
    results: list[Any] = []
    traces: list[RoundTrace] = []
    totals: dict[int, np.ndarray] = {}
    aborted: list[dict[str, Any]] = []
    stopped = None
    consecutive = 0
    last_error: RoundFailedError | None = None

    def abort(res: Any, trace: RoundTrace | None) -> None:
        # The attempt released nothing and changed nothing (the federation recorded it and
        # keys the round's next attempt, with a fresh cohort, by the new attempt number).
        nonlocal consecutive
        consecutive += 1
        log.warning("round %d, attempt %d aborted: %s", res.round, res.attempt, res.reason)
        aborted.append(
            {
                "round": res.round,
                "attempt": res.attempt,
                "cohort": list(res.cohort),
                "reason": res.reason,
                "stages": trace.stages if trace is not None else [],
                "rejected": trace.rejected if trace is not None else [],
            }
        )
        if progress is not None:
            _append(progress, {"event": "aborted", "round": res.round, "attempt": res.attempt})

    try:
        while len(results) < cfg.rounds:
            if consecutive >= cfg.max_consecutive_aborts:
                last = aborted[-1]
                raise TooManyAbortsError(
                    f"{consecutive} consecutive attempts of round {last['round']} aborted (last: {last['reason']}); "
                    "each released nothing. Make aborts rarer (lower min-survivors, larger cohorts, nodes that "
                    "answer within stage-timeout), or allow more with max-consecutive-aborts",
                    round=last["round"],
                    aborts=consecutive,
                ) from last_error
            t0 = time.perf_counter()
            try:
                start = fed.begin_round()
            except BudgetExceededError as exc:
                stopped = str(exc)
                break
            except RoundFailedError as exc:  # the drawn cohort cannot release (too small): nothing ran
                last_error = exc
                fed.attempts[exc.round] = fed.attempts.get(exc.round, 0) + 1
                res = fed._aborted(exc, None, {})
                fed.aborts.append(res)
                abort(res, None)
                continue
            if start.skipped:
                results.append(fed._skip(start, t0))  # nobody sampled: nothing runs, nothing is released
                traces.append(RoundTrace(start.round))
                continue
            global_vec = fed.codec.flatten(fed.model)
            nxt = None
            if len(results) + 1 < cfg.rounds and options.advertise_ahead:
                nxt = tuple(fed.cohort_of(start.round + 1).members) or None
            outcome, clipped, saturated, trace = driver.run(fed, start, global_vec, config_json, next_members=nxt)
            try:
                res = fed.finish_round(start, outcome, global_vec, clipped=clipped, saturated=saturated, t0=t0)
            except RoundFailedError as exc:
                last_error = exc
                abort(fed.aborts[-1], trace)
                if router is not None and any(st["stage"] == "decrypt" for st in trace.stages):
                    # A key holder decrypts one sum per round id (so a server cannot have it decrypt
                    # single ciphertexts under made-up attempts): this round cannot be decrypted again.
                    raise RoundFailedError(
                        f"{exc}; the Paillier key holders already took this round's decryption request and "
                        "decrypt one sum per round id, so the round is not retried",
                        round=exc.round,
                    ) from exc
                continue
            consecutive = 0
            if outcome.total is not None:
                totals[res.round] = np.asarray(outcome.total).copy()
            results.append(res)
            traces.append(trace)
            if progress is not None:
                _append(progress, {"event": "round", "round": res.round, "survivors": list(res.survivors)})
            if on_round is not None:
                on_round(res, fed)
    finally:
        fed.close()  # the ledger's lock
    summary["rounds_aborted"] = len(aborted)
    summary["aborted_attempts"] = aborted
    record_dp = extra.get("_record_dp")
    if record_dp is not None:
        from fl_core.transport.flower.record import summarize

        summary["record_level"] = summarize(record_dp, driver.record_reports)
    summary.update(epsilon_report(fed))  # epsilon per adversary, as privagg run --json reports it
    report = RunReport(
        cfg,
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


def write_report(report: RunReport, out_dir: Path) -> None:
    """Write ``final.npy`` (global weights), ``sum-round-R.npy`` (each secure sum) and ``summary.json``."""
    np.save(out_dir / "final.npy", report.final)
    for r, total in report.totals.items():
        np.save(out_dir / f"sum-round-{r}.npy", total)
    (out_dir / "summary.json").write_text(json.dumps(report.to_json(), indent=2, default=str), encoding="utf-8")
