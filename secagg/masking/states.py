"""Stages, session states and the transition tables of the masking protocol, as data.

There are two tables, one per threat model (Bonawitz et al., CCS 2017, figure 4):

* :data:`HONEST_BUT_CURIOUS` (no identity keys): four stages; the server sends
  the unmasking request as soon as the masked-input stage closes, and the client
  checks the survivor list it carries.
* :data:`ACTIVE` (identity keys): five stages; the ConsistencyCheck round
  (figure 4, round 3) makes every client sign the survivor list before anyone
  reveals a share, and the unmasking request must carry t of those signatures.

Sessions pick their table with :func:`transitions_for` and dispatch on it only:
a message whose (state, stage) pair is not in the table is refused with
``RemoteProtocolError`` and leaves the session unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

__all__ = [
    "ACTIVE",
    "HONEST_BUT_CURIOUS",
    "ClientState",
    "ServerState",
    "Stage",
    "TransitionTable",
    "Variant",
    "transitions_for",
]


class Stage(str, Enum):
    """The stages of Bonawitz et al. (CCS 2017, figure 4); ``Message.stage`` values."""

    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONSISTENCY_CHECK = "consistency-check"
    """Only in the :data:`ACTIVE` variant."""
    UNMASKING = "unmasking"


class ClientState(Enum):
    INIT = "init"
    """Created; ``start(x)`` sends the key advertisement."""
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    CHECKED = "checked"
    """Signed the survivor list (:data:`ACTIVE` variant only)."""
    DONE = "done"


class ServerState(Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    """Collecting survivor-list signatures (:data:`ACTIVE` variant only)."""
    UNMASK = "unmask"
    DONE = "done"


class Variant(str, Enum):
    """Which threat model a round is run for; decided by whether identity keys are configured."""

    HONEST_BUT_CURIOUS = "honest-but-curious"
    """No identity keys: Bonawitz et al. 2017, figure 4 without the parts marked active-only."""
    ACTIVE = "active"
    """Ed25519 identity keys: signed advertisements and the signed ConsistencyCheck round."""


@dataclass(frozen=True, slots=True)
class TransitionTable:
    """One variant's protocol as data.

    Attributes:
        variant: the threat model the table is for.
        stages: the stages in protocol order; the last is the round's final exchange.
        client: (client state, stage of the server's message) -> next client
            state; the client replies in that stage.
        server_accepts: the one client -> server stage the server accepts in each state.
        server_next: where the server goes when a stage closes (all expected
            replies, or the deadline).
    """

    variant: Variant
    stages: tuple[Stage, ...]
    client: Mapping[tuple[ClientState, Stage], ClientState]
    server_accepts: Mapping[ServerState, Stage]
    server_next: Mapping[ServerState, ServerState]


HONEST_BUT_CURIOUS = TransitionTable(
    variant=Variant.HONEST_BUT_CURIOUS,
    stages=(Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASKING),
    client=MappingProxyType(
        {
            (ClientState.ADVERTISED, Stage.SHARE_KEYS): ClientState.SHARED,
            (ClientState.SHARED, Stage.MASKED_INPUT): ClientState.MASKED,
            (ClientState.MASKED, Stage.UNMASKING): ClientState.DONE,
        }
    ),
    server_accepts=MappingProxyType(
        {
            ServerState.ADVERTISE: Stage.ADVERTISE_KEYS,
            ServerState.SHARE: Stage.SHARE_KEYS,
            ServerState.MASKED: Stage.MASKED_INPUT,
            ServerState.UNMASK: Stage.UNMASKING,
        }
    ),
    server_next=MappingProxyType(
        {
            ServerState.ADVERTISE: ServerState.SHARE,
            ServerState.SHARE: ServerState.MASKED,
            ServerState.MASKED: ServerState.UNMASK,
            ServerState.UNMASK: ServerState.DONE,
        }
    ),
)
"""Four stages: the survivor list travels in the unmasking request and is checked there."""

ACTIVE = TransitionTable(
    variant=Variant.ACTIVE,
    stages=(Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASKING),
    client=MappingProxyType(
        {
            (ClientState.ADVERTISED, Stage.SHARE_KEYS): ClientState.SHARED,
            (ClientState.SHARED, Stage.MASKED_INPUT): ClientState.MASKED,
            (ClientState.MASKED, Stage.CONSISTENCY_CHECK): ClientState.CHECKED,
            (ClientState.CHECKED, Stage.UNMASKING): ClientState.DONE,
        }
    ),
    server_accepts=MappingProxyType(
        {
            ServerState.ADVERTISE: Stage.ADVERTISE_KEYS,
            ServerState.SHARE: Stage.SHARE_KEYS,
            ServerState.MASKED: Stage.MASKED_INPUT,
            ServerState.CONSISTENCY: Stage.CONSISTENCY_CHECK,
            ServerState.UNMASK: Stage.UNMASKING,
        }
    ),
    server_next=MappingProxyType(
        {
            ServerState.ADVERTISE: ServerState.SHARE,
            ServerState.SHARE: ServerState.MASKED,
            ServerState.MASKED: ServerState.CONSISTENCY,
            ServerState.CONSISTENCY: ServerState.UNMASK,
            ServerState.UNMASK: ServerState.DONE,
        }
    ),
)
"""Five stages: every client signs the survivor list before any share is revealed."""


def transitions_for(*, identity_keys: bool) -> TransitionTable:
    """The table a session runs: :data:`ACTIVE` with identity keys, else :data:`HONEST_BUT_CURIOUS`."""
    return ACTIVE if identity_keys else HONEST_BUT_CURIOUS
