"""The stage loop that drives a secure-sum server session to its end, whatever carries the messages.

A transport (the in-process simulation, Flower) owns how a stage's messages reach
the clients and how their replies come back; this loop owns the rest: deliver the
server's pending messages, and when a stage brings nothing back (every live client
answered or the deadline passed), call ``close_stage()`` so the session fixes the
survivors and moves on - or aborts. A session that closes stages and sends nothing
three times in a row, or that runs past ``max_steps`` stages, is a backend bug and
raises; it is never taken for a dropout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from secagg.errors import LocalProtocolError
from secagg.protocol import Message, ServerSession

__all__ = ["PumpResult", "pump_stages"]

Deliver = Callable[[list[Message], int], Sequence[Message]]
"""Called with one stage's server messages and the stage number (1, 2, ...); returns the server's next messages."""


class PumpResult:
    """What :func:`pump_stages` did: stages delivered, and CPU seconds the server spent closing stages."""

    __slots__ = ("close_cpu_s", "steps")

    def __init__(self, steps: int, close_cpu_s: float) -> None:
        self.steps = steps
        self.close_cpu_s = close_cpu_s


def pump_stages(
    server: ServerSession,
    pending: Sequence[Message],
    deliver: Deliver,
    *,
    max_steps: int = 64,
    on_close: Callable[[], None] | None = None,
    stalled: Callable[[str], Exception] = LocalProtocolError,
) -> PumpResult:
    """Run ``server`` until it is done, starting from the messages it has already emitted.

    Args:
        server: the round's server session (its clients' first messages already received).
        pending: the server's messages not yet delivered.
        deliver: carries one stage's messages to the clients and returns the server's
            replies to what came back (the transport feeds the clients' answers to
            ``server.receive``).
        max_steps: the most stages a round may take.
        on_close: called after each ``close_stage()`` (e.g. to record work it triggered).
        stalled: builds the error raised when the session stops making progress.

    Returns:
        The number of stages delivered and the server CPU time spent in ``close_stage``.

    Raises:
        The error ``stalled`` builds (default :class:`LocalProtocolError`): the session
        closed a stage and sent nothing three times in a row, or needed more than
        ``max_steps`` stages. Errors raised by ``deliver`` propagate.
    """
    queue = list(pending)
    step = idle = 0
    close_cpu = 0.0
    while not server.done:
        if not queue:
            t = time.process_time()
            queue.extend(server.close_stage())
            close_cpu += time.process_time() - t
            if on_close is not None:
                on_close()
            if server.done:
                break
            if not queue:
                idle += 1
                if idle > 2:
                    raise stalled("server session stalled: closed a stage and sent nothing")
                continue
        idle = 0
        step += 1
        if step > max_steps:
            raise stalled(f"round did not finish within {max_steps} stages")
        batch, queue = queue, []
        queue.extend(deliver(batch, step))
    return PumpResult(step, close_cpu)
