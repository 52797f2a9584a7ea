"""Central mode under Poisson sampling: an empty draw, or a cohort nobody survived, releases the noise alone.

Standard DP-FedAvg semantics: the round releases the server's Gaussian noise on a zero sum, through the
same fixed denominator (the expected cohort) and the same server optimizer as any round, and is charged
as an ordinary Poisson-subsampled Gaussian round. There is no abort rule, so no abort term: small central
federations get a finite epsilon against model users (before, the abort rule's term made it unbounded).
Distributed mode keeps its abort rule (tests/fl_core/test_abort_term.py). The exact privacy profile of
the noise-alone mechanism is checked in tests/dp/test_abort_accounting.py.

Federations here are built as a user builds one: their own model, train_fn and data, with privagg's
privacy wired by :func:`fl_core.privacy.build_privacy`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from pathlib import Path
from typing import Any

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp.accountants import abort_delta, abort_probability, compute_epsilon
from dp.audit.report import audit_ledger
from dp.calibration import server_noise_std
from dp.ledger import verify_ledger
from dp.noise import add_gaussian_noise
from dp.randomness import SeededRandomSource
from fl_core.accounting import epsilon_report
from fl_core.config import RunConfig
from fl_core.errors import ConfigError
from fl_core.federation import Federation, RoundResult
from fl_core.interrupt import InterruptGuard
from fl_core.privacy import build_privacy
from fl_core.runner import execute
from fl_core.sampling import Sampler
from fl_core.task import Task

DELTA = 1e-5


class UserModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def user_train(model: nn.Module, data: Any) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data.tensors
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _data(n: int) -> list[TensorDataset]:
    g = torch.Generator().manual_seed(0)
    return [TensorDataset(torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(n)]


def _federation(tmp_path: Path, cfg: RunConfig) -> Federation:
    sampler = Sampler.poisson(cfg.clients, cfg.sampling_rate)
    torch.manual_seed(0)
    model = UserModel()
    kwargs, extra = build_privacy(cfg.replace(ledger=str(tmp_path / "ledger.jsonl")), sampler, model)
    assert extra["min_survivors"] == kwargs["privacy"].min_survivors == (0 if cfg.dp == "central" else 1)
    return Federation(model, user_train, _data(cfg.clients), rng=SeededRandomSource(cfg.seed or 0), sampler=sampler,
                      bits=cfg.bits, dropout=cfg.dropout, server_lr=cfg.server_lr, secure_sum=cfg.secure_sum, **kwargs)


def _central(n: int, q: float, rounds: int, **kw: Any) -> RunConfig:
    base: dict[str, Any] = dict(dp="central", clients=n, sampling_rate=q, rounds=rounds, noise_multiplier=1.0,
                                clip=1.0, seed=3, secure_sum="plain", server_lr=0.5)
    return RunConfig(**{**base, **kw})


def _noise_only_step(fed: Federation, before: np.ndarray, r: int, seed: int, lr: float) -> np.ndarray:
    """Slow reference: the server's Gaussian noise for round ``r`` recomputed from the seeded stream,
    on a zero sum, rotated back, divided by the expected cohort, one plain FedAvg step (no momentum)."""
    policy = fed.privacy
    std = server_noise_std(policy.config, clip_norm=policy.clip_norm)  # type: ignore[attr-defined]
    noise = add_gaussian_noise(np.zeros(fed.plan.dim), std, SeededRandomSource(seed).spawn(f"server-noise/{r}"),
                               grid_bits=policy.config.grid_bits).values  # type: ignore[attr-defined]
    if fed.plan.rotation is not None:
        noise = fed.plan.rotation.inverse(noise)
    avg = noise / fed.sampler.expected_cohort()
    return (before.astype(np.float64) + lr * avg).astype(np.float32)


def _run(fed: Federation, rounds: int) -> tuple[list[RoundResult], list[np.ndarray]]:
    models = [fed.codec.flatten(fed.model).copy()]
    results: list[RoundResult] = []

    def keep(res: RoundResult) -> None:
        results.append(res)
        if not res.aborted:
            models.append(fed.codec.flatten(fed.model).copy())

    fed.fit(rounds, on_round=keep, max_consecutive_aborts=1)
    return results, models


@pytest.mark.parametrize("dropout", [0.0, 0.6])
def test_a_tiny_central_federation_releases_noise_alone_and_is_charged_as_plain_subsampled_gaussian(
    tmp_path: Path, dropout: float
) -> None:
    """20 clients at q = 0.1 (an empty draw about one round in eight), 16 rounds, seeded: every round
    commits on its first attempt (max_consecutive_aborts=1 would raise on any abort); the rounds
    nobody's update reached (empty draws; with dropout 0.6 also singleton cohorts that dropped)
    moved the model by exactly the server's seeded noise through the fixed denominator and the
    server optimizer; the ledger records them (survivors 0, no abort rule) and epsilon against
    model users is finite and equals the plain Poisson-subsampled Gaussian composition of all
    16 rounds (dp-accounting's PLD as the slow reference). The audit recomputes it."""
    cfg = _central(20, 0.1, 16, dropout=dropout)
    fed = _federation(tmp_path, cfg)
    results, models = _run(fed, 16)
    assert len(results) == 16 and not any(r.aborted or r.skipped for r in results)
    empty = [i for i, r in enumerate(results) if not r.survivors]
    assert empty, "the seed must give some rounds without survivors"
    if dropout:
        assert any(results[i].cohort for i in empty)  # a cohort that all dropped, not only empty draws
    else:
        assert all(not results[i].cohort for i in empty)
    for i in empty:
        expected = _noise_only_step(fed, models[i], results[i].round, cfg.seed or 0, cfg.server_lr)
        assert np.array_equal(models[i + 1], expected)
        assert not np.array_equal(models[i + 1], models[i])  # the noise moved it
    events = verify_ledger(tmp_path / "ledger.jsonl").events
    assert len(events) == 16
    assert all(e.releases_empty and e.min_survivors == 0 and abort_probability(e) == 0.0 for e in events)
    assert [e.survivors for e in events] == [len(r.survivors) for r in results]
    assert abort_delta(events) == 0.0
    rep = epsilon_report(fed)
    public = rep["epsilon_vs_public"]
    assert public is not None and math.isfinite(public) and public > 0
    # The same rounds as plain Poisson-subsampled Gaussian rounds (each at its own noise multiplier).
    acc = dpa.pld.PLDAccountant()
    for e in events:
        acc.compose(dpa.PoissonSampledDpEvent(e.sampling_rate, dpa.GaussianDpEvent(e.noise_multiplier)))
    ref = acc.get_epsilon(DELTA)
    assert public == pytest.approx(ref, rel=0.02)
    # The empty rounds count: dropping them from the composition gives less.
    assert compute_epsilon([e for e in events if e.survivors], DELTA) < public
    audit = audit_ledger(tmp_path / "ledger.jsonl")
    assert audit.verified and not audit.disagreements
    assert audit.recomputed["pld"] == pytest.approx(public, rel=1e-6)
    assert not any("abort rule" in n for n in audit.accountant_notes)


def test_central_masking_keeps_the_abort_rule_of_its_two_client_floor(tmp_path: Path) -> None:
    """A masked sum needs two clients (they never help unmask one update alone). Releasing the noise
    alone for a cohort of one would be unsound: the target joining another client's singleton cohort
    turns a noise-alone release into a two-update sum (sensitivity 2C, not the C charged). So central
    mode over masking keeps an abort rule, min_survivors 2: empty and singleton draws abort before
    anyone trains, are redrawn, and the abort term for m = 2 is charged. A policy that would release
    an empty cohort is refused with the masking backend."""
    cfg = _central(20, 0.1, 8, secure_sum="masking")
    sampler = Sampler.poisson(20, 0.1)
    model = UserModel()
    kwargs, extra = build_privacy(cfg.replace(ledger=str(tmp_path / "ledger.jsonl")), sampler, model)
    assert extra["min_survivors"] == kwargs["privacy"].min_survivors == 2 and not kwargs["privacy"].releases_empty
    fed = Federation(model, user_train, _data(20), rng=SeededRandomSource(3), sampler=sampler, secure_sum="masking",
                     **kwargs)
    results = fed.fit(8, max_consecutive_aborts=50)
    assert any(r.aborted and len(r.cohort) < 2 for r in results)
    assert all(len(r.survivors) >= 2 for r in results if not r.aborted)
    assert all(e.min_survivors == 2 and not e.releases_empty and abort_probability(e) > 0 for e in fed.events)
    unsafe = dataclasses.replace(cfg, secure_sum="plain")
    kw2, _ = build_privacy(unsafe.replace(ledger=str(tmp_path / "l2.jsonl")), sampler, UserModel())
    assert kw2["privacy"].releases_empty
    with pytest.raises(ConfigError, match="masked sum needs two clients"):
        Federation(UserModel(), user_train, _data(20), rng=SeededRandomSource(3), sampler=sampler,
                   secure_sum="masking", **kw2)


def test_a_small_central_federation_now_has_a_finite_epsilon_against_model_users(tmp_path: Path) -> None:
    """100 clients, q = 0.1, 30 rounds, central: each round used to carry the abort rule of one survivor
    (eta ~ q (1 - q)^99 ~ 3e-6 per round, H ~ 9e-5 > delta = 1e-5: no finite epsilon against model users).
    Now no round has an abort rule and epsilon against model users is the subsampled Gaussian's."""
    cfg = _central(100, 0.1, 30)
    fed = _federation(tmp_path, cfg)
    results = fed.fit(30, max_consecutive_aborts=1)
    assert len(results) == 30 and not any(r.aborted for r in results)
    rep = epsilon_report(fed)
    assert rep["epsilon_vs_public"] is not None and math.isfinite(rep["epsilon_vs_public"])
    assert rep["epsilon_vs_public_abort_delta"] == 0.0 and "epsilon_vs_public_reason" not in rep
    assert math.copysign(1.0, rep["epsilon_vs_public_abort_delta"]) == 1.0  # 0.0, never printed as -0.0
    events = fed.events
    # The same rounds under the old rule (release with one survivor, redraw otherwise): unbounded.
    old = [dataclasses.replace(e, releases_empty=False, min_survivors=1) for e in events]
    assert abort_delta(old) > DELTA and compute_epsilon(old, DELTA) == math.inf


def test_distributed_and_local_modes_keep_their_abort_rule(tmp_path: Path) -> None:
    """Only central mode releases the noise alone: in distributed mode the noise is the survivors'
    (an empty cohort has none) and in local mode each client's own; both still abort and redraw."""
    for mode in ("distributed", "local"):
        cfg = _central(20, 0.1, 8, dp=mode, min_survivors=1, client_max_epsilon=math.inf)
        fed = _federation(tmp_path / mode, cfg)
        assert not fed.privacy.releases_empty and fed.privacy.min_survivors == 1
        results = fed.fit(8, max_consecutive_aborts=50)
        assert any(r.aborted and not r.cohort for r in results)  # an empty draw: aborted, redrawn
        assert all(r.survivors for r in results if not r.aborted)
        assert all(not e.releases_empty and e.min_survivors == 1 for e in fed.events)


def _task() -> Task:
    data = _data(20)

    def make_model() -> nn.Module:
        torch.manual_seed(0)
        return UserModel()

    return Task(make_model=make_model, train_fn=user_train, load_data=lambda nc: data[int(nc["partition-id"])])


def test_an_interrupted_run_with_noise_alone_rounds_resumes_bit_for_bit(tmp_path: Path) -> None:
    """A SIGINT mid-run (after some noise-alone rounds), then --resume: the final model, the ledger's
    events and epsilon equal the uninterrupted run's exactly (the noise-alone rounds are replayed
    from the checkpoint, not redrawn), and the audit recomputes the same epsilon."""
    cfg = _central(20, 0.1, 14, seed=3)
    straight = execute(cfg.replace(ledger=str(tmp_path / "a.jsonl")), data=_task(), out=tmp_path / "a")
    empty_rounds = [r.round for r in straight.results if not r.survivors and not r.aborted]
    assert empty_rounds and not any(r.aborted for r in straight.results)
    calls = {"n": 0}
    task = _task()

    def train_fn(model: nn.Module, data: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 12:
            os.kill(os.getpid(), signal.SIGINT)
        user_train(model, data)

    b = cfg.replace(ledger=str(tmp_path / "b.jsonl"))
    with InterruptGuard() as guard:
        first = execute(b, data=dataclasses.replace(task, train_fn=train_fn), out=tmp_path / "b", guard=guard)
    assert first.interrupted == signal.SIGINT and 0 < len(first.results) < 14
    assert any(not r.survivors for r in first.results)  # a noise-alone round before the interruption
    second = execute(b, data=_task(), out=tmp_path / "b", resume=True)
    assert second.interrupted is None
    la, lb = verify_ledger(tmp_path / "a.jsonl"), verify_ledger(tmp_path / "b.jsonl")
    assert lb.events == la.events
    assert [r.epsilon for r in lb.records] == [r.epsilon for r in la.records]
    sa = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert audit_ledger(tmp_path / "b.jsonl").recomputed["pld"] == pytest.approx(la.records[-1].epsilon, rel=1e-6)
