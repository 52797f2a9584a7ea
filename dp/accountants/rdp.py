"""Renyi-DP accountant written here, vectorised over rounds: the independent cross-check of the PLD engine.

It is written by hand rather than taken from ``dp_accounting.rdp`` for two
reasons: it must be independent of the PLD engine it cross-checks, and it must
compose 10^4 rounds with a different noise level in every round in well under
a second, which needs the per-order sums vectorised over rounds (the library
evaluates one round and one order at a time in Python).

Security:
    Assumption: each event's parameters describe the noise really present
    (see :mod:`dp.events`). Guarantee: the returned epsilon is an upper bound
    for the composed, adaptively chosen rounds at the given delta. References:
    exact Poisson-subsampled Gaussian RDP at integer orders (Mironov, Talwar,
    Zhang 2019, "Renyi DP of the Sampled Gaussian Mechanism", Sec. 3.3);
    fractional orders by convexity of the cumulant generating function in the
    order (Wang, Balle, Kasiviswanathan 2019, Cor. 10); the general
    Poisson-subsampling bound for other mechanisms (Zhu & Wang 2019, "Poisson
    Subsampled Renyi DP", Thm. 6); sampling without replacement under the
    substitution relation (Wang, Balle, Kasiviswanathan 2019, Thm. 27 for the
    Gaussian, through ``dp_accounting.rdp``; their general Thm. 9 otherwise);
    Skellam (Agarwal, Kairouz, Liu 2021, Thm. 3.5, with the ``2*alpha - 1``
    term relaxed to ``2*alpha``); distributed discrete Gaussian (Kairouz,
    Liu, Steinke 2021, Prop. 14 and Thm. 1); discrete Gaussian has the
    Gaussian's RDP (Canonne, Kamath, Steinke 2020, Prop. 4 / Cor. 9); RDP to
    (epsilon, delta) conversion of Canonne, Kamath, Steinke 2020 Prop. 12
    (also Asoodeh et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln, logsumexp

__all__ = [
    "INTEGER_ORDERS",
    "ORDERS",
    "ddg_rdp_batch",
    "eps_from_rdp",
    "gaussian_rdp",
    "poisson_gaussian_rdp",
    "interpolate_orders",
    "poisson_general_rdp",
    "poisson_general_rdp_batch",
    "skellam_rdp",
    "skellam_rdp_batch",
    "wor_general_rdp_batch",
]

FloatArray = npt.NDArray[np.float64]

#: Integer orders at which RDP is evaluated exactly.
INTEGER_ORDERS: tuple[int, ...] = (*range(2, 33), 36, 40, 44, 48, 56, 64, 80, 96, 128, 192, 256)
#: All orders (fractional ones are interpolated conservatively from the integer ones).
ORDERS: tuple[float, ...] = (
    *(1.0 + x / 10.0 for x in range(1, 10)),
    *(2.0 + x / 4.0 for x in range(0, 40)),
    *(float(a) for a in INTEGER_ORDERS if a > 11),
)


def _log_comb(n: int, k: npt.NDArray[np.int64]) -> FloatArray:
    return np.asarray(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1), dtype=np.float64)


def gaussian_rdp(z: FloatArray, alpha: int | float) -> FloatArray:
    """RDP of the Gaussian mechanism with noise multiplier ``z`` at order ``alpha``: alpha / (2 z^2)."""
    return np.asarray(alpha / (2.0 * np.square(z)), dtype=np.float64)


def poisson_gaussian_rdp(q: FloatArray, z: FloatArray) -> FloatArray:
    """Exact RDP of the Poisson-subsampled Gaussian at every :data:`INTEGER_ORDERS` entry.

    Args:
        q: sampling rates, shape (n,), each in (0, 1].
        z: noise multipliers, shape (n,), each > 0.

    Returns:
        Array of shape (n, len(INTEGER_ORDERS)).

    Security:
        For integer alpha, A_alpha = sum_k C(alpha, k) (1-q)^(alpha-k) q^k
        exp((k^2 - k) / (2 z^2)) and RDP = log(A_alpha) / (alpha - 1)
        (Mironov, Talwar, Zhang 2019, Sec. 3.3); this is exact, not a bound.
    """
    q = np.asarray(q, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    out = np.empty((q.shape[0], len(INTEGER_ORDERS)), dtype=np.float64)
    full = q >= 1.0
    part = ~full
    qp, zp = q[part], z[part]
    log_q = np.log(qp)[:, None]
    log_1q = np.log1p(-qp)[:, None]
    inv2z2 = (1.0 / (2.0 * zp * zp))[:, None]
    for j, alpha in enumerate(INTEGER_ORDERS):
        if full.any():
            out[full, j] = alpha / (2.0 * z[full] ** 2)
        if part.any():
            k = np.arange(alpha + 1, dtype=np.int64)
            kf = k.astype(np.float64)[None, :]
            terms = _log_comb(alpha, k)[None, :] + (alpha - kf) * log_1q + kf * log_q + (kf * kf - kf) * inv2z2
            out[part, j] = logsumexp(terms, axis=1) / (alpha - 1)
    return out


def poisson_general_rdp(q: float, base: Callable[[int], float]) -> FloatArray:
    """Zhu & Wang 2019 (Thm. 6) upper bound for a Poisson-subsampled mechanism at the integer orders.

    Args:
        q: sampling rate in (0, 1].
        base: the un-subsampled mechanism's RDP as a function of the integer order.

    Returns:
        Array of shape (len(INTEGER_ORDERS),): min(the subsampled bound, base RDP).

    Security:
        Bound: (alpha-1) eps'(alpha) <= log[(1-q)^(alpha-1) (alpha q - q + 1)
        + C(alpha,2) q^2 (1-q)^(alpha-2) e^eps(2)
        + 3 sum_{l=3}^{alpha} C(alpha,l) (1-q)^(alpha-l) q^l e^((l-1) eps(l))].
        Not subsampling at all is always valid, hence the min with the base RDP.
    """
    top = max(INTEGER_ORDERS)
    eps_l = np.array([[base(ell) for ell in range(2, top + 1)]], dtype=np.float64)
    out: FloatArray = poisson_general_rdp_batch(np.array([q], dtype=np.float64), eps_l)[0]
    return out


def poisson_general_rdp_batch(q: FloatArray, base: FloatArray) -> FloatArray:
    """:func:`poisson_general_rdp` for many rounds at once.

    Args:
        q: sampling rates, shape (n,), each in (0, 1].
        base: base RDP at orders 2, 3, ..., max(INTEGER_ORDERS), shape (n, max - 1).

    Returns:
        Array of shape (n, len(INTEGER_ORDERS)).
    """
    q = np.asarray(q, dtype=np.float64)
    n = q.shape[0]
    eps_l = np.concatenate([np.zeros((n, 2)), np.asarray(base, dtype=np.float64)], axis=1)  # index = order
    out = np.empty((n, len(INTEGER_ORDERS)), dtype=np.float64)
    full = q >= 1.0
    part = ~full
    qp = q[part]
    log_q = np.log(qp)[:, None] if part.any() else np.zeros((0, 1))
    log_1q = np.log1p(-qp)[:, None] if part.any() else np.zeros((0, 1))
    ep = eps_l[part]
    for j, alpha in enumerate(INTEGER_ORDERS):
        out[full, j] = eps_l[full, alpha]
        if not part.any():
            continue
        first = (alpha - 1) * log_1q[:, 0] + np.log(alpha * qp - qp + 1.0)
        second = float(_log_comb(alpha, np.array([2]))[0]) + 2 * log_q[:, 0] + (alpha - 2) * log_1q[:, 0] + ep[:, 2]
        parts = [first, second]
        if alpha >= 3:
            ell = np.arange(3, alpha + 1, dtype=np.int64)
            ef = ell.astype(np.float64)[None, :]
            rest = (
                _log_comb(alpha, ell)[None, :] + (alpha - ef) * log_1q + ef * log_q + (ef - 1.0) * ep[:, 3 : alpha + 1]
            )
            parts.append(math.log(3.0) + logsumexp(rest, axis=1))
        sub = logsumexp(np.stack(parts, axis=1), axis=1) / (alpha - 1)
        out[part, j] = np.minimum(sub, ep[:, alpha])
    return out


def wor_general_rdp_batch(q: FloatArray, base: FloatArray) -> FloatArray:
    """Sampling without replacement, substitution relation: general bound of Wang, Balle, Kasiviswanathan 2019.

    Args:
        q: sampling ratios m / n, shape (n,), each in (0, 1].
        base: the base mechanism's RDP under substitution at orders 2, 3, ..., max(INTEGER_ORDERS).

    Returns:
        Array of shape (n, len(INTEGER_ORDERS)): min(the subsampled bound, base RDP).

    Security:
        WBK19 Thm. 9 with eps(inf) = inf: (alpha-1) eps'(alpha) <= log(1 + q^2 C(alpha,2)
        min(4 (e^eps(2) - 1), 2 e^eps(2)) + sum_{j=3}^{alpha} 2 q^j C(alpha,j) e^((j-1) eps(j))).
    """
    q = np.asarray(q, dtype=np.float64)
    n = q.shape[0]
    eps_l = np.concatenate([np.zeros((n, 2)), np.asarray(base, dtype=np.float64)], axis=1)
    out = np.empty((n, len(INTEGER_ORDERS)), dtype=np.float64)
    log_q = np.log(q)[:, None]
    e2 = eps_l[:, 2]
    with np.errstate(divide="ignore"):
        second_core = np.minimum(math.log(4.0) + e2 + np.log(-np.expm1(-e2)), math.log(2.0) + e2)
    for j, alpha in enumerate(INTEGER_ORDERS):
        second = float(_log_comb(alpha, np.array([2]))[0]) + 2 * log_q[:, 0] + second_core
        parts = [np.zeros(n), second]
        if alpha >= 3:
            ell = np.arange(3, alpha + 1, dtype=np.int64)
            ef = ell.astype(np.float64)[None, :]
            rest = _log_comb(alpha, ell)[None, :] + ef * log_q + (ef - 1.0) * eps_l[:, 3 : alpha + 1]
            parts.append(math.log(2.0) + logsumexp(rest, axis=1))
        sub = logsumexp(np.stack(parts, axis=1), axis=1) / (alpha - 1)
        out[:, j] = np.minimum(sub, eps_l[:, alpha])
    return out


def skellam_rdp(alpha: float, *, l2: float, l1: float, variance: float) -> float:
    """RDP of the multi-dimensional Skellam mechanism (Agarwal, Kairouz, Liu 2021, Thm. 3.5).

    Args:
        alpha: order > 1.
        l2: L2 sensitivity in integer units.
        l1: L1 sensitivity in integer units.
        variance: variance per coordinate of the Skellam noise (2 mu for Sk(mu, mu)).

    Security:
        eps(alpha) <= alpha l2^2 / (4 mu) + min(((2 alpha - 1) l2^2 + 6 l1) / (16 mu^2),
        3 l1 / (4 mu)) with mu = variance / 2; we use 2 alpha in place of
        2 alpha - 1, which only enlarges the bound.
    """
    mu = variance / 2.0
    return alpha * l2 * l2 / (4.0 * mu) + min(
        ((2.0 * alpha) * l2 * l2 + 6.0 * l1) / (16.0 * mu * mu), 3.0 * l1 / (4.0 * mu)
    )


def skellam_rdp_batch(
    orders: npt.NDArray[np.float64], *, l2: FloatArray, l1: FloatArray, variance: FloatArray
) -> FloatArray:
    """:func:`skellam_rdp` for many rounds (rows) and orders (columns) at once."""
    a = np.asarray(orders, dtype=np.float64)[None, :]
    l2c = np.asarray(l2, dtype=np.float64)[:, None]
    l1c = np.asarray(l1, dtype=np.float64)[:, None]
    mu = np.asarray(variance, dtype=np.float64)[:, None] / 2.0
    extra = np.minimum(((2.0 * a) * l2c * l2c + 6.0 * l1c) / (16.0 * mu * mu), 3.0 * l1c / (4.0 * mu))
    return np.asarray(a * l2c * l2c / (4.0 * mu) + extra, dtype=np.float64)


def ddg_rdp_batch(
    orders: npt.NDArray[np.float64],
    *,
    l2: FloatArray,
    l1: FloatArray,
    variance: FloatArray,
    parties: npt.NDArray[np.int64],
    dim: FloatArray,
) -> FloatArray:
    """RDP of the distributed discrete Gaussian: the sum of ``parties`` shares N_Z(0, variance / parties).

    Security:
        Kairouz, Liu, Steinke 2021 ("The Distributed Discrete Gaussian Mechanism
        for Federated Learning with Secure Aggregation"), Prop. 14 with Thm. 1's
        tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1)) for n shares of
        parameter sigma: eps(alpha) = min(alpha/2 s2^2 + tau d,
        alpha/2 (s2^2 + 2 s1 tau + tau^2 d), alpha/2 (s2 + sqrt(d) tau)^2) with
        s2 = l2 / sqrt(n sigma^2) and s1 = l1 / sqrt(n sigma^2). With n = 1
        (tau = 0) it is the discrete Gaussian's alpha l2^2 / (2 sigma^2)
        (Canonne, Kamath, Steinke 2020).
    """
    a = np.asarray(orders, dtype=np.float64)[None, :]
    var = np.asarray(variance, dtype=np.float64)
    n = np.asarray(parties, dtype=np.int64)
    s2 = (np.asarray(l2, dtype=np.float64) / np.sqrt(var))[:, None]
    s1 = (np.asarray(l1, dtype=np.float64) / np.sqrt(var))[:, None]
    d = np.asarray(dim, dtype=np.float64)[:, None]
    sigma2 = var / n
    tau = np.zeros(var.shape[0], dtype=np.float64)
    for i in range(var.shape[0]):
        if n[i] > 1:
            k = np.arange(1, n[i], dtype=np.float64)
            tau[i] = 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * sigma2[i] * k / (k + 1.0))))
    t = tau[:, None]
    term1 = a / 2.0 * s2 * s2 + t * d
    term2 = a / 2.0 * (s2 * s2 + 2.0 * s1 * t + t * t * d)
    term3 = a / 2.0 * (s2 + np.sqrt(d) * t) ** 2
    return np.asarray(np.minimum(np.minimum(term1, term2), term3), dtype=np.float64)


def interpolate_orders(rdp_int: FloatArray) -> FloatArray:
    """Extend RDP at :data:`INTEGER_ORDERS` (last axis) to :data:`ORDERS`, conservatively.

    The cumulant generating function K(a) = (a - 1) eps(a) is convex in a and
    K(1) = 0, so the chord between neighbouring integer orders bounds it from
    above; between 1 and 2 the chord runs from (1, 0) to (2, K(2)).
    """
    ints = np.array(INTEGER_ORDERS, dtype=np.float64)
    cgf_int = rdp_int * (ints - 1.0)
    xs = np.concatenate(([1.0], ints))
    ys = np.concatenate((np.zeros(rdp_int.shape[:-1] + (1,)), cgf_int), axis=-1)
    orders = np.array(ORDERS, dtype=np.float64)
    out = np.empty(rdp_int.shape[:-1] + (orders.shape[0],), dtype=np.float64)
    flat_y = ys.reshape(-1, ys.shape[-1])
    flat_o = out.reshape(-1, orders.shape[0])
    for i in range(flat_y.shape[0]):
        flat_o[i] = np.interp(orders, xs, flat_y[i]) / (orders - 1.0)
    return out


def eps_from_rdp(orders: Sequence[float] | FloatArray, rdp: FloatArray, delta: float | FloatArray) -> FloatArray:
    """Convert RDP curves (last axis = orders) to epsilon at ``delta`` (a scalar, or one per curve).

    Security:
        eps = min_alpha rdp(alpha) + log1p(-1/alpha) - (log delta + log alpha) / (alpha - 1)
        (Canonne, Kamath, Steinke 2020, Prop. 12; Asoodeh et al. 2020), clipped at 0.
    """
    a = np.asarray(orders, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_delta = np.log(np.asarray(delta, dtype=np.float64))[..., None]
        eps = rdp + np.log1p(-1.0 / a) - (log_delta + np.log(a)) / (a - 1.0)
    eps = np.where(np.isnan(eps), np.inf, eps)
    return np.asarray(np.maximum(np.min(eps, axis=-1), 0.0), dtype=np.float64)
