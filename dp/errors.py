"""Typed errors of the dp package: one root, one class per kind of failure."""

from __future__ import annotations

__all__ = [
    "PrivacyError",
    "BudgetExceededError",
    "ClientBudgetExceededError",
    "LedgerError",
    "AccountingError",
    "ConfigurationError",
]


class PrivacyError(Exception):
    """Root of every error raised by :mod:`dp`."""


class ConfigurationError(PrivacyError, ValueError):
    """A privacy parameter is out of range; the message names it and the valid range."""


class AccountingError(PrivacyError):
    """An accountant cannot account an event (unsupported mechanism or parameters)."""


class BudgetExceededError(PrivacyError):
    """Running the next round would take epsilon past the budget; nothing was run."""

    def __init__(self, message: str, *, epsilon_if_run: float, target_epsilon: float) -> None:
        super().__init__(message)
        self.epsilon_if_run = epsilon_if_run
        self.target_epsilon = target_epsilon


class LedgerError(PrivacyError):
    """The ledger is corrupt, torn, reordered or does not verify."""

    def __init__(self, message: str, *, round: int | None = None) -> None:  # noqa: A002
        super().__init__(message)
        self.round = round


class ClientBudgetExceededError(BudgetExceededError):
    """A client refuses a round: taking part would take its own epsilon against the server past its limit.

    Raised by :meth:`dp.client_record.ClientRecord.check` before anything derived from
    the client's input has left it; ``client`` names the client.
    """

    def __init__(self, message: str, *, epsilon_if_run: float, target_epsilon: float, client: str) -> None:
        super().__init__(message, epsilon_if_run=epsilon_if_run, target_epsilon=target_epsilon)
        self.client = client
