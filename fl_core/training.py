"""A plain local-SGD ``train_fn`` for the built-in runs, shaped like a user's own training loop."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["make_sgd_train_fn"]


def make_sgd_train_fn(*, epochs: int = 1, lr: float = 0.1, batch_size: int = 16, momentum: float = 0.0, seed: int = 0):  # type: ignore[no-untyped-def]
    """Return ``train_fn(model, data)`` running ``epochs`` of minibatch SGD with cross-entropy.

    Shuffling uses a torch Generator seeded per call from ``seed`` and the data size,
    so runs are reproducible.
    """
    calls = {"n": 0}

    def train_fn(model: nn.Module, data: Dataset[Any]) -> None:
        calls["n"] += 1
        g = torch.Generator().manual_seed(seed * 1_000_003 + calls["n"])
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        model.train()
        for _ in range(epochs):
            for x, y in loader:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()

    return train_fn
