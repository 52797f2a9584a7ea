"""dp: clipping, noise mechanisms, privacy accounting and the epsilon ledger. Knows nothing of secagg."""

from __future__ import annotations

from dp.errors import AccountingError, BudgetExceededError, ConfigurationError, LedgerError, PrivacyError
from dp.randomness import RandomSource, SeededRandomSource, SystemRandomSource

__all__ = [
    "AccountingError",
    "BudgetExceededError",
    "ConfigurationError",
    "LedgerError",
    "PrivacyError",
    "RandomSource",
    "SeededRandomSource",
    "SystemRandomSource",
]
