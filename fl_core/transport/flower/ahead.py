"""Key setup ahead: round r+1's input-free stages ride on round r's exchanges.

On Flower every protocol stage costs one message round, and a message round costs a
ClientApp process start on every node (about 3 CPU-seconds per node, whatever the
payload). The stages of the masking protocol before the masked input (AdvertiseKeys:
two fresh X25519 public keys; ShareKeys: Shamir shares of the self-mask seed and of
the mask key, sealed to the neighbours) do not depend on the client's input
(``input_stage`` = 2). So while round r runs, the members of round r+1's cohort run
those stages for round r+1, one stage per exchange of round r: the advertisement
rides on round r's opening exchange, the sealed shares on its next one. Round r+1's
opening message then carries the model *and* the shares addressed to the node (the
server's masked-input request): the node trains and answers with its masked input,
and a steady-state round needs two Flower exchanges (opening + unmasking) instead of
four. The protocol's messages, their order and their checks are unchanged; only the
transport schedule moves. A cohort member that is not in round r gets standalone
``ahead`` packets in the same exchanges. Backends whose first messages depend on the
input (``input_stage`` 0, e.g. Paillier) never take this path.

The node keeps an :class:`AheadSession` (the round, the session seed, the parameters
the server claimed, the server messages it answered ahead and its replies) in its
Flower state. It answers ahead only the stages before the input stage; while it does,
its session holds a zero placeholder input that those stages never read. When the
round's opening message arrives, the node rebuilds the session from the seed with the
real input, replays the kept server messages and checks that it re-emits byte for
byte every reply it sent ahead (:func:`resume_session`): a backend whose early
messages did depend on the input, or parameters that differ from the node's own
federation, are refused (the node is a dropout for the round), never silently used.

Security:
    Nothing about the data leaves the node early: ahead, a node sends only what the
    input-free stages send anyway (public keys, sealed shares of fresh per-round
    secrets; Bonawitz et al. 2017, section 4). A server message of the input stage or
    later is refused ahead (:func:`advance`), so the placeholder input is never masked
    and sent. Shares dealt ahead are sealed under the node's own setup-terms digest (the
    round's clip is not known yet); the round's full terms are bound into the masks when
    the round opens (:mod:`fl_core.binding`). The session seed stays in the node's state like in any stage
    (:mod:`fl_core.transport.flower.client`). Tests: tests/integration/test_flower_ahead.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fl_core.binding import bind, setup_binding
from fl_core.config import RunConfig
from fl_core.transport.flower.options import config_from_json
from fl_core.transport.flower.policy import NodeFloor, SessionTerms, check_node_policy
from fl_core.transport.flower.sessions import AheadError, secure_sum_for, session_rng
from secagg import SERVER, Message, RingSpec, SecAggError

__all__ = [
    "AHEAD_STAGE",
    "AheadError",
    "AheadParams",
    "AheadPipeline",
    "AheadRound",
    "AheadSession",
    "advance",
    "ahead_request_fields",
    "outputs_from_fields",
    "request_from_fields",
    "resume_session",
    "supports_ahead",
]

AHEAD_STAGE = "ahead"
"""Packet stage of a standalone ahead request (to a next-cohort member not in the current round)."""

_REQ = "ahead"
_REQ_CONFIG = "ahead_config"
_SRV_STAGE = "ahead_srv_stage"
_SRV_PAYLOAD = "ahead_srv_payload"
_OUT_ROUND = "ahead_round"
_OUT_STAGE = "ahead_msg_stage"
_OUT_PAYLOAD = "ahead_msg_payload"


def supports_ahead(secure_sum: Any) -> bool:
    """True when the backend declares input-free first stages (``input_stage`` >= 1) and lists its stages."""
    return int(getattr(secure_sum, "input_stage", 0)) >= 1 and bool(getattr(secure_sum, "stages", ()))


def input_free_stages(secure_sum: Any) -> frozenset[str]:
    """The stages a node may answer before it has its input (those before ``input_stage``)."""
    return frozenset(tuple(secure_sum.stages)[: int(secure_sum.input_stage)])


@dataclass(frozen=True, slots=True)
class AheadParams:
    """What a node needs to open a session for a round it has not been sent the model of yet."""

    round_id: int
    config_json: str
    ring_bits: int
    dim: int
    max_clients: int
    min_survivors: int


def ahead_request_fields(p: AheadParams, messages: Sequence[Message] = ()) -> dict[str, Any]:
    """The packet fields asking a node to run round ``p.round_id``'s next input-free stage ahead."""
    req = {"round": p.round_id, "ring_bits": p.ring_bits, "dim": p.dim, "max_clients": p.max_clients}
    req["min_survivors"] = p.min_survivors
    return {
        _REQ: json.dumps(req, sort_keys=True),
        _REQ_CONFIG: p.config_json,
        _SRV_STAGE: [m.stage for m in messages],
        _SRV_PAYLOAD: [bytes(m.payload) for m in messages],
    }


def request_from_fields(fields: Mapping[str, Any], client: int) -> tuple[AheadParams, tuple[Message, ...]] | None:
    """The ahead request a packet carries (parameters and the server's messages to ``client``), or None.

    Raises:
        AheadError: the request is malformed.
    """
    if _REQ not in fields:
        return None
    try:
        req = json.loads(str(fields[_REQ]))
        params = AheadParams(
            round_id=int(req["round"]),
            config_json=str(fields[_REQ_CONFIG]),
            ring_bits=int(req["ring_bits"]),
            dim=int(req["dim"]),
            max_clients=int(req["max_clients"]),
            min_survivors=int(req["min_survivors"]),
        )
        stages = [str(x) for x in fields.get(_SRV_STAGE, [])]
        payloads = [bytes(x) for x in fields.get(_SRV_PAYLOAD, [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise AheadError(f"malformed ahead request: {exc}") from None
    if len(stages) != len(payloads):
        raise AheadError("malformed ahead request: message lists of different lengths")
    msgs = tuple(Message(SERVER, client, params.round_id, st, p) for st, p in zip(stages, payloads, strict=True))
    return params, msgs


def outputs_from_fields(fields: Mapping[str, Any], client: int, round_id: int) -> list[Message] | None:
    """The messages a node's reply carries for ``round_id`` (None when it carries none).

    Raises:
        AheadError: they are for another round, or malformed.
    """
    if _OUT_ROUND not in fields:
        return None
    try:
        got = int(fields[_OUT_ROUND])
        stages = [str(s) for s in fields[_OUT_STAGE]]
        payloads = [bytes(b) for b in fields[_OUT_PAYLOAD]]
    except (KeyError, TypeError, ValueError) as exc:
        raise AheadError(f"malformed ahead reply: {exc}") from None
    if got != round_id:
        raise AheadError(f"ahead reply for round {got}, expected round {round_id}")
    if len(stages) != len(payloads):
        raise AheadError("ahead reply has message lists of different lengths")
    return [Message(client, SERVER, round_id, s, p) for s, p in zip(stages, payloads, strict=True)]


# -- the node side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AheadSession:
    """What a node keeps between the stages it ran ahead for a round and that round's opening message."""

    params: AheadParams
    client: int
    session_seed: bytes
    seeded: bool
    history: tuple[Message, ...] = ()
    sent: tuple[tuple[str, bytes], ...] = ()

    def to_record(self) -> Any:
        from flwr.app import ConfigRecord

        p = self.params
        return ConfigRecord(
            {
                "round": p.round_id,
                "config": p.config_json,
                "ring_bits": p.ring_bits,
                "dim": p.dim,
                "max_clients": p.max_clients,
                "min_survivors": p.min_survivors,
                "client": self.client,
                "session_seed": self.session_seed,
                "seeded": self.seeded,
                "h_stage": [m.stage for m in self.history],
                "h_payload": [bytes(m.payload) for m in self.history],
                "s_stage": [s for s, _ in self.sent],
                "s_payload": [b for _, b in self.sent],
            }
        )

    @classmethod
    def from_record(cls, rec: Any) -> AheadSession:
        params = AheadParams(
            round_id=int(rec["round"]),
            config_json=str(rec["config"]),
            ring_bits=int(rec["ring_bits"]),
            dim=int(rec["dim"]),
            max_clients=int(rec["max_clients"]),
            min_survivors=int(rec["min_survivors"]),
        )
        client = int(rec["client"])
        history = tuple(
            Message(SERVER, client, params.round_id, str(s), bytes(b))
            for s, b in zip(rec["h_stage"], rec["h_payload"], strict=True)
        )
        sent = tuple((str(s), bytes(b)) for s, b in zip(rec["s_stage"], rec["s_payload"], strict=True))
        return cls(params, client, bytes(rec["session_seed"]), bool(rec["seeded"]), history, sent)


def advance(
    params: AheadParams,
    messages: Sequence[Message],
    client: int,
    node_config: Any,
    kept: AheadSession | None,
    *,
    terms: Callable[[RunConfig, NodeFloor], SessionTerms],
) -> tuple[dict[str, Any], AheadSession]:
    """Run the next input-free stage of ``client``'s session for ``params.round_id``.

    With no ``messages`` and nothing kept for that round, opens the session (its first
    messages, e.g. the key advertisement); otherwise rebuilds the kept session and
    answers the server's ``messages``. Returns (reply fields, state to keep).

    ``terms`` gives the session parameters the node derives from the configuration with
    its own federation (:func:`fl_core.transport.flower.policy.session_terms`); the
    server's parameters must equal them, and the session is built from the node's.

    Raises:
        NodePolicyError: the run is weaker than the node operator's floor.
        AheadError: the backend's first messages depend on the input; the server's
            secure-sum parameters differ from the node's own; a message is of the input
            stage or later (never answered without the input); the request does not
            continue the session kept for that round.
    """
    cfg = config_from_json(params.config_json)
    floor = check_node_policy(cfg, node_config)
    if cfg.secure_sum == "paillier":
        secure_sum_for(cfg, params.ring_bits, params.dim, params.max_clients, params.min_survivors)  # raises
    own = terms(cfg, floor)
    if (params.ring_bits, params.dim, params.max_clients, params.min_survivors) != (
        own.ring_bits,
        own.dim,
        own.max_clients,
        own.min_survivors,
    ):
        raise AheadError(
            f"round {params.round_id}: the server's secure-sum parameters (ring bits {params.ring_bits}, dimension "
            f"{params.dim}, cohort bound {params.max_clients}, min survivors {params.min_survivors}) differ from "
            f"this node's own ({own.ring_bits}, {own.dim}, {own.max_clients}, {own.min_survivors}): refused"
        )
    # Bound to the node's own setup terms only: the round's clip is not known yet, so this
    # session deals and holds shares (sealed under those terms) but can derive no mask.
    ss = bind(secure_sum_for(cfg, own.ring_bits, own.dim, own.max_clients, own.min_survivors), setup_binding(own.setup))
    if not supports_ahead(ss):
        raise AheadError(f"the {cfg.secure_sum} backend's first messages depend on the input: cannot run them ahead")
    allowed = input_free_stages(ss)
    late = sorted({m.stage for m in messages} - allowed)
    if late:
        raise AheadError(f"refusing to answer stage {late} of round {params.round_id} before having the input")
    placeholder = RingSpec(params.ring_bits).zeros(params.dim)  # never read by the input-free stages
    if kept is None or kept.params.round_id != params.round_id:
        if messages:
            raise AheadError(f"server messages for round {params.round_id} but no session was opened ahead for it")
        seeded = cfg.seed is not None
        seed = b"" if seeded else os.urandom(32)
        session = ss.client(client, params.round_id, session_rng(cfg, client, params.round_id, seed, seeded))
        out = list(session.start(placeholder))
        kept = AheadSession(params, client, seed, seeded)
    else:
        if kept.params != params or kept.client != client:
            raise AheadError(f"the ahead request for round {params.round_id} differs from the one that opened it")
        rng = session_rng(cfg, client, params.round_id, kept.session_seed, kept.seeded)
        session = ss.client(client, params.round_id, rng)
        session.start(placeholder)
        for m in kept.history:
            session.receive(m)
        out = [reply for m in messages for reply in session.receive(m)]
    new = AheadSession(
        params,
        client,
        kept.session_seed,
        kept.seeded,
        kept.history + tuple(messages),
        kept.sent + tuple((m.stage, bytes(m.payload)) for m in out),
    )
    fields = {
        _OUT_ROUND: params.round_id,
        _OUT_STAGE: [m.stage for m in out],
        _OUT_PAYLOAD: [bytes(m.payload) for m in out],
    }
    return fields, new


def resume_session(
    ahead: AheadSession, *, round_id: int, client: int, config_json: str, own: AheadParams, x: Any, rng: Any, ss: Any
) -> Any:
    """Rebuild the session run ahead, now with the real input ``x``; returns it past the kept stages.

    ``own`` holds the parameters the node derives from its own federation; ``rng`` is the
    session's random source rebuilt from the kept seed; ``ss`` the node's secure sum, bound
    to the terms the node checked for the round (their setup digest is the one the shares
    were sealed under ahead, so the re-emission is byte for byte; the round digest, known
    only now, keys the masks).

    Raises:
        AheadError: the kept session is for another round, client or configuration; the
            server's parameters differ from the node's own; or the rebuilt session does
            not re-emit what was sent ahead.
    """
    p = ahead.params
    if (p.round_id, ahead.client) != (round_id, client):
        raise AheadError(
            f"the opening message of round {round_id} (client {client}) continues a session run ahead, but this "
            f"node ran round {p.round_id} (client {ahead.client}) ahead: it is a dropout for this round"
        )
    if p.config_json != config_json:
        raise AheadError(f"round {round_id}: the configuration differs from the one the session was opened for")
    if own != AheadParams(p.round_id, config_json, p.ring_bits, p.dim, p.max_clients, p.min_survivors):
        raise AheadError(
            f"round {round_id}: the server's secure-sum parameters (ring bits, dimension, cohort bound, "
            "min survivors) differ from this node's own: refused"
        )
    session = ss.client(client, round_id, rng)
    out = list(session.start(x))
    for m in ahead.history:
        out.extend(session.receive(m))
    if tuple((m.stage, bytes(m.payload)) for m in out) != ahead.sent:
        raise AheadError(
            f"round {round_id}: the session rebuilt with the input does not re-emit what it sent ahead "
            "(the backend's early messages depend on the input): refused"
        )
    return session


# -- the server side ------------------------------------------------------------------------


@dataclass
class AheadRound:
    """A round whose input-free stages ran, or are running, during the previous round."""

    round_id: int
    members: tuple[int, ...]
    server: Any
    pending: list[Message] = field(default_factory=list)
    """The server's messages of the round's next stage, not delivered yet."""
    started: bool = False
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)


class AheadPipeline:
    """The server's half: which ahead request rides on each exchange, and what the replies advance."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.current: AheadRound | None = None

    def take(self, round_id: int, members: tuple[int, ...]) -> AheadRound | None:
        """The round's ahead state, if its stages ran ahead for exactly this cohort (then forgotten here)."""
        ar, self.current = self.current, None
        if ar is None or ar.round_id != round_id or ar.members != members or not ar.started:
            return None
        return ar

    def request(
        self, fed: Any, round_id: int, config_json: str, members: tuple[int, ...] | None
    ) -> dict[int, dict[str, Any]]:
        """Per next-cohort client, the fields of the ahead request for round ``round_id`` ({}: none now)."""
        if not (self.enabled and members and supports_ahead(fed.secure_sum)):
            return {}
        ar = self.current
        if ar is None or ar.round_id != round_id or ar.members != members:
            ar = self.current = AheadRound(round_id, members, fed.secure_sum.server(members, round_id))
        if ar.server.done:
            return {}
        if ar.started and (not ar.pending or ar.pending[0].stage not in input_free_stages(fed.secure_sum)):
            return {}  # nothing left that may run before the input
        params = AheadParams(
            round_id=round_id,
            config_json=config_json,
            ring_bits=fed.plan.ring.bits,
            dim=fed.plan.dim,
            max_clients=fed.sampler.max_cohort(),
            min_survivors=int(fed.privacy.min_survivors),
        )
        if not ar.started:
            return {c: ahead_request_fields(params) for c in members}
        by_client: dict[int, list[Message]] = {}
        for m in ar.pending:
            by_client.setdefault(m.recipient, []).append(m)
            ar.bytes_down[m.recipient] = ar.bytes_down.get(m.recipient, 0) + m.size
        return {c: ahead_request_fields(params, ms) for c, ms in by_client.items() if c in members}

    def collect(self, replies: Mapping[int, Mapping[str, Any]], rejected: list[str]) -> None:
        """Feed the replies' ahead messages to the round's server session; close the stage for the silent."""
        ar = self.current
        if ar is None:
            return
        out: list[Message] = []
        answered: list[int] = []
        stage = ar.pending[0].stage if ar.pending else ""
        for c in sorted(replies):
            if c not in ar.members:
                continue
            try:
                msgs = outputs_from_fields(replies[c], c, ar.round_id)
                if msgs is None:
                    continue
                for m in msgs:
                    stage = stage or m.stage
                    ar.bytes_up[c] = ar.bytes_up.get(c, 0) + m.size
                    out.extend(ar.server.receive(m))
                answered.append(c)
            except (AheadError, SecAggError) as exc:
                rejected.append(f"client {c} (round {ar.round_id}, ahead): {type(exc).__name__}: {exc}")
        if not out and not ar.server.done:
            out.extend(ar.server.close_stage())  # the exchange's deadline passed: the silent are dropouts
        ar.started, ar.pending = True, out
        ar.stages.append({"stage": f"{stage or 'advertise'} (ahead)", "answered": answered, "wall_s": 0.0})
