"""Server side: turn the averaged update into a new global vector (FedAvg with server lr and momentum)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fl_core.errors import ConfigError, UpdateError

__all__ = ["ServerOptimizer"]


@dataclass
class ServerOptimizer:
    """FedAvg step ``w <- w + lr * v`` with ``v <- momentum * v + avg_delta`` (FedAvgM).

    ``momentum = 0`` and ``lr = 1`` is plain FedAvg. :meth:`step` is pure: it returns
    the new vector and the new momentum state; :meth:`commit` stores the state once the
    round is committed, so a failed round leaves the optimizer as it was.
    """

    lr: float = 1.0
    momentum: float = 0.0
    velocity: npt.NDArray[np.float64] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"server learning rate must be > 0, got {self.lr}", option="server_lr")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"server momentum must be in [0, 1), got {self.momentum}", option="server_momentum")

    def step(
        self, weights: npt.NDArray[np.float32], avg_delta: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
        if avg_delta.shape != weights.shape:
            raise UpdateError(f"aggregate has shape {avg_delta.shape}, model has {weights.shape}")
        if not np.all(np.isfinite(avg_delta)):
            raise UpdateError("aggregate update has NaN or Inf values")
        v = avg_delta if self.velocity is None or self.momentum == 0 else self.momentum * self.velocity + avg_delta
        new = (weights.astype(np.float64) + self.lr * v).astype(np.float32)
        return new, v

    def commit(self, velocity: npt.NDArray[np.float64]) -> None:
        self.velocity = velocity
