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
from test_flower import _flower_task_identity, _opening, _ScriptedGrid, _small_cfg  # noqa: F401 (autouse fixture)

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
]


def _run_driver(
    cfg: Any, tmp_path: Path, rounds: int, *, ahead: bool = True, silent: dict[int, set[str]] | None = None
) -> tuple[Any, list[Any], list[tuple[int, str]]]:
    """Drive ``rounds`` rounds over a scripted grid; ``silent[c]`` = packet stages client c ignores."""
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
        if packet.stage in (silent or {}).get(c, set()):
            return None
        reply, states[c] = handle_packet(packet, {"partition-id": c - 1}, states.get(c, NodeState()))
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
def test_ahead_rounds_equal_the_in_process_rounds_with_one_exchange_less(dp: str, tmp_path: Path) -> None:
    cfg = _small_cfg(dp=dp, noise_multiplier=1.0, clip=1.0, rounds=3)
    ref = _reference(cfg, tmp_path, 3)
    fed, traces, sent = _run_driver(cfg, tmp_path, 3)
    assert np.array_equal(fed.codec.flatten(fed.model), ref.codec.flatten(ref.model))
    assert [r.epsilon for r in fed.history] == [r.epsilon for r in ref.history]
    assert [r.survivors for r in fed.history] == [r.survivors for r in ref.history]
    base, _, _ = _run_driver(cfg, tmp_path / "off", 3, ahead=False)
    assert np.array_equal(base.codec.flatten(base.model), ref.codec.flatten(ref.model))
    # Round 1 opens as before; rounds 2 and 3 start with the keys advertised during the round before.
    assert traces[0].stages[0]["stage"] == "train"
    for tr in traces[1:]:
        assert tr.stages[0]["stage"] == "advertise-keys (ahead)" and tr.stages[0]["answered"] == [1, 2, 3]
    assert [_exchanges(t) for t in traces][1:] == [_exchanges(traces[0]) - 1] * 2
    # The request rides on the final exchange of rounds 1 and 2 only, and no standalone packet is needed.
    assert sum(1 for _, st in sent if st.endswith("+ahead")) == 6
    assert all(st != "advertise" for _, st in sent)


def test_new_cohort_members_get_a_standalone_advertise_request(tmp_path: Path) -> None:
    """Poisson cohorts differ from round to round: members not in the current round are asked on their own."""
    cfg = _small_cfg(clients=6, per_round=None, sampling_rate=0.6, dp="none", rounds=3, seed=3)
    ref = _reference(cfg, tmp_path, 3)
    cohorts = [r.cohort for r in ref.history]
    assert any(set(b) - set(a) for a, b in zip(cohorts, cohorts[1:], strict=False)), "pick a seed with new members"
    fed, traces, sent = _run_driver(cfg, tmp_path, 3)
    assert [r.cohort for r in fed.history] == cohorts
    assert np.array_equal(fed.codec.flatten(fed.model), ref.codec.flatten(ref.model))
    standalone = [c for c, st in sent if st == "advertise+ahead"]
    expected = [c for a, b in zip(cohorts, cohorts[1:], strict=False) for c in b if c not in a]
    assert sorted(standalone) == sorted(expected)


def test_a_member_that_misses_the_advertise_request_is_a_first_stage_dropout(tmp_path: Path) -> None:
    cfg = _small_cfg(clients=4, per_round=4, dp="distributed", noise_multiplier=1.0, clip=1.0, rounds=2, colluders=0)
    cfg = cfg.replace(min_survivors=3)
    # Client 4 does not answer round 1's final exchange (the one carrying the request for round 2).
    fed, traces, sent = _run_driver(cfg, tmp_path, 2, silent={4: {"unmasking"}})
    before_final = len(traces[0].stages) - 1  # it took part in every stage of round 1 but the last
    ref = _reference(cfg, tmp_path, 2, dropouts={1: {4: before_final}, 2: {4: 0}})
    assert fed.history[1].survivors == ref.history[1].survivors == (1, 2, 3)
    assert np.array_equal(fed.codec.flatten(fed.model), ref.codec.flatten(ref.model))
    assert traces[1].stages[0]["answered"] == [1, 2, 3]
    assert (4, "train") not in sent[sent.index((1, "unmasking+ahead")) :]  # never opened round 2


# -- node side: what the node refuses ---------------------------------------------------------------------------


def _advertised(cfg: Any, client: int = 1, r: int = 1) -> tuple[Any, Any, Any]:
    from fl_core.transport.flower.ahead import AheadParams, advertise
    from fl_core.transport.flower.options import config_to_json

    fed, packet = _opening(cfg, client, r)
    params = AheadParams(
        r, config_to_json(cfg), fed.plan.ring.bits, fed.dim, fed.sampler.max_cohort(), int(fed.privacy.min_survivors)
    )
    fields, kept = advertise(params, client, {"partition-id": client - 1})
    return fed, packet, (params, fields, kept)


def test_node_rebuilds_the_advertised_session_and_answers_the_neighbours_keys() -> None:
    from fl_core.transport.flower.ahead import advertisement_from_fields
    from fl_core.transport.flower.client import NodeState, handle_packet
    from fl_core.transport.flower.codec import StagePacket

    cfg = _small_cfg(dp="distributed", noise_multiplier=1.0, clip=1.0)
    fed, packet, _ = _advertised(cfg)
    server = fed.secure_sum.server([1, 2, 3], 1)
    kept = {}
    out = []
    for c in (1, 2, 3):
        _, _, (_, fields, kept[c]) = _advertised(cfg, c)
        for m in advertisement_from_fields(fields, c, 1) or []:
            out.extend(server.receive(m))
    mine = tuple(m for m in out if m.recipient == 1)
    assert mine and all(m.stage == "share-keys" for m in mine)
    reply, state = handle_packet(
        StagePacket(1, "train", mine, packet.fields), {"partition-id": 0}, NodeState(None, kept[1])
    )
    assert reply.messages and all(m.stage == "share-keys" and m.sender == 1 for m in reply.messages)
    assert state.ahead is None and state.session is not None and state.session.history == mine
    for m in reply.messages:
        server.receive(m)  # the server accepts the sealed shares of the rebuilt session


def test_node_refuses_neighbour_keys_it_did_not_advertise_for() -> None:
    from fl_core.transport.flower.ahead import AheadError
    from fl_core.transport.flower.client import ClientStateError, handle_round
    from fl_core.transport.flower.codec import StagePacket
    from secagg import Message

    cfg = _small_cfg()
    fed, packet, (params, _, kept) = _advertised(cfg)
    keys = (Message(0, 1, 1, "share-keys", b"x"),)
    with pytest.raises(ClientStateError, match="advertised none"):
        handle_round(StagePacket(1, "train", keys, packet.fields), {"partition-id": 0})
    other_round = dataclasses.replace(kept, params=dataclasses.replace(params, round_id=2))
    with pytest.raises(AheadError, match="advertised keys for round 2"):
        handle_round(StagePacket(1, "train", keys, packet.fields), {"partition-id": 0}, other_round)
    other_cfg = dataclasses.replace(kept, params=dataclasses.replace(params, config_json=params.config_json + " "))
    with pytest.raises(AheadError, match="configuration differs"):
        handle_round(StagePacket(1, "train", keys, packet.fields), {"partition-id": 0}, other_cfg)
    lying = dataclasses.replace(kept, params=dataclasses.replace(params, min_survivors=params.min_survivors - 1))
    with pytest.raises(AheadError, match="differ from this node's own"):
        handle_round(StagePacket(1, "train", keys, packet.fields), {"partition-id": 0}, lying)
    forged = dataclasses.replace(kept, advert=((kept.advert[0][0], b"\0" * len(kept.advert[0][1])),))
    with pytest.raises(AheadError, match="does not re-emit"):
        handle_round(StagePacket(1, "train", keys, packet.fields), {"partition-id": 0}, forged)


def test_advertise_refuses_input_dependent_backends_and_weaker_runs() -> None:
    from fl_core.transport.flower.ahead import AheadError, AheadParams, advertise
    from fl_core.transport.flower.client import NodePolicyError
    from fl_core.transport.flower.options import config_to_json

    cfg = _small_cfg(secure_sum="plain")
    fed, _ = _opening(cfg, 1)
    params = AheadParams(1, config_to_json(cfg), fed.plan.ring.bits, fed.dim, 3, 1)
    with pytest.raises(AheadError, match="depend on the input"):
        advertise(params, 1, {"partition-id": 0})
    with pytest.raises(NodePolicyError):
        advertise(params, 1, {"partition-id": 0, "require-secure-sum": "masking"})


def test_malformed_requests_and_advertisements_are_refused() -> None:
    from fl_core.transport.flower.ahead import AheadError, advertisement_from_fields, request_from_fields

    assert request_from_fields({}) is None
    with pytest.raises(AheadError, match="malformed advertise-ahead request"):
        request_from_fields({"ahead": "{}", "ahead_config": ""})
    with pytest.raises(AheadError, match="malformed advertise-ahead request"):
        request_from_fields({"ahead": "not json"})
    assert advertisement_from_fields({}, 1, 2) is None
    good = {"ahead_round": 2, "ahead_msg_stage": ["advertise-keys"], "ahead_msg_payload": [b"k"]}
    assert advertisement_from_fields(good, 1, 2)[0].round_id == 2  # type: ignore[index]
    with pytest.raises(AheadError, match="for round 2, expected round 3"):
        advertisement_from_fields(good, 1, 3)
    with pytest.raises(AheadError, match="different lengths"):
        advertisement_from_fields({**good, "ahead_msg_payload": []}, 1, 2)
    with pytest.raises(AheadError, match="malformed advertisement"):
        advertisement_from_fields({"ahead_round": "x"}, 1, 2)


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
