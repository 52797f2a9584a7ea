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
    "TaskError",
    "TooManyAbortsError",
    "CheckpointError",
    "LedgerConflictError",
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
    """A dataset is missing, malformed, or a client has no data.

    ``function`` names the user function that returned it (e.g. ``"load_data"``) and
    ``client`` the client (1-based), when known.
    """

    def __init__(self, message: str, *, function: str | None = None, client: int | None = None) -> None:
        super().__init__(message)
        self.function = function
        self.client = client


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


class TaskError(ConfigError):
    """A task module cannot be used: missing or non-callable function, wrong signature, import failure.

    ``function`` names the task function at fault (None when the module itself failed).
    """

    def __init__(self, message: str, *, function: str | None = None) -> None:
        super().__init__(message, option="task")
        self.function = function


class TooManyAbortsError(RoundFailedError):
    """More consecutive rounds aborted than ``max_consecutive_aborts`` allows; training stopped.

    Every aborted attempt released nothing and left the model and the ledger as they were.
    """

    def __init__(self, message: str, *, round: int, aborts: int) -> None:  # noqa: A002
        super().__init__(message, round=round)
        self.aborts = aborts


class CheckpointError(FLError):
    """A checkpoint or run folder cannot be used (unreadable, another format, or not bound to the ledger)."""


class LedgerConflictError(ConfigError):
    """The ledger belongs to another run (its header differs) or already holds rounds of this one.

    ``differences`` maps each differing header key to ``(ledger's value, this run's value)``.
    """

    def __init__(self, message: str, *, differences: dict[str, tuple[object, object]] | None = None) -> None:
        super().__init__(message, option="ledger")
        self.differences = dict(differences or {})
