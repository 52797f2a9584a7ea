"""The SuperNode side of asynchronous mode, driven through privagg's client mod without Flower processes."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
)


def _cfg(**kw: Any) -> Any:
    from fl_core.config import RunConfig

    base = dict(clients=3, per_round=3, rounds=1, schedule="async", buffer=3, concurrency=3, secure_sum="masking",
                graph="complete", dp="none", seed=5, model="logreg", local_epochs=1)
    base.update(kw)
    return RunConfig(**base)


class _Context:
    """What privagg's mod uses of a Flower Context: the node's state and its operator's node config."""

    def __init__(self, c: int, **node: Any) -> None:
        from flwr.app import RecordDict

        self.state = RecordDict()
        self.node_config = {"partition-id": c - 1, "allow-seeded-run": True, **node}


def _server_fed(cfg: Any) -> Any:
    from fl_core.runner import build_federation

    fed, _, _ = build_federation(cfg, open_ledger=False)
    return fed


def _train(ctx: _Context, cfg: Any, fed: Any, version: int) -> Any:
    from fl_core.transport.flower.async_node import ASYNC_TRAIN_STAGE
    from fl_core.transport.flower.codec import StagePacket, vector_to_bytes
    from fl_core.transport.flower.mod import answer
    from fl_core.transport.flower.options import config_to_json

    packet = StagePacket(version, ASYNC_TRAIN_STAGE, (), {
        "config": config_to_json(cfg), "client": ctx.node_config["partition-id"] + 1,
        "global": vector_to_bytes(fed.codec.flatten(fed.model)), "dim": fed.dim, "model-version": version,
    })
    return answer(_wire(packet), ctx)


def _open(ctx: _Context, cfg: Any, fed: Any, r: int, base: int) -> Any:
    from fl_core.transport.flower.async_node import ASYNC_BASE_FIELD
    from fl_core.transport.flower.codec import TRAIN_STAGE, StagePacket, vector_to_bytes
    from fl_core.transport.flower.mod import answer
    from fl_core.transport.flower.options import config_to_json

    packet = StagePacket(r, TRAIN_STAGE, (), {
        "config": config_to_json(cfg), "client": ctx.node_config["partition-id"] + 1,
        "global": vector_to_bytes(fed.codec.flatten(fed.model)), "dim": fed.dim, "clip": fed.privacy.clip_norm,
        ASYNC_BASE_FIELD: base,
    })
    return answer(_wire(packet), ctx)


def _wire(packet: Any) -> Any:
    """``packet`` as a node receives it: through the Flower codec."""
    from fl_core.transport.flower.codec import decode_packet, encode_packet

    return decode_packet(encode_packet(packet))


def test_a_buffer_of_nodes_sums_exactly_their_weighted_inputs_and_never_sends_an_update_twice() -> None:
    from fl_core.transport.flower.client import ClientStateError
    from fl_core.transport.flower.codec import StagePacket
    from fl_core.transport.flower.mod import answer, load_state

    cfg = _cfg()
    fed = _server_fed(cfg)
    ctxs = {c: _Context(c) for c in (1, 2, 3)}
    for c, ctx in ctxs.items():
        assert _train(ctx, cfg, fed, version=0).fields["trained"] is True
    server = fed.bound_secure_sum().server([1, 2, 3], 2)  # the honest server: bound to the terms it announces
    to_clients = []
    for c, ctx in ctxs.items():
        reply = _open(ctx, cfg, fed, r=2, base=1)  # one buffer was applied since they trained
        assert reply.fields["staleness"] == 1 and reply.fields["weight"] == pytest.approx(2**-0.5)
        assert load_state(ctx).session.min_survivors >= 2  # the node never helps unmask one update alone
        for m in reply.messages:
            to_clients.extend(server.receive(m))
    while not server.done:
        batch, to_clients = to_clients, []
        for c, ctx in ctxs.items():
            mine = tuple(m for m in batch if m.recipient == c)
            for m in answer(StagePacket(2, mine[0].stage, mine), ctx).messages:
                to_clients.extend(server.receive(m))
    ring = fed.plan.ring
    xs = [np.frombuffer(load_state(ctx).session.x, dtype=ring.dtype) for ctx in ctxs.values()]
    assert np.array_equal(server.result(), ring.sum(xs, fed.plan.dim)) and server.survivors == {1, 2, 3}
    # A server that says "you missed it" and opens another session gets a refusal, nothing else.
    with pytest.raises(ClientStateError, match="never sent twice"):
        _open(ctxs[1], cfg, fed, r=3, base=2)


def test_a_node_refuses_a_version_from_the_future_and_beyond_its_own_staleness_bound() -> None:
    from fl_core.transport.flower.client import ClientStateError
    from fl_core.transport.flower.policy import NodePolicyError

    cfg = _cfg()
    fed = _server_fed(cfg)
    ctx = _Context(1)
    _train(ctx, cfg, fed, version=4)
    with pytest.raises(NodePolicyError, match="older than the version 4"):
        _open(ctx, cfg, fed, r=5, base=3)
    strict = _Context(2, **{"max-staleness": 1})
    _train(strict, cfg, fed, version=0)
    with pytest.raises(NodePolicyError, match="above its max-staleness 1"):
        _open(strict, cfg, fed, r=3, base=2)
    with pytest.raises(ClientStateError, match="holds no trained update"):
        _open(_Context(3), cfg, fed, r=1, base=0)


def test_the_weight_scales_the_clipped_update_not_the_noise() -> None:
    cfg = _cfg(dp="none", clip=0.01)  # every update is clipped
    fed = _server_fed(cfg)
    for base, w in ((0, 1.0), (3, 0.5)):
        ctx = _Context(1)
        _train(ctx, cfg, fed, version=0)
        reply = _open(ctx, cfg, fed, r=base + 1, base=base)
        from fl_core.transport.flower.mod import load_state

        x = np.frombuffer(load_state(ctx).session.x, dtype=fed.plan.ring.dtype)
        v = fed.encoder.decode(x)
        assert reply.fields["weight"] == pytest.approx(w)
        assert np.linalg.norm(v) == pytest.approx(0.01 * w, abs=np.sqrt(v.size) / fed.plan.scale)


def test_the_node_charges_its_own_record_per_buffer_and_refuses_past_its_limit() -> None:
    from dp.client_record import ClientRecord
    from dp.errors import ClientBudgetExceededError
    from fl_core.transport.flower.mod import load_state

    cfg = _cfg(dp="distributed", noise_multiplier=1.0, clip=1.0, buffer=3, per_round=3)
    fed = _server_fed(cfg)
    ctx = _Context(1)
    _train(ctx, cfg, fed, version=0)
    _open(ctx, cfg, fed, r=1, base=0)
    record = ClientRecord.from_bytes(load_state(ctx).privacy, client="1")
    assert len(record.charges) == 1 and record.epsilon_vs_server() > 0  # charged when its session opened
    one = record.epsilon_vs_server()
    tight = _Context(2, **{"max-epsilon": one * 1.01})  # room for one buffer, not two
    _train(tight, cfg, fed, version=0)
    _open(tight, cfg, fed, r=1, base=0)
    with pytest.raises(ClientBudgetExceededError):
        _train(tight, cfg, fed, version=1)  # refused before it trains for a second buffer
