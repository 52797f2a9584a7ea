"""Transports move secure-sum messages between parties; they never look inside them."""

from __future__ import annotations

from fl_core.transport.inprocess import InProcessTransport, Transport

__all__ = ["InProcessTransport", "Transport"]
