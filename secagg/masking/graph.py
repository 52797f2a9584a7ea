"""The neighbour graph of a round, derived from public data only (round seed, round id, cohort).

Security:
    The server does not choose the graph: every client recomputes it from the
    public round seed, the round id and the cohort, and refuses a neighbour list
    that differs (Bell et al., CCS 2020, section 4 assume a graph the adversary
    cannot bias). The cyclic order is a pseudorandom permutation: clients sorted
    by a 64-bit AES-CTR word each (ties broken by id), keyed by
    HKDF(public seed, LABEL_GRAPH, round id || cohort).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence

from secagg.masking.params import GraphKind, MaskingParameters
from secagg.primitives import kdf, prg
from secagg.ring import RingSpec

__all__ = ["NeighbourGraph", "graph_seed", "neighbour_graph"]

_RING64 = RingSpec(64)


def graph_seed(public_seed: bytes, round_id: int, cohort: Sequence[int]) -> bytes:
    """HKDF(public_seed, LABEL_GRAPH, round_id || n || sorted cohort): a 16-byte PRG seed."""
    ids = sorted(cohort)
    context = struct.pack(f"<QI{len(ids)}I", round_id, len(ids), *ids)
    return kdf.derive(public_seed, kdf.LABEL_GRAPH, context, length=prg.SEED_BYTES)


class NeighbourGraph(Mapping[int, frozenset[int]]):
    """Client -> its neighbours: a read-only mapping that builds each neighbour set when first
    asked for it, so a client that needs only its own set pays O(k), not O(n k).

    With ``half`` None the graph is complete; otherwise each client's neighbours are the
    ``half`` clients before and after it in the cyclic ``order``. Equal (as a mapping) to
    the fully built dict; iteration follows the sorted client ids.
    """

    __slots__ = ("_ids", "_order", "_pos", "_half", "_everyone", "_sets")

    def __init__(self, ids: Sequence[int], order: Sequence[int], half: int | None) -> None:
        self._ids = tuple(ids)
        self._order = tuple(order)
        self._pos = {u: i for i, u in enumerate(self._order)}
        self._half = half
        self._everyone = frozenset(self._ids)
        self._sets: dict[int, frozenset[int]] = {}

    def __getitem__(self, u: int) -> frozenset[int]:
        got = self._sets.get(u)
        if got is None:
            i = self._pos[u]  # KeyError for a client outside the cohort, as a dict would raise
            if self._half is None:
                got = self._everyone - {u}
            else:
                n, order, half = len(self._order), self._order, self._half
                got = frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d != 0)
            self._sets[u] = got
        return got

    def __contains__(self, u: object) -> bool:
        return u in self._pos

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def neighbour_graph(
    params: MaskingParameters, cohort: Sequence[int], *, round_id: int, public_seed: bytes = b""
) -> Mapping[int, frozenset[int]]:
    """Client -> its neighbours (never itself); symmetric; k-regular (see :class:`NeighbourGraph`)."""
    ids = sorted(cohort)
    if params.graph is GraphKind.COMPLETE:
        return NeighbourGraph(ids, ids, None)
    words = prg.expand(graph_seed(public_seed, round_id, ids), _RING64, len(ids)).tolist()
    order = [u for _, u in sorted(zip(words, ids, strict=True))]
    return NeighbourGraph(ids, order, params.degree // 2)
