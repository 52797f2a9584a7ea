"""A retried round and the in-process clients' own records (fl_core.client_guard, dp.client_record).

A round's attempt that aborts after the clients sent their masked inputs released nothing, but
each of those clients cannot know that: it charged the round when its input left it. The round
is retried with the same round id; a client drawn again sends a second input derived from its
data, a second release, so it charges again (never once per round id), refuses only when that
second charge would pass its own limit, and never crashes on the repeated round id.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_per_adversary import Trainer, _federation

from dp.client_record import ClientRecord
from fl_core.config import RunConfig
from fl_core.errors import RoundFailedError
from fl_core.sampling import Sampler


def _eps_after(guard, n: int) -> float:
    rec = ClientRecord.create("probe", delta=guard.delta)
    for _ in range(n):
        rec.charge(guard.event(1), max_epsilon=math.inf)
    return rec.epsilon_vs_server()


def test_a_client_in_an_aborted_attempt_charges_again_in_the_retry_and_refuses_only_past_its_limit(
    tmp_path: Path,
) -> None:
    cfg = RunConfig(dp="distributed", clients=8, per_round=8, rounds=2, noise_multiplier=1.0, clip=1.0,
                    client_max_epsilon=math.inf, min_survivors=5, seed=2, secure_sum="masking")
    trainer = Trainer()
    fed, _ = _federation(tmp_path, cfg, Sampler.full(8), trainer, admit=None, secure_sum="masking")
    guard = fed.client_guard
    # Room for two charges of this round, not three.
    guard.max_epsilon = (_eps_after(guard, 2) + _eps_after(guard, 3)) / 2
    for c in (1, 2):  # clients 1 and 2 already spent one round elsewhere (their own records say so)
        guard.charge(c, 100)
    # Attempt 0: every client sends its masked input, then all but one vanish before unmasking.
    stage = int(fed.secure_sum.input_stage)
    fed.dropouts = lambda members, r: {c: stage + 1 for c in members[1:]} if fed.attempts.get(r, 0) == 0 else {}
    with pytest.raises(RoundFailedError, match="unmasking"):
        fed.run_round()
    assert fed.round == 0 and fed.attempts == {1: 1}
    assert {c: [ch.round for ch in r.charges] for c, r in guard.records.items()} == {
        **{c: [100, 1] for c in (1, 2)},
        **{c: [1] for c in range(3, 9)},
    }
    # The retry: same round id, attempt 1. Clients 3..8 charge round 1 a second time and take part;
    # clients 1 and 2 would need a third charge: they refuse before training and are dropouts.
    res = fed.run_round()
    assert (res.round, res.attempt) == (1, 1) and res.refused == (1, 2)
    assert res.survivors == (3, 4, 5, 6, 7, 8)
    assert trainer.calls[1] == trainer.calls[2] == 1 and trainer.calls[3] == 2
    for c in range(3, 9):
        rec = guard.records[c]
        assert [ch.round for ch in rec.charges] == [1, 1]
        assert rec.epsilon_vs_server() == pytest.approx(_eps_after(guard, 2), rel=1e-12)
    assert [ch.round for ch in guard.records[1].charges] == [100, 1]
    # The server's books hold the one committed round; each client's own, both of its inputs.
    assert len(fed.events) == 1 and guard.records[3].epsilon_vs_server() > guard.records[3].charges[0].epsilon
