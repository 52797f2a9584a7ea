"""How a node (re)builds its secure-sum session: the backend from the run configuration, and the session's randomness.

Flower runs each message in a fresh process, so a node rebuilds its sans-I/O session
for every stage (and for stages run ahead, :mod:`fl_core.transport.flower.ahead`) from
what it kept: the run configuration, the parameters it checked, and its session seed.
This module imports no other transport module above :mod:`fl_core.transport.flower.policy`.

Security:
    Without a run seed, the session's randomness is 32 fresh bytes from ``os.urandom``
    per round, expanded by :class:`dp.randomness.SeededRandomSource` (SHAKE-256); it
    never leaves the node. A run seed makes the node's keys as secret as that seed, so a
    node uses it only when its own operator opted in
    (:func:`fl_core.transport.flower.policy.check_node_policy`).
"""

from __future__ import annotations

from typing import Any

from fl_core.config import RunConfig
from fl_core.errors import FLError
from secagg import RingSpec

__all__ = ["AheadError", "run_rng", "secure_sum_for", "session_rng"]


class AheadError(FLError):
    """A request to run stages ahead, or a session kept from it, cannot be used."""


def run_rng(cfg: RunConfig) -> Any:
    """The run's random source (OS CSPRNG, or the run seed's).

    fl_core.runner.make_rng without importing the runner (and torch) in a stage process.
    """
    from dp.randomness import SeededRandomSource, SystemRandomSource

    return SystemRandomSource() if cfg.seed is None else SeededRandomSource(cfg.seed)


def session_rng(cfg: RunConfig, client: int, round_id: int, seed: bytes, seeded: bool) -> Any:
    """The random source of ``client``'s session in ``round_id``: from its kept seed, or the run seed's stream."""
    from dp.randomness import SeededRandomSource

    if seeded:
        # Same stream as Federation.secagg_rng in the in-process simulation.
        return run_rng(cfg).spawn(f"secagg/{client}/round/{round_id}")
    return SeededRandomSource(seed)


def secure_sum_for(cfg: RunConfig, ring_bits: int, dim: int, max_clients: int, min_survivors: int) -> Any:
    """The node's masking (or plain) backend with the given parameters, as its Federation builds it.

    Raises:
        AheadError: the backend is Paillier, whose only client stage is the opening message.
    """
    # Rebuilt exactly as Federation builds it (same request, same setup randomness).
    from fl_core.backends import BackendRequest, build_secure_sum

    if cfg.secure_sum == "paillier":
        # Its key arrives with the opening message, and it has no stage before or after it:
        # never generate a key here (the in-process builder would, from setup randomness).
        raise AheadError(
            "the paillier backend runs only in a round's opening message (which carries the key): "
            "no stage of it runs ahead or later on a node"
        )
    return build_secure_sum(
        cfg.secure_sum,
        BackendRequest(
            ring=RingSpec(ring_bits),
            dim=dim,
            max_clients=max_clients,
            rng=run_rng(cfg).spawn("secure-sum-setup"),
            options={"min_survivors": min_survivors, "graph": cfg.graph},
        ),
    )
