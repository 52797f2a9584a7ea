"""The secure-sum interface shared by every backend: messages, sessions and randomness.

Sessions are sans-I/O state machines (messages in, messages out, no sockets, no
threads); transports only move :class:`Message` objects between parties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from secagg.ring import RingSpec, RingVector

__all__ = [
    "SERVER",
    "ClientId",
    "DeferredInput",
    "Message",
    "RandomSource",
    "SecureSum",
    "ClientSession",
    "ServerSession",
]

ClientId = int
"""Clients are numbered 1, 2, ...; 0 is reserved for the server."""

SERVER: ClientId = 0


@dataclass(frozen=True, slots=True)
class Message:
    """One protocol message between one sender and one recipient.

    ``stage`` names the protocol stage the message belongs to; ``payload`` is the
    wire encoding (it starts with a version byte chosen by the backend).
    Transports count ``len(payload)`` as the bytes on the wire.
    """

    sender: ClientId
    recipient: ClientId
    round_id: int
    stage: str
    payload: bytes

    @property
    def size(self) -> int:
        return len(self.payload)


@runtime_checkable
class RandomSource(Protocol):
    """Injected randomness. Production: OS CSPRNG. Tests: a seeded source.

    Implementations live in :mod:`dp.randomness`; secagg only needs this shape.
    """

    def random_bytes(self, n: int) -> bytes: ...

    def uniform(self, size: int) -> npt.NDArray[np.float64]:
        """``size`` independent draws from [0, 1) with 53-bit resolution."""
        ...

    def spawn(self, label: str) -> RandomSource:
        """An independent child source (deterministic per label when seeded)."""
        ...


DeferredInput = Callable[[], RingVector]
"""An input produced on demand: a session calls it once, when it first needs the input (the
masking client at its masked-input stage), and drops it right after. A simulation that
passes these holds no client's input for longer than that client's own stage. It may raise
:class:`~secagg.errors.InputWithdrawnError` (the client's own computation failed): the
session then sends nothing derived from it and the client is a dropout."""


def resolve_input(x: RingVector | DeferredInput) -> RingVector:
    """The input itself: ``x``, or what the deferred input produces."""
    return x() if callable(x) else x


class ClientSession(Protocol):
    def start(self, x: RingVector | DeferredInput) -> list[Message]:
        """Begin the round with the input (or a :data:`DeferredInput`)."""
        ...

    def receive(self, msg: Message) -> list[Message]:
        """Process one message; raises RemoteProtocolError on bad peer input."""
        ...


class ServerSession(Protocol):
    def receive(self, msg: Message) -> list[Message]: ...

    def close_stage(self) -> list[Message]:
        """The stage deadline passed: the parties heard from so far are the survivors."""
        ...

    @property
    def done(self) -> bool:
        """True once :meth:`result` can be called."""
        ...

    @property
    def survivors(self) -> frozenset[ClientId]:
        """Clients whose inputs are in the sum (valid once ``done``)."""
        ...

    def result(self) -> RingVector:
        """The sum over survivors; TooFewSurvivorsError below threshold."""
        ...


class SecureSum(Protocol):
    """A secure summation backend for vectors of ``dim`` elements of ``ring``."""

    ring: RingSpec
    dim: int

    @property
    def name(self) -> str: ...

    def client(self, me: ClientId, round_id: int, rng: RandomSource) -> ClientSession: ...

    def server(self, cohort: Sequence[ClientId], round_id: int) -> ServerSession: ...
