"""What a SuperNode's operator allows: the node's identity and its policy floor, read from its node config.

The server sends the run configuration; every setting in it that changes a node's
protection is checked here against the node operator's floor, by the node, before
anything derived from its data leaves it. Two steps:

* :func:`check_node_policy` reads only the run configuration (before the node builds
  or loads anything): the run seed, the DP mode, the secure-sum backend, the noise
  mechanism and multiplier, the colluders assumed and an explicit ``min-survivors``.
* :func:`check_round_terms` runs once the node has built its own federation from that
  configuration: the number of survivors its noise share is sized for, the round's clip
  the server announced, the noise share the node will really add and the per-round
  epsilon against the server it implies. It returns the :class:`SessionTerms` the node
  then uses for its own secure-sum session (threshold guard, cohort bound, ring), which
  therefore come from values the node checked, never from the server's raw numbers, and
  the digests of those terms (:mod:`fl_core.binding`) its session's masks are bound to,
  so that a server announcing other terms to other nodes of the round gets no usable sum.

Every Flower transport module that acts for a node reads the node configuration
through here; this module imports no other transport module.

Security:
    Each key is documented in docs/flower.md ("Node configuration"); the claims and
    their tests are in SECURITY.md ("privagg on Flower"). The server is the adversary:
    a seed it chose would let it recompute the node's keys, masks and noise, so a
    seeded run needs the node's own opt-in; the noise share a node adds shrinks with the
    square root of the survivors it is sized for, so that number is bounded by the node
    and handed to its own session, which refuses to help unmask with fewer survivors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fl_core.config import CHOICES, RunConfig
from fl_core.errors import ConfigError, FLError
from secagg.masking import TermsBinding

__all__ = [
    "DEFAULT_MAX_MIN_SURVIVORS",
    "NODE_KEYS",
    "PIN_KEY",
    "NodeFloor",
    "NodePolicyError",
    "RoundTerms",
    "SessionTerms",
    "check_key_pin_format",
    "check_node_policy",
    "check_round_terms",
    "client_id_of",
    "round_epsilon_vs_server",
]

PIN_KEY = "paillier-public-key-sha256"
ALLOW_SEEDED = "allow-seeded-run"
REQUIRE_DP = "require-dp"
REQUIRE_SECURE_SUM = "require-secure-sum"
REQUIRE_MECHANISM = "require-mechanism"
MIN_NOISE = "min-noise-multiplier"
MIN_COLLUDERS = "min-colluders"
MIN_SURVIVORS = "min-survivors"
MAX_MIN_SURVIVORS = "max-min-survivors"
MIN_CLIP = "min-clip"
MAX_CLIP = "max-clip"
MAX_ROUND_EPSILON = "max-round-epsilon"

DEFAULT_MAX_MIN_SURVIVORS = 1000
"""Default cap on the survivors a node's distributed noise share is sized for (its std shrinks with the root)."""

NODE_KEYS = (
    ALLOW_SEEDED,
    REQUIRE_DP,
    REQUIRE_SECURE_SUM,
    REQUIRE_MECHANISM,
    MIN_NOISE,
    MIN_COLLUDERS,
    MIN_SURVIVORS,
    MAX_MIN_SURVIVORS,
    MIN_CLIP,
    MAX_CLIP,
    MAX_ROUND_EPSILON,
)
"""The node-config keys of the policy floor (docs/flower.md documents each one and its default)."""


class NodePolicyError(FLError):
    """The server asked this node to take part in a round weaker than the node operator allows."""


def client_id_of(node_config: Any) -> int:
    """The privagg client id of a SuperNode: ``partition-id`` (0-based) + 1.

    Raises:
        ConfigError: the node was started without an integer ``partition-id``.
    """
    pid = node_config.get("partition-id") if node_config is not None else None
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise ConfigError(
            "this SuperNode has no integer partition-id >= 0; start it with "
            "--node-config 'partition-id=K' (client K+1 of the run)",
            option="partition-id",
        )
    return pid + 1


def check_key_pin_format(node_config: Any) -> str | None:
    """The pinned key fingerprint (64 lowercase hex digits), or None when the node pins none.

    Raises:
        ConfigError: the pin is not a SHA-256 hex digest.
    """
    pin = (node_config or {}).get(PIN_KEY)
    if pin is None:
        return None
    text = str(pin).strip().lower()
    if len(text) != 64 or any(ch not in "0123456789abcdef" for ch in text):
        raise ConfigError(
            f"{PIN_KEY} must be the 64-hex-digit SHA-256 printed by `privagg keygen paillier`, got {pin!r}",
            option=PIN_KEY,
        )
    return text


# -- the floor --------------------------------------------------------------------------------


def _choice(nc: Any, key: str, choices: tuple[str, ...]) -> str | None:
    v = nc.get(key)
    if v is None:
        return None
    if v not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {v!r}", option=key)
    return str(v)


def _number(nc: Any, key: str, *, positive: bool = True) -> float | None:
    v = nc.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise ConfigError(f"{key} must be a {'positive ' if positive else ''}number, got {v!r}", option=key)
    return float(v)


def _count(nc: Any, key: str, default: int, *, least: int) -> int:
    v = nc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise ConfigError(f"{key} must be an integer >= {least}, got {v!r}", option=key)
    return int(v)


@dataclass(frozen=True, slots=True)
class NodeFloor:
    """The node operator's floor (see docs/flower.md, "Node configuration", for each key)."""

    allow_seeded_run: bool = False
    require_dp: str | None = None
    require_secure_sum: str | None = None
    require_mechanism: str | None = None
    min_noise_multiplier: float | None = None
    min_colluders: int = 0
    min_survivors: int = 1
    max_min_survivors: int = DEFAULT_MAX_MIN_SURVIVORS
    min_clip: float | None = None
    max_clip: float | None = None
    max_round_epsilon: float | None = None

    @classmethod
    def from_node_config(cls, node_config: Any) -> NodeFloor:
        """Parse the floor keys of ``node_config`` (other keys are the operator's own and ignored).

        Raises:
            ConfigError: a floor key with a value of the wrong type or out of range.
        """
        nc = node_config or {}
        seeded = nc.get(ALLOW_SEEDED, False)
        if not isinstance(seeded, bool):
            raise ConfigError(f"{ALLOW_SEEDED} must be true or false, got {seeded!r}", option=ALLOW_SEEDED)
        floor = cls(
            allow_seeded_run=seeded,
            require_dp=_choice(nc, REQUIRE_DP, CHOICES["dp"]),
            require_secure_sum=_choice(nc, REQUIRE_SECURE_SUM, CHOICES["secure_sum"]),
            require_mechanism=_choice(nc, REQUIRE_MECHANISM, CHOICES["mechanism"]),
            min_noise_multiplier=_number(nc, MIN_NOISE),
            min_colluders=_count(nc, MIN_COLLUDERS, 0, least=0),
            min_survivors=_count(nc, MIN_SURVIVORS, 1, least=1),
            max_min_survivors=_count(nc, MAX_MIN_SURVIVORS, DEFAULT_MAX_MIN_SURVIVORS, least=1),
            min_clip=_number(nc, MIN_CLIP),
            max_clip=_number(nc, MAX_CLIP),
            max_round_epsilon=_number(nc, MAX_ROUND_EPSILON),
        )
        if floor.min_survivors > floor.max_min_survivors:
            raise ConfigError(
                f"{MIN_SURVIVORS} ({floor.min_survivors}) exceeds {MAX_MIN_SURVIVORS} ({floor.max_min_survivors})",
                option=MIN_SURVIVORS,
            )
        if floor.min_clip is not None and floor.max_clip is not None and floor.min_clip > floor.max_clip:
            raise ConfigError(f"{MIN_CLIP} exceeds {MAX_CLIP}", option=MIN_CLIP)
        return floor


def check_node_policy(cfg: RunConfig, node_config: Any) -> NodeFloor:
    """Refuse a run configuration below the node operator's floor; returns the floor.

    Reads only the configuration, so a node calls it before building or loading anything.
    A node whose config sets none of the floor keys still refuses a seeded run and a
    distributed run whose noise share is sized for more than
    :data:`DEFAULT_MAX_MIN_SURVIVORS` survivors (``max-min-survivors``). The Paillier key
    pin's format is checked here too, whatever the backend.

    Raises:
        NodePolicyError: the configuration is below the floor (the node does not train
            or reveal anything; it is a dropout for the round).
        ConfigError: a malformed floor key or key pin in the node config.
    """
    check_key_pin_format(node_config)
    floor = NodeFloor.from_node_config(node_config)
    if cfg.seed is not None and not floor.allow_seeded_run:
        raise NodePolicyError(
            f"the server sent a run seed ({cfg.seed}): this node would draw its secure-sum keys, masks, shares "
            "and DP noise from it, and the server could recompute them. Refused; for an experiment, the node "
            f"operator opts in with --node-config '{ALLOW_SEEDED}=true' (never with real data)"
        )
    if floor.require_dp is not None and cfg.dp != floor.require_dp:
        raise NodePolicyError(
            f"this node requires dp={floor.require_dp!r}; the server asked for dp={cfg.dp!r}: refused"
        )
    if floor.require_secure_sum is not None and cfg.secure_sum != floor.require_secure_sum:
        raise NodePolicyError(
            f"this node requires secure-sum={floor.require_secure_sum!r}; the server asked for "
            f"{cfg.secure_sum!r}: refused"
        )
    if floor.require_mechanism is not None and (cfg.dp != "distributed" or cfg.mechanism != floor.require_mechanism):
        raise NodePolicyError(
            f"this node requires distributed noise from the {floor.require_mechanism} mechanism; the server asked "
            f"for dp={cfg.dp!r} with {cfg.mechanism!r}: refused"
        )
    if floor.min_noise_multiplier is not None:
        z = cfg.noise_multiplier if cfg.noise_multiplier is not None else 1.0
        if cfg.dp == "none" or z < floor.min_noise_multiplier:
            raise NodePolicyError(
                f"this node requires a noise multiplier >= {floor.min_noise_multiplier}; the server asked for "
                f"dp={cfg.dp!r} with {z}: refused"
            )
    if cfg.colluders < floor.min_colluders:
        raise NodePolicyError(
            f"this node assumes at least {floor.min_colluders} clients collude with the server; the server sized "
            f"the noise for {cfg.colluders}: refused (each honest client's noise share would be too small)"
        )
    if cfg.min_survivors is not None:
        _check_survivors(cfg.min_survivors, floor, cfg.dp)
    return floor


def _check_survivors(m: int, floor: NodeFloor, dp: str) -> None:
    if m < floor.min_survivors:
        raise NodePolicyError(
            f"this node requires at least {floor.min_survivors} survivors before a sum is released; "
            f"the run releases with {m}: refused"
        )
    if dp == "distributed" and m > floor.max_min_survivors:
        raise NodePolicyError(
            f"the run sizes each client's noise share for {m} survivors (its std shrinks with the square root); "
            f"this node allows at most {floor.max_min_survivors} ({MAX_MIN_SURVIVORS}): refused"
        )


# -- the round, once the node has built its own federation --------------------------------------


@dataclass(frozen=True, slots=True)
class SessionTerms:
    """The secure-sum parameters a node derived from the configuration and checked: what its session uses.

    Attributes:
        ring_bits: the ring of the node's own encoding plan.
        dim: the length of the node's encoded vector (model plus side coordinates, e.g. the
            adaptive clip's count), the secure sum's dimension.
        max_clients: the cohort bound of the node's own sampler.
        min_survivors: the survivors the node's noise share is sized for; its session
            refuses to help unmask with fewer.
        setup: the digest of the run terms the node derived with its own federation
            (:func:`fl_core.binding.setup_digest`): its session's sealed shares are bound to it.
    """

    ring_bits: int
    dim: int
    max_clients: int
    min_survivors: int
    setup: bytes


@dataclass(frozen=True, slots=True)
class RoundTerms:
    """What a node checked for one round: its session's terms, the clip, its noise share, its epsilon."""

    session: SessionTerms
    clip: float
    noise_std: float
    """Std (float units, per coordinate) of the noise share this node adds: distributed only, else 0."""
    epsilon_vs_server: float
    """This round's epsilon against the server (no amplification by sampling; inf without DP or in central mode)."""
    binding: TermsBinding
    """The digests of the terms the node checked and will use (its setup terms and this clip): its session's
    masks are bound to them, so they cancel only against clients that used the same terms."""


def session_terms(fed: Any, floor: NodeFloor, dp: str) -> SessionTerms:
    """The session parameters of the node's own federation ``fed``, checked against ``floor``.

    Raises:
        NodePolicyError: the survivors the noise is sized for are outside the floor.
    """
    m = int(fed.privacy.min_survivors)
    _check_survivors(m, floor, dp)
    from fl_core.binding import setup_digest

    return SessionTerms(int(fed.plan.ring.bits), int(fed.plan.dim), int(fed.sampler.max_cohort()), m, setup_digest(fed))


def round_epsilon_vs_server(fed: Any, clip: float) -> float:
    """One round's epsilon against the server for a node of ``fed`` clipping at ``clip``.

    The server chooses the cohort and sees who survived, so no amplification by sampling
    is claimed: the round is accounted as if every client took part (sampling ``full``),
    with the survivors the node's noise share is sized for (``min_survivors``; the node's
    session refuses to help unmask with fewer) minus the colluders. Without DP, and in
    central mode (the server sees the exact sum), it is infinite.
    """
    policy = fed.privacy
    mode = policy.mode
    if mode in ("none", "central"):
        return math.inf
    from dp.accountants import compute_epsilon
    from dp.calibration import make_round_event
    from dp.events import Sampling

    m = int(policy.min_survivors)
    event = make_round_event(
        policy.config,
        round=1,
        sampling=Sampling.FULL,
        sampling_rate=1.0,
        population=m,
        cohort=m,
        survivors=m,
        dim=int(fed.dim) + int(policy.extra_coordinates),
        scale=float(fed.plan.scale) if mode == "distributed" else None,
        clip_norm=clip,
    )
    return float(compute_epsilon([event], float(policy.delta)))


def check_round_terms(fed: Any, floor: NodeFloor, *, clip: Any) -> RoundTerms:
    """Check a round against the floor with the node's own federation; make the node clip at ``clip``.

    ``clip`` is the round's clip the server announced (the one its ledger charges). With a
    fixed clip it must be the configured one; with adaptive clipping it must lie within the
    adaptive bounds the encoding is sized for; and within the node's ``min-clip`` /
    ``max-clip``. The node then clips and sizes its noise share at exactly that clip.

    Raises:
        NodePolicyError: the clip (or its absence), the survivors or the round's epsilon
            against the server is outside the floor.
    """
    policy = fed.privacy
    if isinstance(clip, bool) or not isinstance(clip, (int, float)):
        raise NodePolicyError(f"the opening message announces no usable clip ({clip!r}): refused")
    c = float(clip)
    if floor.min_clip is not None and c < floor.min_clip or floor.max_clip is not None and c > floor.max_clip:
        raise NodePolicyError(
            f"the server announced clip {c}; this node clips within [{floor.min_clip}, {floor.max_clip}]: refused"
        )
    use = getattr(policy, "use_clip", None)
    if use is not None:
        try:
            use(c)
        except ConfigError as exc:
            raise NodePolicyError(f"the server announced clip {c}: {exc}: refused") from None
    elif c != float(policy.clip_norm):
        raise NodePolicyError(f"the server announced clip {c}; this run clips at {policy.clip_norm}: refused")
    session = session_terms(fed, floor, policy.mode)
    noise_std = 0.0
    if policy.mode == "distributed":
        from dp.calibration import distributed_noise

        noise_std = distributed_noise(
            policy.config, scale=float(fed.plan.scale), dim=session.dim, clip_norm=c
        ).per_client_std_float
    eps = round_epsilon_vs_server(fed, c) if floor.max_round_epsilon is not None else math.nan
    if floor.max_round_epsilon is not None and not eps <= floor.max_round_epsilon:
        raise NodePolicyError(
            f"one round of this run costs this node epsilon {eps:.4g} against the server (no amplification by "
            f"sampling; {session.min_survivors} survivors' noise, noise share std {noise_std:.3g}); this node "
            f"allows at most {floor.max_round_epsilon} per round ({MAX_ROUND_EPSILON}): refused"
        )
    from fl_core.binding import round_digest

    binding = TermsBinding(setup=session.setup, round=round_digest(session.setup, float(policy.clip_norm)))
    return RoundTerms(session, c, noise_std, eps, binding)
