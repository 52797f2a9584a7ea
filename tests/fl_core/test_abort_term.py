"""The abort rule in the round loop: what a run records for it, how the default min-survivors is chosen,
empty Poisson draws, and the audit of ledgers with and without the rule recorded.

The accountant's side (the abort term against the exact privacy profile) is tested in
``tests/dp/test_abort_accounting.py``. Federations here are built as a user builds one: their own model,
train_fn and data, with privagg's privacy wired by :func:`fl_core.privacy.build_privacy`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp.accountants import abort_delta, abort_probability, compute_epsilon
from dp.adversary import epsilon_vs_public
from dp.audit.report import audit_ledger
from dp.events import DPMode, Mechanism, RoundEvent, Sampling
from dp.ledger import Ledger, verify_ledger
from dp.randomness import SeededRandomSource
from fl_core.accounting import epsilon_report
from fl_core.config import RunConfig
from fl_core.federation import Federation
from fl_core.noise_sizing import (
    ABORT_DELTA_SHARE,
    default_min_survivors,
    planned_abort_delta,
    quantile_min_survivors,
)
from fl_core.privacy import build_privacy
from fl_core.sampling import Sampler

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


def _federation(tmp_path: Path, cfg: RunConfig, sampler: Sampler) -> tuple[Federation, dict[str, Any]]:
    torch.manual_seed(0)
    model = UserModel()
    kwargs, extra = build_privacy(cfg.replace(ledger=str(tmp_path / "ledger.jsonl")), sampler, model)
    fed = Federation(model, user_train, _data(sampler.population), rng=SeededRandomSource(cfg.seed or 0),
                     sampler=sampler, bits=cfg.bits, **kwargs)
    return fed, extra


@pytest.mark.parametrize(("n", "q", "rounds"), [(1000, 0.1, 30), (1000, 0.1, 20), (200, 0.25, 6), (400, 0.05, 50)])
def test_default_min_survivors_is_the_largest_within_a_tenth_of_delta(n: int, q: float, rounds: int) -> None:
    """The default m spends at most delta / 10 on the abort term over the planned rounds, and m + 1
    (unless the quantile rule caps it) would spend more."""
    s = Sampler.poisson(n, q)
    m = default_min_survivors(s, 0.0, rounds=rounds, delta=DELTA)
    assert 1 <= m <= quantile_min_survivors(s)
    assert planned_abort_delta(s, m, rounds=rounds) <= ABORT_DELTA_SHARE * DELTA
    if m < quantile_min_survivors(s):
        assert planned_abort_delta(s, m + 1, rounds=rounds) > ABORT_DELTA_SHARE * DELTA


@pytest.mark.filterwarnings("ignore::fl_core.privacy.NoiseSizingWarning")
def test_small_federations_keep_the_quantile_rule_and_get_no_amplified_public_epsilon(tmp_path: Path) -> None:
    """50 clients at q = 0.2: even m = 1 spends more than delta / 10 (an empty draw of the others
    is likely enough), so the default stays 6 and the report says why there is no amplified
    epsilon against model users."""
    s = Sampler.poisson(50, 0.2)
    assert planned_abort_delta(s, 1, rounds=30) > ABORT_DELTA_SHARE * DELTA
    assert default_min_survivors(s, 0.0, rounds=30, delta=DELTA) == quantile_min_survivors(s) == 6
    cfg = RunConfig(dp="distributed", clients=50, sampling_rate=0.2, rounds=30, noise_multiplier=1.0, clip=1.0,
                    client_max_epsilon=math.inf, seed=1, secure_sum="plain")
    fed, extra = _federation(tmp_path, cfg, s)
    assert extra["min_survivors"] == 6
    fed.fit(4)
    rep = epsilon_report(fed)
    assert rep["epsilon_vs_public"] is None and "abort rule (min-survivors 6)" in rep["epsilon_vs_public_reason"]
    assert rep["epsilon_vs_public_abort_delta"] >= DELTA
    assert math.isfinite(rep["epsilon_vs_server"])


def test_a_run_records_its_abort_rule_and_the_audit_recomputes_the_charged_epsilon(tmp_path: Path) -> None:
    """Every ledger round carries min_survivors, the pool it was drawn from and the planned dropout;
    the audit recomputes epsilon against model users with the abort term from the ledger alone and
    finds no disagreement; that epsilon is above the one without the term (the old number)."""
    cfg = RunConfig(dp="distributed", clients=300, sampling_rate=0.2, rounds=5, noise_multiplier=1.0, clip=1.0,
                    client_max_epsilon=math.inf, seed=2, secure_sum="plain", max_participation=3)
    s = Sampler.poisson(300, 0.2)
    fed, extra = _federation(tmp_path, cfg, s)
    m = extra["min_survivors"]
    fed.fit(5)
    events = verify_ledger(tmp_path / "ledger.jsonl").events
    assert len(events) == 5
    assert all(e.min_survivors == m and e.dropout == cfg.dropout for e in events)
    # The cap (3 rounds each) shrinks the pool the later cohorts are drawn from, and the term with it.
    assert events[0].eligible == 300 and events[-1].eligible < 300
    assert abort_probability(events[-1]) > abort_probability(events[0]) > 0
    rep = epsilon_report(fed)
    h = abort_delta(events)
    assert rep["epsilon_vs_public_abort_delta"] == pytest.approx(h) and 0 < h < DELTA
    assert rep["epsilon_vs_public"] == pytest.approx(epsilon_vs_public(events, DELTA), rel=1e-9)
    old = compute_epsilon([dataclasses.replace(e, min_survivors=0) for e in events], DELTA)
    assert rep["epsilon_vs_public"] > old
    audit = audit_ledger(tmp_path / "ledger.jsonl")
    assert audit.verified and not audit.disagreements
    assert audit.recomputed["pld"] == pytest.approx(rep["epsilon_vs_public"], rel=1e-6)
    assert not any("abort rule" in n for n in audit.accountant_notes)


def test_an_empty_poisson_draw_in_a_distributed_run_is_redrawn_not_skipped(tmp_path: Path) -> None:
    """At 8 clients and q = 0.15 a quarter of the draws are empty. A skipped round would be an
    outcome (an unchanged model) that the target client's presence alone turns into a release;
    in distributed mode (the clients carry the noise: an empty cohort has none to release) every
    empty draw is an aborted attempt instead, its rounds carry min_survivors and the term for it,
    and the round is released later. (Central mode releases the noise alone instead:
    tests/fl_core/test_noise_alone_rounds.py.)"""
    cfg = RunConfig(dp="distributed", clients=8, sampling_rate=0.15, rounds=6, noise_multiplier=1.0, clip=1.0,
                    client_max_epsilon=math.inf, seed=5, secure_sum="plain", min_survivors=1)
    s = Sampler.poisson(8, 0.15)
    fed, _ = _federation(tmp_path, cfg, s)
    results = fed.fit(6, max_consecutive_aborts=50)
    assert not any(r.skipped for r in results)
    committed = [r for r in results if not r.aborted]
    assert len(committed) == 6 and all(r.cohort and r.survivors for r in committed)
    assert any(r.aborted and not r.cohort for r in results)  # the empty draws, each an aborted attempt
    assert epsilon_report(fed)["attempts_too_small"] >= 1
    events = verify_ledger(tmp_path / "ledger.jsonl").events
    assert len(events) == 6
    assert all(e.min_survivors == 1 and not e.releases_empty and abort_probability(e) > 0 for e in events)


def _legacy_event(r: int) -> RoundEvent:
    return RoundEvent(
        round=r, mode=DPMode.CENTRAL, mechanism=Mechanism.GAUSSIAN, l2_sensitivity=1.0, noise_variance=1.0,
        clip_norm=1.0, sampling=Sampling.POISSON, sampling_rate=0.1, population=1000, cohort=100, survivors=100,
    )


def test_a_ledger_without_the_abort_rule_loads_and_the_audit_says_its_public_epsilon_is_unproven(
    tmp_path: Path,
) -> None:
    """A ledger written before the abort rule was recorded (its Poisson rounds have no min_survivors)
    still loads and audits as before, with a note that its epsilon against model users left out
    the abort term; a round with the rule recorded gets no such note."""
    path = tmp_path / "old.jsonl"
    events: list[RoundEvent] = []
    with Ledger.open(path) as ledger:
        for r in (1, 2):
            events.append(_legacy_event(r))
            ledger.append(events[-1], epsilon=compute_epsilon(events, DELTA), delta=DELTA)
    raw = path.read_text()
    assert "min_survivors" not in raw  # the old record form
    assert [e.min_survivors for e in verify_ledger(path).events] == [0, 0]
    audit = audit_ledger(path)
    assert audit.verified and not audit.disagreements
    assert any("do not record their abort rule" in n and "round 1" in n for n in audit.accountant_notes)

    path2 = tmp_path / "new.jsonl"
    events = [dataclasses.replace(_legacy_event(1), min_survivors=60)]
    with Ledger.open(path2) as ledger:
        ledger.append(events[0], epsilon=compute_epsilon(events, DELTA), delta=DELTA)
    audit2 = audit_ledger(path2)
    assert audit2.verified and not audit2.disagreements
    assert not any("abort rule" in n for n in audit2.accountant_notes)


def test_a_target_against_model_users_is_met_after_the_abort_term(tmp_path: Path) -> None:
    """Calibration for a target against model users accounts the planned rounds with their abort
    rule: the run stays within the target with the term charged and spends most of it (the last round
    is admitted on its worst case, 16 survivors of the 40 expected, so about 0.75 x here); the term is
    a real part of delta, and the same noise without it would have reported less (the old, unsound
    number)."""
    cfg = RunConfig(dp="distributed", clients=400, sampling_rate=0.1, rounds=20, target_epsilon=3.0, clip=1.0,
                    seed=6, secure_sum="plain", budget_against="public", client_max_epsilon=math.inf)
    s = Sampler.poisson(400, 0.1)
    fed, extra = _federation(tmp_path, cfg, s)
    assert extra["noise_calibration"]["against"] == "public"
    fed.fit(20)
    events = verify_ledger(tmp_path / "ledger.jsonl").events
    rep = epsilon_report(fed)
    assert rep["epsilon_enforced_on"] == "public"
    assert 0.7 * 3.0 <= rep["epsilon"] == rep["epsilon_vs_public"] <= 3.0
    assert 0.0 < abort_delta(events) < DELTA
    assert compute_epsilon([dataclasses.replace(e, min_survivors=0) for e in events], DELTA) < rep["epsilon"]


def test_plan_with_clients_pays_for_the_abort_rule_and_without_says_what_it_assumes() -> None:
    """``privagg plan --clients N`` plans the run's own rounds: the default min-survivors of a run and
    epsilon against model users with the abort term (above the same rounds without it, which is what
    the plan reports without --clients, saying so); a target against model users that the abort term
    alone makes unreachable is refused, exit 2, naming the fix."""
    import json

    from typer.testing import CliRunner

    from fl_core.cli import app

    runner = CliRunner()
    base = ["plan", "--noise-multiplier", "1.5", "--sampling-rate", "0.1", "--rounds", "30", "--delta", "1e-5",
            "--mechanism", "skellam", "--json"]
    with_clients = runner.invoke(app, [*base, "--clients", "1000"])
    assert with_clients.exit_code == 0, with_clients.output
    planned = json.loads(with_clients.output.strip().splitlines()[-1])
    without = json.loads(runner.invoke(app, base).output.strip().splitlines()[-1])
    m = default_min_survivors(Sampler.poisson(1000, 0.1), 0.0, rounds=30, delta=DELTA)
    assert planned["noise_share"]["min_survivors"] == m == 57
    assert planned["epsilon_vs_public"] > without["epsilon_vs_public"]
    assert "epsilon_vs_public_assumes" not in planned and "abort rule" in without["epsilon_vs_public_assumes"]
    small = ["plan", "--target-epsilon", "2", "--sampling-rate", "0.2", "--rounds", "30", "--delta", "1e-5",
             "--clients", "50", "--against", "public"]
    refused = runner.invoke(app, [*small, "--mechanism", "skellam"])
    assert refused.exit_code == 2
    assert "abort rule (min-survivors 6)" in refused.output and "sample more clients per round" in refused.output
    # Central mode (gaussian) has no abort rule (an empty sample releases the noise alone): the same
    # small federation plans a finite target against model users.
    central = runner.invoke(app, [*small, "--json"])
    assert central.exit_code == 0, central.output
    central_plan = json.loads(central.output.strip().splitlines()[-1])
    assert central_plan["epsilon_vs_public"] <= 2.0 and central_plan["noise_share"]["min_survivors"] == 0
