"""Build and execute a whole federated run from a :class:`~fl_core.config.RunConfig`."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fl_core.config import DEFAULT_SAMPLING_RATE, RunConfig
from fl_core.data import FederatedData, federate, load_dataset
from fl_core.evaluation import make_evaluator
from fl_core.federation import Federation, RoundResult
from fl_core.models import build_model
from fl_core.sampling import Sampler
from fl_core.training import make_sgd_train_fn

__all__ = ["RunSummary", "build_federation", "execute", "make_rng"]


def make_rng(seed: int | None) -> Any:
    """OS CSPRNG when ``seed`` is None; a deterministic source otherwise (experiments only)."""
    from dp.randomness import SeededRandomSource, SystemRandomSource

    return SystemRandomSource() if seed is None else SeededRandomSource(seed)


def make_sampler(cfg: RunConfig) -> Sampler:
    if cfg.sampling_rate is not None:
        return Sampler.poisson(cfg.clients, cfg.sampling_rate)
    if cfg.per_round is not None:
        return Sampler.fixed_size(cfg.clients, cfg.per_round)
    return Sampler.poisson(cfg.clients, DEFAULT_SAMPLING_RATE)


def load_federated_data(cfg: RunConfig) -> FederatedData:
    data_seed = 0 if cfg.seed is None else cfg.seed
    train, test, shape, classes = load_dataset(cfg.dataset, seed=data_seed)
    return federate(
        train,
        test,
        num_clients=cfg.clients,
        input_shape=shape,
        num_classes=classes,
        name=cfg.dataset,
        scheme=cfg.partition,
        alpha=cfg.alpha,
        seed=data_seed,
    )


@dataclass
class RunSummary:
    config: RunConfig
    results: list[RoundResult]
    wall_s: float
    dim: int
    extra: dict[str, Any] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)

    def extra_sizes(self) -> dict[str, float]:
        if not self.sizes:
            return {}
        s = sorted(self.sizes)
        return {"min": s[0], "median": s[len(s) // 2], "max": s[-1], "total": sum(s)}

    def final_metrics(self) -> dict[str, float]:
        for r in reversed(self.results):
            if r.metrics:
                return r.metrics
        return {}

    def to_json(self) -> dict[str, Any]:
        m = self.final_metrics()
        rounds = [r for r in self.results if not r.skipped]
        bytes_pc = (sum(r.bytes_up_per_client for r in rounds) / len(rounds)) if rounds else 0.0
        eps = self.results[-1].epsilon if self.results else (0.0 if self.config.dp != "none" else None)
        cfg = self.config
        return {
            "accuracy": m.get("accuracy"),
            "loss": m.get("loss"),
            "rounds": len(self.results),
            "clients": cfg.clients,
            "secure_sum": cfg.secure_sum,
            "dp": cfg.dp,
            "epsilon": eps if eps is not None and eps != float("inf") else None,
            "delta": cfg.delta if cfg.dp != "none" else None,
            "wall_s": round(self.wall_s, 3),
            "bytes_per_client_per_round": round(bytes_pc, 1),
            "bytes_down_per_client_per_round": round(
                (sum(r.bytes_down_per_client for r in rounds) / len(rounds)) if rounds else 0.0, 1
            ),
            "dataset": cfg.dataset,
            "model": cfg.model,
            "dim": self.dim,
            "per_round_accuracy": [r.metrics.get("accuracy") for r in self.results],
            "seed": cfg.seed,
            "partition": cfg.partition,
            "ledger_head": next((r.ledger_head for r in reversed(self.results) if r.ledger_head), None),
            "cpu_s_by_phase": {
                k: round(sum(r.cpu_s.get(k, 0.0) for r in rounds), 3)
                for k in sorted({k for r in rounds for k in r.cpu_s})
            },
            "sampling": self.sampling,
            "client_sizes": self.extra_sizes(),
            "machine": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            **self.extra,
        }


def build_federation(
    cfg: RunConfig, data: FederatedData | None = None, *, open_ledger: bool = True
) -> tuple[Federation, FederatedData, dict[str, Any]]:
    """Everything a run needs, built from ``cfg`` (no rounds run yet).

    ``open_ledger=False``: no ledger is opened (a party that never charges rounds, such as a
    client node of a networked run).
    """
    torch.set_num_threads(cfg.threads)
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    data = data or load_federated_data(cfg)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    rng = make_rng(cfg.seed)
    sampler = make_sampler(cfg)
    record = None
    train_fn = make_sgd_train_fn(
        epochs=cfg.local_epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=0 if cfg.seed is None else cfg.seed,
        record_dp=cfg.record_noise_multiplier is not None,
    )
    if cfg.record_noise_multiplier is not None:
        from fl_core.record_dp import RecordDP, RecordDPConfig

        # Key each client's accountant (and the labels its Opacus generators are seeded from) by
        # client id rather than object identity, so a seeded run is reproducible across processes.
        client_of = {id(d): i + 1 for i, d in enumerate(data.clients)}
        record = RecordDP(
            RecordDPConfig(
                noise_multiplier=cfg.record_noise_multiplier, max_grad_norm=cfg.record_clip, delta=cfg.delta
            ),
            rng=rng.spawn("record-dp"),
            client_key=lambda d: client_of.get(id(d), id(d)),
        )
        train_fn = record.wrap(train_fn)
    from fl_core.privacy import build_privacy

    privacy_kwargs, extra = build_privacy(cfg, sampler, model, open_ledger=open_ledger)
    fed = Federation(
        model,
        train_fn,
        data.clients,
        rng=rng,
        secure_sum=cfg.secure_sum,
        secure_sum_options={"graph": cfg.graph},
        sampler=sampler,
        server_lr=cfg.server_lr,
        server_momentum=cfg.server_momentum,
        bits=cfg.bits,
        eval_fn=make_evaluator(data.test),
        dropout=cfg.dropout,
        buffers=cfg.buffers,  # type: ignore[arg-type]
        **privacy_kwargs,
    )
    if record is not None:
        extra["_record_dp"] = record
    check = getattr(fed.privacy, "check_inflation", None)
    if check is not None:
        extra["rounding_inflation"] = check(fed.plan.scale)
    ledger = privacy_kwargs.get("ledger")
    if ledger is not None and ledger.records:
        fed.resume_accounting(ledger.events, last_round=ledger.last_round, epsilon=ledger.epsilon)
        extra["resumed_from_round"] = ledger.last_round
    return fed, data, extra


def execute(
    cfg: RunConfig, *, on_round: Callable[[RoundResult], None] | None = None, data: FederatedData | None = None
) -> RunSummary:
    fed, data, extra = build_federation(cfg, data)
    t0 = time.perf_counter()
    results: list[RoundResult] = []
    stop_reason = None
    from dp.errors import BudgetExceededError

    try:
        for res in fed.rounds(cfg.rounds):
            results.append(res)
            if on_round is not None:
                on_round(res)
    except BudgetExceededError as exc:
        stop_reason = str(exc)
    finally:
        fed.close()
    extra = dict(extra)
    record = extra.pop("_record_dp", None)
    if record is not None:
        rep = record.report()["record_level"]
        per = [v["epsilon"] for v in rep.pop("per_client").values()]
        rep["epsilon_median"] = sorted(per)[len(per) // 2] if per else 0.0
        rep["clients_trained"] = len(per)
        extra["record_level"] = rep
    if stop_reason is not None:
        extra["stopped"] = stop_reason
    sampling = {"scheme": fed.sampler.scheme.value, "rate": fed.sampler.rate, "population": fed.sampler.population}
    return RunSummary(
        cfg, results, time.perf_counter() - t0, fed.dim, extra, sizes=list(data.client_sizes), sampling=sampling
    )
