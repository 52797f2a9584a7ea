"""PlainSum: an explicitly INSECURE secure-sum baseline for tests and benchmarks.

Every client sends its vector in the clear; the server sees each one. It exists so
that the round loop, DP and benchmarks can be exercised and compared against a
no-cryptography floor. Never use it where the server must not see updates.
"""

from __future__ import annotations

from collections.abc import Sequence

from secagg.errors import LocalProtocolError, RemoteProtocolError, TooFewSurvivorsError
from secagg.protocol import SERVER, ClientId, DeferredInput, Message, RandomSource, resolve_input
from secagg.ring import RingSpec, RingVector

__all__ = ["PlainSum"]

_VERSION = 1
_STAGE = "plain-input"


class PlainSum:
    """Insecure baseline: the server sums vectors it can read one by one."""

    name = "plain"

    def __init__(self, ring: RingSpec, dim: int, *, min_survivors: int = 1) -> None:
        if dim < 1:
            raise LocalProtocolError(f"dim must be >= 1, got {dim}")
        if min_survivors < 1:
            raise LocalProtocolError(f"min_survivors must be >= 1, got {min_survivors}")
        self.ring = ring
        self.dim = dim
        self.min_survivors = min_survivors

    def client(self, me: ClientId, round_id: int, rng: RandomSource) -> _PlainClient:
        if me == SERVER:
            raise LocalProtocolError("client id 0 is reserved for the server")
        return _PlainClient(self, me, round_id)

    def server(self, cohort: Sequence[ClientId], round_id: int) -> _PlainServer:
        return _PlainServer(self, cohort, round_id)


class _PlainClient:
    def __init__(self, spec: PlainSum, me: ClientId, round_id: int) -> None:
        self._spec = spec
        self._me = me
        self._round = round_id
        self._started = False

    def start(self, x: RingVector | DeferredInput) -> list[Message]:
        if self._started:
            raise LocalProtocolError("start() called twice")
        x = self._spec.ring.check(resolve_input(x), self._spec.dim, what="client input")
        self._started = True
        payload = bytes([_VERSION]) + self._spec.ring.to_bytes(x)
        return [Message(self._me, SERVER, self._round, _STAGE, payload)]

    def receive(self, msg: Message) -> list[Message]:
        raise RemoteProtocolError("the plain sum sends nothing to clients", peer=msg.sender)


class _PlainServer:
    def __init__(self, spec: PlainSum, cohort: Sequence[ClientId], round_id: int) -> None:
        if len(set(cohort)) != len(cohort) or SERVER in cohort:
            raise LocalProtocolError("cohort must be distinct non-zero client ids")
        self._spec = spec
        self._cohort = frozenset(cohort)
        self._round = round_id
        self._inputs: dict[ClientId, RingVector] = {}
        self._closed = False

    def receive(self, msg: Message) -> list[Message]:
        if self._closed:
            raise LocalProtocolError("stage already closed")
        if msg.sender not in self._cohort:
            raise RemoteProtocolError("sender is not in the cohort", peer=msg.sender)
        if msg.round_id != self._round:
            raise RemoteProtocolError(f"message for round {msg.round_id} in round {self._round}", peer=msg.sender)
        if msg.stage != _STAGE or not msg.payload or msg.payload[0] != _VERSION:
            raise RemoteProtocolError("unexpected stage or version", peer=msg.sender)
        if msg.sender in self._inputs:
            raise RemoteProtocolError("duplicate input", peer=msg.sender)
        try:
            vec = self._spec.ring.from_bytes(msg.payload[1:], self._spec.dim)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(str(exc), peer=msg.sender) from exc
        self._inputs[msg.sender] = vec
        if len(self._inputs) == len(self._cohort):
            self._closed = True
        return []

    def close_stage(self) -> list[Message]:
        self._closed = True
        return []

    @property
    def done(self) -> bool:
        return self._closed

    @property
    def survivors(self) -> frozenset[ClientId]:
        return frozenset(self._inputs)

    def result(self) -> RingVector:
        if not self._closed:
            raise LocalProtocolError("result() before the input stage closed")
        if len(self._inputs) < self._spec.min_survivors:
            raise TooFewSurvivorsError(
                f"{len(self._inputs)} inputs received, at least {self._spec.min_survivors} needed",
                survivors=len(self._inputs),
                required=self._spec.min_survivors,
            )
        return self._spec.ring.sum(self._inputs.values(), self._spec.dim)
