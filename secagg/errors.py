"""Typed errors of the secagg package: one root, explicit blame."""

from __future__ import annotations

__all__ = [
    "SecAggError",
    "ConfigurationError",
    "EncodingOverflowError",
    "InputWithdrawnError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "TooFewSurvivorsError",
]


class SecAggError(Exception):
    """Root of every error raised by :mod:`secagg`."""


class ConfigurationError(SecAggError, ValueError):
    """A parameter set cannot be used as given; the message names the knob to change."""


class EncodingOverflowError(ConfigurationError):
    """An encoding could wrap around the ring, or an input exceeds the bound the plan assumed.

    Attributes:
        knob: the name of the option the caller should change (``"bits"``,
            ``"scale"``, ``"max_clients"``, ``"clip_norm"`` ...).
    """

    def __init__(self, message: str, *, knob: str) -> None:
        super().__init__(message)
        self.knob = knob


class LocalProtocolError(SecAggError):
    """The local caller misused a session (wrong order, wrong stage, wrong shape)."""


class RemoteProtocolError(SecAggError):
    """A peer sent something invalid. ``peer`` names the culprit (0 is the server)."""

    def __init__(self, message: str, *, peer: int) -> None:
        super().__init__(f"{message} (peer {peer})")
        self.peer = peer


class TooFewSurvivorsError(SecAggError):
    """Fewer clients survived than the protocol needs; the round aborts with no output.

    Security: the protocol never returns a partial or wrong sum instead.
    """

    def __init__(self, message: str, *, survivors: int, required: int) -> None:
        super().__init__(message)
        self.survivors = survivors
        self.required = required


class InputWithdrawnError(SecAggError):
    """A client's deferred input was withdrawn: the computation producing it failed or refused.

    Raised by a :data:`~secagg.protocol.DeferredInput` when its session asks for it. Nothing
    derived from the input was produced, so the client sends nothing from then on and counts
    as a dropout of the stage that asked (the simulation stops delivering to it); the round
    goes on without it, or aborts if too few are left.
    """

    def __init__(self, message: str, *, client: int) -> None:
        super().__init__(message)
        self.client = client
