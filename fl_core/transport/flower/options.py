"""How a privagg run is configured on Flower: the ``RunConfig`` and the transport's own options.

Flower hands a ServerApp its run configuration as a flat mapping of scalars
(``[tool.flwr.app.config]`` in the app's ``pyproject.toml``, overridden by
``flwr run --run-config``). Keys named like ``privagg run`` options (``secure-sum``,
``dp``, ``per-round``, ...) build the :class:`~fl_core.config.RunConfig`; TOML has
no null, so an empty string means "not set" for options whose default is None.
The keys in :data:`TRANSPORT_KEYS` configure the Flower transport itself.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fl_core.config import RunConfig
from fl_core.errors import ConfigError

__all__ = ["FlowerOptions", "TRANSPORT_KEYS", "config_from_json", "config_to_json", "parse_run_config"]


@dataclass(frozen=True, slots=True)
class FlowerOptions:
    """Options of the Flower transport (not of the federated run).

    Attributes:
        train_timeout: seconds the server waits for the opening message of a round
            (local training, clipping, noise, encoding, the first protocol message).
        stage_timeout: seconds the server waits for each later protocol stage; a node
            that has not answered by then is a dropout (``close_stage()``).
        connect_timeout: seconds to wait at start-up for enough SuperNodes to connect.
        poll_interval: seconds between two pulls of replies from the SuperLink.
        output_dir: when set, the server writes the final weights, each round's
            secure sum and a JSON summary there.
        pause_after: ``"ROUND:STAGE"``; after closing that stage the server waits
            (at most ``stage_timeout``) until ``resume_file`` exists. A test hook for
            injecting a failure at an exact protocol point; empty in normal runs.
        resume_file: see ``pause_after``.
        mode: ``"privagg"`` (private aggregation) or ``"fedavg"`` (Flower's own FedAvg
            strategy on the same model and data, for comparison; the demo app's switch).
        advertise_ahead: the next round's cohort advertises its keys during the current
            round's final exchange, saving one Flower exchange per round
            (:mod:`fl_core.transport.flower.ahead`); off: every round starts from scratch.
        insecure_small_key_for_tests: accept a Paillier key below 2048 bits from the key
            holders. Tests only, never real data.
        verify_decryption: a single Paillier key holder must prove each plaintext it
            returns (the server checks; threshold shares are always proven).
    """

    train_timeout: float = 600.0
    stage_timeout: float = 60.0
    connect_timeout: float = 120.0
    poll_interval: float = 0.1
    output_dir: str = ""
    pause_after: str = ""
    resume_file: str = ""
    mode: str = "privagg"
    advertise_ahead: bool = True
    insecure_small_key_for_tests: bool = False
    verify_decryption: bool = True

    def __post_init__(self) -> None:
        for name in ("train_timeout", "stage_timeout", "connect_timeout", "poll_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be > 0 seconds", option=name)
        if self.mode not in ("privagg", "fedavg"):
            raise ConfigError(f"mode must be privagg or fedavg, got {self.mode!r}", option="mode")
        if self.pause_after:
            self.pause_point()

    def pause_point(self) -> tuple[int, str] | None:
        """``pause_after`` parsed as (round, stage), or None."""
        if not self.pause_after:
            return None
        r, sep, stage = self.pause_after.partition(":")
        if not sep or not r.isdigit() or not stage:
            raise ConfigError(
                f"pause-after must look like ROUND:STAGE (e.g. 2:masked-input), got {self.pause_after!r}",
                option="pause_after",
            )
        if not self.resume_file:
            raise ConfigError(
                "pause-after needs resume-file (the file whose creation resumes the run)", option="pause_after"
            )
        return int(r), stage


TRANSPORT_KEYS = tuple(f.name.replace("_", "-") for f in fields(FlowerOptions))
"""Run-config keys that configure the transport."""


def _none_default_type(annotation: str) -> type:
    for name, typ in (("int", int), ("float", float), ("str", str), ("bool", bool)):
        if annotation.replace(" ", "").startswith(name + "|") or annotation.replace(" ", "").endswith("|" + name):
            return typ
    return str


def _coerce(name: str, value: Any, default: Any, annotation: str) -> Any:
    if default is None:
        if value == "" or value is None:
            return None
        typ = _none_default_type(annotation)
    else:
        typ = type(default)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}", option=name)
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{name} must be an integer, got {value!r}", option=name)
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}", option=name)
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}", option=name)
    return value


def parse_run_config(user_config: Mapping[str, Any]) -> tuple[RunConfig, FlowerOptions]:
    """Build the run and transport configuration from a Flower run config.

    Keys use ``-`` or ``_``; a leading ``privagg.`` (a ``[tool.flwr.app.config.privagg]``
    table) is accepted too.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or an invalid option.
    """
    run_fields = {f.name: f for f in fields(RunConfig)}
    opt_fields = {f.name: f for f in fields(FlowerOptions)}
    run_kw: dict[str, Any] = {}
    opt_kw: dict[str, Any] = {}
    for key, value in user_config.items():
        name = key.removeprefix("privagg.").replace("-", "_")
        if name in run_fields:
            f = run_fields[name]
            run_kw[name] = _coerce(key, value, f.default, str(f.type))
        elif name in opt_fields:
            f = opt_fields[name]
            opt_kw[name] = _coerce(key, value, f.default, str(f.type))
        else:
            known = sorted(n.replace("_", "-") for n in (*run_fields, *opt_fields))
            raise ConfigError(f"unknown run-config key {key!r}; known keys: {', '.join(known)}", option=key)
    return RunConfig(**run_kw), FlowerOptions(**opt_kw)


def config_to_json(cfg: RunConfig) -> str:
    """Canonical JSON of ``cfg`` (how the server tells the nodes what run they are in)."""
    return json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))


def config_from_json(text: str) -> RunConfig:
    """Inverse of :func:`config_to_json`.

    Raises:
        ConfigError: not JSON, or not a valid RunConfig.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the run configuration sent by the server is not JSON: {exc}", option="config") from exc
    known = {f.name for f in fields(RunConfig)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ConfigError(
            f"the server sent unknown run options {sorted(set(raw) - known) if isinstance(raw, dict) else raw!r}; "
            "is the node running the same privagg version as the server?",
            option="config",
        )
    return dataclasses.replace(RunConfig(), **raw)
