"""A round retried after an abort, on Flower nodes: charged again, never masked or noised like the attempt before.

After an aborted attempt the server retries the round with the same round id and the next
attempt number. A node that sent its masked input in the aborted attempt charged that
round in its own record; drawn again, it must take part (no crash, no wrong refusal) and
charge again (its second input is a second release). A seeded node's randomness is keyed
by the round id *and* the attempt: were it keyed by the round only, the retry would reuse
the keys, self-mask and noise of the aborted attempt, and the server would read the exact
difference of the node's two inputs off its two masked inputs (the attack below). A server
that opens the same attempt again, or an earlier one, is refused.

The nodes are privagg's client mod with a Flower Context each (no processes); the server
side is the masking server session itself, or the round driver over a scripted grid.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_flower import _flower_task_identity  # noqa: F401 (autouse fixture)
from test_flower_async_node import _cfg, _Context, _server_fed, _train, _wire

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None, reason="flwr is not installed: pip install 'privagg[flower]'"
)

MASKED_INPUT = "masked-input"
ATTEMPT = "attempt"  # the opening's field (codec.ATTEMPT_FIELD), spelled out so the attacks also run on older code


def _opening(ctx: _Context, cfg: Any, fed: Any, r: int, attempt: int | None, *, base: int | None = None) -> Any:
    """The server's opening of round ``r`` (an async buffer session when ``base`` is given) for ``ctx``'s node."""
    from fl_core.transport.flower.async_node import ASYNC_BASE_FIELD
    from fl_core.transport.flower.codec import TRAIN_STAGE, StagePacket, vector_to_bytes
    from fl_core.transport.flower.options import config_to_json

    fields: dict[str, Any] = {
        "config": config_to_json(cfg),
        "client": ctx.node_config["partition-id"] + 1,
        "global": vector_to_bytes(fed.codec.flatten(fed.model)),
        "dim": fed.dim,
        "clip": fed.privacy.clip_norm,
    }
    if attempt is not None:
        fields[ATTEMPT] = attempt
    if base is not None:
        fields[ASYNC_BASE_FIELD] = base
    return _wire(StagePacket(r, TRAIN_STAGE, (), fields))


def _to_masked_input(ctxs: dict[int, _Context], cfg: Any, fed: Any, r: int, attempt: int | None,
                     base: int | None = None) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Run round ``r`` up to the masked inputs (then the server aborts it); returns (masked inputs, inputs)."""
    from fl_core.transport.flower.codec import StagePacket
    from fl_core.transport.flower.mod import answer, load_state
    from secagg.masking.wire import decode_masked_input

    ring = fed.plan.ring
    server = fed.secure_sum.server(sorted(ctxs), r)
    to_clients = []
    for ctx in ctxs.values():
        for m in answer(_opening(ctx, cfg, fed, r, attempt, base=base), ctx).messages:
            to_clients.extend(server.receive(m))
    masked: dict[int, np.ndarray] = {}
    while len(masked) < len(ctxs):
        batch, to_clients = to_clients, []
        assert batch, "the session stalled before the masked inputs"
        for c, ctx in ctxs.items():
            mine = tuple(m for m in batch if m.recipient == c)
            for m in answer(_wire(StagePacket(r, mine[0].stage, mine)), ctx).messages:
                if m.stage == MASKED_INPUT:
                    masked[c] = np.frombuffer(decode_masked_input(m.payload)[1], dtype=ring.dtype).copy()
                else:
                    to_clients.extend(server.receive(m))
    inputs = {c: np.frombuffer(load_state(ctx).session.x, dtype=ring.dtype).copy() for c, ctx in ctxs.items()}
    return masked, inputs


def _charges(ctx: _Context) -> list[int]:
    from dp.client_record import ClientRecord

    blob = ctx.state.config_records["privagg.client_record"]["record"]
    return [c.round for c in ClientRecord.from_bytes(bytes(blob)).charges]


def _async_cfg() -> Any:
    return _cfg(dp="distributed", noise_multiplier=1.0, clip=1.0, min_survivors=3)


def _diff(ring: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ring.reduce(a - b)


def _nudge(fed: Any) -> None:
    """Another global model (a lying server's, or simply the next version): the nodes' updates change."""
    import torch

    with torch.no_grad():
        for p in fed.model.parameters():
            p.add_(0.05)


def _check_fresh(ring: Any, ctxs: Any, attempts: list[tuple[dict, dict]]) -> None:
    """attempts[0] and attempts[1]: same model (inputs differ by the noise only); attempts[2]: another model."""
    (y0, x0), (_y1, x1), (y2, x2) = attempts
    for c in ctxs:
        # Same update, so only the noise tells the inputs apart: a reused noise stream leaves them equal.
        assert not np.array_equal(x1[c], x0[c]), f"client {c}: the retry reused its noise"
        # Different updates: with reused masks the two masked inputs differ by exactly the difference of
        # the inputs (their noise cancels as well), which the server reads off without any unmasking.
        assert np.any(x2[c] != x0[c])
        assert not np.array_equal(_diff(ring, y2[c], y0[c]), _diff(ring, x2[c], x0[c])), (
            f"client {c}: the retry reused its masks; the server learns input2 - input1"
        )
        # Charged for each: every input is a release of its own.
        assert _charges(ctxs[c]) == [1, 1, 1]


def test_attack_a_retried_async_session_must_not_reuse_the_aborted_attempts_masks_and_noise() -> None:
    """The async Flower server retries an aborted buffer session with the same round id and the next
    attempt; each seeded node trained again and sends a new update (after each masked input, the
    server aborts the session)."""
    cfg = _async_cfg()
    fed = _server_fed(cfg)
    ctxs = {c: _Context(c) for c in (1, 2, 3)}
    attempts = []
    for attempt in (0, 1, 2):
        if attempt == 2:
            _nudge(fed)
        for ctx in ctxs.values():
            _train(ctx, cfg, fed, version=0)
        attempts.append(_to_masked_input(ctxs, cfg, fed, r=1, attempt=attempt, base=0))
    _check_fresh(fed.plan.ring, ctxs, attempts)


def test_attack_a_seeded_node_refuses_an_opening_of_an_attempt_it_already_opened() -> None:
    """A lying server opens the same round attempt twice (or goes back to an earlier one)."""
    from fl_core.transport.flower.mod import answer
    from fl_core.transport.flower.sessions import ReopenedRoundError

    cfg = _async_cfg()
    fed = _server_fed(cfg)
    ctxs = {c: _Context(c) for c in (1, 2, 3)}
    for ctx in ctxs.values():
        _train(ctx, cfg, fed, version=0)
    _to_masked_input(ctxs, cfg, fed, r=2, attempt=1, base=0)
    for ctx in ctxs.values():
        _train(ctx, cfg, fed, version=0)
    for r, attempt in ((2, 1), (2, 0), (1, 5), (2, None)):  # None: an opening naming no attempt is attempt 0
        with pytest.raises(ReopenedRoundError, match="opened once, in order"):
            answer(_opening(ctxs[1], cfg, fed, r, attempt, base=0), ctxs[1])
    assert _charges(ctxs[1]) == [2]  # refused before anything was charged or sent
    _to_masked_input(ctxs, cfg, fed, r=2, attempt=2, base=0)  # the next attempt is taken
    assert _charges(ctxs[1]) == [2, 2]


def test_attack_a_retried_synchronous_round_on_a_seeded_node_is_masked_afresh() -> None:
    """The same attack on synchronous rounds: round 1 opened for attempts 0, 1 and 2 (the first
    names no attempt, as an older server's opening; it counts as attempt 0)."""
    cfg = _cfg(schedule="sync", dp="distributed", noise_multiplier=1.0, clip=1.0, min_survivors=3)
    fed = _server_fed(cfg)
    ctxs = {c: _Context(c) for c in (1, 2, 3)}
    attempts = []
    for attempt in (None, 1, 2):
        if attempt == 2:
            _nudge(fed)
        attempts.append(_to_masked_input(ctxs, cfg, fed, r=1, attempt=attempt))
    _check_fresh(fed.plan.ring, ctxs, attempts)


def test_the_seeded_retry_draws_what_the_in_process_client_draws_in_the_same_attempt() -> None:
    """The node keys its streams like the in-process simulation: attempt 1 of round 1 is "1~1"."""
    from dp.randomness import SeededRandomSource
    from fl_core.federation import round_label
    from fl_core.transport.flower.codec import ATTEMPT_FIELD
    from fl_core.transport.flower.sessions import attempt_label, session_rng

    assert ATTEMPT_FIELD == ATTEMPT
    for r, a in ((1, 0), (1, 1), (7, 3), (12, 0)):
        assert attempt_label(r, a) == round_label(r, a)
    cfg = _async_cfg()
    got = session_rng(cfg, 2, 1, b"", True, 1).random_bytes(32)
    assert got == SeededRandomSource(cfg.seed).spawn("secagg/2/round/1~1").random_bytes(32)
    assert got != session_rng(cfg, 2, 1, b"", True, 0).random_bytes(32)


@pytest.mark.parametrize("rounds", [1, 2], ids=["one-round", "with-key-setup-ahead"])
def test_the_honest_flower_server_retries_an_aborted_round_with_the_next_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rounds: int
) -> None:
    """Over a scripted grid: round 1's first attempt aborts (every node but one vanishes after its
    masked input, so too few answer the unmasking stage); the server retries the round with the
    next attempt, a fresh cohort draw (here the same five nodes), and commits. Each node charged
    round 1 twice in its own record; the server's ledger holds the committed rounds only. With a
    second round, round 2's keys were set up ahead during round 1's aborted attempt: the retry
    sets them up again and round 2 commits as in the in-process run."""
    from test_flower_task import Fleet, UserTask, _configs, _run, write_shards
    from test_flower_task import _cfg as task_cfg

    from dp.client_record import ClientRecord
    from dp.ledger import verify_ledger
    from fl_core.transport.flower.codec import ATTEMPT_FIELD, TRAIN_STAGE, decode_packet

    root = tmp_path / "shards"
    write_shards(root, 5)
    cfg = task_cfg(tmp_path, rounds=rounds, min_survivors=4)
    openings: list[tuple[int, int, int]] = []
    original = Fleet.__call__

    def first_attempt_loses_its_unmaskers(self: Any, node: int, content: Any) -> Any:
        packet = decode_packet(content)
        if packet.stage == TRAIN_STAGE:
            openings.append((node, packet.round_id, int(packet.fields[ATTEMPT_FIELD])))
        first = openings[-1][1:] == (1, 0) if openings else False
        if first and packet.stage == "unmasking" and node != min(self.contexts):
            return None  # vanished after its masked input
        return original(self, node, content)

    monkeypatch.setattr(Fleet, "__call__", first_attempt_loses_its_unmaskers)
    strategy, _result, fleet = _run(UserTask().as_task(), cfg, _configs(root, 5))
    summary = strategy.report.to_json()
    assert summary["rounds_aborted"] == 1 and [r["round"] for r in summary["rounds"]] == list(range(1, rounds + 1))
    (aborted,) = summary["aborted_attempts"]
    assert aborted["round"] == 1 and aborted["attempt"] == 0 and "unmasking" in aborted["reason"]
    assert sorted({(r, a) for _, r, a in openings}) == [(1, 0), (1, 1)] + [(2, 0)] * (rounds - 1)
    assert all(res.survivors == (1, 2, 3, 4, 5) for res in strategy.report.results)
    for node, ctx in fleet.contexts.items():
        record = ClientRecord.from_bytes(bytes(ctx.state.config_records["privagg.client_record"]["record"]))
        assert [c.round for c in record.charges] == [1, 1, 2][: rounds + 1], node  # both inputs charged
    assert verify_ledger(cfg.ledger).rounds == rounds
    if rounds == 2:  # round 2's key setup ran ahead (during the retry of round 1) and was used
        assert any(st["stage"].endswith("(ahead)") for st in strategy.report.traces[1].stages)
    # The seeded retry draws what the in-process simulation draws in the same attempt (its cohort,
    # noise and session keys are keyed by "1~1"): the same model, bit for bit.
    from test_flower_task import _flat

    from fl_core.errors import RoundFailedError
    from fl_core.runner import build_federation

    ref, _, _ = build_federation(cfg.replace(ledger=str(tmp_path / "ref.jsonl")), UserTask(root=root).as_task())
    stage = int(ref.secure_sum.input_stage)
    ref.dropouts = lambda members, r: (
        {c: stage + 1 for c in members[1:]} if (r, ref.attempts.get(r, 0)) == (1, 0) else {}
    )
    with pytest.raises(RoundFailedError, match="unmasking"):
        ref.run_round()
    assert ref.run_round().attempt == 1
    if rounds == 2:
        ref.run_round()
    assert np.array_equal(_flat(strategy.report.model), _flat(ref.model))
    assert [r.epsilon for r in strategy.report.results] == [r.epsilon for r in ref.history]

    # The server's ledger records each round's abort rule (min_survivors, the pool its cohort was
    # drawn from, the planned dropout) as the in-process run does: dp.accountants.aborts charges it.
    def abort_rules(path: Any) -> list[tuple[int, int, float]]:
        return [(e.min_survivors, e.eligible, e.dropout) for e in verify_ledger(path).events]

    assert abort_rules(cfg.ledger) == abort_rules(tmp_path / "ref.jsonl")
    assert [m for m, _, _ in abort_rules(cfg.ledger)] == [4] * rounds


def test_too_many_consecutive_aborts_stop_the_flower_server_with_the_last_reason(tmp_path: Path) -> None:
    from test_flower_task import UserTask, _configs, _run, write_shards
    from test_flower_task import _cfg as task_cfg

    from fl_core.errors import TooManyAbortsError

    root = tmp_path / "shards"
    write_shards(root, 3)
    configs = _configs(root, 3)
    # Every node refuses (its own limit is below one round): no attempt can release.
    for c in configs.values():
        c["max-epsilon"] = 1e-3
    cfg = task_cfg(tmp_path, clients=3, per_round=3, rounds=1, min_survivors=2, max_consecutive_aborts=2)
    with pytest.raises(TooManyAbortsError, match="2 consecutive attempts of round 1 aborted") as info:
        _run(UserTask().as_task(), cfg, configs)
    assert info.value.aborts == 2


def test_a_malformed_attempt_or_a_retry_continuing_a_session_run_ahead_is_refused() -> None:
    from fl_core.transport.flower.client import ClientStateError
    from fl_core.transport.flower.codec import FlowerCodecError, StagePacket
    from fl_core.transport.flower.mod import answer
    from secagg import Message

    cfg = _cfg(schedule="sync", dp="distributed", noise_multiplier=1.0, clip=1.0, min_survivors=3)
    fed = _server_fed(cfg)
    ctx = _Context(1)
    for bad in (-1, "1", True, 1.0):
        with pytest.raises(FlowerCodecError, match="'attempt' must be an integer >= 0"):
            answer(_opening(ctx, cfg, fed, 1, bad), ctx)
    # Stages run ahead belong to a round's first attempt: a retry that claims to continue them is refused.
    opening = _opening(ctx, cfg, fed, 2, 1)
    ahead = StagePacket(2, opening.stage, (Message(0, 1, 2, "share-keys", b"\x00"),), opening.fields)
    with pytest.raises(ClientStateError, match="only a round's first attempt runs ahead"):
        answer(_wire(ahead), ctx)
