"""Client side of a round: train a copy of the global model with the user's loop, return the delta."""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from fl_core.errors import ClientTrainingError, DataError, UpdateError
from fl_core.params import ParamCodec

__all__ = ["TrainFn", "compute_update", "current_client"]

_CURRENT_CLIENT: contextvars.ContextVar[int | None] = contextvars.ContextVar("privagg_current_client", default=None)


def current_client() -> int | None:
    """The id (1-based) of the client whose ``train_fn`` is running, or None outside one.

    Lets code inside the user's loop (e.g. record-level DP's accountant) key state by client
    id rather than by the data object it was given.
    """
    return _CURRENT_CLIENT.get()

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
    device: Any = "cpu",
) -> npt.NDArray[np.float32]:
    """Train a private copy of ``global_model`` on ``client_data``; return flat(local) - flat(global).

    The global model itself is never touched. With ``device`` other than the CPU, the copy is
    moved there for ``train_fn`` (which moves its batches to the model's device, as any torch
    loop does) and back before the update is taken, so the update is computed on the CPU.

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
    local.to(device)  # the same path on every device (a no-op on the CPU)
    local.train()
    token = _CURRENT_CLIENT.set(client_id)
    try:
        train_fn(local, client_data)
    except Exception as exc:  # the user's code: blame it explicitly, keep the cause
        raise ClientTrainingError(
            f"train_fn raised {type(exc).__name__} for client {client_id}: {exc}", client=client_id
        ) from exc
    finally:
        _CURRENT_CLIENT.reset(token)
    local.to("cpu")
    delta = codec.flatten(local) - global_vec
    if not np.all(np.isfinite(delta)):
        raise UpdateError(
            f"client {client_id} produced an update with NaN or Inf values (diverged training? "
            "lower the learning rate)",
            client=client_id,
        )
    return delta
