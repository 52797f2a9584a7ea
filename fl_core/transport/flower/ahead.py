"""Key advertisement one exchange ahead: round r+1's first protocol stage rides on round r's last exchange.

On Flower every protocol stage costs one message round, and a message round costs a
ClientApp process start on every node (about 3 CPU-seconds per node, whatever the
payload). The first stage of the masking protocol (AdvertiseKeys: two fresh X25519
public keys) does not depend on the client's input, so the server asks the members
of round r+1's cohort to advertise their round-(r+1) keys in the same exchange as
round r's final stage (unmasking). Round r+1's opening message then carries the
model *and* the neighbours' keys (the server's ShareKeys broadcast); the node trains
and answers with its sealed shares. The protocol's messages, their order and their
checks are unchanged; only the transport schedule moves: a steady-state round takes
one Flower exchange less. A cohort member that was not in round r gets a standalone
``advertise`` packet in that same exchange. Backends whose first messages depend on
the input (``input_stage`` 0, e.g. Paillier) never take this path.

The node keeps an :class:`AheadSession` (the round, the session seed, the parameters
the server claimed and the advertisement it sent) in its Flower state. When the
opening message of that round arrives, the node rebuilds its session from the seed
with the real input and checks that it re-emits byte for byte the advertisement it
sent (:func:`resume_session`): a backend whose advertisement did depend on the input,
or parameters that differ from the node's own federation, are refused (the node is a
dropout for the round), never silently used.

Security:
    Nothing about the data leaves the node early: the advertisement is two public
    keys (and, with identity keys, a signature over them), exactly what the first
    stage sends anyway, and they are fresh per round (Bonawitz et al. 2017, section 4).
    The session seed stays in the node's state like in any stage
    (:mod:`fl_core.transport.flower.client`). Tests:
    tests/integration/test_flower_ahead.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fl_core.errors import FLError
from secagg import SERVER, Message, RingSpec

__all__ = [
    "ADVERTISE_STAGE",
    "AheadParams",
    "AheadSession",
    "AheadError",
    "advertise",
    "ahead_request_fields",
    "advertisement_from_fields",
    "pending_members",
    "request_from_fields",
    "resume_session",
    "supports_ahead",
]

ADVERTISE_STAGE = "advertise"
"""Packet stage of a standalone request to advertise the next round's keys."""

_REQ = "ahead"
_REQ_CONFIG = "ahead_config"
_ADV_STAGE = "ahead_msg_stage"
_ADV_PAYLOAD = "ahead_msg_payload"
_ADV_ROUND = "ahead_round"


class AheadError(FLError):
    """An early key advertisement cannot be used (other round, other parameters, input-dependent keys)."""


def supports_ahead(secure_sum: Any) -> bool:
    """True when the backend's first messages do not carry the input and it names its final stage."""
    return int(getattr(secure_sum, "input_stage", 0)) >= 1 and bool(getattr(secure_sum, "final_stage", ""))


@dataclass(frozen=True, slots=True)
class AheadParams:
    """What a node needs to open a session for a round it has not been sent the model of yet."""

    round_id: int
    config_json: str
    ring_bits: int
    dim: int
    max_clients: int
    min_survivors: int


def ahead_request_fields(p: AheadParams) -> dict[str, Any]:
    """The packet fields asking a node to advertise its keys for round ``p.round_id``."""
    req = {"round": p.round_id, "ring_bits": p.ring_bits, "dim": p.dim, "max_clients": p.max_clients}
    req["min_survivors"] = p.min_survivors
    return {_REQ: json.dumps(req, sort_keys=True), _REQ_CONFIG: p.config_json}


def request_from_fields(fields: Mapping[str, Any]) -> AheadParams | None:
    """The advertise-ahead request carried by a packet, or None.

    Raises:
        AheadError: the request is malformed.
    """
    if _REQ not in fields:
        return None
    try:
        req = json.loads(str(fields[_REQ]))
        return AheadParams(
            round_id=int(req["round"]),
            config_json=str(fields[_REQ_CONFIG]),
            ring_bits=int(req["ring_bits"]),
            dim=int(req["dim"]),
            max_clients=int(req["max_clients"]),
            min_survivors=int(req["min_survivors"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AheadError(f"malformed advertise-ahead request: {exc}") from None


@dataclass(frozen=True, slots=True)
class AheadSession:
    """What a node keeps between advertising its keys for a round and that round's opening message."""

    params: AheadParams
    client: int
    session_seed: bytes
    seeded: bool
    advert: tuple[tuple[str, bytes], ...]

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
                "a_stage": [s for s, _ in self.advert],
                "a_payload": [b for _, b in self.advert],
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
        advert = tuple((str(s), bytes(b)) for s, b in zip(rec["a_stage"], rec["a_payload"], strict=True))
        return cls(params, int(rec["client"]), bytes(rec["session_seed"]), bool(rec["seeded"]), advert)


def advertise(params: AheadParams, client: int, node_config: Any) -> tuple[dict[str, Any], AheadSession]:
    """Open ``client``'s session for ``params.round_id`` and return (reply fields, state to keep).

    Raises:
        NodePolicyError: the run is weaker than the node operator's floor.
        AheadError: the backend's first messages depend on the input.
    """
    from fl_core.transport.flower.client import _secure_sum, _session_rng, check_node_policy
    from fl_core.transport.flower.options import config_from_json

    cfg = config_from_json(params.config_json)
    check_node_policy(cfg, node_config)
    ss = _secure_sum(cfg, params.ring_bits, params.dim, params.max_clients, params.min_survivors)
    if not supports_ahead(ss):
        raise AheadError(f"the {cfg.secure_sum} backend's first messages depend on the input: cannot advertise ahead")
    seeded = cfg.seed is not None
    seed = b"" if seeded else os.urandom(32)
    session = ss.client(client, params.round_id, _session_rng(cfg, client, params.round_id, seed, seeded))
    # The input is not known yet; the backend promises (input_stage >= 1) that its first
    # messages ignore it, and resume_session() re-checks that promise with the real input.
    out = session.start(RingSpec(params.ring_bits).zeros(params.dim))
    advert = tuple((m.stage, bytes(m.payload)) for m in out)
    fields = {
        _ADV_ROUND: params.round_id,
        _ADV_STAGE: [s for s, _ in advert],
        _ADV_PAYLOAD: [b for _, b in advert],
    }
    return fields, AheadSession(params, client, seed, seeded, advert)


def advertisement_from_fields(fields: Mapping[str, Any], client: int, round_id: int) -> list[Message] | None:
    """The advertisement messages a node's reply carries for ``round_id`` (None when it carries none).

    Raises:
        AheadError: the advertisement is for another round or malformed.
    """
    if _ADV_ROUND not in fields:
        return None
    try:
        got = int(fields[_ADV_ROUND])
        stages = [str(s) for s in fields[_ADV_STAGE]]
        payloads = [bytes(b) for b in fields[_ADV_PAYLOAD]]
    except (KeyError, TypeError, ValueError) as exc:
        raise AheadError(f"malformed advertisement: {exc}") from None
    if got != round_id:
        raise AheadError(f"advertisement for round {got}, expected round {round_id}")
    if len(stages) != len(payloads):
        raise AheadError("advertisement has message lists of different lengths")
    return [Message(client, SERVER, round_id, s, p) for s, p in zip(stages, payloads, strict=True)]


def resume_session(
    ahead: AheadSession, *, round_id: int, client: int, config_json: str, own: AheadParams, x: Any, rng: Any, ss: Any
) -> Any:
    """Rebuild the advertised session with the real input ``x``; returns the session, past its start.

    ``own`` holds the parameters the node derives from its own federation; ``rng`` is the
    session's random source rebuilt from the kept seed; ``ss`` the node's secure sum.

    Raises:
        AheadError: the kept session is for another round, client or configuration; the
            server's parameters differ from the node's own; or the rebuilt session does
            not re-emit the advertisement that was sent.
    """
    p = ahead.params
    if (p.round_id, ahead.client) != (round_id, client):
        raise AheadError(
            f"the opening message of round {round_id} (client {client}) carries neighbour keys, but this node "
            f"advertised keys for round {p.round_id} (client {ahead.client}): it is a dropout for this round"
        )
    if p.config_json != config_json:
        raise AheadError(f"round {round_id}: the configuration differs from the one the keys were advertised for")
    if own != AheadParams(p.round_id, config_json, p.ring_bits, p.dim, p.max_clients, p.min_survivors):
        raise AheadError(
            f"round {round_id}: the server's secure-sum parameters (ring bits, dimension, cohort bound, "
            "min survivors) differ from this node's own: refused"
        )
    session = ss.client(client, round_id, rng)
    out = session.start(x)
    if tuple((m.stage, bytes(m.payload)) for m in out) != ahead.advert:
        raise AheadError(
            f"round {round_id}: the session rebuilt with the input does not re-emit the advertised keys "
            "(the backend's first messages depend on the input): refused"
        )
    return session


def pending_members(next_members: Sequence[int], batch_recipients: Sequence[int]) -> list[int]:
    """Members of the next cohort that the current exchange does not reach (they get a standalone request)."""
    reached = set(batch_recipients)
    return [c for c in next_members if c not in reached]
