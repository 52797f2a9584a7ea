"""Typed errors of asynchronous training (all are :class:`~fl_core.errors.FLError`)."""

from __future__ import annotations

from fl_core.errors import FLError

__all__ = ["ClientRefusal", "DoubleApplyError"]


class ClientRefusal(FLError):
    """A client refused to put its update into a buffer session; nothing derived from the update left it.

    ``reason`` is one of ``"stale"``, ``"future-version"``, ``"cap"``, ``"budget"``,
    ``"spent"``, ``"no-update"`` and ``client`` names the client.
    """

    def __init__(self, message: str, *, client: int, reason: str) -> None:
        super().__init__(message)
        self.client = client
        self.reason = reason


class DoubleApplyError(FLError):
    """The server was about to apply an update that an earlier buffer already applied (a bug, never ignored)."""
