"""The ``masking`` entry of the fl_core backend registry: options, defaults, errors, one round."""

from __future__ import annotations

import numpy as np
import pytest
from test_masking_support import make_inputs, rngs

from dp.randomness import SeededRandomSource
from fl_core.backends import BackendRequest, available_backends, build_secure_sum
from fl_core.errors import ConfigError
from secagg.masking import GraphKind, MaskingSecureSum
from secagg.ring import RingSpec
from secagg.simulation import run_round

RING = RingSpec(32)


def _req(max_clients: int = 50, **options: object) -> BackendRequest:
    return BackendRequest(RING, 6, max_clients, SeededRandomSource(0), options)


def test_registered() -> None:
    assert "masking" in available_backends()


def test_default_is_sparse_with_fallback() -> None:
    ss = build_secure_sum("masking", _req())
    assert isinstance(ss, MaskingSecureSum) and ss.graph_kind is GraphKind.SPARSE
    assert ss.parameters(10).graph is GraphKind.COMPLETE  # small cohort: sparse would not save work
    assert ss.parameters(500).graph is GraphKind.SPARSE


def test_options_pass_through_and_round_works_with_identities() -> None:
    ss = build_secure_sum("masking", _req(8, graph="complete", threshold="3", identity_keys=True, public_seed="ab"))
    assert isinstance(ss, MaskingSecureSum)
    assert ss.parameters(8).threshold == 3 and ss.identities is not None and ss.public_seed == b"\xab"
    ids = list(range(1, 9))
    inputs = make_inputs(RING, 6, ids, 0)
    out = run_round(ss, inputs, round_id=0, rng_for=rngs(0), stages_completed={4: 2})
    assert np.array_equal(out.total, RING.sum([inputs[c] for c in ids if c != 4], 6))


@pytest.mark.parametrize(
    "options,match",
    [
        ({"graph": "star"}, "graph"),
        ({"degree": "x"}, "degree"),
        ({"public_seed": "zz"}, "public_seed"),
        ({"graph": "sparse", "degree": 3}, "masking backend"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_secure_sum("masking", _req(**options))
