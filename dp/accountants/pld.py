"""Tight accounting of Poisson-subsampled Gaussian rounds by privacy-loss distributions (dp-accounting engine).

The engine is Google's ``dp_accounting.pld`` (pessimistic "connect the dots"
discretisation); this module only decides the discretisation interval and
groups rounds so that 10^4 rounds with a different noise level each stay fast.

Security:
    Assumption: every event is a Gaussian mechanism with noise multiplier
    ``z`` under Poisson sampling with rate ``q`` (q = 1 for full participation)
    and the add-or-remove-one-client relation. Guarantee: the returned epsilon
    is an upper bound (pessimistic discretisation, Doroshenko, Ghazi, Kamath,
    Kumar, Manurangsi 2022) on the composed rounds at ``delta``. When rounds
    are grouped, each group is charged with the smallest ``z`` and largest
    ``q`` in it; this is conservative because the subsampled Gaussian with a
    larger ``z`` (more noise) or a smaller ``q`` is a post-processing of the one
    with the smaller ``z`` / larger ``q`` (add independent Gaussian noise; with
    probability 1 - q'/q replace the output by a fresh draw of N(0, z^2)), so
    its privacy-loss distribution is dominated (Zhu, Dong, Wang 2022, Sec. 3).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from dp_accounting.pld import privacy_loss_distribution as _pld

__all__ = ["GaussianRound", "group_rounds", "pld_epsilon", "pld_epsilon_grouped"]

GaussianRound = tuple[float, float]  # (q, z)

#: Classes composed at most; beyond this, rounds are merged conservatively (worst member).
MAX_GROUPS = 24


def group_rounds(rounds: Sequence[GaussianRound], *, max_groups: int = MAX_GROUPS) -> dict[GaussianRound, int]:
    """Group (q, z) rounds into at most ``max_groups`` classes, each charged as its worst member.

    Exact grouping is used when there are at most ``max_groups`` distinct
    rounds. Otherwise rounds are sorted by (z, -q) and cut into classes of
    equal size; a class is charged ``count`` times the round with its smallest
    z and largest q, which dominates every member (see the module docstring).
    """
    exact = Counter(rounds)
    if len(exact) <= max_groups:
        return dict(exact)
    items = sorted(exact.items(), key=lambda kv: (kv[0][1], -kv[0][0]))
    n = sum(c for _, c in items)
    out: dict[GaussianRound, int] = {}
    target = n / max_groups
    chunk: list[tuple[GaussianRound, int]] = []
    filled = 0
    for item in items:
        chunk.append(item)
        filled += item[1]
        if filled >= target * (len(out) + 1) or item is items[-1]:
            key = (max(k[0] for k, _ in chunk), min(k[1] for k, _ in chunk))
            out[key] = out.get(key, 0) + sum(c for _, c in chunk)
            chunk = []
    return out


def _compose(groups: dict[GaussianRound, int], interval: float) -> _pld.PrivacyLossDistribution:
    total: _pld.PrivacyLossDistribution | None = None
    for (q, z), count in sorted(groups.items()):
        one = _pld.from_gaussian_mechanism(
            standard_deviation=z,
            sensitivity=1.0,
            pessimistic_estimate=True,
            value_discretization_interval=interval,
            sampling_prob=q,
        ).self_compose(count)
        total = one if total is None else total.compose(one)
    if total is None:
        return _pld.identity(value_discretization_interval=interval)
    return total


def pld_epsilon(
    rounds: Sequence[GaussianRound],
    delta: float,
    *,
    rough_epsilon: float,
    rel_tol: float = 3e-3,
    max_groups: int = MAX_GROUPS,
) -> float:
    """Epsilon of the composed rounds, refining the discretisation until it is stable.

    Args:
        rounds: (q, z) per round; rounds with q = 0 must have been removed.
        delta: target delta.
        rough_epsilon: an upper bound used to pick the first interval (the RDP epsilon).
        rel_tol: stop when halving the interval changes epsilon by less than this (relative).
        max_groups: see :func:`group_rounds`.
    """
    if not rounds:
        return 0.0
    return pld_epsilon_grouped(
        group_rounds(rounds, max_groups=max_groups), delta, rough_epsilon=rough_epsilon, rel_tol=rel_tol
    )


def pld_epsilon_grouped(
    groups: dict[GaussianRound, int], delta: float, *, rough_epsilon: float, rel_tol: float = 3e-3
) -> float:
    """As :func:`pld_epsilon` for rounds already grouped by :func:`group_rounds`."""
    if not groups:
        return 0.0
    interval = min(5e-3, max(1e-7, 1e-3 * rough_epsilon))
    eps = float(_compose(groups, interval).get_epsilon_for_delta(delta))
    # One class self-composes by FFT and is cheap to refine; many classes cost a
    # convolution each, so they get one refinement (the result stays an upper bound).
    refinements = 4 if len(groups) == 1 else 1
    for _ in range(refinements):
        finer = interval / 2.0
        eps_f = float(_compose(groups, finer).get_epsilon_for_delta(delta))
        # Both are pessimistic (upper bounds); keep the smaller, stop once stable.
        done = abs(eps - eps_f) <= rel_tol * max(eps_f, 1e-12)
        eps, interval = min(eps, eps_f), finer
        if done:
            break
    return eps
