"""The DP guard of the masking protocol: no unmasking of a sum with fewer inputs than required."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dp.randomness import SeededRandomSource
from secagg import ConfigurationError, Message, RemoteProtocolError, RingSpec, TooFewSurvivorsError, run_round
from secagg.masking import MaskingSecureSum, generate_identities, wire

RING = RingSpec(32)


def _inputs(n, dim=4):
    return {c: np.full(dim, c, dtype=np.uint32) for c in range(1, n + 1)}


def _spec(min_survivors, with_identities=False):
    kw = {}
    if with_identities:
        pub, sec = generate_identities(range(1, 11), SeededRandomSource("identities"))
        kw = {"identities": pub, "signing_keys": sec}
    return MaskingSecureSum(RING, 4, graph="complete", min_survivors=min_survivors, **kw)


VARIANTS = pytest.mark.parametrize("with_identities", [False, True], ids=["honest-but-curious", "active"])


@VARIANTS
def test_server_aborts_when_fewer_masked_inputs_than_min_survivors(with_identities):
    """The guard runs when the masked-input stage closes: in both variants no survivor list is
    sent, no unmasking request, and no client reveals a share."""
    ss = _spec(9, with_identities)
    drops = {1: 2, 2: 2}  # two clients vanish before sending their masked input
    seen = []

    def record(m: Message) -> list[Message]:
        seen.append(m.stage)
        return [m]

    out = run_round(ss, _inputs(10), round_id=1, rng_for=SeededRandomSource, stages_completed=drops, tamper=record)
    assert isinstance(out.error, TooFewSurvivorsError) and out.total is None
    assert out.error.required == 9 and out.error.survivors == 8
    assert "masked-input" in seen and "consistency-check" not in seen and "unmasking" not in seen


@VARIANTS
def test_enough_masked_inputs_give_the_exact_sum(with_identities):
    ss = _spec(8, with_identities)
    out = run_round(ss, _inputs(10), round_id=1, rng_for=SeededRandomSource, stages_completed={1: 2, 2: 2})
    assert out.error is None
    assert out.total.tolist() == [sum(range(3, 11))] * 4
    assert ss.input_stage == 2 and ss.stages[ss.input_stage] == "masked-input"
    assert out.stages == (5 if with_identities else 4)


@VARIANTS
def test_honest_client_refuses_a_short_survivor_list(with_identities):
    """A server that pretends fewer clients survived (to unmask a sum with too little noise) is
    refused by every honest client where the survivor list first arrives: the consistency check
    with identity keys, the unmasking request without."""
    ss = _spec(9, with_identities)
    stage = "consistency-check" if with_identities else "unmasking"
    shortened = []

    def tamper(m: Message) -> list[Message]:
        if m.stage == stage and m.sender == 0:
            if with_identities:
                payload = wire.encode_id_list(wire.decode_id_list(m.payload)[:-2])
            else:
                req = wire.decode_unmask_request(m.payload)
                # Consistent with the shortened list: the two "dropped" are asked for key shares.
                short = req.survivors[:-2]
                gone = tuple(u for u in req.b_ids if u not in short)
                req = dataclasses.replace(
                    req,
                    survivors=short,
                    b_ids=tuple(u for u in req.b_ids if u in short),
                    sk_ids=tuple(sorted(req.sk_ids + gone)),
                )
                payload = wire.encode_unmask_request(req)
            shortened.append(m.recipient)
            return [Message(m.sender, m.recipient, m.round_id, m.stage, payload)]
        return [m]

    with pytest.raises(RemoteProtocolError, match="8 survivors, below the 9 the round requires"):
        run_round(ss, _inputs(10), round_id=1, rng_for=SeededRandomSource, tamper=tamper)
    assert shortened == [1]  # the first honest client refused; nothing was revealed before it


def test_min_survivors_must_be_positive():
    with pytest.raises(ConfigurationError, match="min_survivors"):
        MaskingSecureSum(RING, 4, min_survivors=0)
