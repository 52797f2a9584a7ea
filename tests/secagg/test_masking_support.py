"""Shared helpers for the masking tests: inputs, a slow sum oracle and a survival oracle."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from dp.randomness import SeededRandomSource
from secagg.masking import MaskingSecureSum, Stage, generate_identities
from secagg.protocol import SERVER, Message, RandomSource
from secagg.ring import RingSpec
from secagg.simulation import run_round


def make_inputs(ring: RingSpec, dim: int, ids: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    g = SeededRandomSource(f"inputs-{seed}")
    out = {}
    for c in ids:
        words = g.uint64(dim)
        out[c] = (words & np.uint64(ring.mask)).astype(ring.dtype)
    return out


def rngs(seed: int) -> Callable[[int], RandomSource]:
    root = SeededRandomSource(f"clients-{seed}")
    return lambda c: root.spawn(f"client-{c}")


def record_honest_round(
    spec: MaskingSecureSum, ids: Sequence[int], round_id: int, *, watch: int = 1
) -> tuple[dict[Stage, Message], dict[Stage, dict[int, Message]], object]:
    """One honest round driven by hand: (server -> ``watch`` messages by stage, client -> server messages
    by stage and sender, the server session)."""
    inputs = make_inputs(spec.ring, spec.dim, ids, 0)
    server = spec.server(ids, round_id)
    clients = {c: spec.client(c, round_id, rngs(0)(c)) for c in ids}
    down: dict[Stage, Message] = {}
    up: dict[Stage, dict[int, Message]] = {s: {} for s in Stage}
    pending = [m for c in ids for m in clients[c].start(inputs[c])]
    while pending:
        nxt = []
        for m in pending:
            if m.recipient == SERVER:
                up[Stage(m.stage)][m.sender] = m
                nxt += server.receive(m)
            else:
                if m.recipient == watch:
                    down[Stage(m.stage)] = m
                nxt += clients[m.recipient].receive(m)
        pending = nxt
    return down, up, server


def slow_sum(ring: RingSpec, inputs: Mapping[int, np.ndarray], survivors: Sequence[int]) -> np.ndarray:
    """Oracle: Python-int sum mod 2^bits, element by element."""
    dim = len(next(iter(inputs.values())))
    vals = [sum(int(inputs[c][i]) for c in survivors) % ring.modulus for i in range(dim)]
    return np.array(vals, dtype=ring.dtype)


def survival_oracle(
    spec: MaskingSecureSum, cohort: Sequence[int], round_id: int, drops: Mapping[int, int]
) -> tuple[bool, frozenset[int]]:
    """Independent model of who survives and whether unmasking is possible.

    A client with ``drops[c] = s`` takes part in stages 0..s-1. Without identity
    keys a round has four stages (0: advertise, 1: share keys, 2: masked input,
    3: unmasking); with identity keys five (3: consistency check, 4: unmasking).
    Returns (round succeeds, survivor set U3).
    """
    params = spec.parameters(len(cohort))
    t = params.threshold
    graph = spec.neighbours(cohort, round_id)
    unmasking = 3 if spec.identities is None else 4

    def reaches(c: int, stage: int) -> bool:
        return drops.get(c, 99) > stage

    def prune(alive: set[int]) -> set[int]:
        while True:
            weak = {u for u in alive if len(graph[u] & alive) < t}
            if not weak:
                return alive
            alive = alive - {min(weak)}

    u1 = prune({c for c in cohort if reaches(c, 0)})
    if len(u1) < t:
        return False, frozenset()
    u2 = prune({c for c in u1 if reaches(c, 1)})
    if len(u2) < t:
        return False, frozenset()
    u3 = {c for c in u2 if reaches(c, 2)}
    u4 = {c for c in u3 if reaches(c, 3)} if unmasking == 4 else u3  # signed the survivor list
    u5 = {c for c in u4 if reaches(c, unmasking)}
    if min(len(u3), len(u4), len(u5)) < t or len(u3) < spec.min_survivors:
        return False, frozenset()
    for u in u3:
        if len(graph[u] & u2 & u5) < t:
            return False, frozenset()
    for u in u2 - u3:
        if graph[u] & u3 and len(graph[u] & u2 & u5) < t:
            return False, frozenset()
    return True, frozenset(u3)


def identity_kw(ids: Sequence[int], with_identities: bool) -> dict[str, object]:
    """MaskingSecureSum keyword arguments that switch on the active variant (identity keys) or not."""
    if not with_identities:
        return {}
    pub, sec = generate_identities(ids, SeededRandomSource("identities"))
    return {"identities": pub, "signing_keys": sec}


class Recorder:
    """A tamper hook that records every message and optionally rewrites some."""

    def __init__(self, rewrite: Callable[[Message], list[Message] | None] | None = None) -> None:
        self.messages: list[Message] = []
        self._rewrite = rewrite

    def __call__(self, msg: Message) -> list[Message]:
        self.messages.append(msg)
        if self._rewrite is not None:
            out = self._rewrite(msg)
            if out is not None:
                return out
        return [msg]


def test_survival_oracle_agrees_on_trivial_cases() -> None:
    spec = MaskingSecureSum(RingSpec(16), 2, graph="complete")
    assert survival_oracle(spec, [1, 2, 3], 0, {}) == (True, frozenset({1, 2, 3}))
    assert survival_oracle(spec, [1, 2, 3], 0, {1: 0, 2: 0}) == (False, frozenset())


def test_survival_oracle_counts_the_consistency_stage_only_with_identity_keys() -> None:
    """Complete graph on 6 (t = 3). Clients 1, 2 leave after their masked input; client 3 after
    stage index 3. Without identity keys index 3 is the unmasking stage, so 3 answers it and four
    holders unmask; with identity keys it is the consistency check, so 3 misses unmasking and each
    survivor keeps only two other holders: abort. The oracle and the real round agree."""
    ids = [1, 2, 3, 4, 5, 6]
    drops = {1: 3, 2: 3, 3: 4}
    ring = RingSpec(16)
    inputs = make_inputs(ring, 2, ids, 0)
    for with_identities, expected in [(False, (True, frozenset(ids))), (True, (False, frozenset()))]:
        spec = MaskingSecureSum(ring, 2, graph="complete", **identity_kw(ids, with_identities))  # type: ignore[arg-type]
        assert survival_oracle(spec, ids, 0, drops) == expected
        out = run_round(spec, inputs, round_id=0, rng_for=rngs(0), stages_completed=drops)
        assert (out.error is None, out.survivors) == expected
