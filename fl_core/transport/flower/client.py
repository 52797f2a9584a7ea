"""The Flower ClientApp side of privagg: one node runs one client's half of each round.

A round reaches a SuperNode as a sequence of Flower messages, one per protocol
stage. The opening message (``train.privagg_round``) carries the global model and
the run configuration: the node trains with the user's ``train_fn``, clips, adds its
noise share and encodes (``Federation.client_contribution``, exactly as in the
in-process simulation), opens its secure-sum session and answers with the session's
first messages. Each later message (``train.privagg_stage``) carries the server's
secure-sum messages of one stage; the node answers with its session's replies.

Flower runs every message in a fresh ClientApp process and keeps only
``context.state`` (a RecordDict held by the SuperNode) between them. Sessions are
sans-I/O and deterministic given their random source, so instead of serialising a
session's private state the node stores its input, the seed of its session's random
source and the server messages it has accepted, and rebuilds the session by
replaying them (which re-derives the same keys and re-checks every message).

Security:
    The session seed never leaves the node: it lives in ``context.state`` in the
    SuperNode's memory, like the session keys it expands to. Without a run seed it
    is 32 fresh bytes from ``os.urandom`` per round, expanded by
    :class:`dp.randomness.SeededRandomSource` (SHAKE-256, a cryptographic XOF), so
    the keys are as strong as the OS CSPRNG's (Bonawitz et al. 2017, section 4 assume
    fresh uniformly random keys per round). With a run seed the keys, like the DP
    noise, are only as secret as that seed, so a node takes part only if its own
    operator opted in (``allow-seeded-run``; :mod:`fl_core.transport.flower.policy`
    checks this and every other setting that changes the node's protection before the
    node builds or trains anything). A seeded stream is keyed by the round's attempt, and
    a node opens each (round, attempt) once, in order, so a round retried after an abort
    never reuses the keys, masks or noise of the attempt before it
    (:func:`fl_core.transport.flower.sessions.check_fresh_opening`). A replayed session
    emits nothing: only replies to the current stage are sent, and a stage message
    that does not continue the stored round is refused
    (tests/integration/test_flower.py::test_client_refuses_stage_of_another_round).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fl_core.binding import bind
from fl_core.config import RunConfig
from fl_core.errors import ConfigError, FLError
from fl_core.transport.flower.ahead import (
    AHEAD_STAGE,
    AheadParams,
    AheadSession,
    advance,
    request_from_fields,
    resume_session,
)
from fl_core.transport.flower.codec import (
    CLIP_FIELD,
    SIGNATURE_FIELD,
    TRAIN_STAGE,
    FlowerCodecError,
    StagePacket,
    vector_from_bytes,
    vector_to_bytes,
)
from fl_core.transport.flower.options import config_from_json
from fl_core.transport.flower.policy import (
    NodeFloor,
    NodePolicyError,
    SessionTerms,
    check_node_policy,
    check_round_terms,
    client_id_of,
    session_terms,
)
from fl_core.transport.flower.record import RecordState
from fl_core.transport.flower.sessions import (
    ReopenedRoundError,
    check_fresh_opening,
    opening_attempt,
    secure_sum_for,
    session_rng,
)
from secagg import Message, RingSpec
from secagg.masking import TermsBinding

__all__ = [
    "TRAIN_STAGE",
    "ClientStateError",
    "KeptTerms",
    "NodePolicyError",
    "NodeSession",
    "NodeState",
    "ReopenedRoundError",
    "check_node_policy",
    "client_id_of",
    "handle_hello",
    "handle_packet",
    "handle_round",
    "handle_stage",
    "node_task",
    "task_node_config",
]


class ClientStateError(FLError):
    """A stage message does not continue the round this node is in (no state, or another round)."""


@dataclass(frozen=True, slots=True)
class NodeSession:
    """What a node keeps between the stages of one round (in ``context.state``)."""

    round_id: int
    client: int
    config_json: str
    ring_bits: int
    dim: int
    max_clients: int
    min_survivors: int
    session_seed: bytes
    seeded: bool
    x: bytes
    history: tuple[Message, ...] = ()
    terms_setup: bytes = b""
    """The digests of the terms this node checked and uses this round (:class:`secagg.masking.TermsBinding`),
    computed by the node itself at the opening: every rebuilt session is bound to them."""
    terms_round: bytes = b""
    attempt: int = 0
    """The round's attempt (0, or the retries after aborts): keys a seeded session's randomness."""

    @property
    def binding(self) -> TermsBinding:
        """The node's own terms binding (a typed error if the kept digests are malformed)."""
        return TermsBinding(self.terms_setup, self.terms_round)

    def to_record(self) -> Any:
        from flwr.app import ConfigRecord

        return ConfigRecord(
            {
                "round": self.round_id,
                "attempt": self.attempt,
                "client": self.client,
                "config": self.config_json,
                "ring_bits": self.ring_bits,
                "dim": self.dim,
                "max_clients": self.max_clients,
                "min_survivors": self.min_survivors,
                "session_seed": self.session_seed,
                "seeded": self.seeded,
                "x": self.x,
                "h_sender": [m.sender for m in self.history],
                "h_recipient": [m.recipient for m in self.history],
                "h_round": [m.round_id for m in self.history],
                "h_stage": [m.stage for m in self.history],
                "h_payload": [m.payload for m in self.history],
                "terms_setup": self.terms_setup,
                "terms_round": self.terms_round,
            }
        )

    @classmethod
    def from_record(cls, rec: Any) -> NodeSession:
        hist = tuple(
            Message(s, r, rid, st, p)
            for s, r, rid, st, p in zip(
                rec["h_sender"], rec["h_recipient"], rec["h_round"], rec["h_stage"], rec["h_payload"], strict=True
            )
        )
        return cls(
            round_id=int(rec["round"]),
            client=int(rec["client"]),
            config_json=str(rec["config"]),
            ring_bits=int(rec["ring_bits"]),
            dim=int(rec["dim"]),
            max_clients=int(rec["max_clients"]),
            min_survivors=int(rec["min_survivors"]),
            session_seed=bytes(rec["session_seed"]),
            seeded=bool(rec["seeded"]),
            x=bytes(rec["x"]),
            history=hist,
            terms_setup=bytes(rec["terms_setup"]),
            terms_round=bytes(rec["terms_round"]),
            attempt=int(rec.get("attempt", 0)),
        )


# -- the pieces, independent of Flower's process model (tested directly) ------------


TaskSpec = Any
"""What a node runs: a :class:`fl_core.task.Task`, a task module (object, dotted name or ``.py`` path),
or None for privagg's built-in demo configured by the run configuration."""

_TASKS: dict[str, Any] = {}


def node_task(spec: TaskSpec, cfg: RunConfig) -> Any:
    """The task this node runs: its own (``spec``), never one the server names.

    A run configuration's ``task`` is the server's; a node ignores it and runs the task its
    ClientApp was built with (None: the built-in demo, whose model and data follow the run
    configuration).

    Raises:
        TaskError: the task module cannot be loaded or lacks a function.
    """
    from fl_core.task import Task, builtin_task, load_task

    if isinstance(spec, Task):
        return spec
    if spec is None:
        return builtin_task(cfg.replace(task=None, node_config=None))
    key = spec.__name__ if hasattr(spec, "__name__") else str(spec)
    if key not in _TASKS:
        _TASKS[key] = load_task(spec)
    return _TASKS[key]


def task_node_config(node_config: Any, population: int) -> dict[str, Any]:
    """What the task's ``load_data`` gets on this node: the operator's node config, with ``partition-id``
    and ``num-partitions`` (the run's population when the operator did not set it); ``{partition-id}``
    in a value is replaced as in the in-process simulation.

    Raises:
        ConfigError: no integer ``partition-id``.
        DataError: ``partition-id`` is outside the population.
    """
    from fl_core.task import NUM_PARTITIONS, PARTITION_ID, node_config_for

    client = client_id_of(node_config)
    own = {k: v for k, v in dict(node_config or {}).items() if k not in (PARTITION_ID, NUM_PARTITIONS)}
    n = (node_config or {}).get(NUM_PARTITIONS, population)
    return node_config_for(client, int(n), own)


def _client_federation(cfg: RunConfig, *, task: TaskSpec = None, node_config: Any = None) -> Any:
    """The node's Federation: same model, pipeline and secure sum as the server's, its own data only.

    Nodes never write the epsilon ledger (the server does), so none is opened.
    """
    return _client_build(cfg, task=task, node_config=node_config)[0]


def _client_build(
    cfg: RunConfig,
    paillier: Callable[[Any], Any] | None = None,
    *,
    task: TaskSpec = None,
    node_config: Any = None,
) -> tuple[Any, Any]:
    """The node's Federation and its record-DP wrapper (None without record-level DP).

    The federation holds exactly this node's client (``role="node"``: asking for another
    client's data raises); its data is loaded from the task's ``load_data`` with this node's
    own configuration when first used. ``paillier``: the backend factory of a Paillier round
    (the key the server sent); the node then generates no key of its own.
    """
    from fl_core.backend_paillier import keys_from
    from fl_core.runner import build_federation

    nc = node_config if node_config is not None else {"partition-id": 0}
    own_cfg = cfg.replace(task=None, node_config=None)  # the server's task and loader keys are not the node's
    with keys_from(paillier) if paillier is not None else contextlib.nullcontext():
        fed, _data, extra = build_federation(
            own_cfg,
            node_task(task, cfg),
            role="node",
            client=client_id_of(nc),
            node_config=task_node_config(nc, cfg.clients),
            open_ledger=False,
        )
    return fed, extra.get("_record_dp")


def handle_hello(node_config: Any, packet: StagePacket | None = None, *, task: TaskSpec = None) -> StagePacket:
    """Answer the server's start-up query with this node's client id, after loading and checking its data.

    When the hello carries the run configuration, the node loads its own data with the
    task's ``load_data`` now, so a missing data path or a loader returning no dataset is
    refused at start-up rather than in a round; the reply then names the samples' shape
    and dtype (never the data or its size), which the server compares across nodes.

    Raises:
        ConfigError: the node has no integer ``partition-id``.
        DataError: ``load_data`` failed or returned no usable dataset (the typed error of
            :func:`fl_core.task.load_client_data`, naming the node config).
        TaskError: the task module cannot be loaded.
    """
    client = client_id_of(node_config)
    fields: dict[str, Any] = {"client": client}
    if packet is not None and "config" in packet.fields:
        from fl_core.task import load_client_data

        cfg = config_from_json(str(packet.fields["config"]))
        nc = task_node_config(node_config, cfg.clients)
        _data, sig = load_client_data(node_task(task, cfg), nc, client=client)
        fields[SIGNATURE_FIELD] = "" if sig is None else str(sig)
    return StagePacket(0, "hello", (), fields)


def handle_round(
    packet: StagePacket,
    node_config: Any,
    ahead: AheadSession | None = None,
    record: RecordState | None = None,
    *,
    on_record: Callable[[RecordState], None] | None = None,
    task: TaskSpec = None,
) -> tuple[StagePacket, NodeSession | None]:
    """The opening message of a round: train, clip, noise, encode, start the session.

    ``task`` is what this node runs (:func:`node_task`): its ``train_fn`` trains on the data
    its ``load_data`` returns for this node's own configuration.

    Returns the reply and the session to keep for the round's later stages (None for
    Paillier, whose client sends its ciphertexts in this reply and nothing after).

    Paillier: the packet carries the public key; it is checked against the node's pin and
    key-size floor before any training (:func:`fl_core.transport.flower.paillier.client_public_key`),
    and the node encrypts under it (it never generates a key).

    Record-level DP: ``record`` is this node's accountant kept from its earlier rounds; it
    is restored before training, and ``on_record`` receives the updated one right after
    training (before anything else can fail), so a node never forgets privacy it spent.
    The reply reports the node's record-level epsilon (:mod:`fl_core.transport.flower.record`).

    When the node ran this round's input-free stages ahead (``ahead``,
    :mod:`fl_core.transport.flower.ahead`), the packet carries the server's messages of
    the next stage (masking: the shares sealed to this node): the session is rebuilt from
    the kept seed with the real input, checked to re-emit what it sent ahead, and answers
    them (masking: with the masked input).

    Raises:
        ClientStateError: the server addressed another client than this node, or sent
            messages of a session run ahead to a node that ran none for this round (or
            with a retried attempt: only a round's first attempt runs ahead).
        AheadError: the session kept from the stages run ahead does not fit this round
            (see ``resume_session``).
        NodePolicyError: the run is weaker than the node operator's floor.
        KeyPinError: a Paillier key other than the one the node pins.
        FlowerCodecError: the packet lacks the model, the configuration or (Paillier) the key.
        ConfigError, FLError: invalid configuration or a failing ``train_fn``.
    """
    reply, session, _record, _privacy = _open_round(packet, node_config, ahead, record, on_record, task)
    return reply, session


def _open_round(
    packet: StagePacket,
    node_config: Any,
    ahead: AheadSession | None,
    record: RecordState | None,
    on_record: Callable[[RecordState], None] | None,
    task: TaskSpec = None,
    privacy: bytes | None = None,
    on_privacy: Callable[[bytes], None] | None = None,
) -> tuple[StagePacket, NodeSession | None, RecordState | None, bytes | None]:
    from fl_core.transport.flower import record as record_state
    from fl_core.transport.flower.budget import node_budget

    client = client_id_of(node_config)
    f = packet.fields
    for key in ("config", "client", "global", "dim", CLIP_FIELD):
        if key not in f:
            raise FlowerCodecError(f"the opening message of round {packet.round_id} lacks {key!r}")
    if f["client"] != client:
        raise ClientStateError(
            f"the server sent client {f['client']}'s round to the node of client {client} "
            "(check each SuperNode's partition-id)"
        )
    cfg = config_from_json(str(f["config"]))
    floor = check_node_policy(cfg, node_config)  # before building or loading anything
    r = packet.round_id
    attempt = opening_attempt(f)
    if packet.messages and attempt != 0:
        # Stages run ahead belong to a round's first attempt (they run before it opens); a retry
        # starts a fresh session.
        raise ClientStateError(
            f"the opening of round {r}, attempt {attempt}, continues a session run ahead: refused (only a "
            "round's first attempt runs ahead)"
        )
    paillier = None
    if cfg.secure_sum == "paillier":
        from fl_core.transport.flower.paillier import client_factory, client_public_key

        paillier = client_factory(client_public_key(f, node_config), node_config)
        if packet.messages:
            raise ClientStateError(f"the opening message of paillier round {r} carries protocol messages: refused")
    fed, record_dp = _client_build(cfg, paillier, task=task, node_config=node_config)
    if fed.dim != f["dim"]:
        raise ConfigError(
            f"the server's model has {f['dim']} values, this node's has {fed.dim}: different model or privagg version",
            option="model",
        )
    # The round's clip, the survivors the noise share is sized for, the round's epsilon: checked
    # against the floor before training; from here on the node clips at exactly the announced clip.
    checked = check_round_terms(fed, floor, clip=f.get(CLIP_FIELD))
    terms = checked.session
    # The node's session is bound to the digests of the terms it just checked and will use:
    # its masks cancel only against nodes that used the same ones (fl_core.binding).
    ss = bind(fed.secure_sum, checked.binding)
    # The node's own budget: checked before training, charged once the input is ready and
    # before any reply leaves (Federation.client_contribution calls the guard).
    kept = {"privacy": privacy}

    def charged(client_record: Any) -> None:
        blob = client_record.to_bytes()
        kept["privacy"] = blob
        if on_privacy is not None:
            on_privacy(blob)

    fed.client_guard = node_budget(fed, node_config, client, privacy, on_charge=charged)
    if packet.messages and ahead is None:
        raise ClientStateError(
            f"the opening message of round {r} continues a session run ahead, but this node ran none "
            "(it restarted, or missed the ahead requests): it is a dropout for this round"
        )
    global_vec = vector_from_bytes(bytes(f["global"]), np.float32, fed.dim)
    if record_dp is not None:
        record_state.restore(record_dp, client, record)
    if attempt:
        fed.attempts[r] = attempt  # the client's noise is keyed by the attempt, as in the in-process simulation
    vec, clip = fed.client_contribution(client, r, global_vec, fed.source.get(client))
    fields: dict[str, Any] = {"clipped": bool(clip.clipped), "saturated": int(clip.saturated)}
    if record_dp is not None:
        record, eps_fields = record_state.capture(record_dp, client)
        fields.update(eps_fields)
        if on_record is not None:
            on_record(record)
    if paillier is not None:  # one message, nothing after it: no session to keep
        seeded = cfg.seed is not None
        seed = b"" if seeded else os.urandom(32)
        out = ss.client(client, r, session_rng(cfg, client, r, seed, seeded, attempt)).start(vec)
        return StagePacket(r, TRAIN_STAGE, tuple(out), fields), None, record, kept["privacy"]
    if packet.messages and ahead is not None:  # (messages without an ahead session were refused above)
        seed, seeded = ahead.session_seed, ahead.seeded
        own = AheadParams(r, str(f["config"]), terms.ring_bits, terms.dim, terms.max_clients, terms.min_survivors)
        rng = session_rng(cfg, client, r, seed, seeded)
        session = resume_session(
            ahead, round_id=r, client=client, config_json=str(f["config"]), own=own, x=vec, rng=rng, ss=ss
        )
        out = [reply for m in packet.messages for reply in session.receive(m)]
    else:
        seeded = cfg.seed is not None
        seed = b"" if seeded else os.urandom(32)
        session = ss.client(client, r, session_rng(cfg, client, r, seed, seeded, attempt))
        out = session.start(vec)
    state = NodeSession(
        round_id=r,
        client=client,
        config_json=str(f["config"]),
        ring_bits=terms.ring_bits,
        dim=terms.dim,
        max_clients=terms.max_clients,
        min_survivors=terms.min_survivors,
        session_seed=seed,
        seeded=seeded,
        x=vector_to_bytes(vec),
        history=(ahead.history if packet.messages and ahead is not None else ()) + tuple(packet.messages),
        terms_setup=checked.binding.setup,
        terms_round=checked.binding.round or b"",
        attempt=attempt,
    )
    reply = StagePacket(r, TRAIN_STAGE, tuple(out), fields)
    return reply, state, record, kept["privacy"]


def handle_stage(packet: StagePacket, state: NodeSession | None) -> tuple[StagePacket, NodeSession]:
    """A later stage: rebuild the session by replay, feed it the server's messages, answer.

    Raises:
        ClientStateError: no round is open on this node, or the packet is of another round.
        secagg.RemoteProtocolError: the server's messages fail the session's checks.
    """
    if state is None:
        raise ClientStateError(
            f"stage {packet.stage!r} of round {packet.round_id} arrived but this node holds no open round "
            "(it restarted, or missed the round's opening message): it is a dropout for this round"
        )
    if packet.round_id != state.round_id:
        raise ClientStateError(
            f"stage {packet.stage!r} of round {packet.round_id} arrived while this node is in round "
            f"{state.round_id}: refused (late or replayed)"
        )
    cfg = config_from_json(state.config_json)
    ss = bind(secure_sum_for(cfg, state.ring_bits, state.dim, state.max_clients, state.min_survivors), state.binding)
    ring = RingSpec(state.ring_bits)
    x = vector_from_bytes(state.x, ring.dtype, state.dim)
    session = ss.client(
        state.client,
        state.round_id,
        session_rng(cfg, state.client, state.round_id, state.session_seed, state.seeded, state.attempt),
    )
    session.start(x)
    for m in state.history:  # replay: re-derives the same keys and re-checks every message
        session.receive(m)
    out: list[Message] = []
    for m in packet.messages:
        out.extend(session.receive(m))
    new_state = NodeSession(
        round_id=state.round_id,
        client=state.client,
        config_json=state.config_json,
        ring_bits=state.ring_bits,
        dim=state.dim,
        max_clients=state.max_clients,
        min_survivors=state.min_survivors,
        session_seed=state.session_seed,
        seeded=state.seeded,
        x=state.x,
        history=state.history + tuple(packet.messages),
        terms_setup=state.terms_setup,
        terms_round=state.terms_round,
        attempt=state.attempt,
    )
    return StagePacket(state.round_id, packet.stage, tuple(out)), new_state


@dataclass(frozen=True, slots=True)
class KeptTerms:
    """The session terms the node derived and checked for one run configuration (reused by stages run ahead)."""

    config_json: str
    terms: SessionTerms

    def to_record(self) -> Any:
        from flwr.app import ConfigRecord

        t = self.terms
        return ConfigRecord(
            {
                "config": self.config_json,
                "ring_bits": t.ring_bits,
                "dim": t.dim,
                "max_clients": t.max_clients,
                "min_survivors": t.min_survivors,
                "setup": t.setup,
            }
        )

    @classmethod
    def from_record(cls, rec: Any) -> KeptTerms:
        terms = SessionTerms(
            int(rec["ring_bits"]),
            int(rec["dim"]),
            int(rec["max_clients"]),
            int(rec["min_survivors"]),
            bytes(rec["setup"]),
        )
        return cls(str(rec["config"]), terms)


@dataclass(frozen=True, slots=True)
class NodeState:
    """Everything a node keeps between messages.

    The open round's session, the next round's session run ahead, (record-level DP) the
    node's Opacus accountant, which outlives rounds, the session terms it checked, and its
    own privacy record (which outlives runs).
    """

    session: NodeSession | None = None
    ahead: AheadSession | None = None
    record: RecordState | None = None
    terms: KeptTerms | None = None
    privacy: bytes | None = None
    """The node's own privacy record (:mod:`fl_core.transport.flower.budget`), when kept in memory."""
    opened: tuple[int, int] | None = None
    """The last (round, attempt) the server opened on this node: a later opening must come after it."""


def _terms_for(
    node_config: Any, kept: KeptTerms | None, task: TaskSpec = None
) -> Callable[[RunConfig, NodeFloor], SessionTerms]:
    """The node's own session terms for a configuration: kept from an opening of it, or derived now."""

    def derive(cfg: RunConfig, floor: NodeFloor) -> SessionTerms:
        from fl_core.transport.flower.options import config_to_json

        if kept is not None and kept.config_json == config_to_json(cfg):
            return kept.terms
        return session_terms(_client_federation(cfg, task=task, node_config=node_config), floor, cfg.dp)

    return derive


def handle_packet(
    packet: StagePacket,
    node_config: Any,
    state: NodeState,
    *,
    on_record: Callable[[RecordState], None] | None = None,
    task: TaskSpec = None,
    on_privacy: Callable[[bytes], None] | None = None,
) -> tuple[StagePacket, NodeState]:
    """Answer one privagg packet (a round's opening, a stage, or a standalone advertise request).

    A packet may also ask the node to run the next round's next input-free stage
    (:mod:`fl_core.transport.flower.ahead`); its messages ride on the reply.

    ``on_record`` (record-level DP) and ``task``: see :func:`handle_round`. ``on_privacy``
    receives the node's privacy record (bytes) as soon as a round is charged to it.

    An opening names its round's attempt (``attempt``, 0 before any abort): the node keys its
    seeded randomness by it and refuses an opening that does not come after the last one it
    opened (``state.opened``), so no attempt is ever opened twice.

    Raises:
        ReopenedRoundError: the opening repeats, or precedes, one this node already opened.
        The errors of :func:`handle_round`, :func:`handle_stage` and
        :func:`fl_core.transport.flower.ahead.advance`.
    """
    if packet.stage == TRAIN_STAGE:
        opened = (packet.round_id, opening_attempt(packet.fields))
        check_fresh_opening(state.opened, *opened)
        ahead = state.ahead if state.ahead is not None and state.ahead.params.round_id == packet.round_id else None
        reply, session, record, privacy = _open_round(
            packet, node_config, ahead, state.record, on_record, task, state.privacy, on_privacy
        )
        terms = state.terms
        if session is not None:
            terms = KeptTerms(
                session.config_json,
                SessionTerms(
                    session.ring_bits, session.dim, session.max_clients, session.min_survivors, session.terms_setup
                ),
            )
        new = NodeState(session, None, record, terms, privacy, opened)
    elif packet.stage == AHEAD_STAGE:
        reply, new = StagePacket(packet.round_id, AHEAD_STAGE), state
    else:
        reply, stage_session = handle_stage(packet, state.session)
        new = replace(state, session=stage_session)
    client = client_id_of(node_config)
    req = request_from_fields(packet.fields, client)
    if req is not None:
        params, msgs = req
        kept = new.ahead if new.ahead is not None and new.ahead.params.round_id == params.round_id else None
        fields, kept = advance(params, msgs, client, node_config, kept, terms=_terms_for(node_config, new.terms, task))
        reply = StagePacket(reply.round_id, reply.stage, reply.messages, {**reply.fields, **fields})
        new = replace(new, ahead=kept)
    return reply, new
