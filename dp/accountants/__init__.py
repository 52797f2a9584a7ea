"""Privacy accountants: compose the per-round events of a run into one (epsilon, delta).

Two engines: ``"pld"`` (tight; privacy-loss distributions via dp-accounting)
and ``"rdp"`` (an independent Renyi-DP accountant written here, the cross-check).

Rules applied to every event (documented in ``SECURITY.md (differential privacy section)``):

* Privacy unit: one client's whole contribution (client-level DP); the
  neighbouring relation is add-or-remove one client for Poisson sampling and
  full participation, and substitution of one client (population size public)
  for fixed-size cohorts, where the sensitivity of a sum doubles.
* A round with ``sampling_rate == 0``, or with ``survivors == 0`` and no noise
  (nothing released), costs nothing. A round with ``survivors == 0`` that
  released noise (central mode under Poisson sampling releases the noise alone
  for an empty sample instead of redrawing, ``releases_empty``) is charged like
  any round of its kind: an empty sample is one outcome of the subsampled
  mechanism, and a charge that depended on the realised sample would depend on
  whether the target client was sampled.
* A round with ``Mechanism.NONE`` and ``survivors > 0`` released an un-noised
  aggregate: epsilon is infinite from then on. A run without DP therefore has
  epsilon = inf (there is no finite guarantee), never 0.
* The noise charged is the noise in the event (the survivors' minus the
  colluders', see :mod:`dp.calibration`); a noisy mechanism with zero
  noise variance is charged as non-private (infinite epsilon).
* ``local`` rounds are charged without amplification by sampling (the server
  sees who took part): q = 1 for each round.
* A Poisson round that releases only with at least ``min_survivors`` survivors
  (aborting and redrawing otherwise) may have released *because* the target
  client was sampled: the probability eta of that is charged as delta
  (:mod:`dp.accountants.aborts`), and the rounds are accounted at
  ``(delta - H) / (1 - H)`` with ``H = 1 - prod(1 - eta)``; no finite epsilon
  once ``H >= delta``.
* An adaptive clip's quantile query (count noise std ``sigma_b`` on bits
  centred at 1/2) is folded in: Gaussian z_eff = (z^-2 + (2 sigma_b)^-2)^-1/2
  (Andrew et al. 2021, Thm. 1); for Skellam the count is one more Skellam
  coordinate whose RDP is added to the round's base RDP before subsampling.
* ``"pld"`` covers Gaussian rounds under Poisson sampling or full
  participation. If any round is of another kind (fixed-size cohort, Skellam,
  discrete Gaussian, distributed discrete Gaussian with Kairouz-Liu-Steinke's
  bound), the whole run is accounted with the RDP engine instead,
  and :func:`account` says so (``engine == "rdp"``).

Security:
    Assumption: the events are faithful (the ledger's job). Guarantee: the
    returned epsilon upper-bounds the privacy loss of the released sequence of
    aggregates at the given delta, for adaptively chosen rounds. References in
    :mod:`dp.accountants.rdp` and :mod:`dp.accountants.pld`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

import numpy as np
import numpy.typing as npt

from dp.accountants import aborts as _aborts
from dp.accountants import pld as _pld
from dp.accountants import rdp as _rdp
from dp.accountants.aborts import abort_delta, abort_probability, abort_rule_unrecorded, subject_to_abort_term
from dp.accountants.analytic import analytic_gaussian_epsilon
from dp.errors import AccountingError, ConfigurationError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling

__all__ = [
    "ACCOUNTANT_VERSIONS",
    "AccountantName",
    "AccountingResult",
    "ChargeKind",
    "RoundCharge",
    "abort_delta",
    "abort_probability",
    "abort_rule_unrecorded",
    "account",
    "analytic_gaussian_epsilon",
    "charge_of",
    "compute_epsilon",
    "epsilon_curve",
    "subject_to_abort_term",
]

AccountantName = Literal["pld", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("pld", "rdp")


def _pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - dp-accounting is a hard dependency
        return "unknown"


#: Engine and library version per accountant name, for reports and ledgers.
ACCOUNTANT_VERSIONS: dict[str, str] = {
    "pld": f"dp-accounting {_pkg_version('dp-accounting')} PLD (pessimistic, connect-the-dots)",
    "rdp": "privagg RDP 1 (exact sampled-Gaussian RDP; Zhu-Wang subsampling; WBK19 via "
    f"dp-accounting {_pkg_version('dp-accounting')})",
}


class ChargeKind(str, Enum):
    """How a round is charged."""

    FREE = "free"  # released nothing (no update, no noise)
    NON_PRIVATE = "non_private"  # un-noised release: epsilon becomes infinite
    GAUSSIAN_POISSON = "gaussian_poisson"  # Gaussian (or DG) with Poisson rate q (q = 1: full)
    GAUSSIAN_FIXED = "gaussian_fixed"  # Gaussian, fixed-size cohort, substitution relation
    SKELLAM = "skellam"  # Skellam base RDP, Poisson rate q (q = 1: full)
    SKELLAM_FIXED = "skellam_fixed"  # Skellam, fixed-size cohort, substitution relation
    DDG = "ddg"  # distributed discrete Gaussian (sum of `parties` shares), Poisson rate q
    DDG_FIXED = "ddg_fixed"  # distributed discrete Gaussian, fixed-size cohort


@dataclass(frozen=True, slots=True)
class RoundCharge:
    """The accounting view of one event.

    Attributes:
        kind: how it is charged.
        q: sampling rate used for amplification (1 = none).
        z: Gaussian noise multiplier w.r.t. the relation's sensitivity (Gaussian kinds).
        l2: L2 sensitivity (Skellam, integer units, relation-adjusted).
        l1: L1 sensitivity (Skellam).
        variance: noise variance (Skellam).
        count_sigma: std of the adaptive-clip count noise (0 when fixed clip).
        count_unit: Skellam only: ring units per count unit (C * scale; >= 1), used to
            charge the count's own Skellam noise; 1 is the conservative default.
        count_sens: Skellam only: the count's sensitivity in count units (1/2, or 1
            under the substitution relation).
        parties: distributed discrete Gaussian: honest shares in the sum (survivors - colluders).
        dim: distributed discrete Gaussian: the vector dimension d.
        exact_pld: True when the PLD engine can account this charge.
    """

    kind: ChargeKind
    q: float = 1.0
    z: float = math.inf
    l2: float = 0.0
    l1: float = 0.0
    variance: float = 0.0
    count_sigma: float = 0.0
    count_unit: float = 1.0
    count_sens: float = 0.5
    parties: int = 1
    dim: int = 0
    exact_pld: bool = True


@dataclass(frozen=True, slots=True)
class AccountingResult:
    """Epsilon with the engine that produced it.

    Attributes:
        epsilon: the composed epsilon at ``delta`` (``math.inf``: no finite guarantee).
        delta: the delta it is stated at.
        accountant: the accountant asked for.
        engine: the engine that produced it (``"abort term"`` when the abort term alone spends delta).
        abort_delta: the part of ``delta`` spent on rounds whose release decision hinged on one
            client (:mod:`dp.accountants.aborts`); the noise is accounted at the rest,
            ``(delta - abort_delta) / (1 - abort_delta)``.
    """

    epsilon: float
    delta: float
    accountant: str
    engine: str
    abort_delta: float = 0.0


def effective_gaussian_z(z: float, count_sigma: float) -> float:
    """Noise multiplier of the joint (update sum, centred clip count) Gaussian query.

    Security:
        Andrew, Thakkar, McMahan, Ramaswamy 2021, Thm. 1: z_eff = (z^-2 + (2 sigma_b)^-2)^-1/2.
    """
    if count_sigma <= 0.0:
        return z
    if z <= 0.0:
        return 0.0
    return float((z**-2 + (2.0 * count_sigma) ** -2) ** -0.5)


def charge_of(event: RoundEvent) -> RoundCharge:
    """Map one event to how it is charged (see the module docstring for the rules).

    Raises:
        AccountingError: a mechanism this accountant cannot bound (an unknown
            mechanism, or a distributed discrete Gaussian without its dimension).
    """
    if event.sampling_rate == 0.0:
        return RoundCharge(ChargeKind.FREE)
    if event.survivors == 0 and (event.mechanism is Mechanism.NONE or event.noise_variance <= 0.0):
        return RoundCharge(ChargeKind.FREE)  # nobody's update and no noise: nothing was released
    if event.mechanism is Mechanism.NONE:
        return RoundCharge(ChargeKind.NON_PRIVATE)
    if event.noise_variance <= 0.0:
        return RoundCharge(ChargeKind.NON_PRIVATE)
    local = event.mode is DPMode.LOCAL
    fixed = event.sampling is Sampling.FIXED_SIZE and not local and event.sampling_rate < 1.0
    q = 1.0 if (local or event.sampling is Sampling.FULL) else float(event.sampling_rate)
    # Substitution relation for fixed-size cohorts: one client's swap moves a sum by twice the clip.
    factor = 2.0 if fixed else 1.0
    if event.mechanism is Mechanism.DISCRETE_GAUSSIAN and event.mode is DPMode.DISTRIBUTED:
        if event.dim <= 0:
            raise AccountingError(
                f"round {event.round}: a distributed discrete Gaussian is accounted with its dimension "
                "(Kairouz, Liu, Steinke 2021, Prop. 14); the event has dim = 0"
            )
        l2 = event.l2_sensitivity
        l1 = event.l1_sensitivity if event.l1_sensitivity > 0 else min(l2 * l2, math.sqrt(event.dim) * l2)
        return RoundCharge(
            ChargeKind.DDG_FIXED if fixed else ChargeKind.DDG,
            q=q,
            l2=factor * l2,
            l1=factor * l1,
            variance=event.noise_variance,
            count_sigma=event.clip_query_noise_multiplier,
            count_unit=max(1.0, l2 - math.sqrt(event.dim)),
            count_sens=0.5 * factor,
            parties=max(1, event.survivors - event.colluders),
            dim=event.dim,
            exact_pld=False,
        )
    if event.mechanism in (Mechanism.GAUSSIAN, Mechanism.DISCRETE_GAUSSIAN):
        z = math.sqrt(event.noise_variance) / (factor * event.l2_sensitivity)
        z = effective_gaussian_z(z, event.clip_query_noise_multiplier / factor)
        if z <= 0.0:
            return RoundCharge(ChargeKind.NON_PRIVATE)
        if fixed:
            return RoundCharge(ChargeKind.GAUSSIAN_FIXED, q=q, z=z, exact_pld=False)
        return RoundCharge(ChargeKind.GAUSSIAN_POISSON, q=q, z=z, exact_pld=event.mechanism is Mechanism.GAUSSIAN)
    if event.mechanism is Mechanism.SKELLAM:
        l2 = event.l2_sensitivity
        l1 = event.l1_sensitivity
        if l1 <= 0.0:
            # Integer vectors: |v_i| <= v_i^2, so L1 <= L2^2; and L1 <= sqrt(d) L2.
            l1 = l2 * l2 if event.dim <= 0 else min(l2 * l2, math.sqrt(event.dim) * l2)
        # Fixed-size cohorts: substitution relation (doubled sensitivities), WBK19 Thm. 9 amplification.
        return RoundCharge(
            ChargeKind.SKELLAM_FIXED if fixed else ChargeKind.SKELLAM,
            q=q,
            l2=factor * l2,
            l1=factor * l1,
            variance=event.noise_variance,
            count_sigma=event.clip_query_noise_multiplier,
            # The event's L2 sensitivity is C * scale + sqrt(d) (dp.calibration), so C * scale is
            # recoverable; without dim, 1 ring unit per count unit is the conservative choice.
            count_unit=max(1.0, l2 - math.sqrt(event.dim)) if event.dim > 0 else 1.0,
            count_sens=0.5 * factor,
            exact_pld=False,
        )
    raise AccountingError(f"round {event.round}: unsupported mechanism {event.mechanism!r}")


def _check(delta: float, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ConfigurationError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")


@lru_cache(maxsize=4096)
def _wor_gaussian_rdp(q: float, z: float) -> tuple[float, ...]:
    from dp_accounting.rdp import rdp_privacy_accountant as lib

    vals = lib._compute_rdp_sample_wor_gaussian(q, z, list(_rdp.INTEGER_ORDERS))
    return tuple(float(v) for v in np.asarray(vals, dtype=np.float64))


def _rdp_matrix(charges: Sequence[RoundCharge]) -> npt.NDArray[np.float64]:
    """Per-round RDP at the integer orders, shape (n, len(INTEGER_ORDERS)); inf rows for non-private."""
    n = len(charges)
    out = np.zeros((n, len(_rdp.INTEGER_ORDERS)), dtype=np.float64)
    pois = [i for i, c in enumerate(charges) if c.kind is ChargeKind.GAUSSIAN_POISSON]
    if pois:
        pairs = np.array([(charges[i].q, charges[i].z) for i in pois], dtype=np.float64)
        uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
        vals = _rdp.poisson_gaussian_rdp(uniq[:, 0], uniq[:, 1])
        out[np.array(pois)] = vals[inv.reshape(-1)]
    for kind, amplify in (
        (ChargeKind.SKELLAM, _rdp.poisson_general_rdp_batch),
        (ChargeKind.SKELLAM_FIXED, _rdp.wor_general_rdp_batch),
        (ChargeKind.DDG, _rdp.poisson_general_rdp_batch),
        (ChargeKind.DDG_FIXED, _rdp.wor_general_rdp_batch),
    ):
        _integer_noise_rows(out, charges, kind, amplify)
    for i, c in enumerate(charges):
        if c.kind is ChargeKind.NON_PRIVATE:
            out[i] = np.inf
        elif c.kind is ChargeKind.GAUSSIAN_FIXED:
            out[i] = _wor_gaussian_rdp(c.q, c.z)
    return out


def _integer_noise_rows(
    out: npt.NDArray[np.float64],
    charges: Sequence[RoundCharge],
    kind: ChargeKind,
    amplify: Callable[[npt.NDArray[np.float64], npt.NDArray[np.float64]], npt.NDArray[np.float64]],
) -> None:
    sk = [i for i, c in enumerate(charges) if c.kind is kind]
    if sk:
        params = np.array(
            [
                (c.q, c.l2, c.l1, c.variance, c.count_sigma, c.count_unit, c.count_sens, c.parties, c.dim)
                for c in (charges[i] for i in sk)
            ],
            dtype=np.float64,
        )
        uniq, inv = np.unique(params, axis=0, return_inverse=True)
        ells = np.arange(2, max(_rdp.INTEGER_ORDERS) + 1, dtype=np.float64)
        if kind in (ChargeKind.DDG, ChargeKind.DDG_FIXED):
            base = _rdp.ddg_rdp_batch(
                ells,
                l2=uniq[:, 1],
                l1=uniq[:, 2],
                variance=uniq[:, 3],
                parties=uniq[:, 7].astype(np.int64),
                dim=uniq[:, 8],
            )
        else:
            base = _rdp.skellam_rdp_batch(ells, l2=uniq[:, 1], l1=uniq[:, 2], variance=uniq[:, 3])
        has_count = uniq[:, 4] > 0
        if has_count.any():
            # The clip count is one more Skellam coordinate: sensitivity count_sens * unit ring units,
            # noise std count_sigma * unit; composed with the update before subsampling.
            u = uniq[has_count, 5]
            sens = uniq[has_count, 6] * u
            base[has_count] += _rdp.skellam_rdp_batch(ells, l2=sens, l1=sens, variance=(uniq[has_count, 4] * u) ** 2)
        vals = amplify(uniq[:, 0], base)
        out[np.array(sk)] = vals[inv.reshape(-1)]


def _rdp_eps_from_total(
    total: npt.NDArray[np.float64], delta: float | npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    full = _rdp.interpolate_orders(total)
    return _rdp.eps_from_rdp(_rdp.ORDERS, full, delta)


def account(events: Sequence[RoundEvent], delta: float, *, accountant: str = "pld") -> AccountingResult:
    """Compose ``events`` and return epsilon at ``delta`` with the engine used.

    Raises:
        ConfigurationError: unknown accountant or delta outside (0, 1).
        AccountingError: an event no engine can bound.
    """
    _check(delta, accountant)
    charges = [charge_of(e) for e in events]
    if any(c.kind is ChargeKind.NON_PRIVATE for c in charges):
        return AccountingResult(math.inf, delta, accountant, "non-private round")
    active = [c for c in charges if c.kind is not ChargeKind.FREE]
    if not active:
        return AccountingResult(0.0, delta, accountant, "none")
    # Rounds whose release decision hinged on one client spend part of delta (H); the
    # noise is accounted at what is left (dp.accountants.aborts).
    h = _aborts.abort_delta(events)
    if h >= delta:
        return AccountingResult(math.inf, delta, accountant, "abort term", abort_delta=h)
    d0 = _aborts.delta_for_noise(delta, h)
    if accountant == "rdp" or not all(c.exact_pld for c in active):
        total = _rdp_matrix(active).sum(axis=0)
        return AccountingResult(float(_rdp_eps_from_total(total, d0)), delta, accountant, "rdp", h)
    groups = _pld.group_rounds([(c.q, c.z) for c in active])
    # RDP of the (dominating) class representatives: an upper bound, used to size the
    # PLD discretisation and as a fallback when it is the smaller of the two.
    reps = [RoundCharge(ChargeKind.GAUSSIAN_POISSON, q=q, z=z) for (q, z) in groups]
    counts = np.array(list(groups.values()), dtype=np.float64)
    eps_rdp = float(_rdp_eps_from_total((_rdp_matrix(reps) * counts[:, None]).sum(axis=0), d0))
    eps = _pld.pld_epsilon_grouped(groups, d0, rough_epsilon=eps_rdp)
    # Both are upper bounds, so their minimum is one too.
    if eps_rdp < eps:
        return AccountingResult(eps_rdp, delta, accountant, "rdp", h)
    return AccountingResult(eps, delta, accountant, "pld", h)


def compute_epsilon(events: Sequence[RoundEvent], delta: float, *, accountant: str = "pld") -> float:
    """Epsilon of the composed ``events`` at ``delta`` (see :func:`account` and the module rules)."""
    return account(events, delta, accountant=accountant).epsilon


def epsilon_curve(events: Sequence[RoundEvent], delta: float, *, accountant: str = "pld") -> list[float]:
    """Cumulative epsilon after each event (same rules and engines as :func:`compute_epsilon`).

    Entry ``k`` equals ``compute_epsilon(events[:k + 1], ...)`` (up to float rounding), so a
    ledger that recorded epsilon round by round can be checked against it. The
    RDP curve is vectorised (10^4 heterogeneous rounds in about a second); the
    PLD curve runs the PLD engine once per round (tens of milliseconds each),
    so very long runs are better audited with ``"rdp"`` plus
    :func:`compute_epsilon` at chosen rounds.
    """
    _check(delta, accountant)
    charges = [charge_of(e) for e in events]
    n = len(charges)
    if n == 0:
        return []
    rdp = _rdp_matrix(charges)
    cum = np.cumsum(rdp, axis=0)
    # The abort term of each prefix (dp.accountants.aborts): no finite epsilon once it reaches delta.
    etas = np.array([_aborts.abort_probability(e) for e in events], dtype=np.float64)
    with np.errstate(divide="ignore"):
        h = -np.expm1(np.cumsum(np.log1p(-np.minimum(etas, 1.0))))
    d0 = np.where(h < delta, (delta - h) / (1.0 - h), 0.0)
    eps_rdp = _rdp_eps_from_total(cum, d0)
    eps_rdp = np.where(h < delta, eps_rdp, np.inf)
    nonpriv = np.cumsum([c.kind is ChargeKind.NON_PRIVATE for c in charges]) > 0
    active_seen = np.cumsum([c.kind is not ChargeKind.FREE for c in charges]) > 0
    eps_rdp = np.where(nonpriv, np.inf, np.where(active_seen, eps_rdp, 0.0))
    if accountant == "rdp":
        return [float(v) for v in eps_rdp]
    # From the first round the PLD engine cannot take, every prefix is accounted by RDP.
    first_rdp = next((i for i, c in enumerate(charges) if c.kind is not ChargeKind.FREE and not c.exact_pld), n)
    out: list[float] = []
    prefix: list[RoundEvent] = []
    last = 0.0
    for i, (e, c) in enumerate(zip(events, charges, strict=True)):
        prefix.append(e)
        if nonpriv[i]:
            out.append(math.inf)
        elif i >= first_rdp:
            out.append(float(eps_rdp[i]))
        elif c.kind is ChargeKind.FREE:
            out.append(last)  # nothing released: same epsilon as before
        else:
            last = account(prefix, delta, accountant="pld").epsilon
            out.append(last)
    return out
