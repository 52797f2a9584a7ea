"""The buffered asynchronous loop, driven with a user's own model, train_fn and data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_async_support import SpyTransport, make_async, make_fed, user_data, user_model, user_train_fn

from fl_core.asynchronous import AsyncOptions, SpeedModel, StalenessWeight
from fl_core.params import ParamCodec


def _tokens(afed):
    return [(c, b.buffer) for b in afed.history for c in b.survivors]


def test_buffers_of_k_are_applied_in_order_on_the_simulated_clock():
    afed = make_async(buffer=3, concurrency=5)
    results = afed.fit(4)
    assert [b.buffer for b in results] == [1, 2, 3, 4]
    assert afed.fed.round == 4 and afed.version == 4
    assert all(len(b.survivors) == 3 and b.members == tuple(b.members) for b in results)
    times = [b.sim_time_s for b in results]
    assert times == sorted(times) and times[0] > 0
    # Staleness is measured against the version the buffer is applied to, weights by FedBuff's rule.
    for b in results:
        for s, w in zip(b.staleness, b.weights, strict=True):
            assert 0 <= s <= b.buffer - 1 and w == pytest.approx((1 + s) ** -0.5)
    assert afed.stats.applied_updates == 12 and afed.stats.applied_buffers == 4


def test_model_moves_by_the_weighted_mean_of_exactly_the_buffer_updates():
    """Reference: retrain each survivor independently from the version it fetched, clip, weight
    by 1/sqrt(1+staleness); the new model is old + mean of those (plain FedAvg, server lr 1)."""
    versions = {}
    afed = make_async(fed=make_fed(buffer=2, n_clients=6), buffer=2, concurrency=5)
    codec = ParamCodec(afed.fed.model)
    versions[0] = codec.flatten(afed.fed.model).copy()
    data = user_data(6)
    for b in afed.buffers(5):
        versions[b.buffer] = codec.flatten(afed.fed.model).copy()
        expected = np.zeros_like(versions[0], dtype=np.float64)
        for c, s, w in zip(b.survivors, b.staleness, b.weights, strict=True):
            fetched = versions[b.buffer - 1 - s]
            m = user_model()
            codec.unflatten_into(m, fetched)
            user_train_fn(m, data[c - 1])
            d = (codec.flatten(m) - fetched).astype(np.float64)
            n = np.linalg.norm(d)
            d = d * min(1.0, 10.0 / n) * w
            expected += d
        expected /= len(b.survivors)
        np.testing.assert_allclose(versions[b.buffer] - versions[b.buffer - 1], expected, atol=1e-5)
    assert any(s > 0 for b in afed.history for s in b.staleness)  # the check covered stale updates


def test_server_refuses_updates_beyond_the_staleness_bound_and_counts_them():
    afed = make_async(fed=make_fed(buffer=2, n_clients=8), buffer=2, concurrency=8, max_staleness=0)
    afed.fit(6)
    assert all(s == 0 for b in afed.history for s in b.staleness)
    assert afed.stats.refused_by_server["stale"] > 0


def test_contribution_cap_bounds_each_client_and_the_run_stops_saying_why():
    afed = make_async(fed=make_fed(buffer=2, n_clients=6), buffer=2, concurrency=4, max_contributions=1)
    out = afed.fit(100)
    per = {}
    for b in out:
        for c in b.survivors:
            per[c] = per.get(c, 0) + 1
    assert max(per.values()) == 1 and len(out) == 3
    assert afed.stop_reason is not None and "contribution caps" in afed.stop_reason
    assert all(cl.contributions <= 1 for cl in afed.clients.values())


def test_members_that_miss_their_session_report_again_and_nothing_is_lost_silently():
    spy = SpyTransport()
    fed = make_fed(buffer=3, n_clients=10, secure_sum="masking", transport=spy)
    afed = make_async(fed=fed, buffer=3, concurrency=8, dropout=0.3)
    afed.fit(8)
    s = afed.stats
    assert s.missed_and_reported_again > 0
    held = sum(1 for cl in afed.clients.values() if cl.held is not None)
    refused = sum(s.refused_by_server.values()) + sum(s.refused_by_client.values())
    # Every check-in ends applied, lost with an aborted session (counted), refused (counted), or still held.
    assert s.check_ins == s.applied_updates + s.lost_after_input + refused + held
    # A member that missed its session before its input left is never in that session's sum.
    for sess in spy.sessions:
        if sess["outcome"].total is not None:
            missed = {c for c, k in sess["drops"].items() if k <= sess["input_stage"]}
            assert not missed & set(sess["outcome"].survivors)


def test_an_aborted_session_changes_nothing():
    fed = make_fed(buffer=3, n_clients=10, secure_sum="masking", min_survivors=3)
    afed = make_async(fed=fed, buffer=3, concurrency=6, dropout=0.5, max_time_s=2000.0)
    codec = ParamCodec(fed.model)
    before = {}

    orig = afed._run_session

    def watched(members):
        before["vec"] = codec.flatten(fed.model).copy()
        before["round"] = fed.round
        res = orig(members)
        if res is None:
            np.testing.assert_array_equal(codec.flatten(fed.model), before["vec"])
            assert fed.round == before["round"]
        return res

    afed._run_session = watched
    afed.fit(5)
    assert afed.stats.aborted_sessions > 0
    assert fed.round == len(afed.history)


def test_a_seeded_run_is_reproducible_and_independent_of_global_numpy_state():
    def run(perturb):
        if perturb:
            np.random.seed(123)
            np.random.random(1000)
            torch.manual_seed(99)
        afed = make_async(fed=make_fed(buffer=2, n_clients=6), buffer=2, concurrency=4)
        out = afed.fit(4)
        return [(b.survivors, b.staleness, b.sim_time_s) for b in out], ParamCodec(afed.fed.model).flatten(
            afed.fed.model
        )

    a, va = run(False)
    b, vb = run(True)
    assert a == b
    np.testing.assert_array_equal(va, vb)


def test_speed_trace_sets_the_arrival_order():
    # Client 1 is 100x faster than everyone: with C = N every buffer holds its report first.
    times = [1.0] + [100.0] * 5
    afed = make_async(
        fed=make_fed(buffer=2, n_clients=6), buffer=2, concurrency=6,
        speed=SpeedModel.trace(times, stage_s=0.1),
    )
    first = afed.fit(1)[0]
    # Client 1 reports at t = 1 and waits; the first of the others seals the buffer at t = 100;
    # the plain sum needs one exchange (0.1 s) after sealing.
    assert 1 in first.survivors
    assert first.sim_time_s == pytest.approx(100.1)


def test_constant_weighting_and_no_bound():
    afed = make_async(fed=make_fed(buffer=2, n_clients=6), buffer=2, concurrency=6,
                      staleness=StalenessWeight("constant"))
    out = afed.fit(3)
    assert all(w == 1.0 for b in out for w in b.weights)


def test_options_are_frozen_and_validated():
    o = AsyncOptions(buffer=2, concurrency=3)
    with pytest.raises(AttributeError):
        o.buffer = 5  # type: ignore[misc]


def test_paillier_buffers_are_the_exact_sum_of_their_ciphertexts():
    """Paillier: the server multiplies the buffer's ciphertexts and the key holder decrypts once
    per buffer session; the decrypted sum is exactly the plain sum of the survivors' inputs."""
    spy = SpyTransport()
    fed = make_fed(
        buffer=3, n_clients=6, secure_sum="paillier", transport=spy, min_survivors=None,
        secure_sum_options={"key_bits": 512, "insecure_small_key_for_tests": True, "min_survivors": 2},
    )
    afed = make_async(fed=fed, buffer=3, concurrency=5)
    assert afed.floor == 2 and afed.exchanges == 2
    out = afed.fit(3)
    assert len(out) == 3 and len(spy.sessions) == 3
    for b, sess in zip(out, spy.sessions, strict=True):
        ring = sess["ring"]
        expected = ring.sum([sess["inputs"][c] for c in b.survivors], fed.plan.dim)
        assert sess["outcome"].total.tolist() == expected.tolist()


def test_a_client_that_refused_at_its_own_limit_is_not_checked_in_again():
    from dp.calibration import DPConfig
    from dp.events import DPMode
    from fl_core.privacy import DPPolicy
    from fl_core.sampling import Sampler

    dim = ParamCodec(user_model()).dim
    cfg = DPConfig(mode=DPMode.DISTRIBUTED, noise_multiplier=1.0, clip_norm=1.0, expected_cohort=3, min_survivors=3)
    policy = DPPolicy(cfg, sampler=Sampler.fixed_size(6, 3), dim=dim, delta=1e-5)
    fed = make_fed(buffer=3, n_clients=6, secure_sum="masking", privacy=policy, min_survivors=None)
    afed = make_async(fed=fed, buffer=3, concurrency=6, client_max_epsilon=6.0)  # room for one buffer each
    afed.fit(50)
    assert afed.stats.refused_by_client["budget"] >= 1
    assert all(cl.epsilon_vs_server() <= 6.0 for cl in afed.clients.values())
    assert afed.stop_reason is not None
    # Each refusing client was retired after its first refusal.
    assert afed.stats.refused_by_client["budget"] <= 6


def test_a_run_whose_sessions_keep_aborting_stops_saying_why():
    fed = make_fed(buffer=3, n_clients=8, secure_sum="masking", min_survivors=3)
    afed = make_async(fed=fed, buffer=3, concurrency=6, dropout=0.9, max_consecutive_aborts=3)
    out = afed.fit(20)
    assert afed.stop_reason is not None and "in a row released nothing" in afed.stop_reason
    assert afed.stats.aborted_sessions >= 3 and len(out) < 20
