"""The DP guard of the masking protocol: no unmasking of a sum with fewer inputs than required."""

from __future__ import annotations

import numpy as np
import pytest

from dp.randomness import SeededRandomSource
from secagg import ConfigurationError, Message, RemoteProtocolError, RingSpec, TooFewSurvivorsError, run_round
from secagg.masking import MaskingSecureSum

RING = RingSpec(32)


def _inputs(n, dim=4):
    return {c: np.full(dim, c, dtype=np.uint32) for c in range(1, n + 1)}


def test_server_aborts_when_fewer_masked_inputs_than_min_survivors():
    ss = MaskingSecureSum(RING, 4, graph="complete", min_survivors=9)
    drops = {1: 2, 2: 2}  # two clients vanish before sending their masked input
    out = run_round(ss, _inputs(10), round_id=1, rng_for=SeededRandomSource, stages_completed=drops)
    assert isinstance(out.error, TooFewSurvivorsError) and out.total is None
    assert out.error.required == 9 and out.error.survivors == 8


def test_enough_masked_inputs_give_the_exact_sum():
    ss = MaskingSecureSum(RING, 4, graph="complete", min_survivors=8)
    out = run_round(ss, _inputs(10), round_id=1, rng_for=SeededRandomSource, stages_completed={1: 2, 2: 2})
    assert out.error is None
    assert out.total.tolist() == [sum(range(3, 11))] * 4
    assert ss.input_stage == 2


def test_honest_client_refuses_a_short_survivor_list():
    """A server that pretends fewer clients survived (to unmask a sum with too little noise)
    is refused by every honest client at the consistency check."""
    ss = MaskingSecureSum(RING, 4, graph="complete", min_survivors=9)
    short = {}

    def tamper(m: Message) -> list[Message]:
        if m.stage == "consistency-check" and m.sender == 0:
            from secagg.masking import wire

            ids = wire.decode_id_list(m.payload)
            short["ids"] = ids
            return [Message(m.sender, m.recipient, m.round_id, m.stage, wire.encode_id_list(ids[:-2]))]
        return [m]

    with pytest.raises(RemoteProtocolError, match="the 9 the round requires"):
        run_round(ss, _inputs(10), round_id=1, rng_for=SeededRandomSource, tamper=tamper)


def test_min_survivors_must_be_positive():
    with pytest.raises(ConfigurationError, match="min_survivors"):
        MaskingSecureSum(RING, 4, min_survivors=0)
