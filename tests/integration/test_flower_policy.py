"""The node's policy floor on Flower, tested as the attacker: a lying server and what each node refuses.

Each test plays a server that sends a weaker run than the node operator allows (a seed
it chose, a huge min-survivors, a clip the ledger does not charge, ahead parameters of
its own) and checks that the node refuses before anything derived from its data leaves
it. The honest paths are checked against the in-process round loop (the oracle).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from test_flower import _flower_task_identity, _node, _opening, _own_terms, _small_cfg  # noqa: F401 (autouse fixture)
from test_flower_ahead import _reference, _run_driver

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif(
        importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
    ),
]

# The floor of the node in issue 14's reproduction: it still accepted a chosen seed and a huge min-survivors.
PINNED = {"require-dp": "distributed", "require-secure-sum": "masking", "min-noise-multiplier": 1.0}


def _dist(**kw: Any) -> Any:
    base: dict[str, Any] = {"dp": "distributed", "noise_multiplier": 1.0, "clip": 1.0, "seed": None}
    base.update(kw)
    return _small_cfg(**base)


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record whether the node built its federation (loaded data, trained) for a round it should refuse."""
    from fl_core.transport.flower import client as client_mod

    built: list[Any] = []
    real = client_mod._client_build

    def spy(cfg: Any, paillier: Any = None, **kw: Any) -> Any:
        built.append(cfg)
        return real(cfg, paillier, **kw)

    monkeypatch.setattr(client_mod, "_client_build", spy)
    return built


# -- the floor of issue 14's test, without a run seed ----------------------------------------------


def test_node_policy_refuses_a_weaker_run() -> None:
    from fl_core.transport.flower.client import NodePolicyError, check_node_policy, handle_round

    cfg = _dist(noise_multiplier=0.5)
    check_node_policy(cfg, {"partition-id": 0})  # no floor: accepted
    check_node_policy(cfg, {"require-dp": "distributed", "require-secure-sum": "masking", "min-noise-multiplier": 0.5})
    with pytest.raises(NodePolicyError, match="requires dp='distributed'"):
        check_node_policy(_small_cfg(dp="none", seed=None), {"require-dp": "distributed"})
    with pytest.raises(NodePolicyError, match="requires secure-sum='masking'"):
        check_node_policy(_small_cfg(secure_sum="plain", seed=None), {"require-secure-sum": "masking"})
    with pytest.raises(NodePolicyError, match="noise multiplier >= 1.0"):
        check_node_policy(cfg, {"min-noise-multiplier": 1.0})
    with pytest.raises(NodePolicyError, match="noise multiplier >= 1.0"):
        check_node_policy(_small_cfg(dp="none", seed=None), {"min-noise-multiplier": 1.0})
    _, packet = _opening(_small_cfg(dp="none", seed=None), 1)
    with pytest.raises(NodePolicyError):  # refused before any training
        handle_round(packet, {"partition-id": 0, "require-dp": "distributed"})


# -- finding 1a: a seed the server chose ----------------------------------------------------------


def test_a_server_chosen_seed_is_refused_before_anything_is_built(no_build: list[Any]) -> None:
    from fl_core.transport.flower.ahead import AheadParams, advance
    from fl_core.transport.flower.client import NodePolicyError, handle_round
    from fl_core.transport.flower.options import config_to_json

    cfg = _dist(seed=5)
    fed, packet = _opening(cfg, 1)
    node = {"partition-id": 0, **PINNED}
    with pytest.raises(NodePolicyError, match="allow-seeded-run=true"):
        handle_round(packet, node)
    assert no_build == []  # nothing loaded, nothing trained
    params = AheadParams(2, config_to_json(cfg), fed.plan.ring.bits, fed.plan.dim, 3, 3)
    with pytest.raises(NodePolicyError, match="run seed"):
        advance(params, (), 1, node, None, terms=_own_terms)  # nor runs key setup ahead with it


def test_with_a_chosen_seed_the_server_recomputes_the_nodes_keys_which_is_why_the_node_must_opt_in() -> None:
    """The attack the opt-in stops: the server derives the node's advertised keys from the seed it sent."""
    from fl_core.transport.flower.client import handle_round

    cfg = _dist(seed=5)
    fed, packet = _opening(cfg, 1)
    reply, state = handle_round(packet, {"partition-id": 0, **PINNED, "allow-seeded-run": True})
    assert state is not None and state.seeded
    # The server's own computation from the seed: the same secure-sum session keys.
    theirs = fed.secure_sum.client(1, 1, fed.secagg_rng(1, 1)).start(fed.plan.ring.zeros(fed.plan.dim))
    assert reply.messages[0].payload == theirs[0].payload


def test_allow_seeded_run_must_be_a_bool() -> None:
    from fl_core.errors import ConfigError
    from fl_core.transport.flower.policy import check_node_policy

    with pytest.raises(ConfigError, match="allow-seeded-run must be true or false"):
        check_node_policy(_dist(seed=5), {"allow-seeded-run": "yes"})


# -- finding 1b: the survivors the noise share is sized for ---------------------------------------------


def test_a_huge_min_survivors_is_refused_before_anything_is_built(no_build: list[Any]) -> None:
    from dp.calibration import distributed_noise
    from fl_core.transport.flower.client import NodePolicyError, handle_round

    honest = _dist()
    lying = _dist(min_survivors=3_000_000)
    fed_h, _ = _opening(honest, 1)
    fed_l, packet = _opening(lying, 1)
    # The attack: each node's noise share shrinks with the square root of the survivors claimed.
    std = [
        distributed_noise(f.privacy.config, scale=f.plan.scale, dim=f.plan.dim).per_client_std_float
        for f in (fed_h, fed_l)
    ]
    assert std[1] < std[0] / 900
    no_build.clear()
    with pytest.raises(NodePolicyError, match="max-min-survivors"):
        handle_round(packet, {"partition-id": 0, **PINNED})
    assert no_build == []


def test_the_node_passes_its_checked_min_survivors_to_its_own_session(tmp_path: Path) -> None:
    """An operator who raises the cap still gets a session that refuses a cohort smaller than it was sized for."""
    from fl_core.transport.flower.client import handle_round, handle_stage
    from fl_core.transport.flower.codec import StagePacket
    from fl_core.transport.flower.sessions import secure_sum_for
    from secagg import RemoteProtocolError

    cfg = _dist(min_survivors=3_000_000)
    node = {"max-min-survivors": 10_000_000}
    fed, _ = _opening(cfg, 1)
    states: dict[int, Any] = {}
    # The lying server runs its own session with a guard of 1 and lets client 3 drop after its keys.
    server = secure_sum_for(cfg, fed.plan.ring.bits, fed.plan.dim, 3, 1).server([1, 2, 3], 1)
    to_clients = []
    for c in (1, 2, 3):
        _, packet = _opening(cfg, c)
        reply, states[c] = handle_round(packet, {"partition-id": c - 1, **node})
        assert states[c].min_survivors == 3_000_000
        for m in reply.messages:
            to_clients.extend(server.receive(m))
    refused = []
    while not server.done:
        batch, to_clients = to_clients, []
        if not batch:
            to_clients = list(server.close_stage())
            continue
        for c in (1, 2) if batch[0].stage != "share-keys" else (1, 2, 3):
            mine = tuple(m for m in batch if m.recipient == c)
            if not mine:
                continue
            try:
                reply, states[c] = handle_stage(StagePacket(1, mine[0].stage, mine), states[c])
            except RemoteProtocolError as exc:
                refused.append((c, mine[0].stage, str(exc)))
                continue
            for m in reply.messages:
                to_clients.extend(server.receive(m))
        if refused:
            break
    # The node's checked value is its session's cohort floor: it refuses before dealing any share.
    assert refused and all(st == "share-keys" and "3000000" in why for _, st, why in refused), refused


def test_session_terms_check_the_resolved_min_survivors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit min-survivors, the one the node's own federation resolves is checked."""
    import fl_core.binding
    from fl_core.transport.flower.policy import NodeFloor, NodePolicyError, session_terms

    monkeypatch.setattr(fl_core.binding, "setup_digest", lambda fed: bytes(32))  # this stand-in has no DP config

    fed = SimpleNamespace(
        privacy=SimpleNamespace(min_survivors=5000),
        plan=SimpleNamespace(ring=SimpleNamespace(bits=32), dim=10),
        sampler=SimpleNamespace(max_cohort=lambda: 6000),
    )
    with pytest.raises(NodePolicyError, match="at most 1000"):
        session_terms(fed, NodeFloor(), "distributed")
    assert session_terms(fed, NodeFloor(max_min_survivors=5000), "distributed").min_survivors == 5000
    with pytest.raises(NodePolicyError, match="at least 6000 survivors"):
        session_terms(fed, NodeFloor(min_survivors=6000, max_min_survivors=7000), "distributed")


def test_ahead_requests_cannot_change_the_nodes_session_terms() -> None:
    """Stages run ahead use the node's own terms: a server's other min-survivors is refused before any key."""
    from fl_core.transport.flower.ahead import AheadError, AheadParams, advance
    from fl_core.transport.flower.options import config_to_json

    cfg = _dist()
    fed, _ = _opening(cfg, 1)
    own = AheadParams(1, config_to_json(cfg), fed.plan.ring.bits, fed.plan.dim, 3, 3)
    fields, _kept = advance(own, (), 1, {"partition-id": 0}, None, terms=_own_terms)
    assert fields["ahead_msg_payload"]
    other_ring = 8 if own.ring_bits != 8 else 16  # any ring but the node's own (auto-sized) one
    for lie in ({"min_survivors": 1}, {"max_clients": 2}, {"ring_bits": other_ring}):
        with pytest.raises(AheadError, match="differ from this node's own"):
            advance(dataclasses.replace(own, **lie), (), 1, {"partition-id": 0}, None, terms=_own_terms)


def test_colluders_mechanism_and_survivor_floors() -> None:
    from fl_core.transport.flower.policy import NodePolicyError, check_node_policy

    cfg = _dist(clients=6, per_round=6, colluders=1, min_survivors=4)
    check_node_policy(cfg, {"min-colluders": 1, "require-mechanism": "skellam", "min-survivors": 4})
    with pytest.raises(NodePolicyError, match="at least 2 clients collude"):
        check_node_policy(cfg, {"min-colluders": 2})
    with pytest.raises(NodePolicyError, match="discrete_gaussian mechanism"):
        check_node_policy(cfg, {"require-mechanism": "discrete_gaussian"})
    with pytest.raises(NodePolicyError, match="mechanism"):
        check_node_policy(_small_cfg(dp="central", seed=None), {"require-mechanism": "skellam"})
    with pytest.raises(NodePolicyError, match="at least 5 survivors"):
        check_node_policy(cfg, {"min-survivors": 5})


@pytest.mark.parametrize(
    ("node", "match"),
    [
        ({"require-dp": "loud"}, "require-dp must be one of"),
        ({"require-secure-sum": 3}, "require-secure-sum must be one of"),
        ({"require-mechanism": "laplace"}, "require-mechanism must be one of"),
        ({"min-noise-multiplier": "high"}, "min-noise-multiplier must be a positive number"),
        ({"min-noise-multiplier": -1.0}, "min-noise-multiplier must be a positive number"),
        ({"max-round-epsilon": math.inf}, "max-round-epsilon must be a positive number"),
        ({"min-colluders": -1}, "min-colluders must be an integer >= 0"),
        ({"min-survivors": 0}, "min-survivors must be an integer >= 1"),
        ({"max-min-survivors": 2.5}, "max-min-survivors must be an integer >= 1"),
        ({"min-survivors": 10, "max-min-survivors": 5}, "exceeds max-min-survivors"),
        ({"min-clip": 2.0, "max-clip": 1.0}, "min-clip exceeds max-clip"),
        ({"max-clip": True}, "max-clip must be a positive number"),
    ],
)
def test_malformed_floor_keys_are_configuration_errors(node: dict[str, Any], match: str) -> None:
    from fl_core.errors import ConfigError
    from fl_core.transport.flower.policy import check_node_policy

    with pytest.raises(ConfigError, match=match):
        check_node_policy(_dist(), node)


# -- the round's epsilon against the server -----------------------------------------------------------


def test_max_round_epsilon_refuses_a_round_that_costs_more_against_the_server(no_build: list[Any]) -> None:
    from fl_core.transport.flower.client import NodePolicyError, handle_round
    from fl_core.transport.flower.policy import round_epsilon_vs_server

    weak, strong = _dist(noise_multiplier=0.6), _dist(noise_multiplier=4.0)
    fw, pw = _opening(weak, 1)
    fs, ps = _opening(strong, 1)
    eps_w, eps_s = round_epsilon_vs_server(fw, 1.0), round_epsilon_vs_server(fs, 1.0)
    assert eps_s < 2.0 < eps_w
    with pytest.raises(NodePolicyError, match="against the server"):
        handle_round(pw, {"partition-id": 0, "max-round-epsilon": 2.0})
    handle_round(ps, {"partition-id": 0, "max-round-epsilon": 2.0})
    # Central mode: the server sees the exact sum, so the round is unbounded against it.
    fc, pc = _opening(_small_cfg(dp="central", noise_multiplier=4.0, clip=1.0, seed=None), 1)
    assert round_epsilon_vs_server(fc, 1.0) == math.inf
    with pytest.raises(NodePolicyError, match="epsilon inf"):
        handle_round(pc, {"partition-id": 0, "max-round-epsilon": 100.0})


def test_the_round_epsilon_claims_no_amplification_by_sampling(tmp_path: Path) -> None:
    """Against the server a round is charged as if every client took part: the sampling rate does not lower it."""
    from fl_core.runner import build_federation
    from fl_core.transport.flower.policy import round_epsilon_vs_server

    full = _dist(clients=6, per_round=6, min_survivors=3)
    sampled = _dist(clients=60, per_round=6, min_survivors=3)
    f1, _, _ = build_federation(full, open_ledger=False)
    f2, _, _ = build_federation(sampled, open_ledger=False)
    assert f1.plan.scale == f2.plan.scale
    assert round_epsilon_vs_server(f1, 1.0) == pytest.approx(round_epsilon_vs_server(f2, 1.0), rel=1e-9)


# -- finding 3: the clip a node enforces is the clip the ledger charges --------------------------------


def test_a_clip_the_run_is_not_sized_for_is_refused_before_training(no_build: list[Any]) -> None:
    from fl_core.transport.flower.client import NodePolicyError, handle_round
    from fl_core.transport.flower.codec import StagePacket

    fixed = _dist()
    _, packet = _opening(fixed, 1)
    node = {"partition-id": 0}
    for lie in (2.0, 0.5, "1.0", None):
        fields = {**packet.fields, "clip": lie}
        with pytest.raises(NodePolicyError, match="clip"):
            handle_round(StagePacket(1, "train", (), fields), node)
    adaptive = _dist(adaptive_clip=True)
    _, packet = _opening(adaptive, 1)
    handle_round(StagePacket(1, "train", (), {**packet.fields, "clip": 3.0}), node)  # within [C/8, 8C]
    for lie in (9.0, 0.1, math.nan):
        with pytest.raises(NodePolicyError, match="outside"):
            handle_round(StagePacket(1, "train", (), {**packet.fields, "clip": lie}), node)
    with pytest.raises(NodePolicyError, match="clips within"):
        handle_round(StagePacket(1, "train", (), {**packet.fields, "clip": 3.0}), {**node, "max-clip": 2.0})
    with pytest.raises(NodePolicyError, match="clips within"):
        handle_round(StagePacket(1, "train", (), {**packet.fields, "clip": 0.2}), {**node, "min-clip": 0.5})


@pytest.mark.parametrize(
    ("dp", "secure_sum"), [("distributed", "masking"), ("central", "masking"), ("distributed", "plain")]
)
def test_adaptive_clipping_on_flower_clips_at_the_clip_the_ledger_charges(
    dp: str, secure_sum: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes clip (and size noise) at the server's adapted clip: same model and epsilon as in process.

    At 4d32833 the nodes clipped at the initial clip while the ledger charged the adapted one
    (plain), and masking rounds failed outright (the stage processes sized the session without
    the clip count's coordinate).
    """
    from fl_core.federation import Federation

    cfg = _small_cfg(
        dp=dp, noise_multiplier=1.0, clip=1.0, adaptive_clip=True, rounds=3, clip_lr=0.8, secure_sum=secure_sum
    )
    ref = _reference(cfg, tmp_path, 3)
    used: dict[tuple[int, int], float] = {}
    real = Federation.client_contribution

    def spy(self: Any, client: int, round_id: int, global_vec: Any, data: Any) -> Any:
        used[(client, round_id)] = float(self.privacy.clip_norm)
        return real(self, client, round_id, global_vec, data)

    monkeypatch.setattr(Federation, "client_contribution", spy)
    fed, _traces, _sent = _run_driver(cfg, tmp_path, 3)
    charged = [e.clip_norm for e in fed.events]
    assert len(set(charged)) == 3, f"the clip never moved, the test would prove nothing: {charged}"
    for (_c, r), clip in used.items():
        assert clip == charged[r - 1]
    assert charged == [e.clip_norm for e in ref.events]
    assert np.array_equal(fed.codec.flatten(fed.model), ref.codec.flatten(ref.model))
    assert [r.epsilon for r in fed.history] == [r.epsilon for r in ref.history]
