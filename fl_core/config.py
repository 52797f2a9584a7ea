"""Run configuration: one frozen record of every ``privagg run`` option, loadable from TOML.

Precedence: an option given on the command line, then the ``--config`` file, then
the default here. TOML keys are the option names with ``-`` or ``_``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fl_core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["RunConfig", "load_config_file", "CHOICES", "DEFAULT_SAMPLING_RATE"]

DEFAULT_SAMPLING_RATE = 0.1
"""Poisson rate used when neither ``per_round`` nor ``sampling_rate`` is given."""

CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("digits", "fashion-mnist"),
    "partition": ("iid", "dirichlet", "dirichlet-balanced", "shards"),
    "model": ("logreg", "mlp", "cnn"),
    "secure_sum": ("plain", "masking", "paillier"),
    "graph": ("complete", "sparse"),
    "dp": ("none", "central", "distributed", "local"),
    "mechanism": ("skellam", "discrete_gaussian"),
    "buffers": ("local", "aggregate"),
    "schedule": ("sync", "async"),
}


@dataclass(frozen=True)
class RunConfig:
    """Every option of ``privagg run``; see ``privagg run --help`` for their meaning."""

    dataset: str = "digits"
    clients: int = 1000
    rounds: int = 30
    per_round: int | None = None
    sampling_rate: float | None = None
    partition: str = "iid"
    alpha: float = 0.5
    model: str = "logreg"
    local_epochs: int = 2
    lr: float = 0.5
    batch_size: int = 16
    server_lr: float = 1.0
    server_momentum: float = 0.5
    secure_sum: str = "masking"
    graph: str = "sparse"
    bits: int | None = None
    dp: str = "distributed"
    mechanism: str = "skellam"
    clip: float | None = None
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise_std: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    budget_against: str | None = None
    client_max_epsilon: float | None = None
    max_participation: int | None = None
    delta: float = 1e-5
    colluders: int = 0
    record_noise_multiplier: float | None = None
    record_clip: float = 1.0
    min_survivors: int | None = None
    ledger: str | None = None
    dropout: float = 0.0
    buffers: str = "local"
    seed: int | None = None
    threads: int = 1
    task: str | None = None
    """A task module (path to a ``.py`` file or dotted name); None runs privagg's own demo."""
    node_config: str | None = None
    """Operator keys handed to the task's ``load_data`` (``"data-dir=shards/{partition-id}"``)."""
    device: str = "cpu"
    max_consecutive_aborts: int = 10
    schedule: str = "sync"
    """``privagg run --mode``: ``sync`` rounds, or ``async`` buffered asynchronous training
    (:mod:`fl_core.asynchronous`). Named ``schedule`` here because a Flower run configuration's
    ``mode`` is the transport's (privagg or fedavg)."""
    buffer: int | None = None
    """Async: updates per applied buffer (K); checked with the other async options before a run."""
    concurrency: int | None = None
    """Async: clients checked in at once (C)."""
    max_staleness: int | None = None
    """Async: refuse updates older than this many versions."""
    staleness: str = "fedbuff"
    """Async: the staleness weight (fedbuff, constant, polynomial:A, hinge:A:B)."""
    speed: str | None = None
    """The simulated clock's per-client speeds (lognormal[:MEDIAN_S[:SIGMA[:JITTER]]] or trace:FILE)."""

    def __post_init__(self) -> None:
        for key, allowed in CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(
                    f"--{key.replace('_', '-')} {value!r} is not valid; choose one of {', '.join(allowed)}",
                    option=key,
                )
        positive_ints = ("clients", "rounds", "local_epochs", "batch_size", "threads")
        for key in positive_ints:
            v = getattr(self, key)
            if not isinstance(v, int) or v < (0 if key == "rounds" else 1):
                raise ConfigError(f"--{key.replace('_', '-')} must be a positive integer, got {v!r}", option=key)
        if self.per_round is not None and self.sampling_rate is not None:
            raise ConfigError("give either --per-round or --sampling-rate, not both", option="per_round")
        if self.per_round is not None and not 1 <= self.per_round <= self.clients:
            raise ConfigError(f"--per-round must be in 1..{self.clients}, got {self.per_round}", option="per_round")
        if self.sampling_rate is not None and not 0 < self.sampling_rate <= 1:
            raise ConfigError(f"--sampling-rate must be in (0, 1], got {self.sampling_rate}", option="sampling_rate")
        for key in ("lr", "server_lr", "alpha"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be > 0", option=key)
        if self.clip is not None and not self.clip > 0:
            raise ConfigError("--clip must be > 0", option="clip")
        if not 0 < self.target_quantile < 1:
            raise ConfigError("--target-quantile must be in (0, 1)", option="target_quantile")
        if not self.clip_lr > 0:
            raise ConfigError("--clip-lr must be > 0", option="clip_lr")
        if self.count_noise_std is not None and not self.count_noise_std > 0:
            raise ConfigError("--count-noise-std must be > 0", option="count_noise_std")
        if not 0 < self.delta < 1:
            raise ConfigError(f"--delta must be in (0, 1), got {self.delta}", option="delta")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}", option="dropout")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise ConfigError("--noise-multiplier must be >= 0", option="noise_multiplier")
        if self.record_noise_multiplier is not None and not self.record_noise_multiplier > 0:
            raise ConfigError("--record-noise-multiplier must be > 0", option="record_noise_multiplier")
        if not self.record_clip > 0:
            raise ConfigError("--record-clip must be > 0", option="record_clip")
        if self.min_survivors is not None and not (isinstance(self.min_survivors, int) and self.min_survivors >= 1):
            raise ConfigError("--min-survivors must be a positive integer", option="min_survivors")
        if not (isinstance(self.colluders, int) and self.colluders >= 0):
            raise ConfigError("--colluders must be an integer >= 0", option="colluders")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigError("--target-epsilon must be > 0", option="target_epsilon")
        if self.budget_against is not None and self.budget_against not in ("server", "public"):
            raise ConfigError(
                f"--budget-against {self.budget_against!r} is not valid; choose server or public",
                option="budget_against",
            )
        if self.client_max_epsilon is not None and not self.client_max_epsilon > 0:
            raise ConfigError("--client-max-epsilon must be > 0 (inf: no client limit)", option="client_max_epsilon")
        if self.max_participation is not None and not (
            isinstance(self.max_participation, int) and self.max_participation >= 1
        ):
            raise ConfigError("--max-participation must be a positive integer", option="max_participation")
        if not (self.device in ("cpu", "cuda", "auto") or str(self.device).startswith("cuda:")):
            raise ConfigError(f"--device {self.device!r} is not valid; choose cpu, cuda or auto", option="device")
        if not (isinstance(self.max_consecutive_aborts, int) and self.max_consecutive_aborts >= 1):
            raise ConfigError("--max-consecutive-aborts must be a positive integer", option="max_consecutive_aborts")
        if self.node_config is not None and self.task is None:
            raise ConfigError("--node-config configures a task's load_data: give --task too", option="node_config")

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML file of run options (top level or a ``[run]`` table).

    Raises:
        ConfigError: unreadable file, bad TOML, or an unknown key.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}", option="config") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", option="config") from exc
    table = raw.get("run", raw)
    known = {f.name for f in fields(RunConfig)}
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(
                f"unknown option {key!r} in {path}; known options: {', '.join(sorted(known))}", option="config"
            )
        out[name] = value
    return out
