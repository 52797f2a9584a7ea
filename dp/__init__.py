"""dp: clipping, noise mechanisms, privacy accounting and the epsilon ledger. Knows nothing of secagg."""

from __future__ import annotations

from dp.accountants import ACCOUNTANT_VERSIONS, compute_epsilon, epsilon_curve
from dp.budget import Budget
from dp.calibration import AdaptiveClipConfig, DPConfig, make_round_event
from dp.clipping import AdaptiveClip, ClipResult, FixedClip, clip_l2
from dp.errors import AccountingError, BudgetExceededError, ConfigurationError, LedgerError, PrivacyError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling
from dp.noise import discrete_gaussian, gaussian_float, skellam
from dp.randomness import RandomSource, SeededRandomSource, SystemRandomSource

__all__ = [
    "ACCOUNTANT_VERSIONS",
    "AccountingError",
    "AdaptiveClip",
    "AdaptiveClipConfig",
    "Budget",
    "ClipResult",
    "DPConfig",
    "DPMode",
    "FixedClip",
    "Mechanism",
    "RoundEvent",
    "Sampling",
    "clip_l2",
    "compute_epsilon",
    "discrete_gaussian",
    "epsilon_curve",
    "gaussian_float",
    "make_round_event",
    "skellam",
    "BudgetExceededError",
    "ConfigurationError",
    "LedgerError",
    "PrivacyError",
    "RandomSource",
    "SeededRandomSource",
    "SystemRandomSource",
]
