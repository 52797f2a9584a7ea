"""Epsilon per adversary in the round loop, the clients' own limit, the participation cap and target-epsilon noise.

Every federation here is built the way a user builds one: their own model, their own
train_fn and data, with privagg's privacy wired by :func:`fl_core.privacy.build_privacy`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from dp.accountants import compute_epsilon
from dp.adversary import server_view
from dp.audit.report import audit_ledger
from dp.client_record import DEFAULT_CLIENT_MAX_EPSILON, verify_client_record
from dp.events import Mechanism
from dp.ledger import verify_ledger
from dp.randomness import SeededRandomSource
from fl_core.accounting import epsilon_report
from fl_core.cli import app
from fl_core.config import RunConfig
from fl_core.errors import ConfigError, RoundFailedError
from fl_core.federation import Federation
from fl_core.noise_sizing import default_min_survivors, participation_cap
from fl_core.privacy import NoiseSizingWarning, build_privacy
from fl_core.sampling import Sampler

DELTA = 1e-5
runner = CliRunner()


class UserModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Trainer:
    """The user's train_fn; it counts which clients' data it was given, round by round."""

    def __init__(self) -> None:
        self.calls: Counter[int] = Counter()

    def __call__(self, model: nn.Module, data: Any) -> None:
        self.calls[int(data.tensors[0][0, 0].item())] += 1
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = data.tensors
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _data(n: int) -> list[TensorDataset]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(1, n + 1):
        x = torch.randn(4, 3, generator=g)
        x[:, 0] = float(i)  # the client's id, so the train_fn can tell whose data it got
        out.append(TensorDataset(x, torch.randint(0, 2, (4,), generator=g)))
    return out


def _federation(tmp_path: Path, cfg: RunConfig, sampler: Sampler, trainer: Trainer | None = None,
                **overrides: Any) -> tuple[Federation, dict[str, Any]]:
    torch.manual_seed(0)
    model = UserModel()
    kwargs, extra = build_privacy(cfg.replace(ledger=str(tmp_path / "ledger.jsonl")), sampler, model)
    kwargs.update(overrides)
    # The backend the test names (masking runs masking, not the plain sum); an override may name another.
    backend = kwargs.pop("secure_sum", cfg.secure_sum)
    fed = Federation(
        model,
        trainer or Trainer(),
        _data(sampler.population),
        rng=SeededRandomSource(cfg.seed or 0),
        sampler=sampler,
        bits=cfg.bits,
        secure_sum=backend,
        **kwargs,
    )
    assert type(fed.secure_sum).__name__ == {"plain": "PlainSum", "masking": "MaskingSecureSum"}[backend]
    return fed, extra


def _per_client_reference(events: list[Any]) -> dict[int, float]:
    """Slow reference: each client's own rounds (by survivor ids), composed from scratch by RDP."""
    clients = {c for e in events for c in e.survivor_ids}
    return {
        c: compute_epsilon([server_view(e) for e in events if c in e.survivor_ids], DELTA, accountant="rdp")
        for c in clients
    }


def test_finding4_distributed_epsilon_is_enforced_against_the_server(tmp_path: Path) -> None:
    """Issue 14, finding 4: Poisson-sampled distributed rounds were charged with amplification
    although the server picks the cohort. The enforced epsilon is now the largest over clients of
    their own rounds composed without amplification, recomputable from the ledger alone."""
    cfg = RunConfig(dp="distributed", clients=60, sampling_rate=0.1, rounds=25, noise_multiplier=2.0, clip=1.0,
                    client_max_epsilon=math.inf, seed=3, secure_sum="plain")
    sampler = Sampler.poisson(60, 0.1)
    fed, extra = _federation(tmp_path, cfg, sampler)
    assert extra["epsilon_enforced_on"] == "server"
    results = fed.fit(25)
    fed.close()
    report = epsilon_report(fed)
    events = verify_ledger(tmp_path / "ledger.jsonl").events
    per = _per_client_reference(events)
    assert report["epsilon"] == report["epsilon_vs_server"] == pytest.approx(max(per.values()), rel=1e-9)
    # Six clients expected per round: a round's release hinges on one client too often for an
    # amplified bound against model users (dp.accountants.aborts), and the report says why.
    assert compute_epsilon(events, DELTA) == math.inf and report["epsilon_vs_public"] is None
    assert "abort rule" in report["epsilon_vs_public_reason"]
    # The amplified number (all the ledger used to say) is several times too small against the server.
    public = compute_epsilon([dataclasses.replace(e, min_survivors=0) for e in events], DELTA)
    assert report["epsilon_vs_server"] > 2 * public
    assert results[-1].epsilon == pytest.approx(report["epsilon"])
    audit = audit_ledger(tmp_path / "ledger.jsonl", checkpoints=2)
    assert audit.ok and audit.recomputed_vs_server == pytest.approx(report["epsilon_vs_server"])


def test_a_client_refuses_past_its_own_limit_even_when_the_server_ignores_it(tmp_path: Path) -> None:
    """A server that keeps sampling a client (no cap, no admission rule: the attacker) cannot
    take it past its own limit: it refuses before training, becomes a dropout, and the round
    goes on without it. Without the guard the same run takes the clients far past the limit."""
    limit = 9.5  # at z = 1 a client's own record allows 3 rounds (Skellam, RDP: 9.09; 4 would be 10.8)
    cfg = RunConfig(dp="distributed", clients=6, per_round=6, rounds=5, noise_multiplier=1.0, clip=1.0,
                    client_max_epsilon=limit, seed=1, secure_sum="masking")
    sampler = Sampler.full(6)
    trainer = Trainer()
    fed, extra = _federation(tmp_path, cfg, sampler, trainer, admit=None)  # the server ignores client limits
    guard = fed.client_guard
    assert guard is not None and guard.max_epsilon == limit
    results = fed.fit(3)
    assert all(r.refused == () for r in results)
    # Round 4: every client refuses; nothing derived from its data is computed or sent.
    before = dict(trainer.calls)
    with pytest.raises(RoundFailedError, match="aborted|below|masked inputs|needs at least 2 clients"):
        fed.run_round()
    assert dict(trainer.calls) == before
    for c, rec in guard.records.items():
        assert len(rec.charges) == 3 and rec.epsilon_vs_server() <= limit
        assert verify_client_record(rec.to_bytes()).verified
    assert guard.report()["client_refusals"] == 6
    # Without the guard the very same server takes every client past the limit.
    unguarded, _ = _federation(tmp_path / "u", cfg, sampler, Trainer(), admit=None, client_guard=None)
    (tmp_path / "u").mkdir(exist_ok=True)
    unguarded.fit(5)
    assert epsilon_report(unguarded)["epsilon_vs_server"] > limit


def test_a_refusing_client_is_a_dropout_and_the_round_completes(tmp_path: Path) -> None:
    cfg = RunConfig(dp="distributed", clients=8, per_round=8, rounds=4, noise_multiplier=1.0, clip=1.0,
                    client_max_epsilon=9.5, min_survivors=5, seed=2, secure_sum="masking")
    sampler = Sampler.full(8)
    trainer = Trainer()
    fed, _ = _federation(tmp_path, cfg, sampler, trainer, admit=None)
    guard = fed.client_guard
    # Clients 1 and 2 already spent their budget elsewhere (their own records say so).
    for c in (1, 2):
        for r in range(3):
            guard.charge(c, 100 + r)
    res = fed.run_round()
    assert res.refused == (1, 2)
    assert set(res.survivors) == set(range(3, 9))
    assert trainer.calls[1] == trainer.calls[2] == 0 and trainer.calls[3] == 1
    assert res.event.survivor_ids == tuple(range(3, 9))


def test_the_honest_server_leaves_out_capped_clients_and_records_them(tmp_path: Path) -> None:
    cfg = RunConfig(dp="distributed", clients=10, per_round=10, rounds=6, noise_multiplier=2.0, clip=1.0,
                    client_max_epsilon=math.inf, max_participation=2, min_survivors=1, seed=0,
                    secure_sum="plain")
    sampler = Sampler.full(10)
    fed, extra = _federation(tmp_path, cfg, sampler)
    assert extra["participation_cap"] == 2
    results = fed.fit(4)
    joined: Counter[int] = Counter(c for r in results for c in r.cohort)
    assert max(joined.values()) == 2
    assert [r.skipped for r in results] == [False, False, True, True]  # everyone capped: nobody sampled
    assert epsilon_report(fed)["clients_left_out"] == 20


def test_default_min_survivors_keeps_small_federations_sensible() -> None:
    # Issue 15, item 1: floor(E - 3 sqrt(E)) gave 1 of 10 expected clients.
    assert default_min_survivors(Sampler.poisson(50, 0.2)) == 6
    assert default_min_survivors(Sampler.poisson(1000, 0.1)) == 85
    assert default_min_survivors(Sampler.fixed_size(100, 50), 0.2) == 40
    assert participation_cap(1000, 0.1, 20) == 6 and participation_cap(100, 1.0, 7) == 7


def test_large_noise_overhead_warns_with_its_cost() -> None:
    cfg = RunConfig(dp="distributed", clients=100, sampling_rate=0.2, rounds=2, noise_multiplier=3.0,
                    min_survivors=4, client_max_epsilon=math.inf)
    with pytest.warns(NoiseSizingWarning, match="carries 2.2.x the noise std it needs"):
        _kwargs, extra = build_privacy(cfg, Sampler.poisson(100, 0.2), UserModel(), open_ledger=False)
    assert extra["noise_share"]["per_client_share"] == pytest.approx(0.25)


def test_central_mode_reports_the_server_epsilon_as_unbounded(tmp_path: Path) -> None:
    cfg = RunConfig(dp="central", clients=10, per_round=5, rounds=2, noise_multiplier=1.0, clip=1.0, seed=0,
                    secure_sum="plain")
    fed, extra = _federation(tmp_path, cfg, Sampler.fixed_size(10, 5))
    assert extra["epsilon_enforced_on"] == "public" and fed.client_guard is None
    fed.fit(2)
    rep = epsilon_report(fed)
    assert rep["epsilon_vs_server"] is None and "exact" in rep["epsilon_vs_server_reason"]
    assert rep["epsilon"] == rep["epsilon_vs_public"] > 0
    with pytest.raises(ConfigError, match="unbounded"):
        build_privacy(cfg.replace(budget_against="server"), Sampler.fixed_size(10, 5), UserModel(), open_ledger=False)
    with pytest.raises(ConfigError, match="un-noised"):
        build_privacy(cfg.replace(client_max_epsilon=5.0), Sampler.fixed_size(10, 5), UserModel(), open_ledger=False)


def test_a_noise_that_breaks_every_clients_limit_is_refused_up_front() -> None:
    cfg = RunConfig(dp="distributed", clients=20, per_round=10, rounds=3, noise_multiplier=0.3)
    with pytest.raises(ConfigError, match="every client would refuse"):
        build_privacy(cfg, Sampler.fixed_size(20, 10), UserModel(), open_ledger=False)


def test_target_epsilon_against_the_server_calibrates_noise_and_cap(tmp_path: Path) -> None:
    """Issue 15, item 3: --target-epsilon without a noise multiplier sets the noise (and the cap)
    so the run ends just under the target against the server."""
    cfg = RunConfig(dp="distributed", clients=200, sampling_rate=0.25, rounds=6, target_epsilon=4.0, clip=1.0,
                    seed=4, secure_sum="plain")
    sampler = Sampler.poisson(200, 0.25)
    fed, extra = _federation(tmp_path, cfg, sampler)
    cal = extra["noise_calibration"]
    assert cal["source"] == "calibrated" and cal["against"] == "server"
    k = cal["participation_cap"]
    assert k == participation_cap(200, 0.25, 6) and extra["participation_cap"] == k
    results = fed.fit(6)
    rep = epsilon_report(fed)
    # Each round is admitted on its worst case (min-survivors 23 of the 50 expected, low enough
    # that a release hinges on one client with probability <= delta / 10 over the run), so the
    # run ends a little further below the target than the typical rounds would allow.
    assert extra["min_survivors"] == 23
    assert 0.8 * 4.0 <= rep["epsilon"] <= 4.0
    assert rep["epsilon_vs_public"] < rep["epsilon"]
    joined: Counter[int] = Counter(c for r in results for c in r.cohort)
    assert max(joined.values()) <= k
    # Against the server the budget is what each client's own rounds add up to.
    per = _per_client_reference(verify_ledger(tmp_path / "ledger.jsonl").events)
    assert max(per.values()) == pytest.approx(rep["epsilon"], rel=1e-9)


def test_target_epsilon_against_model_users(tmp_path: Path) -> None:
    cfg = RunConfig(dp="local", clients=40, per_round=10, rounds=3, target_epsilon=3.0, clip=1.0, seed=4,
                    secure_sum="plain", budget_against="public", client_max_epsilon=math.inf)
    with pytest.raises(ConfigError, match="too small"):
        build_privacy(cfg.replace(ledger=str(tmp_path / "refused.jsonl")), Sampler.fixed_size(40, 10), UserModel())
    cfg = cfg.replace(dp="central", client_max_epsilon=None, per_round=None)
    fed, extra = _federation(tmp_path, cfg, Sampler.full(40))
    assert extra["noise_calibration"]["against"] == "public"
    fed.fit(3)
    rep = epsilon_report(fed)
    assert 0.9 * 3.0 <= rep["epsilon"] <= 3.0 and rep["epsilon_enforced_on"] == "public"


def test_cli_run_json_reports_both_epsilons(tmp_path: Path) -> None:
    res = runner.invoke(app, ["run", "--clients", "40", "--per-round", "20", "--rounds", "2", "--noise-multiplier",
                              "3", "--secure-sum", "plain", "--seed", "1", "--json",
                              "--ledger", str(tmp_path / "l.jsonl")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["epsilon_enforced_on"] == "server"
    assert out["epsilon"] == out["epsilon_vs_server"] >= out["epsilon_vs_public"] > 0
    assert out["client_max_epsilon"] == DEFAULT_CLIENT_MAX_EPSILON
    assert out["client_epsilon_max"] <= DEFAULT_CLIENT_MAX_EPSILON
    assert "per_client_share" in out["noise_share"]
    led = verify_ledger(tmp_path / "l.jsonl")
    assert led.epsilon_vs_server == pytest.approx(out["epsilon_vs_server"])
    assert all(r.event.mechanism is Mechanism.SKELLAM and r.event.survivor_ids for r in led.records)


def test_cli_small_federation_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Issue 15 acceptance: 50 clients at q = 0.2 for 30 rounds cannot meet the clients' own limit
    and learn; privagg refuses and names the fixes."""
    res = runner.invoke(app, ["run", "--clients", "50", "--sampling-rate", "0.2", "--rounds", "30", "--json",
                              "--ledger", str(tmp_path / "l.jsonl")])
    assert res.exit_code == 2
    assert "too small" in res.output and "--client-max-epsilon" in res.output and "--clients" in res.output
