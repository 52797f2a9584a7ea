"""The epsilon budget: refuse a round before it runs if it would take epsilon past the target.

The budget is enforced against one adversary (:class:`dp.adversary.Adversary`): the
server (each client's rounds composed without amplification; the planned round is
charged to every member of its cohort) or those who only see the released models.

Security:
    The check composes the events of the rounds already run with the planned
    event of the next one, using the same accountant as the ledger. The
    planned event must be the worst case that can still release (for
    distributed noise: ``survivors = min_survivors``, see
    :func:`dp.calibration.make_round_event`); a round whose actual survivors
    are fewer than that aborts in the secure sum and releases nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dp.accountants import ACCOUNTANTS
from dp.adversary import Adversary, epsilon_for
from dp.errors import BudgetExceededError, ConfigurationError
from dp.events import RoundEvent

__all__ = ["Budget"]


class Budget:
    """A target (epsilon, delta) for a whole run.

    Args:
        target_epsilon: the largest epsilon the run may reach (> 0).
        delta: the run's delta, in (0, 1).
        accountant: ``"pld"`` (default) or ``"rdp"`` (against model users; against the
            server the composition is exact for Gaussian rounds and RDP otherwise).
        against: the adversary the target holds against (default: model users, the
            historical meaning; the round loop picks the server for distributed and local modes).
    """

    def __init__(
        self,
        target_epsilon: float,
        delta: float,
        *,
        accountant: str = "pld",
        against: Adversary | str = Adversary.PUBLIC,
    ) -> None:
        if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon) and target_epsilon > 0):
            raise ConfigurationError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
        if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
            raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")
        if accountant not in ACCOUNTANTS:
            raise ConfigurationError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        self.target_epsilon = float(target_epsilon)
        self.delta = float(delta)
        self.accountant = accountant
        try:
            self.against = Adversary(against)
        except ValueError:
            raise ConfigurationError(
                f"against must be one of {[a.value for a in Adversary]}, got {against!r}"
            ) from None

    def spent(self, events: Sequence[RoundEvent]) -> float:
        """Epsilon of the rounds run so far, against :attr:`against`."""
        return epsilon_for(self.against, events, self.delta, accountant=self.accountant)

    def check(self, events_so_far: Sequence[RoundEvent], next_event: RoundEvent) -> float:
        """Epsilon if ``next_event`` runs; raise before it runs if that exceeds the target.

        Raises:
            BudgetExceededError: the round would take epsilon past ``target_epsilon``;
                ``epsilon_if_run`` and ``target_epsilon`` are set on the error.
        """
        eps = epsilon_for(self.against, [*events_so_far, next_event], self.delta, accountant=self.accountant)
        if eps > self.target_epsilon:
            raise BudgetExceededError(
                f"round {next_event.round} would take epsilon against the {self.against.value} to {eps:.4g} > "
                f"target {self.target_epsilon:.4g} (delta={self.delta:g}); stopping before it runs. "
                "Raise --target-epsilon, raise the noise multiplier, or run fewer rounds.",
                epsilon_if_run=eps,
                target_epsilon=self.target_epsilon,
            )
        return eps

    def __repr__(self) -> str:
        return (
            f"Budget(target_epsilon={self.target_epsilon}, delta={self.delta}, accountant={self.accountant!r}, "
            f"against={self.against.value!r})"
        )
