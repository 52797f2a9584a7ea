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
    (:func:`fl_core.transport.flower.policy.check_node_policy`). A seeded stream is keyed
    by the round *attempt* (:func:`attempt_label`, as the in-process simulation keys it):
    a round retried after an abort draws fresh keys, masks and noise, and a node opens
    each (round, attempt) at most once and never an earlier one
    (:func:`check_fresh_opening`), so it never masks two different inputs alike (their
    masked inputs would differ by exactly the difference of the inputs).
"""

from __future__ import annotations

from typing import Any

from fl_core.config import RunConfig
from fl_core.errors import FLError
from secagg import RingSpec

__all__ = [
    "AheadError",
    "ReopenedRoundError",
    "attempt_label",
    "check_fresh_opening",
    "opening_attempt",
    "run_rng",
    "secure_sum_for",
    "session_rng",
]


class AheadError(FLError):
    """A request to run stages ahead, or a session kept from it, cannot be used."""


class ReopenedRoundError(FLError):
    """The server opened a round attempt this node already opened (or one before it): refused."""


def attempt_label(round_id: int, attempt: int) -> str:
    """The label that keys a round attempt's randomness: ``"R"``, then ``"R~A"`` after ``A`` aborts.

    The same labels as :func:`fl_core.federation.round_label` (without importing the round
    loop, and torch, in a stage process), so a seeded node draws what the in-process
    simulation's client draws in the same attempt.
    """
    return str(round_id) if attempt == 0 else f"{round_id}~{attempt}"


def opening_attempt(fields: Any) -> int:
    """The attempt number an opening message names (0 when it names none).

    Raises:
        fl_core.transport.flower.codec.FlowerCodecError: not an integer >= 0.
    """
    from fl_core.transport.flower.codec import ATTEMPT_FIELD, FlowerCodecError

    a = fields.get(ATTEMPT_FIELD, 0)
    if isinstance(a, bool) or not isinstance(a, int) or a < 0:
        raise FlowerCodecError(f"the opening message's {ATTEMPT_FIELD!r} must be an integer >= 0, got {a!r}")
    return a


def check_fresh_opening(opened: tuple[int, int] | None, round_id: int, attempt: int) -> None:
    """Refuse an opening of ``(round_id, attempt)`` unless it comes after every one this node opened.

    An honest server opens a node's rounds in increasing order, and a retried round with a
    higher attempt; opening the same attempt again would have a seeded node derive the same
    keys, masks and noise for another input.

    Raises:
        ReopenedRoundError: ``(round_id, attempt)`` is not after ``opened``.
    """
    if opened is not None and (round_id, attempt) <= tuple(opened):
        raise ReopenedRoundError(
            f"the server opened round {round_id} (attempt {attempt}) but this node already opened round "
            f"{opened[0]} (attempt {opened[1]}): a round attempt is opened once, in order; refused"
        )


def run_rng(cfg: RunConfig) -> Any:
    """The run's random source (OS CSPRNG, or the run seed's).

    fl_core.runner.make_rng without importing the runner (and torch) in a stage process.
    """
    from dp.randomness import SeededRandomSource, SystemRandomSource

    return SystemRandomSource() if cfg.seed is None else SeededRandomSource(cfg.seed)


def session_rng(cfg: RunConfig, client: int, round_id: int, seed: bytes, seeded: bool, attempt: int = 0) -> Any:
    """The random source of ``client``'s session in ``round_id``'s ``attempt``: from its kept seed, or the
    run seed's stream for that attempt."""
    from dp.randomness import SeededRandomSource

    if seeded:
        # Same stream as Federation.secagg_rng in the in-process simulation (keyed by the attempt).
        return run_rng(cfg).spawn(f"secagg/{client}/round/{attempt_label(round_id, attempt)}")
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
