"""The SuperNode side of asynchronous training on Flower: train on a fetched version, hold the update, report it once.

Two packets (both reach the node through :func:`fl_core.transport.flower.mod.privagg_mod`):

* ``async-train`` carries the run configuration, the global model and its version. The
  node checks its policy floor, trains the task's ``train_fn`` on its own data, keeps the
  update (and the version it trained on) in its Flower state and answers that it is
  done; the server takes these replies as they arrive.
* a buffer session's opening is a round opening (``train``) with the field ``async-base``,
  the version the buffer is applied to. The node computes its staleness and weight
  itself, refuses a version from the future, an update older than its own
  ``max-staleness`` and one already spent, clips, weights, adds its noise share,
  encodes and opens its secure-sum session; the session's later stages are the
  synchronous ones (:func:`fl_core.transport.flower.client.handle_stage`).

Security:
    The same rules as the in-process client (:mod:`fl_core.asynchronous.client`), enforced
    from values the node holds: the weight is in (0, 1] and multiplies the clipped update,
    never the noise share; the session's clients refuse to help unmask fewer than
    max(2, the DP minimum survivors) inputs; an update is marked spent when its session
    opens (before any message derived from it leaves the node), so it is never put into a
    second session, whatever the server says (on Flower a member that misses its session
    therefore loses that update rather than reporting it again: the conservative choice,
    since the node cannot see whether its masked input reached the server). A session the
    server retries after an abort keeps its round id with the next attempt number: the
    node's noise and (seeded) session keys are keyed by the attempt, and the mod opens each
    (round, attempt) once, so a later update is never masked or noised like an earlier one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from fl_core.transport.flower.codec import (
    CLIP_FIELD,
    TRAIN_STAGE,
    FlowerCodecError,
    StagePacket,
    vector_from_bytes,
    vector_to_bytes,
)

__all__ = [
    "ASYNC_BASE_FIELD",
    "ASYNC_TRAIN_STAGE",
    "AsyncHeld",
    "handle_async_open",
    "handle_async_train",
    "is_async_opening",
]

ASYNC_TRAIN_STAGE = "async-train"
"""Stage of the message that asks a node to fetch a version and train."""
ASYNC_BASE_FIELD = "async-base"
"""Opening-message field of a buffer session: the model version the buffer is applied to."""
VERSION_FIELD = "model-version"
"""Field of the model version a node trained on (the codec reserves "version")."""
_HELD = "privagg.async"


def is_async_opening(packet: StagePacket) -> bool:
    """True for the opening message of an asynchronous buffer session."""
    return packet.stage == TRAIN_STAGE and ASYNC_BASE_FIELD in packet.fields


@dataclass(frozen=True, slots=True)
class AsyncHeld:
    """What a node keeps between its training and its buffer session (in ``context.state``)."""

    version: int
    task: int
    delta: bytes
    dim: int
    spent: bool
    contributions: int

    def to_record(self) -> Any:
        from flwr.app import ConfigRecord

        return ConfigRecord(
            {
                "version": self.version,
                "task": self.task,
                "delta": self.delta,
                "dim": self.dim,
                "spent": self.spent,
                "contributions": self.contributions,
            }
        )

    @classmethod
    def from_record(cls, rec: Any) -> AsyncHeld:
        return cls(
            int(rec["version"]),
            int(rec["task"]),
            bytes(rec["delta"]),
            int(rec["dim"]),
            bool(rec["spent"]),
            int(rec["contributions"]),
        )


def _load(context: Any) -> AsyncHeld | None:
    rec = context.state.config_records.get(_HELD)
    return AsyncHeld.from_record(rec) if rec is not None else None


def _save(context: Any, held: AsyncHeld) -> None:
    context.state.config_records[_HELD] = held.to_record()


def _own_bound(node_config: Any, key: str) -> int | None:
    from fl_core.transport.flower.policy import NodePolicyError

    v = (node_config or {}).get(key)
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise NodePolicyError(f"node config {key} must be an integer >= 0, got {v!r}")
    return v


def handle_async_train(
    packet: StagePacket, context: Any, task: Any = None, *, privacy: bytes | None = None
) -> StagePacket:
    """Fetch the version in ``packet``, train on this node's own data, keep the update; answer done.

    ``privacy`` is the node's own privacy record (:mod:`fl_core.transport.flower.budget`): a
    node that could not join another buffer without passing its limit refuses before training.

    Raises:
        NodePolicyError: the run is weaker than the node's floor (nothing is trained).
        dp.errors.ClientBudgetExceededError: one more buffer would pass the node's own limit.
        FlowerCodecError: the packet lacks the model, its version or the configuration.
        ClientStateError: the server addressed another client.
    """
    from fl_core.client import compute_update
    from fl_core.transport.flower.client import ClientStateError, _client_build
    from fl_core.transport.flower.options import config_from_json
    from fl_core.transport.flower.policy import check_node_policy, client_id_of

    f = packet.fields
    for key in ("config", "client", "global", "dim", VERSION_FIELD):
        if key not in f:
            raise FlowerCodecError(f"the async-train message lacks {key!r}")
    client = client_id_of(context.node_config)
    if f["client"] != client:
        raise ClientStateError(f"the server sent client {f['client']}'s training to the node of client {client}")
    cfg = config_from_json(str(f["config"]))
    check_node_policy(cfg, context.node_config)  # before building or loading anything
    fed, _record = _client_build(cfg, task=task, node_config=context.node_config)
    if fed.dim != f["dim"]:
        raise FlowerCodecError(f"the server's model has {f['dim']} values, this node's has {fed.dim}")
    from fl_core.transport.flower.budget import node_budget

    node_budget(fed, context.node_config, client, privacy).check(client, packet.round_id + 1)
    global_vec = vector_from_bytes(bytes(f["global"]), np.float32, fed.dim)
    delta = compute_update(
        fed.model, global_vec, fed.codec, fed.train_fn, fed.source.get(client), client_id=client, device=fed.device
    )
    before = _load(context)
    held = AsyncHeld(
        version=int(f[VERSION_FIELD]),
        task=(before.task + 1) if before is not None else 1,
        delta=vector_to_bytes(np.asarray(delta, dtype=np.float32)),
        dim=fed.dim,
        spent=False,
        contributions=before.contributions if before is not None else 0,
    )
    _save(context, held)
    return StagePacket(packet.round_id, ASYNC_TRAIN_STAGE, (), {"trained": True, VERSION_FIELD: held.version})


def handle_async_open(
    packet: StagePacket,
    context: Any,
    task: Any = None,
    *,
    privacy: bytes | None = None,
    on_privacy: Any = None,
) -> tuple[StagePacket, Any, bytes | None]:
    """Open this node's session of a buffer with its held update.

    ``privacy`` is the node's own privacy record: the buffer is checked against its limit
    before the update is touched and charged before anything derived from it leaves
    (``on_privacy(record bytes)`` keeps it at once).

    Returns:
        The reply, the session to keep, and the node's privacy record after the charge.

    Raises:
        dp.errors.ClientBudgetExceededError: the buffer would pass the node's own limit.
        ClientStateError: no update held, or it was already spent in an earlier session.
        NodePolicyError: a version from the future, staleness or contributions beyond the
            node's own ``max-staleness`` / ``max-contributions``, or the run below its floor.
        FlowerCodecError: the packet lacks a field.
    """
    from fl_core.asynchronous.staleness import parse_staleness
    from fl_core.asynchronous.weighting import StalenessWeighted
    from fl_core.binding import bind
    from fl_core.pipeline import ClientPipeline
    from fl_core.transport.flower.client import ClientStateError, NodeSession, _client_build
    from fl_core.transport.flower.options import config_from_json
    from fl_core.transport.flower.policy import (
        NodePolicyError,
        check_node_policy,
        check_round_terms,
        client_id_of,
    )
    from fl_core.transport.flower.sessions import attempt_label, opening_attempt, secure_sum_for, session_rng

    f = packet.fields
    for key in ("config", "client", "dim", CLIP_FIELD, ASYNC_BASE_FIELD):
        if key not in f:
            raise FlowerCodecError(f"the opening message of buffer {packet.round_id} lacks {key!r}")
    client = client_id_of(context.node_config)
    if f["client"] != client:
        raise ClientStateError(f"the server sent client {f['client']}'s buffer to the node of client {client}")
    held = _load(context)
    if held is None:
        raise ClientStateError("this node holds no trained update (it restarted?): it is a dropout for this buffer")
    if held.spent:
        raise ClientStateError(
            "this node's update already went into an earlier buffer session: it is never sent twice"
        )
    base = int(f[ASYNC_BASE_FIELD])
    staleness = base - held.version
    if staleness < 0:
        raise NodePolicyError(
            f"buffer version {base} is older than the version {held.version} this node trained on: refused"
        )
    bound = _own_bound(context.node_config, "max-staleness")
    if bound is not None and staleness > bound:
        raise NodePolicyError(f"this node's update is {staleness} versions old, above its max-staleness {bound}")
    cap = _own_bound(context.node_config, "max-contributions")
    if cap is not None and held.contributions >= cap:
        raise NodePolicyError(f"this node already joined {held.contributions} buffers, its max-contributions")
    cfg = config_from_json(str(f["config"]))
    floor = check_node_policy(cfg, context.node_config)
    fed, _record = _client_build(cfg, task=task, node_config=context.node_config)
    if fed.dim != f["dim"] or held.dim != fed.dim:
        raise FlowerCodecError(f"model sizes differ: server {f['dim']}, node {fed.dim}, held update {held.dim}")
    checked = check_round_terms(fed, floor, clip=f.get(CLIP_FIELD))
    terms = checked.session
    from fl_core.transport.flower.budget import node_budget

    kept = {"privacy": privacy}

    def charged(client_record: Any) -> None:
        kept["privacy"] = client_record.to_bytes()
        if on_privacy is not None:
            on_privacy(kept["privacy"])

    guard = node_budget(fed, context.node_config, client, privacy, on_charge=charged)
    guard.check(client, packet.round_id)
    weight = parse_staleness(cfg.staleness or "fedbuff")(staleness)
    r = packet.round_id
    attempt = opening_attempt(f)  # a session retried after an abort: fresh noise and (seeded) fresh keys
    delta = vector_from_bytes(held.delta, np.float32, held.dim)
    pipeline = ClientPipeline(StalenessWeighted(fed.privacy, weight), fed.encoder, fed.sampler)
    vec, clip = pipeline.run(delta, fed.rng.spawn(f"async/client/{client}/session/{attempt_label(r, attempt)}"))
    # Spent and charged from here on, before anything derived from the update leaves the node.
    _save(context, AsyncHeld(held.version, held.task, held.delta, held.dim, True, held.contributions + 1))
    guard.charge(client, r)
    min_survivors = max(2, terms.min_survivors)  # never help unmask one update alone
    # Bound to the terms this node checked and uses for this buffer (fl_core.binding).
    ss = bind(secure_sum_for(cfg, terms.ring_bits, terms.dim, terms.max_clients, min_survivors), checked.binding)
    seeded = cfg.seed is not None
    seed = b"" if seeded else os.urandom(32)
    session = ss.client(client, r, session_rng(cfg, client, r, seed, seeded, attempt))
    out = session.start(vec)
    session_kept = NodeSession(
        round_id=r,
        client=client,
        config_json=str(f["config"]),
        ring_bits=terms.ring_bits,
        dim=terms.dim,
        max_clients=terms.max_clients,
        min_survivors=min_survivors,
        session_seed=seed,
        seeded=seeded,
        x=vector_to_bytes(vec),
        history=(),
        terms_setup=checked.binding.setup,
        terms_round=checked.binding.round or b"",
        attempt=attempt,
    )
    fields = {"clipped": bool(clip.clipped), "saturated": int(clip.saturated), "weight": float(weight),
              "staleness": int(staleness)}
    return StagePacket(r, TRAIN_STAGE, tuple(out), fields), session_kept, kept["privacy"]
