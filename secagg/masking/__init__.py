"""Pairwise-mask secure aggregation: SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

Public API: :class:`MaskingSecureSum` (the backend), its parameter choice and
graph, the transition tables, and :func:`generate_identities` for Ed25519
identity keys.
"""

from __future__ import annotations

from secagg.masking.backend import MaskingSecureSum, generate_identities
from secagg.masking.client import MaskingClient
from secagg.masking.graph import graph_seed, neighbour_graph
from secagg.masking.params import GraphKind, MaskingParameters, choose_parameters
from secagg.masking.server import MaskingServer
from secagg.masking.states import (
    CLIENT_TRANSITIONS,
    SERVER_ACCEPTS,
    SERVER_NEXT,
    ClientState,
    ServerState,
    Stage,
)

__all__ = [
    "CLIENT_TRANSITIONS",
    "SERVER_ACCEPTS",
    "SERVER_NEXT",
    "ClientState",
    "GraphKind",
    "MaskingClient",
    "MaskingParameters",
    "MaskingSecureSum",
    "MaskingServer",
    "ServerState",
    "Stage",
    "choose_parameters",
    "generate_identities",
    "graph_seed",
    "neighbour_graph",
]
