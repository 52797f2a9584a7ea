"""DP wired into the round loop: noise really present, survivors-only charge, budget and ledger atomicity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dp.accountants import compute_epsilon
from dp.budget import Budget
from dp.calibration import DPConfig, distributed_noise
from dp.errors import BudgetExceededError
from dp.events import DPMode, Mechanism
from dp.ledger import Ledger, verify_ledger
from dp.randomness import SeededRandomSource
from fl_core.config import RunConfig
from fl_core.errors import ConfigError, RoundFailedError
from fl_core.federation import Federation
from fl_core.params import ParamCodec
from fl_core.privacy import DPPolicy, build_privacy, default_min_survivors
from fl_core.runner import execute
from fl_core.sampling import Sampler


def _noop(model, data):
    return None


def _data(n):
    return [TensorDataset(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)) for _ in range(n)]


def _fed(mode, n=100, dropout=0.0, z=1.0, min_survivors=None, ledger=None, budget=None, seed=0):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    sampler = Sampler.full(n)
    ms = min_survivors if min_survivors is not None else n
    cfg = DPConfig(mode=DPMode(mode), noise_multiplier=z, clip_norm=1.0, expected_cohort=n, min_survivors=ms)
    policy = DPPolicy(cfg, sampler=sampler, dim=8, delta=1e-5)
    fed = Federation(
        model,
        _noop,
        _data(n),
        rng=SeededRandomSource(seed),
        sampler=sampler,
        privacy=policy,
        epsilon_fn=lambda ev: compute_epsilon(ev, 1e-5),
        ledger=ledger,
        budget=budget,
        dropout=dropout,
    )
    return fed, policy


def test_dropouts_are_charged_with_the_survivors_noise_only():
    fed, policy = _fed("distributed", n=100, dropout=0.3, min_survivors=60)
    res = fed.run_round()
    assert len(res.survivors) == 70
    ev = res.event
    per_client = distributed_noise(policy.config, scale=fed.plan.scale, dim=fed.dim).per_client_variance
    assert ev.survivors == 70 and ev.cohort == 100
    assert ev.noise_variance == pytest.approx(70 * per_client, rel=1e-12)
    # and the noise multiplier charged is that of 70 shares, not 100
    assert ev.noise_multiplier == pytest.approx(math.sqrt(70 * per_client) / ev.l2_sensitivity)


def test_distributed_noise_is_really_in_the_sum():
    """All updates are zero, so the decoded average is pure noise: its variance must match
    survivors * per-client variance / scale^2 / denominator^2."""
    fed, policy = _fed("distributed", n=20)
    fed.optimizer.momentum = 0.0
    steps = []
    for _ in range(6):  # 6 rounds x 8 coordinates of pure noise
        before = ParamCodec(fed.model).flatten(fed.model).astype(np.float64)
        fed.run_round()
        steps.append(ParamCodec(fed.model).flatten(fed.model).astype(np.float64) - before)
    per_client = distributed_noise(policy.config, scale=fed.plan.scale, dim=fed.dim).per_client_variance
    expected_sd = math.sqrt(20 * per_client) / fed.plan.scale / 20
    got = np.concatenate(steps)
    assert got.std() == pytest.approx(expected_sd, rel=0.4)  # 48 values: sd of the estimate ~10%; catches 0 or 2x
    assert np.abs(got).max() > 0


def test_central_noise_has_the_configured_std():
    _, policy = _fed("central", n=10, z=2.0)
    noisy = policy.server_release(np.zeros(200_000), Sampler.full(10), SeededRandomSource(1))
    assert noisy.std() == pytest.approx(2.0 * 1.0, rel=0.01)


def test_local_noise_is_added_by_the_client_and_sized_for_2C():
    _, policy = _fed("local", n=10, z=1.0)
    out = policy.local_noise(np.zeros(100_000), SeededRandomSource(2))
    assert out.std() == pytest.approx(2.0, rel=0.02)
    assert policy.encoding_bound() > 1.0


def test_too_few_survivors_for_the_noise_aborts_before_release(tmp_path):
    ledger = Ledger.open(tmp_path / "l.jsonl")
    fed, _ = _fed("distributed", n=10, dropout=0.3, min_survivors=9, ledger=ledger)
    before = ParamCodec(fed.model).flatten(fed.model)
    with pytest.raises(RoundFailedError, match="aborted"):
        fed.run_round()
    assert np.array_equal(ParamCodec(fed.model).flatten(fed.model), before)
    assert ledger.records == () and fed.events == []
    # the secure sum itself enforced the minimum (the DP layer passes it to the backend)
    assert fed.secure_sum.min_survivors == 9
    fed.close()


def test_a_round_whose_ledger_write_fails_leaves_model_momentum_and_events_as_they_were(tmp_path, monkeypatch):
    """The ledger append is the commit point and comes after the server optimizer's step: when it
    fails, the model, the server's momentum, the privacy events and the ledger are as before, and
    the next round commits as if the failed one had never run."""
    ledger = Ledger.open(tmp_path / "l.jsonl")
    fed, _ = _fed("central", n=5, ledger=ledger)
    fed.optimizer.momentum = 0.9
    fed.run_round()
    velocity = fed.optimizer.velocity.copy()
    model = ParamCodec(fed.model).flatten(fed.model)
    assert np.any(velocity != 0)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ledger, "append", disk_full)
    with pytest.raises(OSError, match="disk full"):
        fed.run_round()
    assert np.array_equal(fed.optimizer.velocity, velocity)
    assert np.array_equal(ParamCodec(fed.model).flatten(fed.model), model)
    assert fed.round == 1 and len(fed.events) == 1 and len(ledger.records) == 1
    monkeypatch.undo()
    assert fed.run_round().round == 2
    assert verify_ledger(tmp_path / "l.jsonl").rounds == 2


def test_ledger_records_every_committed_round_and_verifies(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger.open(path)
    fed, _ = _fed("central", n=5, ledger=ledger)
    results = fed.fit(3)
    report = verify_ledger(path)
    assert report.verified and report.torn_tail is None
    assert [r.round for r in report.records] == [1, 2, 3]
    assert report.epsilon == pytest.approx(results[-1].epsilon)
    assert results[-1].ledger_head == report.head_hash  # the anchor to publish with the model
    assert verify_ledger(path, expected_head=results[0].ledger_head).anchor_round == 1
    assert results[-1].epsilon == pytest.approx(compute_epsilon(fed.events, 1e-5))


def test_budget_refuses_the_round_before_it_runs(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger.open(path)
    fed, _ = _fed("central", n=5, z=1.0, ledger=ledger, budget=Budget(10.0, 1e-5))
    before = None
    with pytest.raises(BudgetExceededError) as e:
        for _ in range(20):
            fed.run_round()
            before = ParamCodec(fed.model).flatten(fed.model)
    stopped_at = e.value
    assert stopped_at.epsilon_if_run > 10.0
    assert 1 < fed.round < 20 and compute_epsilon(fed.events, 1e-5) <= 10.0
    assert verify_ledger(path).rounds == fed.round == len(fed.events)
    assert np.array_equal(ParamCodec(fed.model).flatten(fed.model), before)  # refused round changed nothing


def test_cli_run_with_budget_stops_cleanly_and_says_so(tmp_path):
    cfg = RunConfig(
        dp="central",
        secure_sum="plain",
        clients=50,
        per_round=25,
        rounds=30,
        noise_multiplier=3.0,
        target_epsilon=5.0,
        seed=3,
        ledger=str(tmp_path / "l.jsonl"),
    )
    summary = execute(cfg)
    out = summary.to_json()
    assert "stopped" in out and "would take epsilon" in out["stopped"]
    assert out["epsilon"] <= 5.0 and 1 <= out["rounds"] < 30
    assert verify_ledger(tmp_path / "l.jsonl").rounds == out["rounds"]


def test_a_second_run_on_a_ledger_with_rounds_is_refused(tmp_path):
    # One ledger, one run: a second run on the same ledger is refused (it would restart
    # training while continuing the charge); --resume of the run folder continues both
    # (tests/fl_core/test_resume.py).
    from fl_core.errors import LedgerConflictError

    path = tmp_path / "l.jsonl"
    base = dict(dp="central", secure_sum="plain", clients=20, per_round=10, rounds=2, seed=1, ledger=str(path))
    first = execute(RunConfig(**base), out=tmp_path / "run").to_json()
    with pytest.raises(LedgerConflictError, match="already holds 2 rounds of this run"):
        execute(RunConfig(**base))
    recs = verify_ledger(path).records
    assert [r.round for r in recs] == [1, 2]
    assert first["epsilon"] > 0


def test_distributed_masking_run_end_to_end(tmp_path):
    cfg = RunConfig(
        dp="distributed",
        secure_sum="masking",
        clients=60,
        sampling_rate=0.5,
        rounds=2,
        seed=5,
        ledger=str(tmp_path / "l.jsonl"),
        dropout=0.1,
    )
    out = execute(cfg).to_json()
    assert out["rounds"] == 2 and out["epsilon"] > 0 and out["secure_sum"] == "masking"
    events = verify_ledger(tmp_path / "l.jsonl").events
    assert all(e.mechanism is Mechanism.SKELLAM and e.survivors < e.cohort for e in events)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="DPPolicy needs"):
        DPPolicy(DPConfig(mode=DPMode.NONE), sampler=Sampler.full(2), dim=2, delta=1e-5)
    cfg = RunConfig(dp="distributed", clients=10, per_round=2, colluders=2)
    with pytest.raises(ConfigError, match="colluders"):
        build_privacy(cfg, Sampler.fixed_size(10, 2), nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="noise-multiplier"):
        build_privacy(RunConfig(dp="central", noise_multiplier=0.0), Sampler.full(3), nn.Linear(2, 2))
    # P[Binomial(1000, 0.1) < 85] <= 5 % < P[Binomial(1000, 0.1) < 86]
    assert default_min_survivors(Sampler.poisson(1000, 0.1)) == 85
    assert default_min_survivors(Sampler.fixed_size(100, 50), 0.2) == 40


def _adaptive_fed(mode, n=40, clip=0.01, sigma_b=3.0, dropout=0.0, min_survivors=None):
    from dp.calibration import AdaptiveClipConfig

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    sampler = Sampler.full(n)
    cfg = DPConfig(
        mode=DPMode(mode),
        noise_multiplier=1.0,
        clip_norm=clip,
        expected_cohort=n,
        min_survivors=min_survivors or n,
        adaptive=AdaptiveClipConfig(count_noise_std=sigma_b, learning_rate=0.5),
    )
    policy = DPPolicy(cfg, sampler=sampler, dim=8, delta=1e-5)

    def train(model, data):  # every update has norm ~ 1: far above a 0.01 clip
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3)

    fed = Federation(
        model, train, _data(n), rng=SeededRandomSource(1), sampler=sampler, privacy=policy, dropout=dropout
    )
    return fed, policy


@pytest.mark.parametrize("mode", ["central", "distributed"])
def test_adaptive_clip_moves_towards_the_quantile_and_is_accounted(mode):
    fed, policy = _adaptive_fed(mode)
    clips = [policy.clip_norm]
    for _ in range(6):
        res = fed.run_round()
        clips.append(policy.clip_norm)
        assert res.event.clip_query_noise_multiplier > 0
        assert res.event.clip_norm == pytest.approx(clips[-2])
    # all updates are clipped (fraction below ~ 0), so the clip grows geometrically
    assert all(b > a for a, b in zip(clips, clips[1:]))
    assert clips[-1] > 2 * clips[0]
    assert policy.config.update_noise_multiplier > policy.config.noise_multiplier
    assert fed.dim == 8 and fed.plan.dim == 9  # one extra coordinate carries the clip count


def test_adaptive_clip_is_not_updated_by_a_failed_round():
    fed, policy = _adaptive_fed("distributed", n=10, dropout=0.3, min_survivors=9)
    before = policy.clip_norm
    with pytest.raises(RoundFailedError):
        fed.run_round()
    assert policy.clip_norm == before


def test_adaptive_clip_refused_in_local_mode():
    cfg = RunConfig(dp="local", adaptive_clip=True)
    with pytest.raises(ConfigError, match="adaptive"):
        build_privacy(cfg, Sampler.full(3), nn.Linear(2, 2))


def test_dp_average_uses_a_data_independent_denominator():
    from fl_core.pipeline import ServerPipeline

    for sampler, expected in ((Sampler.poisson(1000, 0.1), 100.0), (Sampler.fixed_size(50, 10), 10.0)):
        cfg = DPConfig(mode=DPMode.CENTRAL, noise_multiplier=1.0, clip_norm=1.0, expected_cohort=int(expected))
        sp = ServerPipeline(DPPolicy(cfg, sampler=sampler, dim=4, delta=1e-5), encoder=None, sampler=sampler)
        # the same whatever the number of survivors: the survivor count never scales the release
        assert sp.denominator(3) == sp.denominator(97) == expected


def test_distributed_discrete_gaussian_is_drawn_and_charged(tmp_path):
    cfg = RunConfig(
        dp="distributed",
        mechanism="discrete_gaussian",
        secure_sum="plain",
        clients=40,
        per_round=20,
        rounds=2,
        seed=2,
        ledger=str(tmp_path / "l.jsonl"),
    )
    out = execute(cfg).to_json()
    assert out["mechanism"] == "discrete_gaussian" and out["epsilon"] > 0
    events = verify_ledger(tmp_path / "l.jsonl").events
    assert all(e.mechanism is Mechanism.DISCRETE_GAUSSIAN for e in events)
    # the per-client sigma is an integer, and the charge is survivors x sigma^2
    per_client = events[0].noise_variance / events[0].survivors
    assert math.isclose(math.sqrt(per_client), round(math.sqrt(per_client)))
