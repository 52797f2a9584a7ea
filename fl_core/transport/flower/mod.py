"""privagg's client side as a Flower mod: the user's ClientApp keeps its shape and gains private aggregation.

Flower adds its own SecAgg+ to an app as a client mod (``ClientApp(mods=[secaggplus_mod])``)
plus a server workflow; privagg takes the same shape::

    from fl_core.transport.flower import privagg_mod
    from my_app import task                      # make_model, train_fn, load_data

    app = ClientApp(mods=[privagg_mod(task)])

    @app.train()
    def train(msg, context):                     # the app's own FedAvg handler, unchanged
        ...

Every privagg packet reaches the ClientApp as a ``train`` message (the type of the app's
default ``@app.train()`` handler) holding a ``privagg`` record; the mod answers those
itself and hands every other message to the app unchanged, so the same app still runs
plain Flower strategies. For a round, the mod runs the task's ``train_fn`` on the data the
task's ``load_data`` returns for *this node's* configuration (``context.node_config``,
with ``partition-id`` and ``num-partitions``), then clips, noises, encodes and masks or
encrypts the update (:mod:`fl_core.transport.flower.client`). The node's policy floor
(:mod:`fl_core.transport.flower.policy`) is checked first, and Paillier key-holder nodes
(``privagg-role="key-holder"``) answer the start-up hello and decryption requests only.

A node that refuses a packet (its floor, a key pin, a failing ``train_fn`` or loader)
answers with the reason instead of messages: the server logs it and counts the node as a
dropout for that round; the round goes on without it.

Security:
    The node runs its own task and its own node configuration: a run configuration's
    ``task`` and loader keys are the server's and never used on the node (no node loads
    code or data the server names). Everything else is as in
    :mod:`fl_core.transport.flower.client` (state kept in ``context.state``, the session
    seed never leaves the node). A refusal's reason is sent to the server: it names the
    error, as Flower's own error replies do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fl_core.transport.flower.ahead import AheadSession
from fl_core.transport.flower.async_node import (
    ASYNC_TRAIN_STAGE,
    handle_async_open,
    handle_async_train,
    is_async_opening,
)
from fl_core.transport.flower.client import (
    ClientStateError,
    KeptTerms,
    NodeSession,
    NodeState,
    TaskSpec,
    handle_hello,
    handle_packet,
)
from fl_core.transport.flower.codec import (
    ERROR_FIELD,
    RECORD,
    TRAIN_STAGE,
    StagePacket,
    decode_packet,
    encode_packet,
)
from fl_core.transport.flower.paillier import (
    DECRYPT_STAGE,
    HOLDER_ROLE,
    handle_decrypt,
    handle_holder_hello,
    load_holder_state,
    node_role,
    save_holder_state,
)
from fl_core.transport.flower.record import RecordState

__all__ = ["is_privagg_message", "privagg_mod"]

_STATE = "privagg.session"
_AHEAD = "privagg.ahead"
_TERMS = "privagg.terms"
_PRIVACY = "privagg.client_record"
_OPENED = "privagg.opened"


def is_privagg_message(msg: Any) -> bool:
    """True when a Flower message carries a privagg packet (a ``privagg`` config record)."""
    return RECORD in msg.content.config_records


def load_state(context: Any) -> NodeState:
    """What this node kept in its Flower state between messages."""
    from fl_core.transport.flower import record

    rec = context.state.config_records.get(_STATE)
    arec = context.state.config_records.get(_AHEAD)
    trec = context.state.config_records.get(_TERMS)
    prec = context.state.config_records.get(_PRIVACY)
    orec = context.state.config_records.get(_OPENED)
    return NodeState(
        NodeSession.from_record(rec) if rec is not None else None,
        AheadSession.from_record(arec) if arec is not None else None,
        record.load_state(context),
        KeptTerms.from_record(trec) if trec is not None else None,
        bytes(prec["record"]) if prec is not None else None,
        (int(orec["round"]), int(orec["attempt"])) if orec is not None else None,
    )


def save_state(context: Any, state: NodeState) -> None:
    """Keep ``state`` in the node's Flower state (the record-DP accountant is never dropped)."""
    from fl_core.transport.flower import record

    for key, value in ((_STATE, state.session), (_AHEAD, state.ahead), (_TERMS, state.terms)):
        if value is None:
            context.state.config_records.pop(key, None)
        else:
            context.state.config_records[key] = value.to_record()
    if state.record is not None:
        record.save_state(context, state.record)
    if state.privacy is not None:  # the node's own privacy record outlives rounds and runs: never dropped
        from flwr.app import ConfigRecord

        context.state.config_records[_PRIVACY] = ConfigRecord({"record": state.privacy})
    if state.opened is not None:  # the last round attempt opened here: never dropped, only moved on
        from flwr.app import ConfigRecord

        context.state.config_records[_OPENED] = ConfigRecord({"round": state.opened[0], "attempt": state.opened[1]})


def _mark_opened(context: Any, state: NodeState, packet: StagePacket) -> NodeState:
    """Refuse an opening that is not after the last one this node opened; else keep it as the last, at once.

    Kept before the node trains or sends anything, so a refusal or failure later in the
    opening still counts the attempt as opened (the server may never open it again).
    """
    from dataclasses import replace

    from fl_core.transport.flower.sessions import check_fresh_opening, opening_attempt

    opened = (packet.round_id, opening_attempt(packet.fields))
    check_fresh_opening(state.opened, *opened)
    state = replace(state, opened=opened)
    save_state(context, state)
    return state


def _not_a_client(what: str) -> ClientStateError:
    return ClientStateError(
        f'this SuperNode is a Paillier key holder (privagg-role="key-holder"): it takes no {what}; '
        "the server counted it as a client by mistake"
    )


def answer(packet: StagePacket, context: Any, task: TaskSpec = None) -> StagePacket:
    """This node's reply to one privagg packet (raises what the handlers raise)."""
    holder = node_role(context.node_config) == HOLDER_ROLE
    if packet.stage == "hello":
        if holder:
            return handle_holder_hello(context.node_config)
        return handle_hello(context.node_config, packet, task=task)
    if packet.stage == DECRYPT_STAGE:
        if not holder:
            raise ClientStateError("this SuperNode is a client, not a Paillier key holder: it decrypts nothing")
        reply, held = handle_decrypt(packet, context.node_config, load_holder_state(context))
        save_holder_state(context, held)
        return reply
    if holder:
        raise _not_a_client("training round" if packet.stage == TRAIN_STAGE else "protocol stage")
    state = load_state(context)
    if packet.stage == ASYNC_TRAIN_STAGE:  # asynchronous mode (fl_core.transport.flower.async_node)
        return handle_async_train(packet, context, task, privacy=state.privacy)
    if is_async_opening(packet):
        state = _mark_opened(context, state, packet)

        def keep(blob: bytes) -> None:  # the node's privacy record, saved as soon as the buffer is charged
            save_state(context, NodeState(record=state.record, terms=state.terms, privacy=blob))

        reply, session, privacy = handle_async_open(packet, context, task, privacy=state.privacy, on_privacy=keep)
        save_state(context, NodeState(session=session, record=state.record, terms=state.terms, privacy=privacy))
        return reply
    kept: dict[str, Any] = {"record": state.record, "privacy": state.privacy}

    def keep_record(record: RecordState) -> None:  # saved as soon as training charged the accountant
        kept["record"] = record
        save_state(context, NodeState(record=record, terms=state.terms, privacy=kept["privacy"]))

    def keep_privacy(privacy: bytes) -> None:  # saved as soon as the round is charged, before the reply
        kept["privacy"] = privacy
        save_state(context, NodeState(record=kept["record"], terms=state.terms, privacy=privacy))

    opening = packet.stage == TRAIN_STAGE
    if opening:
        _mark_opened(context, state, packet)  # before anything else: an attempt is opened once
        # A new round discards whatever the node held, even if it fails; the record-DP
        # accountant, the checked terms and the node's privacy record are kept.
        save_state(context, NodeState(record=state.record, terms=state.terms, privacy=state.privacy))
    reply, new = handle_packet(
        packet,
        context.node_config,
        state,
        on_record=keep_record if opening else None,
        task=task,
        on_privacy=keep_privacy if opening else None,
    )
    save_state(context, new)
    return reply


def privagg_mod(task: TaskSpec = None) -> Callable[[Any, Any, Callable[[Any, Any], Any]], Any]:
    """privagg's client side for a ClientApp: ``ClientApp(mods=[privagg_mod(task)])``.

    Args:
        task: what this node trains: a task module (the module object, its dotted name or
            the path of its ``.py`` file) defining ``make_model``, ``train_fn`` and
            ``load_data`` (:mod:`fl_core.task`), or a :class:`fl_core.task.Task`; None is
            privagg's built-in demo, whose dataset and model follow the run configuration.

    Returns:
        A Flower mod: privagg packets are answered here (a refusal or failure becomes a reply
        naming the reason, and the node is a dropout for that round); every other message
        goes to the app's own handler.
    """

    def mod(msg: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        from flwr.app import Message as FlowerMessage

        if not is_privagg_message(msg):
            return call_next(msg, context)
        packet = decode_packet(msg.content)
        try:
            reply = answer(packet, context, task)
        except Exception as exc:  # the node refuses or fails this packet: the server logs why
            reply = StagePacket(packet.round_id, packet.stage, (), {ERROR_FIELD: f"{type(exc).__name__}: {exc}"})
        return FlowerMessage(encode_packet(reply), reply_to=msg)

    return mod
