"""Small reference models for the built-in datasets (logistic regression, MLP, CNN)."""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

from fl_core.errors import ConfigError

__all__ = ["ModelName", "build_model"]

ModelName = Literal["logreg", "mlp", "cnn"]


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a fresh model for inputs of ``input_shape`` (without the batch axis).

    The CNN uses GroupNorm rather than BatchNorm so that every federated value is a
    parameter (see :mod:`fl_core.params`) and Opacus can wrap it.
    """
    features = int(math.prod(input_shape))
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, num_classes))
    if name == "cnn":
        if len(input_shape) != 3:
            raise ConfigError(f"the cnn needs (C, H, W) inputs, got {input_shape}", option="model")
        c, h, w = input_shape
        return nn.Sequential(
            nn.Conv2d(c, 16, 5, padding=2),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.GroupNorm(4, 32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (h // 4) * (w // 4), num_classes),
        )
    raise ConfigError(f"unknown model {name!r}; choose logreg, mlp or cnn", option="model")
