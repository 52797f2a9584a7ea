"""The abort term (dp.accountants.aborts) against the exact privacy profile of the released mechanism.

Reference mechanism (one round, as privagg runs it under Poisson sampling): every client is
sampled with probability q; while fewer than m are sampled the attempt aborts and is redrawn;
then the sum of the sampled clients' scalar updates (each in [-C, C]) is released with
Gaussian noise of std z * C. For a tiny population (n others, plus the target x on the
neighbouring dataset) every sample is enumerated, so the released law on D and on D + {x}
is an exact Gaussian mixture, and the number of aborted attempts before the release is
geometric in the probability of a release. The hockey-stick divergence
H_a(P || Q) = int max(0, p - a q) is computed without sampling: the log-likelihood ratio's
sign changes are bracketed on a fine grid and refined (brentq), and the masses between them
come from Gaussian cdfs. Composed rounds use the exact privacy-loss distribution of one
round, discretised pessimistically (each grid cell carries the largest loss at its ends,
rounded up to a 1e-3 grid) and convolved: an upper bound on the exact composed profile.

The claim checked: privagg's reported (epsilon_vs_public, delta) is an upper bound on the
exact profile in both directions, whether model users see only the releases or every
attempt; and before the abort term existed (min_survivors not charged) it was not.
"""

from __future__ import annotations

import dataclasses
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.signal import fftconvolve
from scipy.special import logsumexp, ndtr
from scipy.stats import binom

from dp.accountants import abort_delta, abort_probability, account
from dp.accountants.aborts import release_threshold_cohort
from dp.adversary import capped_by_server, epsilon_vs_public, public_unbounded_reason
from dp.errors import ConfigurationError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling

C = 1.0

Mixture = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]  # means, weights, P(release)


def _released(values: list[float], q: float, m: int) -> Mixture:
    """The released sum's law given a release (a mixture over every sample of >= m clients)."""
    n = len(values)
    sums: dict[float, float] = {}
    for k in range(m, n + 1):
        w = q**k * (1.0 - q) ** (n - k)
        for idx in combinations(range(n), k):
            s = round(sum(values[i] for i in idx), 12)
            sums[s] = sums.get(s, 0.0) + w
    total = sum(sums.values())
    means = np.array(sorted(sums), dtype=np.float64)
    weights = np.array([sums[s] for s in sorted(sums)], dtype=np.float64) / total
    return means, weights, total


def _logpdf(mix: Mixture, sigma: float, y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    means, weights, _ = mix
    z = (y[:, None] - means[None, :]) / sigma
    return np.asarray(logsumexp(-0.5 * z * z, b=weights[None, :], axis=1) - math.log(sigma * math.sqrt(2 * math.pi)))


def _mass(mix: Mixture, sigma: float, lo: float, hi: float) -> float:
    means, weights, _ = mix
    return float(np.sum(weights * (ndtr((hi - means) / sigma) - ndtr((lo - means) / sigma))))


def _hockey(p: Mixture, q: Mixture, sigma: float, log_alpha: float) -> float:
    """Exact H_alpha(P || Q) for two Gaussian mixtures with the same std."""
    lo = min(p[0].min(), q[0].min()) - 40 * sigma
    hi = max(p[0].max(), q[0].max()) + 40 * sigma
    grid = np.linspace(lo, hi, int((hi - lo) / (sigma / 25)) + 2)

    def f(y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return _logpdf(p, sigma, y) - _logpdf(q, sigma, y) - log_alpha

    vals = f(grid)
    edges = [-math.inf]
    for i in np.nonzero(np.sign(vals[:-1]) != np.sign(vals[1:]))[0]:
        edges.append(brentq(lambda t: float(f(np.array([t]))[0]), grid[i], grid[i + 1], xtol=1e-13))
    edges.append(math.inf)
    total = 0.0
    inside = vals[0] > 0
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if inside:
            total += _mass(p, sigma, a, b) - math.exp(log_alpha) * _mass(q, sigma, a, b)
        inside = not inside
    return max(total, 0.0)


def _exact_delta(p: Mixture, q: Mixture, sigma: float, eps: float, *, visible: bool) -> float:
    """delta(eps) of P vs Q; with ``visible`` the number of aborted attempts is released too."""
    if not visible:
        return _hockey(p, q, sigma, eps)
    zp, zq = p[2], q[2]
    total = 0.0
    for k in range(400):
        a, b = (1 - zp) ** k * zp, (1 - zq) ** k * zq
        if a < 1e-18:
            break
        total += a * _hockey(p, q, sigma, eps + math.log(b / a))
    return total


def _event(n_others: int, q: float, z: float, m: int, *, rounds: int = 1) -> list[RoundEvent]:
    """What privagg records for the round (central mode: the noise does not depend on the cohort)."""
    one = RoundEvent(
        round=1, mode=DPMode.CENTRAL, mechanism=Mechanism.GAUSSIAN, l2_sensitivity=C, noise_variance=(z * C) ** 2,
        clip_norm=C, sampling=Sampling.POISSON, sampling_rate=q, population=n_others + 1, cohort=m, survivors=m,
        min_survivors=m,
    )
    return [one] * rounds


def _worst_delta(others: list[float], x: float, q: float, m: int, z: float, eps: float) -> float:
    d = _released(others, q, m)
    dx = _released([*others, x], q, m)
    return max(
        _exact_delta(a, b, z * C, eps, visible=vis) for a, b in ((dx, d), (d, dx)) for vis in (False, True)
    )


def test_the_old_accounting_is_not_an_upper_bound() -> None:
    """Ten other clients each sampled at q = 1/2, noise z = 1, min-survivors 5, delta = 1e-5: the
    amplified epsilon without the abort term (what privagg reported before it) leaves the exact
    delta about 1e3 times too large; the abort term alone already exceeds delta, so no finite
    amplified epsilon is reported now."""
    n, q, z, m, delta = 10, 0.5, 1.0, 5, 1e-5
    (event,) = _event(n, q, z, m)
    old = account([RoundEvent.from_dict({**event.to_dict(), "min_survivors": 0})], delta).epsilon
    assert math.isfinite(old)
    exact = _worst_delta([C] * n, -C, q, m, z, old)
    assert exact > 100 * delta
    # Only released sums visible (the aborted attempts hidden): still far above delta.
    d, dx = _released([C] * n, q, m), _released([C] * n + [-C], q, m)
    assert _exact_delta(dx, d, z * C, old, visible=False) > 100 * delta
    # Now: the chance that the release hinged on the target exceeds delta; no amplified bound.
    assert abort_delta([event]) > delta
    assert epsilon_vs_public([event], delta) == math.inf
    assert "abort rule (min-survivors 5)" in (public_unbounded_reason([event], delta) or "")


def test_old_accounting_fails_at_a_realistic_abort_rule() -> None:
    """The default before this term existed (the 5 % quantile of the cohort size) with 12 other
    clients at q = 0.5: the exact delta at the old epsilon is far above delta = 1e-3."""
    n, q, z, delta = 12, 0.5, 1.0, 1e-3
    m = int(binom.ppf(0.05, n + 1, q))
    (event,) = _event(n, q, z, m)
    old = account([RoundEvent.from_dict({**event.to_dict(), "min_survivors": 0})], delta).epsilon
    assert _worst_delta([C] * n, -C, q, m, z, old) > 5 * delta


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    n=st.integers(6, 10),
    q=st.sampled_from([0.3, 0.5, 0.7, 0.9]),
    m=st.integers(1, 4),
    z=st.sampled_from([0.7, 1.0, 1.5, 2.5]),
    delta=st.sampled_from([1e-3, 1e-2]),
    others=st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]), min_size=10, max_size=10),
    x=st.sampled_from([-1.0, 1.0]),
    accountant=st.sampled_from(["pld", "rdp"]),
)
def test_reported_epsilon_bounds_the_exact_profile(
    n: int, q: float, m: int, z: float, delta: float, others: list[float], x: float, accountant: str
) -> None:
    """For every (n, q, m, z) where privagg reports a finite epsilon against model users, the exact
    delta at that epsilon is at most delta, in both directions, with the aborted attempts hidden or
    visible, for worst-case datasets (all others at one end of the clip, the target at the other,
    or all others at 0) and an arbitrary one."""
    events = _event(n, q, z, m)
    assume(abort_delta(events) < delta)
    res = account(events, delta, accountant=accountant)
    assert res.abort_delta == pytest.approx(abort_delta(events))
    eps = res.epsilon
    assert eps == epsilon_vs_public(events, delta) or accountant == "rdp"
    for data in ([C] * n, [-C] * n, [0.0] * n, others[:n]):
        assert _worst_delta(data, x, q, m, z, eps) <= delta * (1 + 1e-6) + 1e-12


@pytest.mark.parametrize(("n", "q", "m", "z", "rounds"), [(8, 0.7, 2, 1.0, 3), (10, 0.7, 3, 1.5, 2)])
def test_reported_epsilon_bounds_the_composed_exact_profile(n: int, q: float, m: int, z: float, rounds: int) -> None:
    """A few composed rounds (the same neighbouring datasets every round, every attempt visible): the
    composed exact profile, bounded from above by a pessimistic discretisation of the exact one-round
    privacy-loss distribution, stays below delta at the reported epsilon."""
    delta = 1e-2
    events = _event(n, q, z, m, rounds=rounds)
    assert 0.1 * delta < abort_delta(events) < delta
    eps = epsilon_vs_public(events, delta)
    for others, x in (([C] * n, -C), ([-C] * n, C), ([0.0] * n, C)):
        d, dx = _released(others, q, m), _released([*others, x], q, m)
        for a, b in ((dx, d), (d, dx)):
            up, down, inf_mass = _loss_distribution(a, b, z * C)
            assert _composed_delta(up, inf_mass, rounds, eps) <= delta


def test_the_old_accounting_fails_over_composed_rounds() -> None:
    """Three rounds of ten others at q = 1/2, min-survivors 5, z = 1: a lower bound on the exact
    composed delta (losses rounded down, tails dropped) at the old epsilon is far above delta."""
    n, q, m, z, rounds, delta = 10, 0.5, 5, 1.0, 3, 1e-3
    events = _event(n, q, z, m, rounds=rounds)
    old = account([RoundEvent.from_dict({**e.to_dict(), "min_survivors": 0}) for e in events], delta).epsilon
    d, dx = _released([C] * n, q, m), _released([C] * n + [-C], q, m)
    _up, down, _inf = _loss_distribution(dx, d, z * C)
    assert _composed_delta(down, 0.0, rounds, old) > 10 * delta
    assert epsilon_vs_public(events, delta) == math.inf


_STEP = 1e-3


def _loss_distribution(
    p: Mixture, q: Mixture, sigma: float, *, cells: int = 50, step: float = _STEP
) -> tuple[tuple[int, npt.NDArray[np.float64]], tuple[int, npt.NDArray[np.float64]], float]:
    """The privacy loss log(p/q) of one round with every attempt visible, under P, on a grid of
    width ``step`` (1e-3): (offset, pmf) with each loss rounded up and with it rounded down, from cells
    of width sigma / ``cells`` carrying the largest (resp. smallest) loss at their ends; plus the mass
    charged as infinite loss (beyond +-40 sigma, and attempts past the 1e-16 tail)."""
    lo = min(p[0].min(), q[0].min()) - 40 * sigma
    hi = max(p[0].max(), q[0].max()) + 40 * sigma
    y = np.linspace(lo, hi, int((hi - lo) / (sigma / cells)) + 2)
    lr = _logpdf(p, sigma, y) - _logpdf(q, sigma, y)
    means, weights, _ = p
    cdf = np.sum(weights[None, :] * ndtr((y[:, None] - means[None, :]) / sigma), axis=1)
    cell = np.maximum(np.diff(cdf), 0.0)
    up, down = np.maximum(lr[:-1], lr[1:]), np.minimum(lr[:-1], lr[1:])
    inf_mass = max(0.0, 1.0 - float(cell.sum()))
    ups: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = []
    downs: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = []
    zp, zq = p[2], q[2]
    for k in range(400):
        a, b = (1 - zp) ** k * zp, (1 - zq) ** k * zq
        if a < 1e-16:
            inf_mass += (1 - zp) ** k  # the remaining attempts, charged as infinite loss
            break
        shift = math.log(a / b)
        ups.append((np.ceil((up + shift) / step).astype(np.int64), cell * a))
        downs.append((np.floor((down + shift) / step).astype(np.int64), cell * a))

    def pmf(parts: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]) -> tuple[int, npt.NDArray[np.float64]]:
        idx = np.concatenate([i for i, _ in parts])
        w = np.concatenate([w for _, w in parts])
        base = int(idx.min())
        out = np.zeros(int(idx.max()) - base + 1)
        np.add.at(out, idx - base, w)
        return base, out

    return pmf(ups), pmf(downs), inf_mass


def _composed_delta(
    dist: tuple[int, npt.NDArray[np.float64]], inf_mass: float, rounds: int, eps: float, *, step: float = _STEP
) -> float:
    """delta(eps) of ``rounds`` independent copies of the loss ``dist`` plus ``inf_mass`` of infinite loss."""
    base, one = dist
    total = one.copy()
    for _ in range(rounds - 1):
        # FFT convolution (exact up to ~1e-16 of the largest mass; negative round-off clipped), far
        # faster than np.convolve on these grids; both checks keep a margin of orders above that.
        total = np.maximum(fftconvolve(total, one), 0.0)
    values = (np.arange(total.size) + rounds * base) * step
    finite = float(np.sum(total * np.maximum(0.0, 1.0 - np.exp(eps - values))))
    return 1.0 - (1.0 - inf_mass) ** rounds + finite


# -- the term itself ------------------------------------------------------------------------------


def test_eta_matches_a_slow_enumeration_of_the_coupling() -> None:
    """eta equals P[the first attempt that releases on D + {x} or is bad is bad], computed by
    enumerating (|S'|, B) for n' others: P[bad] = q P[|S'| = m - 1], P[release, not bad] = P[|S'| >= m]."""
    for n, q, m in [(9, 0.5, 3), (20, 0.1, 2), (50, 0.2, 6), (999, 0.1, 57)]:
        bad = q * binom.pmf(m - 1, n, q)
        good = sum(binom.pmf(k, n, q) for k in range(m, n + 1))
        (event,) = _event(n, q, 1.0, m)  # population n + 1: others n (x there) or n + 1 (x not)
        bad1 = q * binom.pmf(m - 1, n + 1, q)
        good1 = binom.sf(m - 1, n + 1, q)
        assert abort_probability(event) == pytest.approx(max(bad / (good + bad), bad1 / (good1 + bad1)), rel=1e-9)


def test_no_term_where_the_relation_keeps_who_takes_part() -> None:
    (event,) = _event(9, 0.5, 1.0, 3)
    assert abort_probability(event) > 0 and not capped_by_server([event])
    for changed in (
        {"sampling": Sampling.FIXED_SIZE},
        {"sampling": Sampling.FULL, "sampling_rate": 1.0},
        {"mode": DPMode.LOCAL},
        {"min_survivors": 0},
    ):
        other = RoundEvent.from_dict({**event.to_dict(), **{k: getattr(v, "value", v) for k, v in changed.items()}})
        assert abort_probability(other) == 0.0 and capped_by_server([other])


def test_fewer_eligible_clients_and_dropouts_raise_the_term() -> None:
    base = RoundEvent(
        round=1, mode=DPMode.DISTRIBUTED, mechanism=Mechanism.GAUSSIAN, l2_sensitivity=1.0, noise_variance=1.0,
        clip_norm=1.0, sampling=Sampling.POISSON, sampling_rate=0.1, population=1000, cohort=90, survivors=90,
        min_survivors=60,
    )
    full = abort_probability(base)
    capped = abort_probability(RoundEvent.from_dict({**base.to_dict(), "eligible": 800}))
    dropping = abort_probability(RoundEvent.from_dict({**base.to_dict(), "dropout": 0.2}))
    assert 0 < full < capped and full < dropping
    # The simulation drops round(rho * k) of k sampled clients: release iff k >= m~.
    assert release_threshold_cohort(60, 0.2) == 75 and release_threshold_cohort(1, 0.0) == 1
    assert abort_probability(RoundEvent.from_dict({**base.to_dict(), "eligible": 59})) == 1.0


def test_epsilon_spends_delta_minus_the_abort_term() -> None:
    """epsilon is the noise's epsilon at (delta - H) / (1 - H), with both engines and along the curve."""
    from dp.accountants import epsilon_curve

    delta = 1e-5
    events = [
        RoundEvent(
            round=r, mode=DPMode.CENTRAL, mechanism=Mechanism.GAUSSIAN, l2_sensitivity=1.0, noise_variance=1.0,
            clip_norm=1.0, sampling=Sampling.POISSON, sampling_rate=0.1, population=1000, cohort=100, survivors=100,
            min_survivors=62,
        )
        for r in range(1, 6)
    ]
    h = abort_delta(events)
    assert 0.1 * delta < h < delta
    bare = [RoundEvent.from_dict({**e.to_dict(), "min_survivors": 0}) for e in events]
    for acc in ("pld", "rdp"):
        res = account(events, delta, accountant=acc)
        assert res.abort_delta == pytest.approx(h)
        assert res.epsilon == pytest.approx(account(bare, (delta - h) / (1 - h), accountant=acc).epsilon, rel=1e-9)
        assert res.epsilon > account(bare, delta, accountant=acc).epsilon
        curve = epsilon_curve(events, delta, accountant=acc)
        assert curve[-1] == pytest.approx(res.epsilon, rel=1e-9)
        assert curve[0] == pytest.approx(account(events[:1], delta, accountant=acc).epsilon, rel=1e-9)


def test_bad_abort_fields_are_refused() -> None:
    (event,) = _event(9, 0.5, 1.0, 3)
    for bad in ({"min_survivors": -1}, {"eligible": 11}, {"dropout": 1.0}, {"eligible": True}):
        with pytest.raises(ConfigurationError):
            RoundEvent(**{**{f: getattr(event, f) for f in event.__dataclass_fields__}, **bad})


# -- central mode's noise-alone release (no abort rule) ------------------------------------------


def _noise_alone_events(n_others: int, q: float, z: float, *, rounds: int = 1, survivors: int = 0) -> list[RoundEvent]:
    """What privagg records for a central Poisson round: no abort rule (an empty sample releases the
    noise alone), here for a round whose realised sample was empty (``survivors`` 0) or not."""
    one = RoundEvent(
        round=1, mode=DPMode.CENTRAL, mechanism=Mechanism.GAUSSIAN, l2_sensitivity=C, noise_variance=(z * C) ** 2,
        clip_norm=C, sampling=Sampling.POISSON, sampling_rate=q, population=n_others + 1, cohort=survivors,
        survivors=survivors, releases_empty=True,
    )
    return [one] * rounds


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 7),
    q=st.sampled_from([0.1, 0.3, 0.5, 0.9]),
    z=st.sampled_from([0.7, 1.0, 1.5, 2.5]),
    delta=st.sampled_from([1e-5, 1e-3, 1e-2]),
    others=st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]), min_size=9, max_size=9),
    x=st.sampled_from([-1.0, 1.0]),
    survivors=st.integers(0, 2),
    accountant=st.sampled_from(["pld", "rdp"]),
)
def test_noise_alone_release_is_bounded_by_the_reported_epsilon(
    n: int, q: float, z: float, delta: float, others: list[float], x: float, survivors: int, accountant: str
) -> None:
    """The noise-alone mechanism (every sample releases, the empty one the noise alone; m = 0 in the
    enumeration, so nothing is ever redrawn): its exact delta at the reported epsilon is at most
    delta in both directions, whatever the round's realised survivors (the charge ignores them), on
    tiny populations where privagg's old abort rule (min-survivors 1) reported no finite epsilon."""
    events = _noise_alone_events(n, q, z, survivors=survivors)
    res = account(events, delta, accountant=accountant)
    assert res.abort_delta == 0.0 and math.isfinite(res.epsilon) and res.epsilon > 0
    assert res.epsilon == account(_noise_alone_events(n, q, z, survivors=0), delta, accountant=accountant).epsilon
    for data in ([C] * n, [-C] * n, [0.0] * n, others[:n]):
        d, dx = _released(data, q, 0), _released([*data, x], q, 0)
        # Every attempt releases (no aborted attempts to see): the releases are the whole output.
        for a, b in ((dx, d), (d, dx)):
            assert _exact_delta(a, b, z * C, res.epsilon, visible=False) <= delta * (1 + 1e-6) + 1e-12


@pytest.mark.parametrize(("n", "q", "z", "rounds"), [(6, 0.3, 1.0, 4), (8, 0.5, 1.5, 3)])
def test_noise_alone_rounds_bound_the_composed_exact_profile(n: int, q: float, z: float, rounds: int) -> None:
    """Composed noise-alone rounds (empty realised samples among them): the exact composed profile at
    the reported epsilon is at most delta, where the same rounds with the old abort rule of one
    survivor report none. The reported epsilon is tight for the worst pair (others at 0, the target at
    C: the subsampled Gaussian's dominating pair), so the reference is refined (cells of sigma / 1000,
    losses on a 1e-4 grid) and brackets the exact delta: the lower bound must not exceed delta (it
    would prove the report wrong); the upper bound exceeds it by at most the reference's own
    discretisation slack (measured 0.44 %)."""
    delta = 1e-5
    events = [*_noise_alone_events(n, q, z, rounds=rounds - 1, survivors=1), *_noise_alone_events(n, q, z)]
    eps = epsilon_vs_public(events, delta)
    assert math.isfinite(eps)
    old = [RoundEvent.from_dict({**e.to_dict(), "releases_empty": False, "min_survivors": 1}) for e in events]
    assert epsilon_vs_public(old, delta) == math.inf
    for others, x in (([C] * n, -C), ([-C] * n, C), ([0.0] * n, C)):
        d, dx = _released(others, q, 0), _released([*others, x], q, 0)
        for a, b in ((dx, d), (d, dx)):
            up, down, inf_mass = _loss_distribution(a, b, z * C, cells=1000, step=1e-4)
            assert _composed_delta(down, 0.0, rounds, eps, step=1e-4) <= delta
            assert _composed_delta(up, inf_mass, rounds, eps, step=1e-4) <= 1.005 * delta


def test_an_empty_noise_alone_round_charged_as_free_is_not_an_upper_bound() -> None:
    """The old rule "a round with survivors == 0 costs nothing" applied to a noise-alone release: a run
    whose realised samples were all empty would report epsilon 0, but the mechanism that ran (the target
    sampled with probability q) has exact delta(0) far above delta."""
    n, q, z, delta = 5, 0.3, 1.0, 1e-5
    events = _noise_alone_events(n, q, z, rounds=3)
    assert epsilon_vs_public(events, delta) > 0.0
    d, dx = _released([0.0] * n, q, 0), _released([0.0] * n + [C], q, 0)
    # delta(eps) falls as eps grows, so delta(1e-9) is a lower bound on delta(0).
    assert _exact_delta(dx, d, z * C, 1e-9, visible=False) > 1e3 * delta


def test_a_noise_alone_round_is_recorded_as_having_no_abort_rule(tmp_path: Path) -> None:
    """``releases_empty`` survives the ledger (written only when set, so older records keep their
    form), the audit does not mistake such a round for an old one that did not record its rule, and
    an event cannot claim both an abort rule and a noise-alone release."""
    from dp.accountants import abort_rule_unrecorded
    from dp.ledger import Ledger, verify_ledger

    (event,) = _noise_alone_events(5, 0.2, 1.0)
    legacy = RoundEvent.from_dict({**event.to_dict(), "releases_empty": False})
    assert not abort_rule_unrecorded(event) and abort_rule_unrecorded(legacy)
    path = tmp_path / "l.jsonl"
    with Ledger.open(path) as ledger:
        ledger.append(event, epsilon=1.0, delta=1e-5)
        ledger.append(dataclasses.replace(legacy, round=2), epsilon=1.0, delta=1e-5)
    assert [e.releases_empty for e in verify_ledger(path).events] == [True, False]
    assert path.read_text().count("releases_empty") == 1
    with pytest.raises(ConfigurationError, match="no abort rule"):
        dataclasses.replace(event, min_survivors=1)
    with pytest.raises(ConfigurationError, match="releases_empty must be a bool"):
        dataclasses.replace(event, releases_empty=1)  # type: ignore[arg-type]
