"""MaskingSecureSum: the SecAgg / SecAgg+ backend object that makes client and server sessions."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from secagg.errors import ConfigurationError, LocalProtocolError
from secagg.masking.binding import UNBOUND, TermsBinding
from secagg.masking.client import MaskingClient
from secagg.masking.graph import neighbour_graph
from secagg.masking.params import GraphKind, MaskingParameters, choose_parameters
from secagg.masking.server import MaskingServer
from secagg.masking.states import Stage, TransitionTable, transitions_for
from secagg.primitives.signatures import SigningKey, generate_signing_key
from secagg.protocol import SERVER, ClientId, RandomSource
from secagg.ring import RingSpec

__all__ = ["MaskingSecureSum", "generate_identities"]


def generate_identities(
    clients: Sequence[ClientId], rng: RandomSource
) -> tuple[dict[ClientId, bytes], dict[ClientId, SigningKey]]:
    """Fresh Ed25519 identity keys: (public directory, each client's signing key).

    In a deployment each client keeps its own signing key and the directory is
    distributed by a PKI; this helper is for simulations and tests.
    """
    keys = {c: generate_signing_key(rng.spawn(f"identity-{c}")) for c in clients}
    return {c: k.public for c, k in keys.items()}, keys


class MaskingSecureSum:
    """Double-masking secure sum (Bonawitz et al. 2017) on a complete or sparse graph (Bell 2020).

    Args:
        ring: the ring Z_{2^b} of the inputs.
        dim: vector length.
        graph: ``"sparse"`` (default: a Harary graph of degree k chosen by
            :func:`~secagg.masking.params.choose_parameters`, which falls back to
            the complete graph when k would reach n - 1) or ``"complete"``.
        degree: force the sparse degree k (even).
        threshold: force the Shamir threshold t (default: majority of holders).
        corrupt_fraction, dropout_rate, security_bits, correctness_bits: inputs of
            the parameter choice (see :mod:`secagg.masking.params`).
        public_seed: public randomness mixed into the graph derivation (e.g. a
            beacon value agreed out of band); empty by default.
        identities: client -> Ed25519 public key. When given, advertisements and
            consistency-check lists must be signed by these keys, and the round
            runs the five-stage active variant (with the ConsistencyCheck round);
            without, the four-stage honest-but-curious variant (see
            :mod:`secagg.masking.states`).
        signing_keys: client -> its Ed25519 signing key, for in-process clients.
        min_survivors: honest clients refuse to help unmask a survivor list shorter than
            this, and the server aborts below it (the DP layer sets it to the survivors
            its noise was sized for).
        min_cohort: the client's own floor on the cohort size: a client refuses the
            share-keys request, before any share leaves it, when the cohort list the
            server sends is smaller. Default ``max(2, min_survivors)`` (a smaller cohort
            can never reach an unmasking this client would take part in).
        min_threshold: the client's own floor on the Shamir threshold t it deals its
            secrets with; checked at the same point. Default: the threshold this
            object's own parameter choice gives for a cohort of ``min_cohort`` (t grows
            with n for fixed options, so an honest larger cohort always passes).

    Sessions are bound to :attr:`binding` (default :data:`~secagg.masking.binding.UNBOUND`,
    all-zero digests); :meth:`bound` gives a copy bound to the digests of the terms a
    caller checked and used, so that masks cancel only between clients bound alike
    (:mod:`secagg.masking.binding`).

    The two floors protect a client only if they come from the client's own
    configuration, never from a message or run configuration the server chose: a
    networked node (e.g. a Flower SuperNode) passes its node config's floors here,
    and the server's settings are then checked against them. Why they are needed: t
    is derived from the cohort list the server sends, so a server claiming the
    cohort is {u, colluder} gets t = 1, and the colluder's single share of u's
    self-mask seed and mask key rebuilds u's masked input without any unmasking
    stage (the ``min_survivors`` check at unmasking comes too late).

    Security:
        Honest-but-curious server: learns only the sum over survivors and the
        survivor set, provided fewer than t clients collude with it in any
        neighbourhood (Bonawitz et al. 2017, section 6, honest-but-curious
        analysis; Bell et al. 2020, section 3). That model needs no ConsistencyCheck round: an
        unsigned survivor list cannot stop a server that lies consistently, so without
        ``identities`` the round skips it (Bonawitz et al. 2017, figure 4, where round 3 is
        marked active-only). With ``identities`` the server cannot forge keys or survivor
        lists (active-adversary model, Bonawitz et al. 2017 section 6).
        See SECURITY.md (pairwise masking section) for the claims and their tests.
    """

    name = "masking"
    input_stage = 2
    """Index of the stage in which clients send their masked input (0: advertise, 1: share keys).

    The same in both variants: the consistency round they differ by comes after it."""
    final_stage: str = Stage.UNMASKING.value
    """The stage whose server messages are the round's last exchange; a transport may carry
    the next round's key advertisement alongside it."""

    def __init__(
        self,
        ring: RingSpec,
        dim: int,
        *,
        graph: GraphKind | str = GraphKind.SPARSE,
        degree: int | None = None,
        threshold: int | None = None,
        corrupt_fraction: float = 0.05,
        dropout_rate: float = 0.1,
        security_bits: int = 40,
        correctness_bits: int = 20,
        public_seed: bytes = b"",
        identities: Mapping[ClientId, bytes] | None = None,
        signing_keys: Mapping[ClientId, SigningKey] | None = None,
        min_survivors: int = 1,
        min_cohort: int | None = None,
        min_threshold: int | None = None,
    ) -> None:
        if not isinstance(min_survivors, int) or min_survivors < 1:
            raise ConfigurationError(f"min_survivors must be a positive int, got {min_survivors!r}")
        self.min_survivors = min_survivors
        for name, floor in (("min_cohort", min_cohort), ("min_threshold", min_threshold)):
            if floor is not None and (not isinstance(floor, int) or isinstance(floor, bool) or floor < 1):
                raise ConfigurationError(f"{name} must be a positive int, got {floor!r}")
        self.min_cohort = max(2, min_survivors, min_cohort or 0)
        """The smallest cohort a client of this object deals shares to (its own floor)."""
        self._min_threshold = min_threshold
        if not isinstance(dim, int) or dim < 1:
            raise ConfigurationError(f"dim must be a positive int, got {dim!r}")
        try:
            self.graph_kind = GraphKind(graph)
        except ValueError:
            raise ConfigurationError(f"graph must be 'complete' or 'sparse', got {graph!r}") from None
        self.ring = ring
        self.dim = dim
        self.degree = degree
        self.threshold = threshold
        self.corrupt_fraction = corrupt_fraction
        self.dropout_rate = dropout_rate
        self.security_bits = security_bits
        self.correctness_bits = correctness_bits
        self.public_seed = bytes(public_seed)
        self.identities = dict(identities) if identities is not None else None
        self.signing_keys = dict(signing_keys or {})
        self.binding: TermsBinding = UNBOUND
        """The terms digests this object's sessions are bound to (see :meth:`bound`)."""
        self._params: dict[int, MaskingParameters] = {}
        if self.identities is not None:
            for c, key in self.signing_keys.items():
                if self.identities.get(c) != key.public:
                    raise ConfigurationError(f"signing key of client {c} does not match its identity public key")

    @property
    def min_threshold(self) -> int:
        """The smallest Shamir threshold a client of this object deals its secrets with."""
        if self._min_threshold is not None:
            return self._min_threshold
        try:
            return self.parameters(self.min_cohort).threshold
        except ConfigurationError:
            # The own options admit no (k, t) at the floor cohort (e.g. a forced threshold
            # above k there): those options fix t for every usable cohort anyway.
            return 1

    @property
    def transitions(self) -> TransitionTable:
        """The transition table the sessions run: active with identity keys, else honest-but-curious."""
        return transitions_for(identity_keys=self.identities is not None)

    @property
    def stages(self) -> tuple[str, ...]:
        """The ``Message.stage`` values of one round, in order (4 or 5; ends with :attr:`final_stage`)."""
        return tuple(s.value for s in self.transitions.stages)

    def bound(self, binding: TermsBinding) -> MaskingSecureSum:
        """This secure sum with its sessions bound to ``binding`` (a copy; ``self`` is unchanged).

        A client's session then seals its shares under ``binding.setup`` and derives its
        pairwise masks with ``binding.round``; a server's session expects ``binding.round``
        in every masked input (:meth:`MaskingServer.expect_terms` can set it later). Each
        caller binds the digests of the terms *it* checked and used, never digests it was sent.
        """
        if not isinstance(binding, TermsBinding):
            raise ConfigurationError(f"binding must be a TermsBinding, got {binding!r}")
        other = copy.copy(self)  # shares the parameter cache, identities and signing keys (read-only)
        other.binding = binding
        return other

    def parameters(self, n: int) -> MaskingParameters:
        """The (k, t) every party recomputes for a cohort of ``n``."""
        cached = self._params.get(n)
        if cached is not None:
            return cached
        if len(self._params) >= 64:
            self._params.clear()
        self._params[n] = params = self._choose(n)
        return params

    def _choose(self, n: int) -> MaskingParameters:
        return choose_parameters(
            n,
            graph=self.graph_kind,
            degree=self.degree,
            threshold=self.threshold,
            corrupt_fraction=self.corrupt_fraction,
            dropout_rate=self.dropout_rate,
            security_bits=self.security_bits,
            correctness_bits=self.correctness_bits,
        )

    def neighbours(self, cohort: Sequence[ClientId], round_id: int) -> Mapping[int, frozenset[int]]:
        """The round's graph, recomputed from public data."""
        return neighbour_graph(self.parameters(len(cohort)), cohort, round_id=round_id, public_seed=self.public_seed)

    def client(self, me: ClientId, round_id: int, rng: RandomSource) -> MaskingClient:
        if me == SERVER or me < 0:
            raise LocalProtocolError(f"client ids are >= 1, got {me}")
        key = self.signing_keys.get(me)
        if self.identities is not None and key is None:
            raise LocalProtocolError(f"identity keys are configured but client {me} has none")
        return MaskingClient(self, me, round_id, rng, signing_key=key)

    def server(self, cohort: Sequence[ClientId], round_id: int) -> MaskingServer:
        return MaskingServer(self, cohort, round_id)
