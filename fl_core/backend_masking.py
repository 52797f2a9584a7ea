"""Registers the pairwise-masking secure sum (SecAgg / SecAgg+) as the ``masking`` backend.

Options (``BackendRequest.options``; options of other backends are ignored):

* ``graph``: ``"sparse"`` (default) or ``"complete"``. Sparse picks the smallest
  Harary-graph degree k meeting the privacy and correctness targets and falls
  back to the complete graph by itself whenever that k would reach n - 1 (small
  cohorts), so it is never worse than complete; ``"complete"`` forces classic SecAgg.
* ``degree``, ``threshold``: force k (even) or t.
* ``corrupt_fraction`` (default 0.05), ``dropout_rate`` (0.1), ``security_bits`` (40),
  ``correctness_bits`` (20): the inputs of the (k, t) choice.
* ``public_seed``: hex string mixed into the graph derivation (e.g. a beacon).
* ``min_survivors``: honest clients refuse to help unmask, and the server aborts, when fewer
  masked inputs arrived (the DP layer sets it to the survivors its noise was sized for).
* ``min_cohort``, ``min_threshold``: the client's own floors on the cohort size and on the
  Shamir threshold derived from it; a client refuses the share-keys request below either,
  before any share leaves it (defaults: ``max(2, min_survivors)`` and the threshold of a
  cohort of that size). They protect a client only when set from its own configuration
  (a Flower node passes its node config's floors), never from the server's.
* ``identity_keys``: when true, Ed25519 identity keys are generated for clients
  1..max_clients from the request's random source (in-process simulation of a PKI);
  advertisements and survivor lists are then signed and checked.

The backend is built unbound; each round's sessions are bound to the digests of the
terms their clients used (:mod:`fl_core.binding`: ``Federation.bound_secure_sum`` in
process and in asynchronous buffers, the node's checked terms on Flower), so that masks
cancel only between clients that used identical terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fl_core.backends import BackendRequest, register_backend
from fl_core.errors import ConfigError
from secagg import SecAggError, SecureSum

__all__ = ["build_masking"]

_OPTIONS = (
    "graph",
    "degree",
    "threshold",
    "corrupt_fraction",
    "dropout_rate",
    "security_bits",
    "correctness_bits",
    "public_seed",
    "identity_keys",
    "min_survivors",
    "min_cohort",
    "min_threshold",
)


def _opt_int(opts: Mapping[str, Any], name: str) -> int | None:
    value = opts.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}", option=name) from None


def build_masking(req: BackendRequest) -> SecureSum:
    """Build a :class:`secagg.masking.MaskingSecureSum` for ``req`` (see the module docstring)."""
    from secagg.masking import GraphKind, MaskingSecureSum, generate_identities

    opts: Mapping[str, Any] = {k: v for k, v in req.options.items() if k in _OPTIONS}
    graph = opts.get("graph") or "sparse"
    try:
        kind = GraphKind(str(graph))
    except ValueError:
        raise ConfigError(f"graph must be complete or sparse, got {graph!r}", option="graph") from None
    try:
        public_seed = bytes.fromhex(str(opts.get("public_seed") or ""))
    except ValueError:
        raise ConfigError("public_seed must be a hex string", option="public_seed") from None
    identities = signing_keys = None
    if opts.get("identity_keys"):
        identities, signing_keys = generate_identities(
            range(1, req.max_clients + 1), req.rng.spawn("masking-identities")
        )
    try:
        ss = MaskingSecureSum(
            req.ring,
            req.dim,
            graph=kind,
            degree=_opt_int(opts, "degree"),
            threshold=_opt_int(opts, "threshold"),
            corrupt_fraction=float(opts.get("corrupt_fraction", 0.05)),
            dropout_rate=float(opts.get("dropout_rate", 0.1)),
            security_bits=int(opts.get("security_bits", 40)),
            correctness_bits=int(opts.get("correctness_bits", 20)),
            public_seed=public_seed,
            identities=identities,
            signing_keys=signing_keys,
            min_survivors=_opt_int(opts, "min_survivors") or 1,
            min_cohort=_opt_int(opts, "min_cohort"),
            min_threshold=_opt_int(opts, "min_threshold"),
        )
        ss.parameters(max(req.max_clients, 2))  # refuse an unusable (k, t) before the first round
    except SecAggError as exc:
        raise ConfigError(f"cannot build the masking backend: {exc}", option="secure_sum") from exc
    return ss


register_backend("masking", build_masking)
