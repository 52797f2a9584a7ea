"""The app's own code: a small CNN, its training loop, and the loader of one client's shard.

The same file serves Flower (``client_app.py`` / ``server_app.py``) and privagg's in-process
simulation (``privagg run --task fashion_cnn/task.py``). Data: ``prepare_data.py`` writes one
shard per client; a node reads only the folder named by its ``data-dir`` node config
(default: ``$FASHION_CNN_DATA/shards/client-<partition-id>``, with ``FASHION_CNN_DATA``
defaulting to ``data/`` next to this app).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

LEARNING_RATE = 0.05
BATCH_SIZE = 32
LOCAL_EPOCHS = 1


def data_root() -> Path:
    return Path(os.environ.get("FASHION_CNN_DATA", Path(__file__).resolve().parent.parent / "data"))


class FashionCNN(nn.Module):
    """Two 3x3 convolutions with max pooling, then one linear layer (about 5,300 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def make_model() -> nn.Module:
    """A fresh CNN with the same initial weights on every machine (seeded, without touching torch's global RNG)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return FashionCNN()


def _tensors(path: Path) -> TensorDataset:
    with np.load(path) as f:
        images = torch.from_numpy(f["images"].astype(np.float32) / 255.0).unsqueeze(1)
        labels = torch.from_numpy(f["labels"].astype(np.int64))
    return TensorDataset((images - 0.2860) / 0.3530, labels)


def load_data(node_config: Mapping[str, Any]) -> TensorDataset:
    """This node's shard: ``<data-dir>/train.npz``, and nothing else."""
    default = data_root() / "shards" / f"client-{node_config['partition-id']}"
    folder = Path(str(node_config.get("data-dir", default)))
    return _tensors(folder / "train.npz")


def train_fn(model: nn.Module, data: TensorDataset) -> None:
    """Plain SGD on cross-entropy; the shuffle has its own generator, so a run is repeatable."""
    loader = DataLoader(data, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(LOCAL_EPOCHS):
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()


def evaluate(model: nn.Module) -> dict[str, float]:
    """Accuracy and loss on the server's test set (``$FASHION_CNN_DATA/test.npz``)."""
    test = _tensors(data_root() / "test.npz")
    model.eval()
    with torch.no_grad():
        x, y = test.tensors
        logits = model(x)
        loss = float(nn.functional.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
    return {"accuracy": acc, "loss": loss}
