"""Attacks on asynchronous secure aggregation, each against the protection the client enforces itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_async_support import make_async, make_fed, user_data

from dp.calibration import DPConfig
from dp.events import DPMode
from dp.randomness import SeededRandomSource
from fl_core.asynchronous import (
    AsyncClient,
    ClientRefusal,
    ClientRules,
    DoubleApplyError,
    HeldUpdate,
    run_buffer_session,
)
from fl_core.params import ParamCodec
from fl_core.privacy import DPPolicy
from fl_core.sampling import Sampler
from secagg import Message, RemoteProtocolError, run_round
from secagg.masking import wire


def _trained(fed, cid=1, version=0, rules=None):
    cl = AsyncClient(cid, rules or ClientRules())
    cl.train(fed, version, fed.codec.flatten(fed.model))
    return cl


def test_an_update_whose_input_left_is_never_sent_again_whatever_the_server_says():
    """A lying server unmasks a buffer, then tells a member it missed it and asks for its update
    in a new session (its sum minus the first would be that update alone). The client refuses."""
    fed = make_fed(buffer=3, secure_sum="masking")
    clients = [_trained(fed, c) for c in (1, 2, 3)]
    inputs = {cl.cid: cl.prepare_input(fed, session=1, base_version=0)[0] for cl in clients}
    bo = run_buffer_session(fed.secure_sum, inputs, session=1, rng_for=lambda c: SeededRandomSource(c),
                            on_input=lambda c: clients[c - 1].input_leaving())
    assert bo.released and bo.inputs_sent == {1, 2, 3}
    with pytest.raises(ClientRefusal) as e:
        clients[0].prepare_input(fed, session=2, base_version=1)
    assert e.value.reason == "spent" and e.value.client == 1


def test_a_member_that_missed_its_session_before_its_input_left_keeps_and_reports_its_update():
    fed = make_fed(buffer=3, secure_sum="masking")
    clients = [_trained(fed, c) for c in (1, 2, 3, 4)]
    inputs = {cl.cid: cl.prepare_input(fed, session=1, base_version=0)[0] for cl in clients}
    # Client 4 completes key setup (advertise, share keys) and vanishes before its masked input.
    bo = run_buffer_session(
        fed.secure_sum, inputs, session=1, rng_for=lambda c: SeededRandomSource(c), stages_completed={4: 2}
    )
    assert bo.released and bo.inputs_sent == {1, 2, 3} and bo.survivors == {1, 2, 3}
    ring = fed.secure_sum.ring
    assert np.array_equal(bo.outcome.total, ring.sum([inputs[c] for c in (1, 2, 3)], fed.plan.dim))
    vec, _, w = clients[3].prepare_input(fed, session=2, base_version=1)  # fresh weight, fresh masks later
    assert w == pytest.approx(2**-0.5)


def test_a_version_from_the_future_is_refused():
    fed = make_fed(buffer=3)
    cl = _trained(fed, version=5)
    with pytest.raises(ClientRefusal) as e:
        cl.prepare_input(fed, session=9, base_version=3)
    assert e.value.reason == "future-version"


@pytest.mark.parametrize(
    ("rules", "reason"),
    [
        (ClientRules(max_staleness=1), "stale"),
        (ClientRules(max_contributions=1), "cap"),
    ],
)
def test_the_client_enforces_its_own_bounds_when_the_server_ignores_them(rules, reason):
    fed = make_fed(buffer=3)
    cl = _trained(fed, rules=rules)
    if reason == "cap":
        cl.prepare_input(fed, session=1, base_version=0)
        cl.input_leaving()
        cl.release()
        cl.train(fed, 0, fed.codec.flatten(fed.model))
        base = 0
    else:
        base = 2
    with pytest.raises(ClientRefusal) as e:
        cl.prepare_input(fed, session=3, base_version=base)
    assert e.value.reason == reason


def _dp_fed(n=6, buffer=3):
    dim = ParamCodec(make_fed().model).dim
    cfg = DPConfig(mode=DPMode.DISTRIBUTED, noise_multiplier=1.0, clip_norm=1.0, expected_cohort=buffer,
                   min_survivors=buffer)
    policy = DPPolicy(cfg, sampler=Sampler.fixed_size(n, buffer), dim=dim, delta=1e-5)
    return make_fed(buffer=buffer, n_clients=n, secure_sum="masking", privacy=policy, min_survivors=None)


def test_the_client_keeps_its_own_record_and_enforces_its_own_epsilon_limit():
    """The client charges its record (from its own DP configuration) when its input leaves, and
    refuses a session that would take its epsilon against the server past its limit, whatever
    the server's books say."""
    fed = _dp_fed()
    one = _trained(fed, rules=ClientRules(dp_config=fed.privacy.config, max_epsilon=float("inf")))
    one.prepare_input(fed, session=1, base_version=0)
    assert one.record is not None and not one.record.charges  # prepared, nothing left yet
    one.input_leaving()
    eps1 = one.epsilon_vs_server()
    assert len(one.record.charges) == 1 and eps1 > 0
    eps2 = one.record.epsilon_if_charged(one.own_event(fed, 2))
    limit = (eps1 + eps2) / 2  # room for one session, not two
    cl = _trained(fed, rules=ClientRules(dp_config=fed.privacy.config, max_epsilon=limit))
    cl.prepare_input(fed, session=1, base_version=0)
    cl.input_leaving()
    cl.release()
    cl.train(fed, 1, fed.codec.flatten(fed.model))
    with pytest.raises(ClientRefusal) as e:
        cl.prepare_input(fed, session=2, base_version=1)
    assert e.value.reason == "budget" and len(cl.record.charges) == 1


def test_whatever_staleness_the_server_claims_the_weighted_update_stays_within_the_clip():
    fed = make_fed(buffer=3, privacy=None)
    from fl_core.pipeline import NoPrivacy

    fed.privacy = NoPrivacy(clip_norm=0.05)  # every update is clipped
    cl = _trained(fed)
    quantum = 1.0 / fed.plan.scale
    for base in (0, 1, 3, 50, 10**6):
        vec, clip, w = cl.prepare_input(fed, session=base + 1, base_version=base)
        v = fed.encoder.decode(vec)
        assert 0 < w <= 1 and clip.clipped
        assert np.linalg.norm(v) <= 0.05 * w + quantum * np.sqrt(v.size)


def test_the_weight_never_shrinks_the_noise_share():
    """Distributed DP: the client weights its clipped update, not its integer noise share, so a
    server that claims a huge staleness cannot make the noise in the sum smaller."""
    fed = _dp_fed()
    cl = AsyncClient(1, ClientRules())
    zero = np.zeros(fed.dim, dtype=np.float32)
    draws = {0: [], 10**6: []}
    for base in draws:
        for s in range(150):
            cl.held = HeldUpdate(1, 0, zero)
            vec, _, w = cl.prepare_input(fed, session=1000 * (base > 0) + s, base_version=base)
            draws[base].append(fed.encoder.decode(vec))
    fresh, stale = np.concatenate(draws[0]), np.concatenate(draws[10**6])
    assert fresh.std() == pytest.approx(stale.std(), rel=0.1) and fresh.std() > 0.1


def _attack_one_survivor(min_survivors):
    """Two-member session (complete graph, threshold 1). Both send masked inputs; the server tells
    client 2 the truth (survivors 1, 2: give me 1's self-mask share) and tells client 1 that 2
    dropped (survivors 1: give me 2's mask-key share). With both, y_1 unmasks to x_1 alone."""
    fed = make_fed(buffer=2, n_clients=4, secure_sum="masking", min_survivors=min_survivors)
    ss = fed.secure_sum
    inputs = {1: ss.ring.zeros(ss.dim) + 7, 2: ss.ring.zeros(ss.dim) + 11}

    answers = []

    def tamper(m: Message) -> list[Message]:
        if m.stage == "unmasking" and m.sender == 0 and m.recipient == 1:
            req = wire.decode_unmask_request(m.payload)
            req = dataclasses.replace(req, survivors=(1,), b_ids=(), sk_ids=(2,))
            return [dataclasses.replace(m, payload=wire.encode_unmask_request(req))]
        if m.stage == "unmasking" and m.sender == 1:
            answers.append(wire.decode_unmask_response(m.payload))
            return []  # the attacker keeps it
        return [m]

    run_round(ss, inputs, round_id=1, rng_for=SeededRandomSource, tamper=tamper)
    return answers


def test_a_member_never_helps_unmask_one_update_alone():
    with pytest.raises(RemoteProtocolError, match="below the 2 the round requires"):
        _attack_one_survivor(min_survivors=2)


def test_control_without_the_floor_the_split_view_attack_gets_the_key_share():
    # The same attack against clients built with min_survivors = 1 (what a buffer of 2 would get
    # without the asynchronous floor): client 1 answers, revealing 2's key share.
    answers = _attack_one_survivor(min_survivors=1)
    assert [u for u, _ in answers[0].sk_shares] == [2]


def test_build_async_federation_gives_masking_clients_the_floor():
    from fl_core.asynchronous import AsyncOptions, build_async_federation
    from fl_core.config import RunConfig

    cfg = RunConfig(clients=20, dp="none", secure_sum="masking", graph="complete", ledger=None, seed=1)
    afed, _, _ = build_async_federation(cfg, AsyncOptions(buffer=2, concurrency=3), open_ledger=False)
    assert afed.floor == 2 and afed.fed.secure_sum.min_survivors == 2


def test_an_update_is_never_applied_twice_by_the_server():
    afed = make_async(fed=make_fed(buffer=2, n_clients=3, data=user_data(3)), buffer=2, concurrency=3)
    afed._token = lambda c: 1  # every report looks like the same update of its client
    before = None
    with pytest.raises(DoubleApplyError):
        for _ in afed.buffers(10):
            before = afed.fed.round
    assert afed.fed.round == before  # the offending buffer changed nothing
