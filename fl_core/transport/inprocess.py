"""The in-process transport: every party lives in this process; messages are handed over directly.

It is the simulation transport of :class:`~fl_core.federation.Federation` and the seam
where a networked transport (e.g. Flower) plugs in: anything with the same ``run``
signature can carry a round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from secagg import ClientId, DeferredInput, RandomSource, RingVector, RoundOutcome, SecureSum, run_round

__all__ = ["Transport", "InProcessTransport"]


class Transport(Protocol):
    def run(
        self,
        secure_sum: SecureSum,
        inputs: Mapping[ClientId, RingVector | DeferredInput],
        *,
        round_id: int,
        rng_for: Callable[[ClientId], RandomSource],
        stages_completed: Mapping[ClientId, int],
    ) -> RoundOutcome:
        """Carry one secure-sum round between the server and the clients holding ``inputs``.

        An input may be deferred (:data:`secagg.DeferredInput`): the client's session calls it
        when it needs it, and a transport must not call it otherwise (producing it trains the
        client and charges its own privacy record); one that raises
        :class:`secagg.InputWithdrawnError` makes its client a dropout.
        """
        ...


class InProcessTransport:
    """Runs the sans-I/O sessions of one round in this process (see :func:`secagg.run_round`):
    deferred inputs are produced when their sessions ask, one client at a time."""

    def run(
        self,
        secure_sum: SecureSum,
        inputs: Mapping[ClientId, RingVector | DeferredInput],
        *,
        round_id: int,
        rng_for: Callable[[ClientId], RandomSource],
        stages_completed: Mapping[ClientId, int],
    ) -> RoundOutcome:
        return run_round(secure_sum, inputs, round_id=round_id, rng_for=rng_for, stages_completed=stages_completed)
