"""Typed errors of the fl_core package: one root, blame named in each."""

from __future__ import annotations

__all__ = [
    "FLError",
    "ConfigError",
    "ModelError",
    "ClientTrainingError",
    "UpdateError",
    "DataError",
    "RoundFailedError",
]


class FLError(Exception):
    """Root of every error raised by :mod:`fl_core`."""


class ConfigError(FLError, ValueError):
    """An option has an invalid value; ``option`` names it."""

    def __init__(self, message: str, *, option: str) -> None:
        super().__init__(message)
        self.option = option


class ModelError(FLError, TypeError):
    """The model cannot be federated as given (e.g. non-float trainable parameters)."""


class DataError(FLError, ValueError):
    """A dataset is missing, malformed, or a client has no data."""


class ClientTrainingError(FLError):
    """The user's ``train_fn`` raised for a client; the round did not change the model."""

    def __init__(self, message: str, *, client: int) -> None:
        super().__init__(message)
        self.client = client


class UpdateError(FLError, ValueError):
    """A client update is unusable (NaN/Inf, wrong shape); the round did not change the model."""

    def __init__(self, message: str, *, client: int | None = None) -> None:
        super().__init__(message)
        self.client = client


class RoundFailedError(FLError):
    """A round aborted (e.g. too few survivors); the model and the ledger are unchanged."""

    def __init__(self, message: str, *, round: int) -> None:  # noqa: A002
        super().__init__(message)
        self.round = round
