"""Pairwise-mask secure aggregation: SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

Public API: :class:`MaskingSecureSum` (the backend), its parameter choice and
graph, the two transition tables (:data:`HONEST_BUT_CURIOUS`, four stages, and
:data:`ACTIVE`, five stages, chosen by whether identity keys are configured),
:func:`generate_identities` for Ed25519 identity keys, and the terms binding
(:class:`TermsBinding`, :func:`digest_terms`) that makes masks cancel only between
clients that used the same round terms.
"""

from __future__ import annotations

from secagg.masking.backend import MaskingSecureSum, generate_identities
from secagg.masking.binding import TERMS_BYTES, UNBOUND, TermsBinding, digest_terms
from secagg.masking.client import MaskingClient
from secagg.masking.graph import graph_seed, neighbour_graph
from secagg.masking.params import GraphKind, MaskingParameters, choose_parameters
from secagg.masking.server import MaskingServer
from secagg.masking.states import (
    ACTIVE,
    HONEST_BUT_CURIOUS,
    ClientState,
    ServerState,
    Stage,
    TransitionTable,
    Variant,
    transitions_for,
)

__all__ = [
    "TERMS_BYTES",
    "UNBOUND",
    "ACTIVE",
    "HONEST_BUT_CURIOUS",
    "ClientState",
    "GraphKind",
    "MaskingClient",
    "MaskingParameters",
    "MaskingSecureSum",
    "MaskingServer",
    "ServerState",
    "Stage",
    "TermsBinding",
    "TransitionTable",
    "Variant",
    "choose_parameters",
    "digest_terms",
    "generate_identities",
    "graph_seed",
    "neighbour_graph",
    "transitions_for",
]
