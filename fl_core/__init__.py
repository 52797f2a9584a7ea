"""fl_core: the federated round loop; the only package that imports dp, secagg and torch together."""

from __future__ import annotations

from fl_core.config import RunConfig
from fl_core.data import FederatedData, federate, load_dataset, partition_labels
from fl_core.errors import (
    ClientTrainingError,
    ConfigError,
    DataError,
    FLError,
    ModelError,
    RoundFailedError,
    UpdateError,
)
from fl_core.evaluation import make_evaluator
from fl_core.federation import Federation, RoundResult
from fl_core.models import build_model
from fl_core.params import ParamCodec
from fl_core.pipeline import NoPrivacy, PrivacyPolicy
from fl_core.sampling import Cohort, Sampler, SamplingScheme
from fl_core.server import ServerOptimizer
from fl_core.training import make_sgd_train_fn

__all__ = [
    "ClientTrainingError",
    "Cohort",
    "ConfigError",
    "DataError",
    "FLError",
    "FederatedData",
    "Federation",
    "ModelError",
    "NoPrivacy",
    "ParamCodec",
    "PrivacyPolicy",
    "RoundFailedError",
    "RoundResult",
    "RunConfig",
    "Sampler",
    "SamplingScheme",
    "ServerOptimizer",
    "UpdateError",
    "build_model",
    "federate",
    "load_dataset",
    "make_evaluator",
    "make_sgd_train_fn",
    "partition_labels",
]
