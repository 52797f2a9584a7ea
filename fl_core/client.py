"""Client side of a round: train a copy of the global model with the user's loop, return the delta."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from fl_core.errors import ClientTrainingError, DataError, UpdateError
from fl_core.params import ParamCodec

__all__ = ["TrainFn", "compute_update"]

TrainFn = Callable[[nn.Module, Any], Any]
"""The user's own training function ``train_fn(model, client_data)``; it trains ``model`` in place."""


def compute_update(
    global_model: nn.Module,
    global_vec: npt.NDArray[np.float32],
    codec: ParamCodec,
    train_fn: TrainFn,
    client_data: Any,
    *,
    client_id: int,
) -> npt.NDArray[np.float32]:
    """Train a private copy of ``global_model`` on ``client_data``; return flat(local) - flat(global).

    The global model itself is never touched.

    Raises:
        DataError: the client has no data.
        ClientTrainingError: ``train_fn`` raised (the original is chained).
        UpdateError: the update has NaN or Inf values.
    """
    try:
        n = len(client_data)
    except TypeError:
        n = None
    if n == 0:
        raise DataError(f"client {client_id} has no data; remove it or repartition")
    local = copy.deepcopy(global_model)
    local.train()
    try:
        train_fn(local, client_data)
    except Exception as exc:  # the user's code: blame it explicitly, keep the cause
        raise ClientTrainingError(
            f"train_fn raised {type(exc).__name__} for client {client_id}: {exc}", client=client_id
        ) from exc
    delta = codec.flatten(local) - global_vec
    if not np.all(np.isfinite(delta)):
        raise UpdateError(
            f"client {client_id} produced an update with NaN or Inf values (diverged training? "
            "lower the learning rate)",
            client=client_id,
        )
    return delta
