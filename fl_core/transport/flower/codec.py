"""Wire codec between privagg's secure-sum messages and Flower ``RecordDict`` contents.

A Flower message carries one protocol stage for one node: the privagg
:class:`secagg.Message` objects of that stage, unchanged (sender, recipient,
round id, stage and payload bytes), in one ``ConfigRecord`` of parallel lists.
The codec adds nothing but a format version and the round/stage the Flower
message belongs to, and refuses anything else, so a transport can never
silently reinterpret a payload.

Security:
    The codec provides no confidentiality or integrity of its own; the secure-sum
    payloads are protected by the backend (masking: AES-GCM share transport with
    associated data binding round, sender and recipient; Bonawitz et al. 2017,
    section 4) and the Flower channel by TLS in a real deployment. The codec only
    guarantees that what a party receives is exactly what its peer's session
    emitted, and that a message from another round or stage is refused
    (tests/integration/test_flower.py::test_codec_refuses_wrong_round_stage_and_version).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fl_core.errors import FLError
from secagg import Message

__all__ = [
    "ATTEMPT_FIELD",
    "CLIP_FIELD",
    "ERROR_FIELD",
    "MESSAGE_TYPE",
    "RECORD",
    "SIGNATURE_FIELD",
    "TRAIN_STAGE",
    "WIRE_VERSION",
    "FlowerCodecError",
    "StagePacket",
    "decode_packet",
    "encode_packet",
    "vector_from_bytes",
    "vector_to_bytes",
]

WIRE_VERSION = 1
"""Version of the record layout below; bumped on any change."""

MESSAGE_TYPE = "train"
"""Flower message type of every privagg packet (start-up hello, a round's opening, each stage,
a decryption request). Flower routes a ClientApp's messages by type before its mods run, so
privagg's packets take the type of the ClientApp's own default ``@app.train()`` handler and
:func:`fl_core.transport.flower.mod.privagg_mod` picks them out by their ``privagg`` record
(Flower's ``secaggplus_mod`` does the same); the packet's stage says what it is."""
TRAIN_STAGE = "train"
"""Stage name of the opening message of a round (model down, first protocol message up)."""
ERROR_FIELD = "error"
"""Reply field of a node that refused or failed a packet: the reason (the server logs it; the node is a dropout)."""
SIGNATURE_FIELD = "data_signature"
"""Hello-reply field: the shape and dtype of one sample of the node's data (never the data or its size)."""

CLIP_FIELD = "clip"
"""Opening-message field: the round's clip, the one the server's ledger charges (nodes clip at exactly it)."""
ATTEMPT_FIELD = "attempt"
"""Opening-message field: the round's attempt (0, then 1, 2, ... after aborts); keys a seeded node's randomness."""

RECORD = "privagg"
"""Name of the ConfigRecord that holds a stage packet inside the Flower RecordDict."""


class FlowerCodecError(FLError, ValueError):
    """A Flower message does not hold a well-formed privagg stage packet for this round and stage."""


@dataclass(frozen=True, slots=True)
class StagePacket:
    """What one Flower message carries: one stage of one round, for one node.

    Attributes:
        round_id: the privagg round.
        stage: the protocol stage (``"train"`` for the opening message that carries the model).
        messages: the secure-sum messages of that stage, unchanged.
        fields: extra scalars or bytes for the stage (e.g. the model, the clip outcome).
    """

    round_id: int
    stage: str
    messages: tuple[Message, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)


_RESERVED = ("version", "round", "stage", "sender", "recipient", "round_id", "msg_stage", "payload")


def encode_packet(packet: StagePacket) -> Any:
    """Build the Flower ``RecordDict`` content of ``packet``.

    Raises:
        FlowerCodecError: an extra field uses a reserved name.
    """
    from flwr.app import ConfigRecord, RecordDict

    clash = [k for k in packet.fields if k in _RESERVED]
    if clash:
        raise FlowerCodecError(f"packet fields {clash} use reserved names; rename them")
    ms = packet.messages
    rec: dict[str, Any] = {
        "version": WIRE_VERSION,
        "round": int(packet.round_id),
        "stage": packet.stage,
        "sender": [int(m.sender) for m in ms],
        "recipient": [int(m.recipient) for m in ms],
        "round_id": [int(m.round_id) for m in ms],
        "msg_stage": [m.stage for m in ms],
        "payload": [bytes(m.payload) for m in ms],
    }
    rec.update(packet.fields)
    return RecordDict({RECORD: ConfigRecord(rec)})


def decode_packet(content: Any, *, round_id: int | None = None, stage: str | None = None) -> StagePacket:
    """Read a packet back from a Flower ``RecordDict``.

    Args:
        content: the Flower message content.
        round_id: when given, the packet must belong to this round.
        stage: when given, the packet must belong to this stage.

    Raises:
        FlowerCodecError: no privagg record, another format version, another round
            or stage than expected, or inconsistent message lists.
    """
    try:
        rec = content.config_records[RECORD]
    except (AttributeError, KeyError):
        raise FlowerCodecError(
            f"the Flower message has no {RECORD!r} config record: it was not sent by a privagg party"
        ) from None
    version = rec.get("version")
    if version != WIRE_VERSION:
        raise FlowerCodecError(f"privagg wire version {version!r} is not supported (this side speaks {WIRE_VERSION})")
    got_round, got_stage = rec.get("round"), rec.get("stage")
    if not isinstance(got_round, int) or not isinstance(got_stage, str):
        raise FlowerCodecError("privagg record lacks its round or stage")
    if round_id is not None and got_round != round_id:
        raise FlowerCodecError(f"packet of round {got_round} received in round {round_id} (late or replayed)")
    if stage is not None and got_stage != stage:
        raise FlowerCodecError(f"packet of stage {got_stage!r} received in stage {stage!r}")
    cols = [rec.get(k, []) for k in ("sender", "recipient", "round_id", "msg_stage", "payload")]
    if len({len(c) for c in cols}) != 1:
        raise FlowerCodecError("privagg record has message lists of different lengths")
    msgs = []
    for s, r, rid, st, p in zip(*cols, strict=True):
        if not (isinstance(s, int) and isinstance(r, int) and isinstance(rid, int)):
            raise FlowerCodecError("privagg record has a non-integer party or round id")
        if not isinstance(st, str) or not isinstance(p, bytes):
            raise FlowerCodecError("privagg record has a non-string stage or non-bytes payload")
        msgs.append(Message(s, r, rid, st, p))
    extra = {k: v for k, v in rec.items() if k not in _RESERVED}
    return StagePacket(got_round, got_stage, tuple(msgs), extra)


def vector_to_bytes(vec: npt.NDArray[Any]) -> bytes:
    """Little-endian bytes of a 1-d numpy vector (its dtype travels separately)."""
    a = np.ascontiguousarray(vec)
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def vector_from_bytes(data: bytes, dtype: npt.DTypeLike, dim: int) -> npt.NDArray[Any]:
    """Inverse of :func:`vector_to_bytes`.

    Raises:
        FlowerCodecError: the byte length is not ``dim`` elements of ``dtype``.
    """
    dt = np.dtype(dtype).newbyteorder("<")
    if len(data) != dt.itemsize * dim:
        raise FlowerCodecError(f"vector of {len(data)} bytes is not {dim} elements of {np.dtype(dtype).name}")
    return np.frombuffer(data, dtype=dt).astype(np.dtype(dtype), copy=True)


def messages_for(messages: Sequence[Message], recipient: int) -> tuple[Message, ...]:
    """The messages of ``messages`` addressed to ``recipient``, in order."""
    return tuple(m for m in messages if m.recipient == recipient)
