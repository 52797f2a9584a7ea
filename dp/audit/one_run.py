"""One-run empirical lower bound on epsilon from canary guesses (Steinke, Nasr, Jagielski 2023).

Why hand-written: the bound is a few lines of binomial tail arithmetic; the only
public implementations are research scripts, not maintained libraries. The binomial
tails come from scipy.

The audit game: ``m`` canaries, each included independently with probability 1/2;
after one run the auditor scores every canary, guesses "included" for the ``k_pos``
highest scores and "excluded" for the ``k_neg`` lowest and abstains on the rest
(``r = k_pos + k_neg`` guesses), and counts ``v`` correct guesses. If the run is
(epsilon, delta)-DP with respect to each canary, then for every v

    P[V >= v] <= P[Binom(r, p) >= v] + 2 m delta * max_{i=1..v} P[v - i <= Binom(r, p) < v] / i,

with ``p = e^eps / (1 + e^eps)`` (Steinke, Nasr, Jagielski, "Privacy auditing with
one (1) training run", NeurIPS 2023, Section 3, main theorem for (eps, delta)-DP
and its numerical evaluation). The right-hand side is a p-value for the null
hypothesis "the run is (eps, delta)-DP"; ``eps_lower`` at confidence ``1 - alpha``
is the largest eps whose p-value is below ``alpha``.

Security:
    Assumption: the canaries' inclusion bits are independent fair coins drawn
    from a source the run cannot see, and the guesses are a function of the
    released output only. Guarantee: if the mechanism is (eps, delta)-DP, then
    ``epsilon_lower_bound`` exceeds eps with probability at most ``alpha``
    (trying several guess counts is paid for with a Bonferroni split of alpha in
    :func:`audit_from_scores`). The bound is a *lower* bound: it certifies that a
    claimed epsilon is wrong, never that it is right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from dp.errors import ConfigurationError

__all__ = ["OneRunAudit", "audit_from_scores", "epsilon_lower_bound", "p_value"]

#: Upper end of the bisection for epsilon (p-values at this epsilon are ~1 for any v <= r).
_EPS_CAP = 50.0


def _check_counts(m: int, r: int, v: int) -> None:
    if not (isinstance(m, int) and isinstance(r, int) and isinstance(v, int)):
        raise ConfigurationError("m, r and v must be integers")
    if not 0 <= v <= r <= m:
        raise ConfigurationError(f"need 0 <= v <= r <= m, got m={m}, r={r}, v={v}")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ``v`` correct guesses out of ``r`` under the null "(epsilon, delta)-DP".

    Args:
        m: number of canaries (included or not).
        r: number of guesses (canaries not abstained on).
        v: number of correct guesses.
        epsilon: the epsilon of the null hypothesis (>= 0).
        delta: its delta, in [0, 1].

    Raises:
        ConfigurationError: counts out of range or epsilon/delta invalid.
    """
    _check_counts(m, r, v)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ConfigurationError(f"epsilon must be finite and >= 0, got {epsilon}")
    if not 0.0 <= delta <= 1.0:
        raise ConfigurationError(f"delta must be in [0, 1], got {delta}")
    if v == 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, p))
    # alpha = max_i (sum_{j=v-i}^{v-1} P[B = j]) / i over i = 1..v
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, p)  # P[B=v-1], P[B=v-2], ..., P[B=0]
    partial = np.cumsum(pmf)
    alpha = float(np.max(partial / np.arange(1, v + 1)))
    return min(1.0, beta + 2.0 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, *, alpha: float = 0.05,
                        tol: float = 1e-6) -> float:
    """The largest epsilon rejected at level ``alpha`` by ``v`` correct of ``r`` guesses.

    Bisection on :func:`p_value`, which increases with epsilon; the result is
    rounded down to ``tol`` so it never overstates the bound. Returns 0.0 when
    even epsilon = 0 cannot be rejected.

    Raises:
        ConfigurationError: counts out of range or alpha not in (0, 1).
    """
    _check_counts(m, r, v)
    if not 0.0 < alpha < 1.0:
        raise ConfigurationError(f"alpha must be in (0, 1), got {alpha}")
    if p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, _EPS_CAP
    if p_value(m, r, v, hi, delta) < alpha:  # pragma: no cover - needs r in the billions
        return hi
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True, slots=True)
class OneRunAudit:
    """Result of a one-run audit.

    Attributes:
        epsilon_lower: the lower bound at the stated confidence (max over the tried
            guess counts, each tested at ``alpha / len(guess_counts)``).
        confidence: 1 - alpha overall.
        m: canaries.
        r: guesses of the best guess count.
        v: correct guesses among them.
        guess_counts: the r values tried.
        per_guess_count: (r, v, eps_lower) for each tried r.
    """

    epsilon_lower: float
    confidence: float
    m: int
    r: int
    v: int
    guess_counts: tuple[int, ...]
    per_guess_count: tuple[tuple[int, int, float], ...]


def audit_from_scores(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    *,
    delta: float,
    confidence: float = 0.95,
    guess_counts: Sequence[int] | None = None,
) -> OneRunAudit:
    """Guess on the top/bottom scores and return the one-run lower bound.

    For each ``r`` in ``guess_counts`` the auditor guesses "included" for the
    ``ceil(r/2)`` highest scores and "excluded" for the ``floor(r/2)`` lowest
    (ties broken by index, which the inclusion bits cannot influence). The guess
    counts are fixed before looking at the scores, and the overall confidence is
    kept by testing each at ``alpha / len(guess_counts)`` (Bonferroni).

    Args:
        scores: one score per canary; higher means "more likely included".
        included: the true inclusion bits (bool), known to the auditor afterwards.
        delta: the delta the claimed guarantee is stated at.
        confidence: 1 - alpha, in (0, 1).
        guess_counts: the r values to try; default: 1%, 2%, 5%, 10%, 20% of m (>= 2 each).

    Raises:
        ConfigurationError: shapes differ, fewer than 2 canaries, or bad counts.
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if s.ndim != 1 or s.shape != inc.shape:
        raise ConfigurationError(f"scores and included must be 1-D of equal length, got "
                                 f"{s.shape} and {inc.shape}")
    m = int(s.shape[0])
    if m < 2:
        raise ConfigurationError(f"need at least 2 canaries, got {m}")
    if not np.all(np.isfinite(s)):
        raise ConfigurationError("scores must be finite")
    if not 0.0 < confidence < 1.0:
        raise ConfigurationError(f"confidence must be in (0, 1), got {confidence}")
    if guess_counts is None:
        counts = sorted({max(2, int(round(f * m))) for f in (0.01, 0.02, 0.05, 0.1, 0.2)})
    else:
        counts = sorted({int(c) for c in guess_counts})
    if not counts or counts[0] < 1 or counts[-1] > m:
        raise ConfigurationError(f"guess counts must be in 1..{m}, got {counts}")
    alpha = (1.0 - confidence) / len(counts)
    order = np.argsort(-s, kind="stable")  # highest score first
    results: list[tuple[int, int, float]] = []
    for r in counts:
        k_pos = (r + 1) // 2
        k_neg = r - k_pos
        v = int(np.sum(inc[order[:k_pos]])) + (int(np.sum(~inc[order[m - k_neg:]])) if k_neg else 0)
        results.append((r, v, epsilon_lower_bound(m, r, v, delta, alpha=alpha)))
    best = max(results, key=lambda t: t[2])
    return OneRunAudit(epsilon_lower=best[2], confidence=confidence, m=m, r=best[0], v=best[1],
                       guess_counts=tuple(counts), per_guess_count=tuple(results))
