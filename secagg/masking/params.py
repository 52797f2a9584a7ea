"""Choice of the neighbour degree k and Shamir threshold t, with the probabilities they buy.

Security:
    Model (Bell et al., CCS 2020, section 3): each of the n clients is corrupt
    (colluding with the server) with probability at most ``corrupt_fraction``
    (gamma) and drops out before unmasking with probability ``dropout_rate``
    (delta), independently of its position in the graph. The sparse graph is a
    Harary graph (each client linked to the k/2 clients before and after it in
    a pseudorandom cyclic order derived from the public round seed).

    * Correctness failure (the round aborts although it need not have): some
      client has fewer than t surviving neighbours,
      ``P_fail <= n * P[Bin(k, 1 - delta) < t]``.
    * Privacy failure (the adversary learns more than sums of honest inputs over
      all honest survivors): some client has >= t corrupt neighbours (they alone
      can rebuild its secrets), or the honest survivors' subgraph is
      disconnected, which in this graph needs k/2 consecutive corrupt-or-dropped
      clients in the cyclic order,
      ``P_priv <= n * P[Bin(k, gamma) >= t] + n * (gamma + delta)^(k/2)``.

    Binomial tails bound the without-replacement (hypergeometric) tails
    (Hoeffding 1963, section 6). The default threshold is a strict majority of
    the holders (t > k/2): then two disjoint survivor stories cannot both gather
    t honest answers, which the signed consistency check of Bonawitz et al. (CCS
    2017, section 4, round 3; active variant, with identity keys) relies on
    against a server that lies about dropouts.
    The complete graph (k = n - 1) is classic SecAgg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from secagg.errors import ConfigurationError

__all__ = ["GraphKind", "MaskingParameters", "choose_parameters"]


class GraphKind(str, Enum):
    """Which pairs of clients share a pairwise mask."""

    COMPLETE = "complete"
    """Every pair (Bonawitz et al. 2017): O(n) work per client."""
    SPARSE = "sparse"
    """A k-regular Harary graph (Bell et al. 2020): O(k) work per client."""


@dataclass(frozen=True, slots=True)
class MaskingParameters:
    """The per-round parameters both the server and every client recompute from n.

    Attributes:
        n: cohort size.
        graph: the graph kind actually used (sparse falls back to complete when
            the chosen degree reaches n - 1).
        degree: k, the neighbours of each client (its share holders; itself excluded).
        threshold: t, the shares needed to rebuild a client's secrets.
        corrupt_fraction: gamma assumed for the bounds.
        dropout_rate: delta assumed for the bounds.
        failure_probability: upper bound on an avoidable abort (see module docstring).
        privacy_failure_probability: upper bound on leaking more than the sum.
    """

    n: int
    graph: GraphKind
    degree: int
    threshold: int
    corrupt_fraction: float
    dropout_rate: float
    failure_probability: float
    privacy_failure_probability: float


def _binom_range(k: int, p: float, lo: int, hi: int) -> float:
    """P[lo <= Bin(k, p) < hi], summed term by term in log space.

    Each term C(k, i) p^i (1-p)^(k-i) is taken as exp(lgamma ... + i log p + (k-i) log(1-p)),
    scaled by the largest before summing: no float overflow for any k (``math.comb(k, i)``
    exceeds a float beyond k of about 1030, which large degrees at high dropout reach).
    """
    lo, hi = max(lo, 0), min(hi, k + 1)
    if lo >= hi:
        return 0.0
    if p <= 0.0:
        return 1.0 if lo == 0 else 0.0  # Bin(k, 0) = 0
    if p >= 1.0:
        return 1.0 if hi == k + 1 else 0.0  # Bin(k, 1) = k
    lp, lq, lk = math.log(p), math.log1p(-p), math.lgamma(k + 1)
    logs = [lk - math.lgamma(i + 1) - math.lgamma(k - i + 1) + i * lp + (k - i) * lq for i in range(lo, hi)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(x - top) for x in logs))


def _binom_sf(k: int, p: float, t: int) -> float:
    """P[Bin(k, p) >= t], summed term by term."""
    if t <= 0:
        return 1.0
    return _binom_range(k, p, t, k + 1)


def _binom_below(k: int, p: float, t: int) -> float:
    """P[Bin(k, p) < t], summed directly (no 1 - sf cancellation)."""
    return _binom_range(k, p, 0, t)


def _bounds(n: int, k: int, t: int, gamma: float, delta: float) -> tuple[float, float]:
    fail = min(1.0, n * _binom_below(k, 1.0 - delta, t))
    priv = n * _binom_sf(k, gamma, t)
    if k < n - 1:  # a complete graph cannot be disconnected by removing vertices
        priv += n * (gamma + delta) ** (k // 2)
    return fail, min(1.0, priv)


def choose_parameters(
    n: int,
    *,
    graph: GraphKind = GraphKind.SPARSE,
    degree: int | None = None,
    threshold: int | None = None,
    corrupt_fraction: float = 0.05,
    dropout_rate: float = 0.1,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> MaskingParameters:
    """Pick (k, t) for a cohort of ``n`` clients.

    For the sparse graph without an explicit ``degree``, the smallest even k is
    chosen for which some majority threshold t meets both
    ``P_priv <= 2^-security_bits`` and ``P_fail <= 2^-correctness_bits``; if no
    k < n - 1 does, the complete graph is used. An explicit ``threshold``
    overrides the majority default (1 <= t <= k).

    Raises:
        ConfigurationError: n < 2, rates outside [0, 1), an odd or too large
            ``degree``, or a ``threshold`` outside 1..k.
    """
    if n < 2:
        raise ConfigurationError(f"a masked sum needs at least 2 clients, got n={n}")
    if not 0.0 <= corrupt_fraction < 1.0 or not 0.0 <= dropout_rate < 1.0:
        raise ConfigurationError("corrupt_fraction and dropout_rate must lie in [0, 1)")
    kind = GraphKind(graph)
    if kind is GraphKind.COMPLETE:
        k = n - 1
    elif degree is not None:
        if degree < 2 or degree % 2:
            raise ConfigurationError(f"sparse degree must be an even number >= 2, got {degree}")
        k = min(degree, n - 1)
    else:
        k = n - 1
        for cand in range(2, n - 1, 2):
            t_maj = cand // 2 + 1
            fail, priv = _bounds(n, cand, t_maj, corrupt_fraction, dropout_rate)
            if priv <= 2.0**-security_bits and fail <= 2.0**-correctness_bits:
                k = cand
                break
    if k >= n - 1:
        kind, k = GraphKind.COMPLETE, n - 1
    t = k // 2 + 1 if threshold is None else threshold
    if not 1 <= t <= k:
        raise ConfigurationError(
            f"threshold must be in 1..{k} (the number of share holders) for n={n}, got {t}; "
            "lower threshold or raise degree"
        )
    fail, priv = _bounds(n, k, t, corrupt_fraction, dropout_rate)
    return MaskingParameters(
        n=n,
        graph=kind,
        degree=k,
        threshold=t,
        corrupt_fraction=corrupt_fraction,
        dropout_rate=dropout_rate,
        failure_probability=fail,
        privacy_failure_probability=priv,
    )
