"""Key advertisement one exchange ahead on the Flower transport (fl_core.transport.flower.ahead).

The slow, obviously correct reference is the in-process round loop (``Federation.fit``): the
driver with advertise-ahead, talking to the real node handlers over a scripted grid, must
commit bit-identical models and charge identical epsilons, with one exchange fewer per
steady-state round.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_flower import (  # noqa: F401 (autouse fixture)
    _flower_task_identity,
    _node,
    _opening,
    _own_terms,
    _ScriptedGrid,
    _small_cfg,
)

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
]


def _run_driver(
    cfg: Any, tmp_path: Path, rounds: int, *, ahead: bool = True, strip: frozenset[int] = frozenset()
) -> tuple[Any, list[Any], list[tuple[int, str]]]:
    """Drive ``rounds`` rounds over a scripted grid; clients in ``strip`` never see an ahead request."""
    from fl_core.runner import build_federation
    from fl_core.transport.flower.client import NodeState, handle_packet
    from fl_core.transport.flower.codec import decode_packet, encode_packet
    from fl_core.transport.flower.options import FlowerOptions, config_to_json
    from fl_core.transport.flower.server import FlowerRoundDriver, GridLink

    fed, _, _ = build_federation(cfg.replace(ledger=str(tmp_path / "flower.jsonl")))
    states: dict[int, Any] = {}
    sent: list[tuple[int, str]] = []

    def script(node: int, content: Any) -> Any:
        c = node - 100
        packet = decode_packet(content)
        sent.append((c, packet.stage + ("+ahead" if "ahead" in packet.fields else "")))
        if c in strip:
            fields = {k: v for k, v in packet.fields.items() if not k.startswith("ahead")}
            packet = dataclasses.replace(packet, fields=fields)
        reply, states[c] = handle_packet(packet, _node(c), states.get(c, NodeState()))
        return encode_packet(reply)

    nodes = {c: 100 + c for c in range(1, cfg.clients + 1)}
    driver = FlowerRoundDriver(
        GridLink(_ScriptedGrid(script), poll_interval=0.01),
        nodes,
        FlowerOptions(stage_timeout=0.5, train_timeout=30, advertise_ahead=ahead),
    )
    traces = []
    for i in range(rounds):
        start = fed.begin_round()
        g = fed.codec.flatten(fed.model)
        nxt = tuple(fed.cohort_of(start.round + 1).members) if ahead and i + 1 < rounds else None
        outcome, clipped, saturated, trace = driver.run(fed, start, g, config_to_json(cfg), next_members=nxt or None)
        fed.finish_round(start, outcome, g, clipped=clipped, saturated=saturated)
        traces.append(trace)
    return fed, traces, sent


def _reference(cfg: Any, tmp_path: Path, rounds: int, dropouts: dict[int, dict[int, int]] | None = None) -> Any:
    from fl_core.runner import build_federation

    ref, _, _ = build_federation(cfg.replace(ledger=str(tmp_path / "ref.jsonl")))
    if dropouts:
        ref.dropouts = lambda members, r: dropouts.get(r, {})  # type: ignore[method-assign]
    ref.fit(rounds)
    return ref


def _exchanges(trace: Any) -> int:
    return sum(1 for s in trace.stages if not s["stage"].endswith("(ahead)"))


@pytest.mark.parametrize("dp", ["distributed", "central"])
def test_ahead_rounds_equal_the_in_process_rounds_with_two_exchanges_fewer(dp: str, tmp_path: Path) -> None:
    cfg = _small_cfg(dp=dp, noise_multiplier=1.0, clip=1.0, rounds=3)
    ref = _reference(cfg, tmp_path, 3)
    fed, traces, sent = _run_driver(cfg, tmp_path, 3)
    assert np.array_equal(fed.codec.flatten(fed.model), ref.codec.flatten(ref.model))
    assert [r.epsilon for r in fed.history] == [r.epsilon for r in ref.history]
    assert [r.survivors for r in fed.history] == [r.survivors for r in ref.history]
    base, _, _ = _run_driver(cfg, tmp_path / "off", 3, ahead=False)
    assert np.array_equal(base.codec.flatten(base.model), ref.codec.flatten(ref.model))
    # Round 1 opens as before; rounds 2 and 3 start with their key setup done during the round before,
    # and open with the masked-input request: two exchanges fewer.
    assert traces[0].stages[0]["stage"] == "train"
    for tr in traces[1:]:
        assert [s["stage"] for s in tr.stages[:3]] == ["advertise-keys (ahead)", "share-keys (ahead)", "train"]
        assert tr.stages[0]["answered"] == tr.stages[1]["answered"] == [1, 2, 3]
    assert [_exchanges(t) for t in traces][1:] == [_exchanges(traces[0]) - 2] * 2
    # The two requests ride on the first two exchanges of rounds 1 and 2; no standalone packet is needed.
    assert sum(1 for _, st in sent if st.endswith("+ahead")) == 2 * 2 * 3
    assert all(not st.startswith("ahead") for _, st in sent)


def test_new_cohort_members_get_standalone_ahead_requests(tmp_path: Path) -> None:
    """Poisson cohorts differ from round to round: members not in the current round are asked on their own."""
    cfg = _small_cfg(clients=6, per_round=None, sampling_rate=0.6, dp="none", rounds=3, seed=3)
    ref = _reference(cfg, tmp_path, 3)
    cohorts = [r.cohort for r in ref.history]
    assert any(set(b) - set(a) for a, b in zip(cohorts, cohorts[1:], strict=False)), "pick a seed with new members"
    fed, traces, sent = _run_driver(cfg, tmp_path, 3)
    assert [r.cohort for r in fed.history] == cohorts
    assert np.array_equal(fed.codec.flatten(fed.model), ref.codec.flatten(ref.model))
    standalone = {c for c, st in sent if st == "ahead+ahead"}
    expected = {c for a, b in zip(cohorts, cohorts[1:], strict=False) for c in b if c not in a}
    assert standalone == expected


def test_a_member_that_misses_the_ahead_requests_is_a_first_stage_dropout(tmp_path: Path) -> None:
    cfg = _small_cfg(clients=4, per_round=4, dp="distributed", noise_multiplier=1.0, clip=1.0, rounds=2)
    cfg = cfg.replace(min_survivors=3)
    # Client 4 takes part in round 1 but never sees the requests for round 2 (e.g. an older node).
    fed, traces, sent = _run_driver(cfg, tmp_path, 2, strip=frozenset({4}))
    ref = _reference(cfg, tmp_path, 2, dropouts={2: {4: 0}})
    assert fed.history[0].survivors == (1, 2, 3, 4)
    assert fed.history[1].survivors == ref.history[1].survivors == (1, 2, 3)
    assert np.array_equal(fed.codec.flatten(fed.model), ref.codec.flatten(ref.model))
    assert traces[1].stages[0]["answered"] == [1, 2, 3]
    opened_2 = [c for c, st in sent[len(sent) // 2 :] if st.startswith("train")]
    assert 4 not in opened_2  # never opened round 2


# -- node side: what the node refuses ---------------------------------------------------------------------------


def _advertised(cfg: Any, client: int = 1, r: int = 1) -> tuple[Any, Any, Any]:
    from fl_core.transport.flower.ahead import AheadParams, advance
    from fl_core.transport.flower.options import config_to_json

    fed, packet = _opening(cfg, client, r)
    params = AheadParams(
        r, config_to_json(cfg), fed.plan.ring.bits, fed.dim, fed.sampler.max_cohort(), int(fed.privacy.min_survivors)
    )
    fields, kept = advance(params, (), client, _node(client), None, terms=_own_terms)
    return fed, packet, (params, fields, kept)


def test_node_runs_key_setup_ahead_then_answers_the_opening_with_its_masked_input() -> None:
    from fl_core.transport.flower.ahead import AheadError, advance, outputs_from_fields
    from fl_core.transport.flower.client import NodeState, handle_packet
    from fl_core.transport.flower.codec import StagePacket

    cfg = _small_cfg(dp="distributed", noise_multiplier=1.0, clip=1.0)
    fed, packet, (params, _, _) = _advertised(cfg)
    server = fed.bound_secure_sum().server([1, 2, 3], 1)  # the honest server: bound to the terms it announces
    kept: dict[int, Any] = {}
    out: list[Any] = []
    for c in (1, 2, 3):  # stage 0 ahead: the advertisements
        _, _, (_, fields, kept[c]) = _advertised(cfg, c)
        for m in outputs_from_fields(fields, c, 1) or []:
            out.extend(server.receive(m))
    assert out and {m.stage for m in out} == {"share-keys"}
    shares: list[Any] = []
    for c in (1, 2, 3):  # stage 1 ahead: the sealed shares
        mine = tuple(m for m in out if m.recipient == c)
        fields, kept[c] = advance(params, mine, c, _node(c), kept[c], terms=_own_terms)
        for m in outputs_from_fields(fields, c, 1) or []:
            shares.extend(server.receive(m))
    assert shares and {m.stage for m in shares} == {"masked-input"}
    mine = tuple(m for m in shares if m.recipient == 1)
    with pytest.raises(AheadError, match="before having the input"):  # the placeholder input is never masked
        advance(params, mine, 1, _node(1), kept[1], terms=_own_terms)
    reply, state = handle_packet(StagePacket(1, "train", mine, packet.fields), _node(1), NodeState(None, kept[1]))
    assert [m.stage for m in reply.messages] == ["masked-input"] and reply.messages[0].sender == 1
    assert state.ahead is None and state.session is not None
    assert state.session.history == kept[1].history + mine
    server.receive(reply.messages[0])  # the server accepts the masked input of the rebuilt session


def test_ahead_requests_that_do_not_continue_the_kept_session_are_refused() -> None:
    import dataclasses as dc

    from fl_core.transport.flower.ahead import AheadError, advance
    from secagg import Message

    cfg = _small_cfg()
    _, _, (params, _, kept) = _advertised(cfg)
    keys = (Message(0, 1, 1, "share-keys", b"x"),)
    with pytest.raises(AheadError, match="no session was opened ahead"):
        advance(params, keys, 1, _node(1), None, terms=_own_terms)
    with pytest.raises(AheadError, match="differs from the one that opened it"):
        advance(dc.replace(params, config_json=params.config_json + " "), keys, 1, _node(1), kept, terms=_own_terms)
    with pytest.raises(AheadError, match="differ from this node's own"):
        advance(dc.replace(params, dim=params.dim + 1), keys, 1, _node(1), kept, terms=_own_terms)


def test_node_refuses_an_opening_that_does_not_continue_its_ahead_session() -> None:
    from fl_core.transport.flower.ahead import AheadError
    from fl_core.transport.flower.client import ClientStateError, handle_round
    from fl_core.transport.flower.codec import StagePacket
    from secagg import Message

    cfg = _small_cfg()
    fed, packet, (params, _, kept) = _advertised(cfg)
    keys = (Message(0, 1, 1, "share-keys", b"x"),)
    with pytest.raises(ClientStateError, match="ran none"):
        handle_round(StagePacket(1, "train", keys, packet.fields), _node(1))
    other_round = dataclasses.replace(kept, params=dataclasses.replace(params, round_id=2))
    with pytest.raises(AheadError, match="ran round 2"):
        handle_round(StagePacket(1, "train", keys, packet.fields), _node(1), other_round)
    other_cfg = dataclasses.replace(kept, params=dataclasses.replace(params, config_json=params.config_json + " "))
    with pytest.raises(AheadError, match="configuration differs"):
        handle_round(StagePacket(1, "train", keys, packet.fields), _node(1), other_cfg)
    lying = dataclasses.replace(kept, params=dataclasses.replace(params, min_survivors=params.min_survivors - 1))
    with pytest.raises(AheadError, match="differ from this node's own"):
        handle_round(StagePacket(1, "train", keys, packet.fields), _node(1), lying)
    forged = dataclasses.replace(kept, sent=((kept.sent[0][0], b"\0" * len(kept.sent[0][1])),))
    with pytest.raises(AheadError, match="does not re-emit"):
        handle_round(StagePacket(1, "train", keys, packet.fields), _node(1), forged)


def test_advertise_refuses_input_dependent_backends_and_weaker_runs() -> None:
    from fl_core.transport.flower.ahead import AheadError, AheadParams, advance
    from fl_core.transport.flower.client import NodePolicyError
    from fl_core.transport.flower.options import config_to_json

    cfg = _small_cfg(secure_sum="plain")
    fed, _ = _opening(cfg, 1)
    params = AheadParams(1, config_to_json(cfg), fed.plan.ring.bits, fed.dim, 3, 1)
    with pytest.raises(AheadError, match="depend on the input"):
        advance(params, (), 1, _node(1), None, terms=_own_terms)
    with pytest.raises(NodePolicyError):
        advance(params, (), 1, _node(1, require_secure_sum="masking"), None, terms=_own_terms)


def test_malformed_requests_and_replies_are_refused() -> None:
    from fl_core.transport.flower.ahead import AheadError, outputs_from_fields, request_from_fields

    assert request_from_fields({}, 1) is None
    with pytest.raises(AheadError, match="malformed ahead request"):
        request_from_fields({"ahead": "{}", "ahead_config": ""}, 1)
    with pytest.raises(AheadError, match="malformed ahead request"):
        request_from_fields({"ahead": "not json"}, 1)
    req = '{"dim": 3, "max_clients": 3, "min_survivors": 1, "ring_bits": 32, "round": 2}'
    with pytest.raises(AheadError, match="different lengths"):
        request_from_fields({"ahead": req, "ahead_config": "{}", "ahead_srv_stage": ["x"]}, 1)
    assert outputs_from_fields({}, 1, 2) is None
    good = {"ahead_round": 2, "ahead_msg_stage": ["advertise-keys"], "ahead_msg_payload": [b"k"]}
    assert outputs_from_fields(good, 1, 2)[0].round_id == 2  # type: ignore[index]
    with pytest.raises(AheadError, match="for round 2, expected round 3"):
        outputs_from_fields(good, 1, 3)
    with pytest.raises(AheadError, match="different lengths"):
        outputs_from_fields({**good, "ahead_msg_payload": []}, 1, 2)
    with pytest.raises(AheadError, match="malformed ahead reply"):
        outputs_from_fields({"ahead_round": "x"}, 1, 2)


def test_ahead_session_survives_the_flower_state_record() -> None:
    from fl_core.transport.flower.ahead import AheadSession

    _, _, (_, _, kept) = _advertised(_small_cfg())
    assert AheadSession.from_record(kept.to_record()) == kept


def test_cohort_of_is_drawn_once_and_used_by_begin_round() -> None:
    from fl_core.runner import build_federation

    fed, _, _ = build_federation(_small_cfg(clients=6, per_round=None, sampling_rate=0.5, seed=None))
    early = fed.cohort_of(1)
    assert fed.cohort_of(1) is early
    assert fed.begin_round().cohort is early
