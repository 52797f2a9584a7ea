"""The evaluation hook: test loss and accuracy of a model on a held-out dataset."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["EvalFn", "make_evaluator"]

EvalFn = Callable[[nn.Module], Mapping[str, float]]


def make_evaluator(test: Dataset[Any], *, batch_size: int = 1024) -> EvalFn:
    """Return ``eval_fn(model) -> {"loss": mean cross-entropy, "accuracy": fraction correct}``."""
    loader = DataLoader(test, batch_size=batch_size, shuffle=False)

    def evaluate(model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                out = model(x)
                loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
                correct += int((out.argmax(dim=1) == y).sum())
                count += int(y.shape[0])
        model.train(was_training)
        return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}

    return evaluate
