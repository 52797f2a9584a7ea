"""Audits of a privacy claim: ledger verification with recomputed epsilon; one-run lower bounds."""

from __future__ import annotations

from dp.audit.one_run import OneRunAudit, audit_from_scores, epsilon_lower_bound, p_value
from dp.audit.report import AUDIT_RTOL, AuditReport, Disagreement, RoundAudit, audit_ledger

__all__ = [
    "AUDIT_RTOL",
    "AuditReport",
    "Disagreement",
    "OneRunAudit",
    "RoundAudit",
    "audit_from_scores",
    "audit_ledger",
    "epsilon_lower_bound",
    "p_value",
]
