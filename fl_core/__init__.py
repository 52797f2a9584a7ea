"""fl_core: the federated round loop; the only package that imports dp, secagg and torch together.

Names are imported on first use (PEP 562), so importing one submodule (e.g. from a
Flower ClientApp process that only runs a protocol stage) does not pull in the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fl_core.config import RunConfig
    from fl_core.data import FederatedData, federate, load_dataset, partition_labels
    from fl_core.errors import (
        CheckpointError,
        ClientTrainingError,
        ConfigError,
        DataError,
        FLError,
        LedgerConflictError,
        ModelError,
        RoundFailedError,
        TaskError,
        TooManyAbortsError,
        UpdateError,
    )
    from fl_core.evaluation import make_evaluator
    from fl_core.federation import Federation, RoundResult
    from fl_core.models import build_model
    from fl_core.params import ParamCodec
    from fl_core.pipeline import NoPrivacy, PrivacyPolicy
    from fl_core.runner import build_federation, execute
    from fl_core.sampling import Cohort, Sampler, SamplingScheme
    from fl_core.server import ServerOptimizer
    from fl_core.sources import OneClient, ServerOnly, TaskClients
    from fl_core.task import Task, builtin_task, load_task, node_config_for
    from fl_core.training import make_sgd_train_fn

_EXPORTS: dict[str, str] = {
    "RunConfig": "fl_core.config",
    "FederatedData": "fl_core.data",
    "federate": "fl_core.data",
    "load_dataset": "fl_core.data",
    "partition_labels": "fl_core.data",
    "ClientTrainingError": "fl_core.errors",
    "ConfigError": "fl_core.errors",
    "DataError": "fl_core.errors",
    "FLError": "fl_core.errors",
    "ModelError": "fl_core.errors",
    "RoundFailedError": "fl_core.errors",
    "UpdateError": "fl_core.errors",
    "CheckpointError": "fl_core.errors",
    "LedgerConflictError": "fl_core.errors",
    "TaskError": "fl_core.errors",
    "TooManyAbortsError": "fl_core.errors",
    "build_federation": "fl_core.runner",
    "execute": "fl_core.runner",
    "OneClient": "fl_core.sources",
    "ServerOnly": "fl_core.sources",
    "TaskClients": "fl_core.sources",
    "Task": "fl_core.task",
    "builtin_task": "fl_core.task",
    "load_task": "fl_core.task",
    "node_config_for": "fl_core.task",
    "make_evaluator": "fl_core.evaluation",
    "Federation": "fl_core.federation",
    "RoundResult": "fl_core.federation",
    "build_model": "fl_core.models",
    "ParamCodec": "fl_core.params",
    "NoPrivacy": "fl_core.pipeline",
    "PrivacyPolicy": "fl_core.pipeline",
    "Cohort": "fl_core.sampling",
    "Sampler": "fl_core.sampling",
    "SamplingScheme": "fl_core.sampling",
    "ServerOptimizer": "fl_core.server",
    "make_sgd_train_fn": "fl_core.training",
}

__all__ = [
    "CheckpointError",
    "ClientTrainingError",
    "Cohort",
    "ConfigError",
    "DataError",
    "FLError",
    "FederatedData",
    "Federation",
    "LedgerConflictError",
    "ModelError",
    "NoPrivacy",
    "OneClient",
    "ParamCodec",
    "PrivacyPolicy",
    "RoundFailedError",
    "RoundResult",
    "RunConfig",
    "Sampler",
    "SamplingScheme",
    "ServerOnly",
    "ServerOptimizer",
    "Task",
    "TaskClients",
    "TaskError",
    "TooManyAbortsError",
    "UpdateError",
    "build_federation",
    "build_model",
    "builtin_task",
    "execute",
    "federate",
    "load_dataset",
    "load_task",
    "make_evaluator",
    "make_sgd_train_fn",
    "node_config_for",
    "partition_labels",
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
