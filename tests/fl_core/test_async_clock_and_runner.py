"""Synchronous rounds under the simulated clock, epsilon against the server, and a whole asynchronous run."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_async_support import make_fed

from dp.accountants import compute_epsilon
from dp.events import DPMode, Mechanism, RoundEvent, Sampling
from dp.ledger import verify_ledger
from dp.randomness import SeededRandomSource
from fl_core.asynchronous import AsyncOptions, SpeedModel, as_seen_by_server, epsilon_per_client, execute_async
from fl_core.asynchronous.sync_clock import SyncClock, clocked_rounds, sync_exchanges_after_input, sync_simulated_time
from fl_core.config import RunConfig


def test_a_synchronous_round_lasts_as_long_as_its_slowest_member():
    fed = make_fed(buffer=3, n_clients=6, secure_sum="masking")
    speed = SpeedModel.trace([5.0, 1.0, 2.0, 40.0, 3.0, 4.0], stage_s=0.5)
    clock = SyncClock(speed, 6, SeededRandomSource(0), exchanges=sync_exchanges_after_input(fed.secure_sum))
    assert clock.exchanges == 2  # masked input + unmasking; key setup ran while the cohort trained
    out = list(clocked_rounds(fed, 3, clock))
    now = 0.0
    for r in out:
        slowest = max(speed.trace_s[c - 1] for c in r.round.cohort)
        assert r.duration_s == pytest.approx(slowest + 2 * 0.5)
        now += r.duration_s
        assert r.sim_time_s == pytest.approx(now) and r.late == ()
    # Without a deadline the clock can be read afterwards from the cohorts alone.
    again = SyncClock(speed, 6, SeededRandomSource(0), exchanges=2)
    assert sync_simulated_time([(r.round.round, r.round.cohort) for r in out], again) == pytest.approx(now)


def test_a_deadline_drops_the_late_members_before_their_input():
    fed = make_fed(buffer=6, n_clients=8, secure_sum="masking", min_survivors=2)
    speed = SpeedModel.trace([1.0] * 7 + [100.0], stage_s=0.5)
    clock = SyncClock(speed, 8, SeededRandomSource(0), exchanges=2, deadline_s=10.0)
    seen_late = False
    for r in clocked_rounds(fed, 4, clock):
        late = {c for c in r.round.cohort if c == 8}
        seen_late |= bool(late)
        assert set(r.late) == late and not late & set(r.round.survivors)
        assert r.duration_s == pytest.approx((10.0 if late else 1.0) + 1.0)
    assert seen_late
    with pytest.raises(Exception, match="deadline must be > 0"):
        SyncClock(speed, 6, SeededRandomSource(0), deadline_s=0.0)


def _event(rnd, sampling=Sampling.FULL, rate=1.0, survivors=10):
    return RoundEvent(round=rnd, mode=DPMode.DISTRIBUTED, mechanism=Mechanism.GAUSSIAN, l2_sensitivity=1.0,
                      noise_variance=1.0, clip_norm=1.0, sampling=sampling, sampling_rate=rate, population=100,
                      cohort=10, survivors=survivors)


def test_epsilon_against_the_server_composes_each_clients_own_releases_without_amplification():
    sampled = [_event(r, Sampling.POISSON, 0.1) for r in (1, 2, 3)]
    records = {1: sampled, 2: sampled[:1], 3: []}
    per = epsilon_per_client(records, 1e-5)
    assert per[3] == 0.0 and per[2] < per[1]
    full = [as_seen_by_server(e) for e in sampled]
    assert all(e.sampling is Sampling.FULL and e.sampling_rate == 1.0 for e in full)
    assert per[1] == pytest.approx(compute_epsilon(full, 1e-5))
    assert per[1] > compute_epsilon(sampled, 1e-5)  # amplification would have understated it
    assert as_seen_by_server(full[0]) is full[0]


def test_execute_async_reports_simulated_time_and_epsilon_and_the_ledger_audits(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    cfg = RunConfig(dataset="digits", clients=60, rounds=3, seed=3, ledger=str(ledger), graph="complete")
    summary = execute_async(cfg, AsyncOptions(buffer=6, concurrency=12, max_contributions=2))
    out = summary.to_json()
    json.dumps(out)
    assert out["mode"] == "async" and out["rounds"] == 3 and out["buffer"] == 6
    assert out["simulated_time_s"] > 0 and out["simulated_time_s"] == out["per_round_simulated_time_s"][-1]
    assert out["epsilon_vs_server"] > 0 and out["contributions_max"] <= 2
    assert out["epsilon_client_record_max"] >= out["epsilon_vs_server"] - 1e-9
    report = verify_ledger(ledger)
    assert report.verified and report.rounds == 3
    for rec in report.records:
        assert rec.event.sampling is Sampling.FULL and rec.event.sampling_rate == 1.0 and rec.event.cohort == 6
    assert out["async_stats"]["applied_updates"] == 18


def test_central_mode_reports_epsilon_against_the_server_as_unbounded(tmp_path):
    cfg = RunConfig(dataset="digits", clients=30, rounds=1, seed=3, dp="central", ledger=str(tmp_path / "l.jsonl"),
                    graph="complete")
    out = execute_async(cfg, AsyncOptions(buffer=5, concurrency=6)).to_json()
    assert out["epsilon_vs_server"] is None and "unbounded" in out["epsilon_vs_server_note"]


def test_execute_async_refuses_impossible_settings_before_training(tmp_path):
    from fl_core.errors import ConfigError

    cfg = RunConfig(dataset="digits", clients=8, rounds=1, ledger=str(tmp_path / "l.jsonl"))
    with pytest.raises(ConfigError) as e:
        execute_async(cfg, AsyncOptions(buffer=9, concurrency=9))
    assert e.value.option == "buffer"
    with pytest.raises(ConfigError) as e:
        execute_async(cfg, AsyncOptions(buffer=4, concurrency=9))
    assert e.value.option == "concurrency"
    assert not (tmp_path / "l.jsonl").exists()
    assert dataclasses.is_dataclass(AsyncOptions())
