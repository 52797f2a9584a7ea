"""One buffer's secure-sum session: its members' inputs in, the sum over the survivors out.

The members of a buffer (the clients whose reports filled it) form one session of the
run's :class:`secagg.SecureSum` (masking or Paillier), with its own round id. The
session is the unchanged synchronous protocol: a member that misses it (vanishes
before its input leaves it) is a dropout of that session; with masking its pairwise
masks are removed with its key shares and its self-mask is never revealed, so its
input (if any reached the server) stays hidden, and below the threshold or the
minimum number of survivors the session aborts with no output.

The session also records, per member, whether its input left it: a probe on each
client session sees the message of the backend's input stage come out of the client's
session and calls the client's hook before the message is handed to the transport.
The client uses that to charge its own privacy record and mark its update spent
(never sent twice).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fl_core.transport import InProcessTransport, Transport
from secagg import ClientId, Message, RandomSource, RingVector, RoundOutcome, SecureSum

__all__ = ["BufferOutcome", "ProbedSecureSum", "input_stage_name", "post_seal_exchanges", "run_buffer_session"]


def input_stage_name(secure_sum: Any) -> str | None:
    """The ``Message.stage`` that carries a client's input, or None when its first message does."""
    stage = int(getattr(secure_sum, "input_stage", 0))
    stages = tuple(getattr(secure_sum, "stages", ()))
    if stage >= 1 and len(stages) > stage:
        return str(stages[stage])
    return None


def post_seal_exchanges(secure_sum: Any) -> int:
    """Client exchanges a session needs once its buffer is sealed (the key advertisement rode on each report).

    Masking: share keys, masked input, unmasking (and the consistency check with identity
    keys); Paillier: the input, then one decryption by the key holders; plain: the input.
    """
    stages = tuple(getattr(secure_sum, "stages", ()))
    if stages:
        return max(1, len(stages) - 1)
    return 2 if getattr(secure_sum, "name", "") == "paillier" else 1


class _ProbedSession:
    def __init__(self, inner: Any, stage: str | None, on_input: Callable[[], None]) -> None:
        self._inner = inner
        self._stage = stage
        self._on_input = on_input
        self._sent = False

    def _watch(self, out: list[Message]) -> list[Message]:
        if not self._sent and out and (self._stage is None or any(m.stage == self._stage for m in out)):
            self._sent = True
            self._on_input()
        return out

    def start(self, x: RingVector) -> list[Message]:
        return self._watch(self._inner.start(x))

    def receive(self, msg: Message) -> list[Message]:
        return self._watch(self._inner.receive(msg))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ProbedSecureSum:
    """``secure_sum`` whose client sessions report (once) when their input message goes out."""

    def __init__(self, secure_sum: SecureSum, on_input: Callable[[ClientId], None] | None = None) -> None:
        self.inner = secure_sum
        self._on_input = on_input
        self.ring = secure_sum.ring
        self.dim = secure_sum.dim
        self.stage = input_stage_name(secure_sum)
        self.inputs_sent: set[ClientId] = set()

    @property
    def name(self) -> str:
        return self.inner.name

    def client(self, me: ClientId, round_id: int, rng: RandomSource) -> Any:
        def leaving() -> None:
            if self._on_input is not None:
                self._on_input(me)
            self.inputs_sent.add(me)

        return _ProbedSession(self.inner.client(me, round_id, rng), self.stage, leaving)

    def server(self, cohort: Sequence[ClientId], round_id: int) -> Any:
        return self.inner.server(cohort, round_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass(frozen=True)
class BufferOutcome:
    """What one buffer session did: the secure-sum outcome and whose input left its client."""

    outcome: RoundOutcome
    inputs_sent: frozenset[ClientId]

    @property
    def released(self) -> bool:
        return self.outcome.error is None and self.outcome.total is not None

    @property
    def survivors(self) -> frozenset[ClientId]:
        return self.outcome.survivors if self.released else frozenset()


def run_buffer_session(
    secure_sum: SecureSum,
    inputs: Mapping[ClientId, RingVector],
    *,
    session: int,
    rng_for: Callable[[ClientId], RandomSource],
    stages_completed: Mapping[ClientId, int] | None = None,
    transport: Transport | None = None,
    on_input: Callable[[ClientId], None] | None = None,
) -> BufferOutcome:
    """Run the secure sum of one buffer over ``inputs``; ``stages_completed`` marks members that vanish.

    ``on_input(client)`` runs when a member's input message comes out of its session, before
    the transport carries it.
    """
    probed = ProbedSecureSum(secure_sum, on_input)
    outcome = (transport or InProcessTransport()).run(
        probed,
        inputs,
        round_id=session,
        rng_for=rng_for,
        stages_completed=dict(stages_completed or {}),
    )
    return BufferOutcome(outcome, frozenset(probed.inputs_sent))
