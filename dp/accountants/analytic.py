"""The analytic Gaussian mechanism (Balle & Wang 2018): exact epsilon of T full-participation Gaussian rounds.

Written here (a few lines of closed form plus a root finder) as an independent
oracle for the PLD engine at q = 1, and as the exact answer for unsampled runs.

Security:
    T Gaussian rounds with noise multipliers z_i compose exactly to one
    Gaussian with mu = sqrt(sum z_i^-2) (Dong, Roth, Su 2019, Cor. 3.3); its
    exact privacy profile is delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)
    (Balle & Wang 2018, Thm. 8). Epsilon is the root of delta(eps) = delta,
    which is decreasing in eps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.optimize import brentq
from scipy.special import log_ndtr

from dp.errors import ConfigurationError

__all__ = ["analytic_gaussian_delta", "analytic_gaussian_epsilon"]


def analytic_gaussian_delta(eps: float, mu: float) -> float:
    """delta(eps) of the Gaussian mechanism with mu = sensitivity / sigma (computed in log space)."""
    a = log_ndtr(-eps / mu + mu / 2.0)
    b = eps + log_ndtr(-eps / mu - mu / 2.0)
    if b >= a:
        return 0.0
    return float(math.exp(a) * -math.expm1(b - a))


def analytic_gaussian_epsilon(noise_multipliers: Sequence[float], delta: float) -> float:
    """Exact epsilon at ``delta`` of composed full-participation Gaussian rounds.

    Raises:
        ConfigurationError: a noise multiplier <= 0 or delta outside (0, 1).
    """
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    if any(not (z > 0.0) for z in noise_multipliers):
        raise ConfigurationError("every noise multiplier must be > 0")
    if not noise_multipliers:
        return 0.0
    mu = math.sqrt(sum(z**-2 for z in noise_multipliers))
    if analytic_gaussian_delta(0.0, mu) <= delta:
        return 0.0
    hi = 1.0
    while analytic_gaussian_delta(hi, mu) > delta:
        hi *= 2.0
    return float(brentq(lambda e: analytic_gaussian_delta(e, mu) - delta, 0.0, hi, xtol=1e-14, rtol=1e-12))
