"""The neighbour graph built lazily equals the whole graph built the obvious way."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.masking import GraphKind, choose_parameters, graph_seed
from secagg.masking.graph import NeighbourGraph, neighbour_graph
from secagg.primitives import prg
from secagg.ring import RingSpec


def slow_graph(
    kind: GraphKind, degree: int, cohort: list[int], round_id: int, public_seed: bytes
) -> dict[int, frozenset[int]]:
    """Obviously correct reference: every client's set built up front from the cyclic order."""
    ids = sorted(cohort)
    if kind is GraphKind.COMPLETE:
        return {u: frozenset(v for v in ids if v != u) for u in ids}
    words = prg.expand(graph_seed(public_seed, round_id, ids), RingSpec(64), len(ids)).tolist()
    order = [u for _, u in sorted(zip(words, ids, strict=True))]
    n, half = len(ids), degree // 2
    return {order[i]: frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d != 0) for i in range(n)}


@settings(max_examples=60, deadline=None)
@given(
    cohort=st.sets(st.integers(1, 500), min_size=3, max_size=80),
    round_id=st.integers(0, 2**40),
    seed=st.binary(max_size=8),
    half=st.one_of(st.none(), st.integers(1, 30)),
)
def test_lazy_graph_equals_the_whole_graph(cohort: set[int], round_id: int, seed: bytes, half: int | None) -> None:
    """Sparse graphs of every degree (``half`` None: the complete graph)."""
    ids = sorted(cohort)
    kind = GraphKind.COMPLETE if half is None else GraphKind.SPARSE
    params = choose_parameters(len(ids), graph=kind, degree=None if half is None else 2 * half)
    ref = slow_graph(params.graph, params.degree, ids, round_id, seed)
    lazy = neighbour_graph(params, ids, round_id=round_id, public_seed=seed)
    assert isinstance(lazy, NeighbourGraph)
    # One client asking for its own set first (what a client does) sees the reference's set.
    me = ids[len(ids) // 2]
    assert lazy[me] == ref[me]
    assert lazy == ref and ref == lazy
    assert list(lazy) == ids and len(lazy) == len(ids)
    assert all(u in lazy for u in ids) and 0 not in lazy and max(ids) + 1 not in lazy


def test_lazy_graph_refuses_a_client_outside_the_cohort() -> None:
    params = choose_parameters(20)
    g = neighbour_graph(params, list(range(1, 21)), round_id=3)
    with pytest.raises(KeyError):
        g[21]
    assert g.get(21) is None
