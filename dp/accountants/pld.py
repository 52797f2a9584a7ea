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

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as _pld

__all__ = ["GaussianRound", "pld_epsilon", "pld_epsilon_curve", "group_rounds"]

GaussianRound = tuple[float, float]  # (q, z)

#: Groups composed at most; beyond this, (q, z) are rounded conservatively onto a grid.
MAX_GROUPS = 40
_GRID_RATIOS = (1.0 + 1e-6, 1.0001, 1.0003, 1.001, 1.002, 1.004, 1.007, 1.01, 1.02, 1.05, 1.1)


def group_rounds(rounds: Sequence[GaussianRound], *, max_groups: int = MAX_GROUPS) -> dict[GaussianRound, int]:
    """Group (q, z) rounds into at most ``max_groups`` classes, rounding z down and q up.

    Exact grouping is used when there are few distinct rounds; otherwise the
    finest geometric grid (ratio from a fixed list) that gives at most
    ``max_groups`` classes. Every round is mapped to a class that dominates it.
    """
    exact = Counter(rounds)
    if len(exact) <= max_groups:
        return dict(exact)
    q = np.array([r[0] for r in rounds], dtype=np.float64)
    z = np.array([r[1] for r in rounds], dtype=np.float64)
    for ratio in _GRID_RATIOS:
        lr = math.log(ratio)
        zi = np.floor(np.log(z) / lr)
        qi = np.ceil(np.log(q) / lr)
        keys = np.stack([qi, zi], axis=1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        if uniq.shape[0] <= max_groups or ratio == _GRID_RATIOS[-1]:
            break
    out: dict[GaussianRound, int] = {}
    inv = inv.reshape(-1)
    for g in range(uniq.shape[0]):
        members = inv == g
        # The class representative: the smallest z and the largest q actually present,
        # never smaller z / larger q than needed, and never below any member's privacy loss.
        key = (float(min(1.0, q[members].max())), float(z[members].min()))
        out[key] = out.get(key, 0) + int(members.sum())
    if len(out) > max_groups:
        # The coarsest grid still left too many classes (extremely spread rounds):
        # merge neighbours in sorted order, keeping max q / min z per merged class.
        items = sorted(out.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        size = math.ceil(len(items) / max_groups)
        merged: dict[GaussianRound, int] = {}
        for i in range(0, len(items), size):
            chunk = items[i : i + size]
            key = (max(k[0] for k, _ in chunk), min(k[1] for k, _ in chunk))
            merged[key] = merged.get(key, 0) + sum(c for _, c in chunk)
        out = merged
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
    groups = group_rounds(rounds, max_groups=max_groups)
    interval = min(1e-2, max(1e-7, 2e-4 * rough_epsilon / math.sqrt(max(1.0, len(groups)))))
    eps = float(_compose(groups, interval).get_epsilon_for_delta(delta))
    for _ in range(4):
        finer = interval / 2.0
        eps_f = float(_compose(groups, finer).get_epsilon_for_delta(delta))
        # Both are pessimistic (upper bounds); keep the smaller, stop once stable.
        done = abs(eps - eps_f) <= rel_tol * max(eps_f, 1e-12)
        eps, interval = min(eps, eps_f), finer
        if done:
            break
    return eps


def pld_epsilon_curve(rounds: Sequence[GaussianRound], delta: float, *, interval: float) -> list[float]:
    """Cumulative epsilon after each round, composing one round at a time (cost grows with the count)."""
    total = _pld.identity(value_discretization_interval=interval)
    out: list[float] = []
    cache: dict[GaussianRound, _pld.PrivacyLossDistribution] = {}
    for key in rounds:
        one = cache.get(key)
        if one is None:
            one = _pld.from_gaussian_mechanism(
                standard_deviation=key[1],
                sensitivity=1.0,
                pessimistic_estimate=True,
                value_discretization_interval=interval,
                sampling_prob=key[0],
            )
            cache[key] = one
        total = total.compose(one)
        out.append(float(total.get_epsilon_for_delta(delta)))
    return out
