"""dp: clipping, noise mechanisms, privacy accounting and the epsilon ledger. Knows nothing of secagg.

Names are imported on first use (PEP 562), so importing one submodule (e.g. from a
Flower ClientApp process that only runs a protocol stage) does not pull in the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dp.accountants import ACCOUNTANT_VERSIONS, compute_epsilon, epsilon_curve
    from dp.adversary import Adversary, epsilon_vs_public, epsilon_vs_server, epsilon_vs_server_per_client
    from dp.audit import AuditReport, audit_from_scores, audit_ledger, epsilon_lower_bound
    from dp.budget import Budget
    from dp.calibration import AdaptiveClipConfig, DPConfig, make_round_event
    from dp.client_record import (
        DEFAULT_CLIENT_MAX_EPSILON,
        ClientRecord,
        ClientRecordReport,
        client_round_event,
        verify_client_record,
    )
    from dp.clipping import AdaptiveClip, ClipResult, FixedClip, clip_l2
    from dp.errors import (
        AccountingError,
        BudgetExceededError,
        ClientBudgetExceededError,
        ConfigurationError,
        LedgerError,
        PrivacyError,
    )
    from dp.events import DPMode, Mechanism, RoundEvent, Sampling
    from dp.ledger import (
        GENESIS_HASH,
        Ledger,
        LedgerRecord,
        LedgerReport,
        TornTailWarning,
        inspect_ledger,
        verify_ledger,
    )
    from dp.noise import discrete_gaussian, gaussian_float, skellam
    from dp.randomness import RandomSource, SeededRandomSource, SystemRandomSource

_EXPORTS: dict[str, str] = {
    "ACCOUNTANT_VERSIONS": "dp.accountants",
    "compute_epsilon": "dp.accountants",
    "epsilon_curve": "dp.accountants",
    "Adversary": "dp.adversary",
    "epsilon_vs_public": "dp.adversary",
    "epsilon_vs_server": "dp.adversary",
    "epsilon_vs_server_per_client": "dp.adversary",
    "DEFAULT_CLIENT_MAX_EPSILON": "dp.client_record",
    "ClientRecord": "dp.client_record",
    "ClientRecordReport": "dp.client_record",
    "client_round_event": "dp.client_record",
    "verify_client_record": "dp.client_record",
    "ClientBudgetExceededError": "dp.errors",
    "Budget": "dp.budget",
    "AdaptiveClipConfig": "dp.calibration",
    "DPConfig": "dp.calibration",
    "make_round_event": "dp.calibration",
    "AdaptiveClip": "dp.clipping",
    "ClipResult": "dp.clipping",
    "FixedClip": "dp.clipping",
    "clip_l2": "dp.clipping",
    "AccountingError": "dp.errors",
    "BudgetExceededError": "dp.errors",
    "ConfigurationError": "dp.errors",
    "LedgerError": "dp.errors",
    "PrivacyError": "dp.errors",
    "DPMode": "dp.events",
    "Mechanism": "dp.events",
    "RoundEvent": "dp.events",
    "Sampling": "dp.events",
    "discrete_gaussian": "dp.noise",
    "gaussian_float": "dp.noise",
    "skellam": "dp.noise",
    "RandomSource": "dp.randomness",
    "SeededRandomSource": "dp.randomness",
    "SystemRandomSource": "dp.randomness",
    "GENESIS_HASH": "dp.ledger",
    "Ledger": "dp.ledger",
    "LedgerRecord": "dp.ledger",
    "LedgerReport": "dp.ledger",
    "TornTailWarning": "dp.ledger",
    "inspect_ledger": "dp.ledger",
    "verify_ledger": "dp.ledger",
    "AuditReport": "dp.audit",
    "audit_from_scores": "dp.audit",
    "audit_ledger": "dp.audit",
    "epsilon_lower_bound": "dp.audit",
}

__all__ = [
    "Adversary",
    "epsilon_vs_public",
    "epsilon_vs_server",
    "epsilon_vs_server_per_client",
    "DEFAULT_CLIENT_MAX_EPSILON",
    "ClientRecord",
    "ClientRecordReport",
    "client_round_event",
    "verify_client_record",
    "ClientBudgetExceededError",
    "GENESIS_HASH",
    "Ledger",
    "LedgerRecord",
    "LedgerReport",
    "TornTailWarning",
    "inspect_ledger",
    "verify_ledger",
    "AuditReport",
    "audit_from_scores",
    "audit_ledger",
    "epsilon_lower_bound",
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


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
