"""In-process message pump that runs one secure-sum round between sessions.

It moves messages only (the sessions are sans-I/O), simulates clients that drop
out after a given number of stages, meters bytes and CPU time per party, and
lets tests tamper with messages in flight. It knows nothing of torch or DP; the
federated round loop and the benchmarks both drive backends through it.

Inputs may be deferred (:data:`~secagg.protocol.DeferredInput`): each is produced when
its session asks for it and handed on at once (the server folds it into a running
sum), so a round holds one client's input at a time, whatever the cohort size. The
CPU spent producing an input is metered apart from the client's secure-sum work; an
input withdrawn while being produced makes its client a dropout of that stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from secagg.errors import InputWithdrawnError, LocalProtocolError, SecAggError
from secagg.protocol import SERVER, ClientId, ClientSession, DeferredInput, Message, RandomSource, SecureSum
from secagg.pump import pump_stages
from secagg.ring import RingVector

__all__ = ["RoundOutcome", "run_round"]

Tamper = Callable[[Message], list[Message]]


@dataclass(slots=True)
class RoundOutcome:
    """What one simulated round produced, and what it cost.

    ``total`` is None when the round aborted; ``error`` then holds the typed error.
    """

    total: RingVector | None
    survivors: frozenset[ClientId]
    error: SecAggError | None
    bytes_up: dict[ClientId, int] = field(default_factory=dict)
    bytes_down: dict[ClientId, int] = field(default_factory=dict)
    client_cpu_s: dict[ClientId, float] = field(default_factory=dict)
    """Each client's secure-sum CPU (key agreement, shares, masking), without producing its input."""
    server_cpu_s: float = 0.0
    stages: int = 0
    input_cpu_s: dict[ClientId, float] = field(default_factory=dict)
    """CPU spent producing each deferred input (when its session asked for it)."""
    withdrawn: frozenset[ClientId] = frozenset()
    """Clients whose deferred input was withdrawn (:class:`~secagg.errors.InputWithdrawnError`)."""


def run_round(
    secure_sum: SecureSum,
    inputs: Mapping[ClientId, RingVector | DeferredInput],
    *,
    round_id: int,
    rng_for: Callable[[ClientId], RandomSource],
    stages_completed: Mapping[ClientId, int] | None = None,
    tamper: Tamper | None = None,
    max_steps: int = 64,
) -> RoundOutcome:
    """Run one round of ``secure_sum`` over the cohort ``inputs.keys()``.

    Args:
        secure_sum: the backend.
        inputs: each cohort member's ring vector, or a deferred input its session calls
            when it needs it (see the module docstring).
        round_id: the round number bound into every message.
        rng_for: the random source of each client.
        stages_completed: client -> number of stages it takes part in before it
            vanishes (0: never starts; 1: only sends its first message; ...).
            Clients not listed never drop.
        tamper: called on every message in flight; returns the messages to
            deliver instead (empty list drops it). For security tests.
        max_steps: guard against a backend that never finishes.

    Returns:
        The outcome; a typed :class:`SecAggError` raised by the server while
        finishing (e.g. too few survivors) is captured in ``error``. Errors raised
        while processing a message propagate, so tests see who raised them.
    """
    drops = dict(stages_completed or {})
    cohort = sorted(inputs)
    outcome = RoundOutcome(total=None, survivors=frozenset(), error=None)
    for c in cohort:
        outcome.bytes_up[c] = 0
        outcome.bytes_down[c] = 0
        outcome.client_cpu_s[c] = 0.0
        outcome.input_cpu_s[c] = 0.0
    withdrawn: set[ClientId] = set()

    def alive(c: ClientId, step: int) -> bool:
        return step < drops.get(c, max_steps + 1)

    def in_flight(msg: Message) -> list[Message]:
        return tamper(msg) if tamper is not None else [msg]

    def metered(c: ClientId) -> RingVector | DeferredInput:
        x = inputs[c]
        if not callable(x):
            return x

        def produce() -> RingVector:
            t = time.process_time()
            try:
                return x()
            finally:
                outcome.input_cpu_s[c] += time.process_time() - t

        return produce

    def withdraw(c: ClientId, step: int) -> None:
        """``c``'s input was withdrawn at ``step``: it sends nothing from this stage on."""
        withdrawn.add(c)
        drops[c] = min(drops.get(c, step), step)

    t0 = time.process_time()
    server = secure_sum.server(cohort, round_id)
    outcome.server_cpu_s += time.process_time() - t0
    clients: dict[ClientId, ClientSession] = {}
    to_clients: list[Message] = []

    def to_server(msgs: list[Message], sender: ClientId) -> None:
        for m in msgs:
            if m.recipient != SERVER:
                raise LocalProtocolError(f"client {sender} addressed {m.recipient}; clients talk to the server only")
            outcome.bytes_up[sender] += m.size
            for d in in_flight(m):
                t = time.process_time()
                replies = server.receive(d)
                outcome.server_cpu_s += time.process_time() - t
                to_clients.extend(replies)

    # Stage 0: every live client starts with its input.
    for c in cohort:
        if not alive(c, 0):
            continue
        t = time.process_time()
        session = secure_sum.client(c, round_id, rng_for(c))
        try:
            out = session.start(metered(c))
        except InputWithdrawnError:
            withdraw(c, 0)
            continue
        finally:
            outcome.client_cpu_s[c] += time.process_time() - t
        clients[c] = session
        to_server(out, c)

    def deliver(batch: list[Message], step: int) -> list[Message]:
        for m in batch:
            rcpt = m.recipient
            if rcpt not in clients or not alive(rcpt, step):
                continue
            outcome.bytes_down[rcpt] += m.size
            for d in in_flight(m):
                t = time.process_time()
                try:
                    replies = clients[rcpt].receive(d)
                except InputWithdrawnError:
                    withdraw(rcpt, step)
                    break
                finally:
                    outcome.client_cpu_s[rcpt] += time.process_time() - t
                to_server(replies, rcpt)
        out, to_clients[:] = list(to_clients), []
        return out

    first, to_clients[:] = list(to_clients), []
    pumped = pump_stages(server, first, deliver, max_steps=max_steps)
    outcome.server_cpu_s += pumped.close_cpu_s
    outcome.stages = pumped.steps + 1
    t = time.process_time()
    try:
        outcome.total = server.result()
        outcome.survivors = server.survivors
    except SecAggError as exc:
        outcome.error = exc
    outcome.server_cpu_s += time.process_time() - t
    for c in cohort:  # producing an input is the caller's work, not the secure sum's
        outcome.client_cpu_s[c] -= outcome.input_cpu_s[c]
    outcome.withdrawn = frozenset(withdrawn)
    return outcome
