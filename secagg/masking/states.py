"""Stages, session states and the transition tables of the masking protocol, as data.

The tables are the single source of truth the sessions dispatch on: a message
whose (state, stage) pair is not in the table is refused with
``RemoteProtocolError`` and leaves the session unchanged.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "Stage",
    "ClientState",
    "ServerState",
    "CLIENT_TRANSITIONS",
    "SERVER_ACCEPTS",
    "SERVER_NEXT",
]


class Stage(str, Enum):
    """The five stages of Bonawitz et al. (CCS 2017, figure 4); ``Message.stage`` values."""

    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONSISTENCY_CHECK = "consistency-check"
    UNMASKING = "unmasking"


class ClientState(Enum):
    INIT = "init"
    """Created; ``start(x)`` sends the key advertisement."""
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    CHECKED = "checked"
    DONE = "done"


class ServerState(Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"


CLIENT_TRANSITIONS: dict[tuple[ClientState, Stage], ClientState] = {
    # (state, stage of the server's message) -> next state; the client replies in that stage.
    (ClientState.ADVERTISED, Stage.SHARE_KEYS): ClientState.SHARED,
    (ClientState.SHARED, Stage.MASKED_INPUT): ClientState.MASKED,
    (ClientState.MASKED, Stage.CONSISTENCY_CHECK): ClientState.CHECKED,
    (ClientState.CHECKED, Stage.UNMASKING): ClientState.DONE,
}
"""Server -> client messages a client accepts in each state."""

SERVER_ACCEPTS: dict[ServerState, Stage] = {
    ServerState.ADVERTISE: Stage.ADVERTISE_KEYS,
    ServerState.SHARE: Stage.SHARE_KEYS,
    ServerState.MASKED: Stage.MASKED_INPUT,
    ServerState.CONSISTENCY: Stage.CONSISTENCY_CHECK,
    ServerState.UNMASK: Stage.UNMASKING,
}
"""The one client -> server stage the server accepts in each state."""

SERVER_NEXT: dict[ServerState, ServerState] = {
    ServerState.ADVERTISE: ServerState.SHARE,
    ServerState.SHARE: ServerState.MASKED,
    ServerState.MASKED: ServerState.CONSISTENCY,
    ServerState.CONSISTENCY: ServerState.UNMASK,
    ServerState.UNMASK: ServerState.DONE,
}
"""Where the server goes when a stage closes (all expected replies, or the deadline)."""
