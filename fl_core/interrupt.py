"""Ctrl-C and SIGTERM for a run: the round in flight either commits whole or rolls back, never half.

:class:`InterruptGuard` installs handlers for SIGINT and SIGTERM. Outside a critical
section a signal raises :class:`Interrupted` at once: the round in flight is abandoned,
which leaves the model, the ledger and the checkpoint as they were (a round changes
nothing before its ledger append). Inside :meth:`InterruptGuard.critical` - from the
ledger append to the end of the checkpoint write - the signal is remembered and raised
when the section ends, so a round that started charging the ledger commits whole.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["InterruptGuard", "Interrupted"]


class Interrupted(BaseException):
    """The run was stopped by a signal (a BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` in user code swallows it). ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class InterruptGuard:
    """Context manager: SIGINT/SIGTERM raise :class:`Interrupted`, deferred inside :meth:`critical`.

    Only the main thread can install signal handlers; elsewhere the guard does nothing
    (signals keep their default behaviour).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._depth = 0
        self._pending: int | None = None
        self._previous: dict[int, Any] = {}
        self._active = False

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
            self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._active:
            for s, h in self._previous.items():
                signal.signal(s, h)
            self._active = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._depth > 0:
            if self._pending is None:
                self._pending = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section that completes before a signal takes effect."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)
