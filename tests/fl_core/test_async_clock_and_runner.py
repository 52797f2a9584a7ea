"""Synchronous rounds under the simulated clock, epsilon against the server, and a whole asynchronous run."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_async_support import make_fed

from dp.events import Sampling
from dp.ledger import verify_ledger
from dp.randomness import SeededRandomSource
from fl_core.asynchronous import AsyncOptions, SpeedModel, execute_async
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


def test_an_aborted_synchronous_attempt_costs_its_time_and_is_retried():
    # Cohorts of 4 from 6 with two stragglers past the deadline: when both are sampled, two
    # survivors cannot rebuild each other's self-masks (threshold 3 of 4) and the attempt aborts.
    fed = make_fed(buffer=4, n_clients=6, secure_sum="masking", min_survivors=2)
    speed = SpeedModel.trace([1.0, 1.0, 1.0, 1.0, 100.0, 100.0], stage_s=0.5)
    clock = SyncClock(speed, 6, SeededRandomSource(0), exchanges=2, deadline_s=10.0)
    out = list(clocked_rounds(fed, 6, clock))
    assert [r.round.round for r in out] == [1, 2, 3, 4, 5, 6] and fed.aborts
    assert out[-1].sim_time_s > sum(r.duration_s for r in out)  # the aborted attempts took time too


def test_each_buffer_is_charged_to_its_survivors_only_against_the_server():
    from dp.adversary import epsilon_vs_server_per_client
    from fl_core.asynchronous import AsyncOptions, build_async_federation

    cfg = RunConfig(dataset="digits", clients=30, rounds=4, seed=5, ledger=None, graph="complete")
    afed, _, _ = build_async_federation(cfg, AsyncOptions(buffer=5, concurrency=10), open_ledger=False)
    afed.fit(4)
    events = afed.fed.events
    assert [e.survivor_ids for e in events] == [b.survivors for b in afed.history]
    assert all(e.sampling is Sampling.FULL and e.sampling_rate == 1.0 for e in events)
    per = epsilon_vs_server_per_client(events, 1e-5)
    joined = {}
    for b in afed.history:
        for c in b.survivors:
            joined[c] = joined.get(c, 0) + 1
    assert set(per) == set(joined)
    # Clients in more buffers have spent more; a client's record agrees with the server's view of it.
    by_count = {}
    for c, k in joined.items():
        by_count.setdefault(k, set()).add(round(per[c], 9))
    ks = sorted(by_count)
    assert all(max(by_count[a]) < min(by_count[b]) for a, b in zip(ks, ks[1:]))
    own = afed.client_epsilons()
    for c in joined:
        assert own[c] >= per[c] - 1e-9  # its record charges its own floor: never less than the server's view


def test_execute_async_reports_simulated_time_and_epsilon_and_the_ledger_audits(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    cfg = RunConfig(dataset="digits", clients=60, rounds=3, seed=3, ledger=str(ledger), graph="complete")
    summary = execute_async(cfg, AsyncOptions(buffer=6, concurrency=12, max_contributions=2))
    out = summary.to_json()
    json.dumps(out)
    assert out["mode"] == "async" and out["rounds"] == 3 and out["buffer"] == 6
    assert out["simulated_time_s"] > 0 and out["simulated_time_s"] == out["per_round_simulated_time_s"][-1]
    assert out["epsilon_vs_server"] > 0 and out["contributions_max"] <= 2
    assert out["epsilon_vs_public"] <= out["epsilon_vs_server"] + 1e-9
    assert out["client_epsilon_max"] >= out["epsilon_vs_server"] - 1e-9
    report = verify_ledger(ledger)
    assert report.verified and report.rounds == 3
    for rec in report.records:
        assert rec.event.sampling is Sampling.FULL and rec.event.sampling_rate == 1.0 and rec.event.cohort == 6
    assert out["async_stats"]["applied_updates"] == 18


def test_central_mode_reports_epsilon_against_the_server_as_unbounded(tmp_path):
    cfg = RunConfig(dataset="digits", clients=30, rounds=1, seed=3, dp="central", ledger=str(tmp_path / "l.jsonl"),
                    graph="complete")
    out = execute_async(cfg, AsyncOptions(buffer=5, concurrency=6)).to_json()
    assert out["epsilon_vs_server"] is None and "central mode" in out["epsilon_vs_server_reason"]


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


def test_adaptive_clipping_moves_between_buffers_and_each_buffer_is_charged_at_its_clip(tmp_path):
    """The clients prepare their inputs when their buffer's session runs, with the clip that buffer
    is charged at; the clip moves only after a buffer is committed."""
    from fl_core.asynchronous import build_async_federation

    cfg = RunConfig(dataset="digits", clients=60, rounds=4, seed=2, adaptive_clip=True, graph="complete",
                    ledger=str(tmp_path / "l.jsonl"))
    afed, _, _ = build_async_federation(cfg, AsyncOptions(buffer=6, concurrency=12))
    seen = []
    orig = afed.fed.privacy.clip

    def clip(vec):
        seen.append((afed.fed.round + 1, afed.fed.privacy.clip_norm))
        return orig(vec)

    afed.fed.privacy.clip = clip
    try:
        out = afed.fit(4)
    finally:
        afed.fed.close()
    charged = {b.buffer: b.round.event.clip_norm for b in out}
    assert len(set(charged.values())) > 1  # the clip moved
    assert all(charged[r] == c for r, c in seen if r in charged)  # every input clipped at its buffer's clip
    assert verify_ledger(tmp_path / "l.jsonl").verified
