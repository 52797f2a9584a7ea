"""The app's own code: logistic regression on scikit-learn's digits, one shard per node, a slow node stays slow.

``load_data`` returns this node's shard (every ``num-partitions``-th image from its
``partition-id``) and remembers the node's ``train-delay-s`` (its operator's setting, to
simulate a slower device); ``train_fn`` sleeps that long before training.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset


class Shard(TensorDataset):
    delay_s: float = 0.0


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target, dtype=torch.int64)


def make_model() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Linear(64, 10)


def load_data(node_config: Mapping[str, Any]) -> Shard:
    x, y = _digits()
    pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
    keep = torch.arange(pid, 1500, n)  # images 1500.. are the server's test set
    shard = Shard(x[keep], y[keep])
    shard.delay_s = float(node_config.get("train-delay-s", 0.0))
    return shard


def train_fn(model: nn.Module, data: Shard) -> None:
    time.sleep(getattr(data, "delay_s", 0.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data.tensors
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def evaluate(model: nn.Module) -> dict[str, float]:
    x, y = _digits()
    with torch.no_grad():
        out = model(x[1500:])
    return {"accuracy": float((out.argmax(1) == y[1500:]).float().mean())}
