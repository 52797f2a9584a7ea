"""The abort term: the probability that a Poisson round's release decision hinges on one client, charged as delta.

A privagg round under Poisson sampling (rate q) releases only when at least ``m``
sampled clients survive (``min_survivors``, the count the noise is sized for); an
attempt with fewer aborts and the round is redrawn with a fresh cohort. Under the
add-or-remove-one-client relation, which is what amplification by sampling needs,
that decision depends on whether the target client x is there: on D ∪ {x} an attempt
with x and exactly ``m - 1`` other survivors releases, while on D the same draw of
the others aborts. The released sample is Poisson *conditioned* on enough survivors,
and the standard amplification coupling does not cover that component.

Security:
    Mechanism (one round, as :mod:`fl_core.federation` runs it). Repeat attempts: draw
    the cohort S by Poisson sampling at rate q among the *eligible* clients (those not
    left out by a participation cap or a client's own limit; the cap only lowers a
    client's inclusion probability); an empty or too small cohort aborts (redraw);
    cohort members drop out; fewer than ``m`` survivors abort (redraw); otherwise the
    survivors' clipped updates are summed and released with the round's noise.
    Assumptions: which clients are eligible and whether another client drops out do
    not depend on x's data or on whether x was sampled (each client's dropout is its
    own, with probability at most the planned ``dropout``); the noise added does not
    depend on whether x took part (exact in central mode; distributed noise grows
    with the survivors, see SECURITY.md, known limits). Model users may see every
    attempt's outcome (abort or release), not only the releases.

    Coupling. Run D ∪ {x} and D on the same randomness: the others' sample S' and
    dropouts, x's coin B ~ Bernoulli(q) and survival, the noise. An attempt is *bad*
    when B = 1, x survives and exactly ``m - 1`` others survive: D ∪ {x} releases, D
    aborts. In every other attempt both make the same decision (a surviving x adds
    one to a count that is either already >= m or stays < m - 1 + 1 = m; a dropped x
    changes nothing). Let G be "no bad attempt before the round's first release".
    On G both runs release the same attempt and the released sums differ by x's
    clipped update exactly when B = 1 and x survived, with B independent of the
    others' sample given G: conditioned on G, each round is the rate-q Poisson
    subsampled mechanism the accountants charge (its sample conditioned on the
    others' count, a function of S' alone, which preserves the dominating pair by
    joint convexity; Zhu, Dong, Wang 2022, Sec. 5). Off G nothing is claimed
    (infinite privacy loss). With b = q (1 - rho) P[Bin(n', q (1 - rho)) = m - 1]
    and a = P[Bin(n', q (1 - rho)) >= m] per attempt (n' others eligible), a bad
    attempt comes before the first good release with probability at most
    eta = b / (a + b), whatever the number of attempts (if the pools differ between
    attempts, eta of the smallest pool bounds every attempt's ratio: the binomial's
    likelihood ratio is monotone, so b / (a + b) falls as the pool grows). A run that
    stops after too many consecutive aborts is covered too: on G both runs stop
    together. Each round is therefore
    dominated, in both directions and for every hockey-stick order, by the pair
    ((1 - eta) A + eta w1, (1 - eta) B + eta w2), where (A, B) dominates the round
    as the accountants charge it and w1, w2 are two extra outcomes each carrying
    mass under one side only. Composing T such pairs (adaptively: eta_r is bounded
    per round from data-independent quantities; Zhu, Dong, Wang 2022, Thm. 10) gives
    delta(eps) = H + (1 - H) delta_0(eps) with H = 1 - prod_r (1 - eta_r) and
    delta_0 the profile of the rounds as charged. So the accountants report epsilon
    at delta_0 = (delta - H) / (1 - H), and no finite epsilon when H >= delta.
    ``n'`` is taken as both the recorded eligible count minus one (x among them) and
    the count itself (x not), whichever gives the larger eta. privagg's simulated
    ``--dropout`` drops ``round(rho * |S|)`` of the cohort, so its release decision is
    |S| >= m~ (m~ the smallest k with k - round(rho k) >= m); eta is computed for that
    rule too and the larger one is used (the simulation breaks the first assumption
    in another way: one more sampled client can make one more other client drop).

    Limit: eta_r is computed from the round's recorded pool, which depends on earlier
    cohorts (who reached the participation cap) and so on earlier rounds' randomness,
    not only on their outputs; it is treated as fixed in advance, as the cap itself is
    (the cap lowers inclusion probabilities below q, which the accountants also treat
    as rate q).

    Not affected: full participation and fixed-size cohorts (the relation keeps who
    takes part, so the decision cannot hinge on x), local mode (substitution
    relation, no amplification claimed), and epsilon against the server (it fixes
    the participation itself, :mod:`dp.adversary`). An event with ``min_survivors``
    0 describes a round without an abort rule: no abort term. privagg's central mode
    under Poisson sampling is such a round (``releases_empty``): an empty sample, or
    a cohort nobody survived, releases the noise alone at the round's sigma (the noised
    zero sum through the usual fixed denominator and server optimizer), so every
    attempt releases and the coupling above has no bad attempt (eta = 0); that release
    is one outcome of the rate-q Poisson subsampled Gaussian mechanism, and the
    accountants charge it as such (survivors 0 included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from scipy.stats import binom

from dp.events import DPMode, RoundEvent, Sampling

__all__ = [
    "abort_delta",
    "abort_rule_unrecorded",
    "abort_probability",
    "delta_for_noise",
    "release_threshold_cohort",
    "subject_to_abort_term",
]


def release_threshold_cohort(min_survivors: int, dropout: float) -> int:
    """The fewest sampled clients with which a round that drops ``round(dropout * k)`` of k members still releases."""
    k = max(1, min_survivors)
    while k - int(round(dropout * k)) < min_survivors:
        k += 1
    return k


def _eta(p_bad: float, p_release: float) -> float:
    return 0.0 if p_bad <= 0.0 else p_bad / (p_release + p_bad)


@lru_cache(maxsize=65536)
def _round_eta(others: int, q: float, m: int, dropout: float) -> float:
    if others < 0:
        return 0.0
    qs = q * (1.0 - dropout)
    # Each client its own dropout coin: x survives with probability 1 - dropout.
    eta = _eta(qs * float(binom.pmf(m - 1, others, qs)), float(binom.sf(m - 1, others, qs)))
    if dropout > 0.0:
        # The simulation drops round(dropout * |S|) of the cohort: release iff |S| >= m~.
        mt = release_threshold_cohort(m, dropout)
        eta = max(eta, _eta(q * float(binom.pmf(mt - 1, others, q)), float(binom.sf(mt - 1, others, q))))
    return min(1.0, eta)


def subject_to_abort_term(event: RoundEvent) -> bool:
    """Whether the round's release decision can hinge on one client: an abort rule under Poisson
    sampling (0 < q < 1) in central or distributed mode (the add-or-remove relation)."""
    return (
        event.min_survivors >= 1
        and event.sampling is Sampling.POISSON
        and event.mode in (DPMode.CENTRAL, DPMode.DISTRIBUTED)
        and 0.0 < event.sampling_rate < 1.0
    )


def abort_rule_unrecorded(event: RoundEvent) -> bool:
    """Whether the round is Poisson-sampled in central or distributed mode without a recorded abort rule.

    privagg records ``min_survivors`` (>= 1) for every DP round with an abort rule, and
    ``releases_empty`` for every round without one; an event with neither comes from a
    ledger written before the rule was recorded. If that round aborted and redrew on too
    few survivors, its amplified epsilon against model users (computed here without the
    abort term) is not a valid bound: the audit says so.
    """
    return (
        event.min_survivors == 0
        and not event.releases_empty
        and event.sampling is Sampling.POISSON
        and event.mode in (DPMode.CENTRAL, DPMode.DISTRIBUTED)
        and 0.0 < event.sampling_rate < 1.0
    )


def abort_probability(event: RoundEvent) -> float:
    """eta of one round: the probability that its release decision hinged on the target (module docstring)."""
    if not subject_to_abort_term(event):
        return 0.0
    n = event.eligible if event.eligible > 0 else event.population
    q, m, rho = float(event.sampling_rate), int(event.min_survivors), float(event.dropout)
    return max(_round_eta(n - 1, q, m, rho), _round_eta(n, q, m, rho))


def abort_delta(events: Sequence[RoundEvent]) -> float:
    """H = 1 - prod(1 - eta_r): the delta spent on rounds whose release decision hinged on the target."""
    total = 0.0
    for e in events:
        eta = abort_probability(e)
        if eta >= 1.0:
            return 1.0
        total += math.log1p(-eta)
    return max(0.0, -math.expm1(total))  # never -0.0 (a report would print it)


def delta_for_noise(delta: float, abort: float) -> float:
    """The delta left for the rounds as charged once ``abort`` (H) is spent.

    (delta - H) / (1 - H); 0 if none is left.
    """
    if abort >= delta:
        return 0.0
    return (delta - abort) / (1.0 - abort)
