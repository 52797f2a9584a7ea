"""The round-terms digests every masking client binds its session to (fl_core.binding).

Properties: the encoding is canonical and versioned; identical terms give identical digests
and masks that cancel, any differing term gives other digests and masks that do not; the
in-process round, the asynchronous buffer and a Flower node (synchronous and asynchronous)
compute the same digests for the same terms, each from its own federation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_async_support import make_fed

from dp.calibration import DPConfig
from dp.events import DPMode, Mechanism
from dp.randomness import SeededRandomSource
from fl_core.binding import (
    TERMS_VERSION,
    bind,
    round_digest,
    setup_binding,
    setup_digest,
    setup_encoding,
    terms_binding,
)
from fl_core.config import RunConfig
from fl_core.privacy import DPPolicy
from fl_core.sampling import Sampler
from fl_core.transport import InProcessTransport
from secagg import PlainSum, RemoteProtocolError, RingSpec
from secagg.masking import MaskingSecureSum, Stage, TermsBinding, wire
from secagg.protocol import SERVER, Message
from secagg.rotation import HadamardRotation

# -- the terms, perturbed one at a time ----------------------------------------------------------


@lru_cache(maxsize=1)
def _base() -> Any:
    config = DPConfig(mode=DPMode.DISTRIBUTED, noise_multiplier=1.0, clip_norm=1.0, expected_cohort=4)
    fed = make_fed(
        n_clients=8,
        buffer=4,
        secure_sum="masking",
        privacy=DPPolicy(config, sampler=Sampler.fixed_size(8, 4), dim=8, delta=1e-5),
        min_survivors=None,
        bits=None,
    )
    return fed


def _with_config(**change: Any) -> Any:
    fed = _base()
    config = dataclasses.replace(fed.privacy.config, **change)
    return SimpleNamespace(privacy=DPPolicy(config, sampler=fed.sampler, dim=8, delta=1e-5), plan=fed.plan)


def _with_plan(**change: Any) -> Any:
    fed = _base()
    return SimpleNamespace(privacy=fed.privacy, plan=dataclasses.replace(fed.plan, **change))


VARIANTS: dict[str, Any] = {}


def _variant(name: str) -> tuple[Any, float]:
    """(a federation-like object, the round's clip) for one perturbation of the base terms."""
    if name not in VARIANTS:
        fed = _base()
        assert fed.plan.rotation is None  # 8 coordinates: rotating would not lower the bound
        VARIANTS[name] = {
            "base": lambda: (fed, 1.0),
            "round clip": lambda: (fed, 2.0),
            "round clip, one ulp": lambda: (fed, math.nextafter(1.0, 2.0)),
            "noise multiplier": lambda: (_with_config(noise_multiplier=1.5), 1.0),
            "mechanism": lambda: (_with_config(mechanism=Mechanism.DISCRETE_GAUSSIAN), 1.0),
            "min survivors": lambda: (_with_config(min_survivors=3), 1.0),
            "colluders": lambda: (_with_config(colluders=1), 1.0),
            "expected cohort": lambda: (_with_config(expected_cohort=5), 1.0),
            "configured clip": lambda: (_with_config(clip_norm=2.0), 1.0),
            "rounding beta": lambda: (_with_config(rounding_beta=2.0**-10), 1.0),
            "ring bits": lambda: (_with_plan(ring=RingSpec(fed.plan.ring.bits * 2)), 1.0),
            "scale": lambda: (_with_plan(scale=fed.plan.scale * 2), 1.0),
            "dimension": lambda: (_with_plan(dim=fed.plan.dim + 1), 1.0),
            "cohort bound": lambda: (_with_plan(max_clients=fed.plan.max_clients + 1), 1.0),
            "rotation": lambda: (_with_plan(rotation=HadamardRotation(fed.dim)), 1.0),
            "rotation seed": lambda: (_with_plan(rotation=HadamardRotation(fed.dim, public_seed=b"beacon")), 1.0),
        }[name]()
    return VARIANTS[name]  # type: ignore[no-any-return]


NAMES = [
    "base",
    "round clip",
    "round clip, one ulp",
    "noise multiplier",
    "mechanism",
    "min survivors",
    "colluders",
    "expected cohort",
    "configured clip",
    "rounding beta",
    "ring bits",
    "scale",
    "dimension",
    "cohort bound",
    "rotation",
    "rotation seed",
]


def _binding(name: str) -> TermsBinding:
    fed, clip = _variant(name)
    return terms_binding(fed, clip=clip)


def test_every_field_changes_a_digest_and_only_the_clip_leaves_the_setup_digest() -> None:
    bindings = {name: _binding(name) for name in NAMES}
    assert len({b.round for b in bindings.values()}) == len(NAMES)  # every perturbation: another round digest
    for name, b in bindings.items():
        same_setup = b.setup == bindings["base"].setup
        assert same_setup == name.startswith(("base", "round clip")), name
    assert bindings["base"] == _binding("base")  # deterministic


def test_the_encoding_is_canonical_versioned_json_with_exact_floats() -> None:
    fed, _ = _variant("base")
    enc = setup_encoding(fed)
    doc = json.loads(enc)
    assert doc["v"] == TERMS_VERSION == 1 and doc["kind"] == "setup"
    assert enc == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()  # one byte string per terms
    assert doc["dp"]["noise_multiplier"] == (1.0).hex() and doc["encoding"]["scale"] == float(fed.plan.scale).hex()
    assert doc["dp"]["resolved_mechanism"] == "skellam" and doc["dp"]["survivors_planned"] == 4
    assert round_digest(setup_digest(fed), 0.1) != round_digest(setup_digest(fed), math.nextafter(0.1, 1.0))


# -- identical terms: masks cancel; any differing term: they do not -------------------------------


def _run(bindings: dict[int, TermsBinding], *, align: bool) -> tuple[Any, dict[int, np.ndarray]]:
    """A masking round of 3 clients, each bound to its own binding; the server expects no digest.
    ``align``: the server rewrites every masked input's digest to one value to pass its own check."""
    ring, dim = RingSpec(32), 5
    ids = sorted(bindings)
    base = MaskingSecureSum(ring, dim, graph="complete")
    server = base.bound(TermsBinding(bytes(32), None)).server(ids, 3)
    root = SeededRandomSource("binding-property")
    inputs = {c: (root.spawn(f"x{c}").uint64(dim) & np.uint64(ring.mask)).astype(ring.dtype) for c in ids}
    clients = {c: base.bound(bindings[c]).client(c, 3, root.spawn(f"c{c}")) for c in ids}
    pending: list[Message] = [m for c in ids for m in clients[c].start(inputs[c])]
    while pending:
        nxt: list[Message] = []
        for m in pending:
            if m.recipient != SERVER:
                nxt += clients[m.recipient].receive(m)
                continue
            if align and m.stage == Stage.MASKED_INPUT.value:
                end = wire.MASKED_INPUT_HEADER_BYTES
                m = dataclasses.replace(m, payload=m.payload[: end - 32] + bytes(32) + m.payload[end:])
            nxt += server.receive(m)
        pending = nxt
    return server, inputs


@settings(max_examples=30, deadline=None)
@given(victim=st.sampled_from(NAMES), others=st.sampled_from(NAMES))
def test_masks_cancel_exactly_when_the_terms_are_identical(victim: str, others: str) -> None:
    """Client 1 is bound to the digests of one set of terms, clients 2 and 3 of another (setup digests
    made equal, as after key setup ahead, so only the masks can tell): identical terms give the exact
    sum; any differing field gives a sum an honest server refuses and an aligning server cannot use."""
    b1, b2 = _binding(victim), _binding(others)
    b1 = TermsBinding(b2.setup, b1.round)
    server, inputs = _run({1: b1, 2: b2, 3: b2}, align=False)
    total = RingSpec(32).sum(list(inputs.values()), 5)
    if victim == others:
        assert np.array_equal(server.result(), total)
    else:
        with pytest.raises(RemoteProtocolError, match="different round terms"):
            server.result()
        attacker, _ = _run({1: b1, 2: b2, 3: b2}, align=True)
        assert not np.array_equal(attacker.result(), total)


# -- every path computes the same digests for the same terms ----------------------------------------


class _Spy(InProcessTransport):
    def __init__(self) -> None:
        self.bindings: list[TermsBinding] = []

    def run(self, secure_sum: Any, inputs: Any, **kw: Any) -> Any:
        self.bindings.append(secure_sum.binding)
        return super().run(secure_sum, inputs, **kw)


TERMS = [
    dict(dp="distributed", noise_multiplier=1.0, clip=1.0),
    dict(dp="distributed", noise_multiplier=1.5, clip=0.5, min_survivors=3),
    dict(dp="distributed", noise_multiplier=1.0, clip=1.0, adaptive_clip=True),
    dict(dp="central", noise_multiplier=1.0, clip=1.0),
]


@pytest.mark.parametrize("terms", TERMS, ids=lambda t: ",".join(f"{k}={v}" for k, v in t.items()))
def test_in_process_async_and_node_paths_bind_the_same_digests(terms: dict[str, Any]) -> None:
    """The in-process round, an asynchronous buffer and a Flower node's checked terms (synchronous and
    asynchronous nodes both bind check_round_terms' digests) agree for the same run and clip."""
    from fl_core.asynchronous import AsyncOptions
    from fl_core.asynchronous.runner import build_async_federation
    from fl_core.runner import build_federation
    from fl_core.transport.flower.policy import NodeFloor, check_round_terms

    cfg = RunConfig(
        clients=6, per_round=3, rounds=1, secure_sum="masking", graph="complete", seed=3, model="logreg",
        local_epochs=1, client_max_epsilon=math.inf, **terms,
    )
    sync_spy, async_spy = _Spy(), _Spy()
    fed, _, _ = build_federation(cfg, open_ledger=False)
    fed.transport = sync_spy
    fed.fit(1)
    assert sync_spy.bindings[0].round is not None
    clip = fed.history[0].event.clip_norm if fed.history[0].event is not None else fed.privacy.clip_norm
    assert sync_spy.bindings[0] == terms_binding(fed, clip=clip)

    afed, _, _ = build_async_federation(cfg, AsyncOptions(buffer=3, concurrency=3), open_ledger=False)
    afed.fed.transport = async_spy
    afed.fit(1)
    assert async_spy.bindings[0] == sync_spy.bindings[0]

    node, _, _ = build_federation(cfg.replace(seed=None), role="node", client=1, open_ledger=False)
    checked = check_round_terms(node, NodeFloor(allow_seeded_run=True), clip=clip)
    assert checked.binding == sync_spy.bindings[0]


def test_adaptive_rounds_move_the_round_digest_and_keep_the_setup_digest() -> None:
    from fl_core.runner import build_federation

    cfg = RunConfig(
        clients=6, per_round=3, rounds=3, secure_sum="masking", graph="complete", seed=3, model="logreg",
        local_epochs=1, dp="distributed", noise_multiplier=1.0, clip=1.0, adaptive_clip=True, clip_lr=0.8,
        client_max_epsilon=math.inf,
    )
    spy = _Spy()
    fed, _, _ = build_federation(cfg, open_ledger=False)
    fed.transport = spy
    fed.fit(3)
    clips = [r.event.clip_norm for r in fed.history]
    assert len(set(clips)) == 3
    assert len({b.setup for b in spy.bindings}) == 1 and len({b.round for b in spy.bindings}) == 3
    assert [b.round for b in spy.bindings] == [round_digest(spy.bindings[0].setup, c) for c in clips]


def test_bind_binds_masking_and_leaves_backends_without_pairwise_keys_unchanged() -> None:
    ring = RingSpec(16)
    plain = PlainSum(ring, 4)
    b = TermsBinding(bytes(range(32)), bytes(range(32, 64)))
    assert bind(plain, b) is plain  # nothing to bind (Paillier neither: SECURITY.md states the residual)
    masking = MaskingSecureSum(ring, 4)
    assert bind(masking, b).binding == b and masking.binding != b
    assert setup_binding(b.setup) == TermsBinding(b.setup, None)
