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
from collections.abc import Mapping, Sequence

from secagg.masking.params import GraphKind, MaskingParameters
from secagg.primitives import kdf, prg
from secagg.ring import RingSpec

__all__ = ["graph_seed", "neighbour_graph"]

_RING64 = RingSpec(64)


def graph_seed(public_seed: bytes, round_id: int, cohort: Sequence[int]) -> bytes:
    """HKDF(public_seed, LABEL_GRAPH, round_id || n || sorted cohort): a 16-byte PRG seed."""
    ids = sorted(cohort)
    context = struct.pack(f"<QI{len(ids)}I", round_id, len(ids), *ids)
    return kdf.derive(public_seed, kdf.LABEL_GRAPH, context, length=prg.SEED_BYTES)


def neighbour_graph(
    params: MaskingParameters, cohort: Sequence[int], *, round_id: int, public_seed: bytes = b""
) -> Mapping[int, frozenset[int]]:
    """Client -> its neighbours (never itself); symmetric; k-regular."""
    ids = sorted(cohort)
    if params.graph is GraphKind.COMPLETE:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    n, half = len(ids), params.degree // 2
    words = prg.expand(graph_seed(public_seed, round_id, ids), _RING64, n).tolist()
    order = [u for _, u in sorted(zip(words, ids, strict=True))]
    return {order[i]: frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d != 0) for i in range(n)}
