"""Flower's own FedAvg on privagg's model, data and training loop: the yardstick for the transport.

``mode = "fedavg"`` runs :class:`flwr.serverapp.strategy.FedAvg` unchanged (no
clipping, no noise, no secure sum, plaintext updates) on the same SuperNodes, with
the same ``train_fn`` and data partitions, so a benchmark can time a plain Flower
round and a private privagg round on one setup in one run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fl_core.config import RunConfig
from fl_core.transport.flower.options import config_from_json, config_to_json
from fl_core.transport.flower.policy import client_id_of

__all__ = ["register_fedavg_client", "run_fedavg"]

_CONFIG_KEY = "privagg-config"


def register_fedavg_client(app: Any) -> None:
    """Register the plain FedAvg ``train`` handler on a ClientApp."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    @app.train()
    def _train(msg: Message, context: Any) -> Message:
        from fl_core.client import compute_update
        from fl_core.runner import build_federation

        client = client_id_of(context.node_config)
        cfg = config_from_json(str(msg.content.config_records["config"][_CONFIG_KEY]))
        fed, data, _ = build_federation(cfg.replace(dp="none", secure_sum="plain"))
        arrays = msg.content.array_records["arrays"]
        fed.model.load_state_dict(arrays.to_torch_state_dict())
        global_vec = fed.codec.flatten(fed.model)
        delta = compute_update(
            fed.model, global_vec, fed.codec, fed.train_fn, fed.client_data[client - 1], client_id=client
        )
        fed.codec.unflatten_into(fed.model, global_vec + delta)
        n = len(fed.client_data[client - 1])
        content = RecordDict(
            {
                "arrays": ArrayRecord(fed.model.state_dict()),
                "metrics": MetricRecord({"num-examples": n}),
            }
        )
        return Message(content, reply_to=msg)


def run_fedavg(grid: Any, cfg: RunConfig, *, timeout: float) -> dict[str, Any]:
    """Run ``cfg.rounds`` rounds of Flower's FedAvg over every connected node; time each round."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from fl_core.runner import build_federation

    fed, _data, _ = build_federation(cfg.replace(dp="none", secure_sum="plain"))
    marks: list[float] = []
    accuracy: list[float] = []

    def evaluate(server_round: int, arrays: Any) -> Any:
        marks.append(time.perf_counter())
        fed.model.load_state_dict(arrays.to_torch_state_dict())
        if fed.eval_fn is not None:
            accuracy.append(float(fed.eval_fn(fed.model).get("accuracy", float("nan"))))
        return None

    n = cfg.clients
    strategy = FedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n, min_evaluate_nodes=0
    )
    t0 = time.perf_counter()
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(fed.model.state_dict()),
        num_rounds=cfg.rounds,
        timeout=timeout,
        train_config=ConfigRecord({_CONFIG_KEY: config_to_json(cfg)}),
        evaluate_fn=evaluate,
    )
    total = time.perf_counter() - t0
    final = result.arrays
    vec = None
    if final is not None:
        fed.model.load_state_dict(final.to_torch_state_dict())
        vec = fed.codec.flatten(fed.model)
    return {
        "round_s": [b - a for a, b in zip(marks, marks[1:], strict=False)],
        "total_s": total,
        "accuracy": accuracy,
        "final": vec if vec is not None else np.zeros(0, np.float32),
    }
