"""Shared pieces of the asynchronous tests: a user's own task (model, train_fn, data) and a spying transport.

Not a test module (no tests): the async tests import it like tests/secagg's masking support.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp.randomness import SeededRandomSource
from fl_core.asynchronous import AsyncFederation, AsyncOptions, SpeedModel
from fl_core.federation import Federation
from fl_core.pipeline import NoPrivacy
from fl_core.sampling import Sampler
from fl_core.transport import InProcessTransport


def user_data(n_clients: int = 8, per: int = 6, seed: int = 0) -> list[TensorDataset]:
    """Each client's own data: 3 features, label = sign of the first feature."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_clients):
        x = torch.randn(per, 3, generator=g)
        out.append(TensorDataset(x, (x[:, 0] > 0).long()))
    return out


def user_train_fn(model: nn.Module, data: TensorDataset) -> None:
    """The user's loop: three full-batch gradient steps (deterministic, no shuffling)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data.tensors
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def user_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


class SpyTransport:
    """The in-process transport, keeping what each session got and gave (for the reference checks)."""

    def __init__(self) -> None:
        self.sessions: list[dict[str, Any]] = []

    def run(self, secure_sum: Any, inputs: Any, *, round_id: int, rng_for: Any, stages_completed: Any) -> Any:
        out = InProcessTransport().run(
            secure_sum, inputs, round_id=round_id, rng_for=rng_for, stages_completed=stages_completed
        )
        self.sessions.append(
            {
                "round_id": round_id,
                "inputs": {c: np.array(v, copy=True) for c, v in inputs.items()},
                "drops": dict(stages_completed),
                "outcome": out,
                "ring": secure_sum.ring,
                "input_stage": int(getattr(secure_sum, "input_stage", 0)),
            }
        )
        return out


def make_fed(
    *,
    n_clients: int = 8,
    buffer: int = 3,
    secure_sum: str = "plain",
    privacy: Any = None,
    transport: Any = None,
    min_survivors: int | None = 2,
    seed: int = 1,
    data: list[TensorDataset] | None = None,
    secure_sum_options: dict[str, Any] | None = None,
    **kw: Any,
) -> Federation:
    opts: dict[str, Any] = {"graph": "complete"} if secure_sum == "masking" else {}
    if min_survivors is not None:
        opts["min_survivors"] = min_survivors
    opts.update(secure_sum_options or {})
    return Federation(
        user_model(),
        user_train_fn,
        data if data is not None else user_data(n_clients),
        rng=SeededRandomSource(seed),
        secure_sum=secure_sum,
        secure_sum_options=opts,
        sampler=Sampler.fixed_size(n_clients, buffer),
        privacy=privacy or NoPrivacy(clip_norm=10.0),
        server_momentum=0.0,
        transport=transport,
        **kw,
    )


def make_async(fed: Federation | None = None, **options: Any) -> AsyncFederation:
    fed = fed or make_fed(buffer=options.get("buffer", 3))
    options.setdefault("speed", SpeedModel.lognormal(median_s=10.0, sigma=1.0))
    return AsyncFederation(fed, AsyncOptions(**options))
