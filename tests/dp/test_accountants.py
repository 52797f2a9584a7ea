"""Accountants: known answers, cross-checks against dp-accounting, rules for dropouts/colluders/NONE, speed."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import dp_accounting as dpa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dp.accountants import (
    ACCOUNTANT_VERSIONS,
    ChargeKind,
    account,
    analytic_gaussian_epsilon,
    charge_of,
    compute_epsilon,
    epsilon_curve,
)
from dp.accountants import pld as pld_mod
from dp.accountants import rdp as rdp_mod
from dp.accountants.analytic import analytic_gaussian_delta
from dp.errors import AccountingError, ConfigurationError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "dp"
DELTA = 1e-5


def gauss(i: int = 1, *, q: float = 0.01, z: float = 1.0, sampling: Sampling | None = None, **kw: object) -> RoundEvent:
    samp = sampling if sampling is not None else (Sampling.FULL if q >= 1 else Sampling.POISSON)
    args: dict[str, object] = dict(
        round=i,
        mode=DPMode.CENTRAL,
        mechanism=Mechanism.GAUSSIAN,
        l2_sensitivity=1.0,
        noise_variance=z * z,
        clip_norm=1.0,
        sampling=samp,
        sampling_rate=q,
        population=1000,
        cohort=100,
        survivors=100,
    )
    args.update(kw)
    return RoundEvent(**args)  # type: ignore[arg-type]


def lib_rdp(q: float, z: float, rounds: int, orders: list[float]) -> float:
    acc = dpa.rdp.RdpAccountant(orders)
    acc.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), rounds)
    return float(acc.get_epsilon(DELTA))


# ------------------------------------------------------------------ known answers


def test_versions_name_engines() -> None:
    assert set(ACCOUNTANT_VERSIONS) == {"pld", "rdp"}
    assert "dp-accounting" in ACCOUNTANT_VERSIONS["pld"]


def test_tff_anchor_rdp() -> None:
    # TensorFlow Federated DP tutorial: sigma 1.2, 120 of 3383 clients, 100 rounds, delta 1e-5 -> eps ~ 1.986.
    evs = [gauss(i + 1, q=120 / 3383, z=1.2) for i in range(100)]
    eps = compute_epsilon(evs, DELTA, accountant="rdp")
    assert eps == pytest.approx(1.986, rel=3e-3)
    assert eps >= 1.986 - 1e-3  # never below the reference (ours uses fewer orders: an upper bound)
    tight = compute_epsilon(evs, DELTA)
    assert tight < eps  # PLD is tighter than RDP here


def test_sampled_gaussian_rdp_vectors() -> None:
    vecs = json.loads((VECTORS / "sampled_gaussian_rdp.json").read_text())
    orders = list(rdp_mod.INTEGER_ORDERS)
    for v in vecs:
        got = rdp_mod.poisson_gaussian_rdp(np.array([v["q"]]), np.array([v["z"]]))[0, orders.index(v["alpha"])]
        assert got == pytest.approx(v["rdp"], rel=1e-9, abs=1e-14), v


def test_analytic_gaussian_vectors() -> None:
    for v in json.loads((VECTORS / "analytic_gaussian.json").read_text()):
        assert analytic_gaussian_epsilon([v["z"]], v["delta"]) == pytest.approx(v["epsilon"], rel=1e-8, abs=1e-10)


def test_analytic_composition_equals_single_gaussian() -> None:
    # T rounds of z compose to one Gaussian with z / sqrt(T).
    assert analytic_gaussian_epsilon([2.0] * 16, DELTA) == pytest.approx(analytic_gaussian_epsilon([0.5], DELTA))


@pytest.mark.parametrize(("z", "rounds"), [(0.5, 1), (1.0, 100), (3.0, 100), (1.0, 10_000)])
def test_full_participation_matches_analytic_gaussian(z: float, rounds: int) -> None:
    evs = [gauss(i + 1, q=1.0, z=z) for i in range(rounds)]
    eps = compute_epsilon(evs, DELTA)
    exact = analytic_gaussian_epsilon([z] * rounds, DELTA)
    assert eps >= exact * (1 - 1e-6)
    assert eps == pytest.approx(exact, rel=1e-3)


def test_analytic_errors() -> None:
    with pytest.raises(ConfigurationError, match="delta"):
        analytic_gaussian_epsilon([1.0], 0.0)
    with pytest.raises(ConfigurationError, match="noise multiplier"):
        analytic_gaussian_epsilon([0.0], DELTA)
    assert analytic_gaussian_epsilon([], DELTA) == 0.0
    assert analytic_gaussian_epsilon([1000.0], 0.5) == 0.0
    assert analytic_gaussian_delta(50.0, 0.01) == 0.0


FAST_GRID = [(0.1, 3.0, 100), (0.001, 3.0, 10_000), (0.01, 1.0, 100), (1.0, 1.0, 100)]


def _grid_reference() -> list[dict[str, float]]:
    path = VECTORS / "pld_grid_reference.json"
    return list(json.loads(path.read_text()))


@pytest.mark.parametrize(("q", "sigma", "rounds"), FAST_GRID)
def test_pld_against_stored_dp_accounting_reference(q: float, sigma: float, rounds: int) -> None:
    ref = next(r for r in _grid_reference() if (r["q"], r["sigma"], r["rounds"]) == (q, sigma, rounds))
    evs = [gauss(i + 1, q=q, z=sigma) for i in range(rounds)]
    eps = compute_epsilon(evs, DELTA)
    assert eps >= ref["epsilon"] * (1 - 0.005)
    assert eps <= ref["epsilon"] * 1.02


@pytest.mark.parametrize(("q", "z", "rounds"), [(0.01, 1.0, 50), (0.1, 2.0, 10), (0.5, 0.8, 3)])
def test_rdp_matches_dp_accounting_at_same_orders(q: float, z: float, rounds: int) -> None:
    # Independent implementations, same integer orders: same epsilon.
    evs = [gauss(i + 1, q=q, z=z) for i in range(rounds)]
    total = rdp_mod.poisson_gaussian_rdp(np.array([q]), np.array([z]))[0] * rounds
    ours = float(rdp_mod.eps_from_rdp(rdp_mod.INTEGER_ORDERS, total, DELTA))
    assert ours == pytest.approx(lib_rdp(q, z, rounds, [float(a) for a in rdp_mod.INTEGER_ORDERS]), rel=1e-9)
    # With the fractional (interpolated) orders we can only do better or equal.
    assert compute_epsilon(evs, DELTA, accountant="rdp") <= ours + 1e-12


def _rdp_by_quadrature(q: float, z: float, alpha: float) -> float:
    """D_alpha((1-q) N(0,z^2) + q N(1,z^2) || N(0,z^2)) by numerical integration (scipy quad)."""
    from scipy.integrate import quad

    def integrand(x: float) -> float:
        log_ratio = np.logaddexp(math.log1p(-q), math.log(q) + (2 * x - 1) / (2 * z * z))
        return float(math.exp(stats.norm.logpdf(x, 0.0, z) + alpha * log_ratio))

    pieces = ((-40.0 * z, 0.0), (0.0, 1.0), (1.0, alpha + 1.0 + 40.0 * z))
    total = sum(quad(integrand, a, b, epsabs=0.0, epsrel=1e-12, limit=200)[0] for a, b in pieces)
    return math.log(total) / (alpha - 1)


def test_interpolated_orders_conservative_known_case() -> None:
    ints = rdp_mod.poisson_gaussian_rdp(np.array([0.125]), np.array([2.0]))
    interp = rdp_mod.interpolate_orders(ints)[0]
    orders = list(rdp_mod.ORDERS)
    for a in (1.1, 2.5):
        assert interp[orders.index(a)] >= _rdp_by_quadrature(0.125, 2.0, a)


@pytest.mark.slow
@settings(max_examples=10, deadline=None)
@given(q=st.floats(0.001, 0.9), z=st.floats(0.5, 5.0))
def test_interpolated_orders_are_conservative(q: float, z: float) -> None:
    # Chord of the convex CGF >= the exact fractional-order RDP. The oracle is numerical
    # integration (scipy quad): dp-accounting's fractional series is unreliable for large q (q = 0.125, z = 2
    # gives eps(1.1) = 0.0042 where the integral gives 0.0024).
    ints = rdp_mod.poisson_gaussian_rdp(np.array([q]), np.array([z]))
    interp = rdp_mod.interpolate_orders(ints)[0]
    orders = list(rdp_mod.ORDERS)
    for a in (1.1, 1.5, 2.5, 5.75):
        exact = _rdp_by_quadrature(q, z, a)
        assert interp[orders.index(a)] >= exact * (1 - 1e-7) - 1e-15
    # ... and at the integer orders the quadrature agrees with the closed form.
    assert ints[0, 1] == pytest.approx(_rdp_by_quadrature(q, z, 3.0), rel=1e-7)


@settings(max_examples=15, deadline=None)
@given(q=st.floats(0.001, 0.5), z=st.floats(0.5, 4.0))
def test_zhu_wang_general_bound_dominates_exact_gaussian(q: float, z: float) -> None:
    exact = rdp_mod.poisson_gaussian_rdp(np.array([q]), np.array([z]))[0]
    general = rdp_mod.poisson_general_rdp(q, lambda a: a / (2 * z * z))
    assert np.all(general >= exact * (1 - 1e-7) - 1e-15)
    assert np.all(
        general <= np.array(rdp_mod.INTEGER_ORDERS) / (2 * z * z) * (1 + 1e-9)
    )  # never worse than no sampling


def test_fixed_size_uses_substitution_bound() -> None:
    # Fixed-size cohort: sampling without replacement, substitution relation, sensitivity 2C.
    ev = gauss(1, q=0.05, z=2.0, sampling=Sampling.FIXED_SIZE)
    c = charge_of(ev)
    assert c.kind is ChargeKind.GAUSSIAN_FIXED and c.z == pytest.approx(1.0)
    res = account([ev] * 20, DELTA)
    assert res.engine == "rdp"
    acc = dpa.rdp.RdpAccountant(
        [float(a) for a in rdp_mod.INTEGER_ORDERS], neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(dpa.SampledWithoutReplacementDpEvent(1000, 50, dpa.GaussianDpEvent(1.0)), 20)
    assert res.epsilon <= acc.get_epsilon(DELTA) + 1e-9
    assert res.epsilon == pytest.approx(acc.get_epsilon(DELTA), rel=0.05)
    # ... and it is never cheaper than treating the same rate as Poisson at the add/remove sensitivity.
    assert res.epsilon > compute_epsilon([gauss(1, q=0.05, z=2.0)] * 20, DELTA)


# ------------------------------------------------------------------ rules


def test_none_and_free_rounds() -> None:
    # Nobody survived and no noise: nothing was released.
    free = gauss(1, survivors=0, mechanism=Mechanism.NONE, l2_sensitivity=0.0, z=0.0)
    assert compute_epsilon([free], DELTA) == 0.0
    assert charge_of(free).kind is ChargeKind.FREE
    assert compute_epsilon([], DELTA) == 0.0
    assert compute_epsilon([gauss(1, q=0.0, sampling=Sampling.POISSON)], DELTA) == 0.0
    nodp = RoundEvent(
        round=2,
        mode=DPMode.NONE,
        mechanism=Mechanism.NONE,
        l2_sensitivity=0.0,
        noise_variance=0.0,
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=0.1,
        population=100,
        cohort=10,
        survivors=10,
    )
    assert compute_epsilon([gauss(1), nodp], DELTA) == math.inf
    assert compute_epsilon([nodp], DELTA, accountant="rdp") == math.inf
    assert epsilon_curve([gauss(1), nodp, gauss(3)], DELTA)[1:] == [math.inf, math.inf]
    # A NONE round nobody survived released nothing.
    dead = RoundEvent(
        round=2,
        mode=DPMode.NONE,
        mechanism=Mechanism.NONE,
        l2_sensitivity=0.0,
        noise_variance=0.0,
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=0.1,
        population=100,
        cohort=10,
        survivors=0,
    )
    assert compute_epsilon([gauss(1), dead], DELTA) == compute_epsilon([gauss(1)], DELTA)


def test_noise_alone_release_is_charged_like_any_round() -> None:
    # A round that released the noise alone for an empty sample (central mode, Poisson) is one
    # outcome of the subsampled Gaussian mechanism: charged as a round with survivors, never free
    # (a free charge would depend on whether the target was sampled). Fails under the old rule
    # "survivors == 0 costs nothing".
    empty = gauss(1, q=0.1, z=1.0, cohort=0, survivors=0, releases_empty=True)
    full = gauss(1, q=0.1, z=1.0, releases_empty=True)
    assert charge_of(empty) == charge_of(full)
    assert charge_of(empty).kind is ChargeKind.GAUSSIAN_POISSON
    evs = [gauss(i, q=0.1, z=1.0, releases_empty=True, **({"cohort": 0, "survivors": 0} if i % 3 == 0 else {}))
           for i in range(1, 10)]
    eps = compute_epsilon(evs, DELTA)
    assert eps == compute_epsilon([full] * 9, DELTA) > 0.0
    assert epsilon_curve(evs, DELTA)[-1] == pytest.approx(eps, rel=1e-12)
    assert all(b > a for a, b in zip(epsilon_curve(evs, DELTA), epsilon_curve(evs, DELTA)[1:], strict=False))
    # Reference: dp-accounting's PLD of 9 Poisson-subsampled Gaussian rounds.
    ref = dpa.pld.PLDAccountant().compose(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.0)), 9)
    assert eps <= ref.get_epsilon(DELTA) * 1.001
    assert eps == pytest.approx(ref.get_epsilon(DELTA), rel=0.02)


def test_zero_noise_is_non_private() -> None:
    assert compute_epsilon([gauss(1, z=0.0)], DELTA) == math.inf
    assert charge_of(gauss(1, z=0.0)).kind is ChargeKind.NON_PRIVATE


def test_local_mode_gets_no_amplification() -> None:
    ev = gauss(1, q=0.01, z=2.0, mode=DPMode.LOCAL)
    assert charge_of(ev).q == 1.0
    assert compute_epsilon([ev] * 5, DELTA) == pytest.approx(analytic_gaussian_epsilon([2.0] * 5, DELTA), rel=1e-3)


def test_adaptive_clip_query_folded_in() -> None:
    # z = 1, sigma_b = 1 -> z_eff = (1 + 1/4)^-1/2
    ev = gauss(1, q=0.02, z=1.0, clip_query_noise_multiplier=1.0)
    assert charge_of(ev).z == pytest.approx((1.0 + 0.25) ** -0.5)
    assert compute_epsilon([ev] * 10, DELTA) > compute_epsilon([gauss(1, q=0.02, z=1.0)] * 10, DELTA)


def skellam_event(*, survivors: int, per_client: float, colluders: int = 0, q: float = 0.1) -> RoundEvent:
    return RoundEvent(
        round=1,
        mode=DPMode.DISTRIBUTED,
        mechanism=Mechanism.SKELLAM,
        l2_sensitivity=1000.0,
        l1_sensitivity=20_000.0,
        noise_variance=per_client * max(0, survivors - colluders),
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=q,
        population=1000,
        cohort=100,
        survivors=survivors,
        colluders=colluders,
        dim=400,
    )


def test_skellam_rdp_formula_and_subsampling() -> None:
    # Agarwal, Kairouz, Liu 2021 Thm 3.5 (with 2*alpha), at alpha = 2, by hand.
    l2, l1, var = 1000.0, 20_000.0, 4.0e6
    mu = var / 2
    by_hand = 2 * l2**2 / (4 * mu) + min((4 * l2**2 + 6 * l1) / (16 * mu**2), 3 * l1 / (4 * mu))
    assert rdp_mod.skellam_rdp(2.0, l2=l2, l1=l1, variance=var) == pytest.approx(by_hand)
    # Full participation: Skellam epsilon is the RDP conversion of the base curve.
    ev = skellam_event(survivors=100, per_client=var / 100, q=1.0)
    ev = RoundEvent(
        **{
            **ev.to_dict(),
            "sampling": Sampling.FULL,
            "mode": DPMode.DISTRIBUTED,
            "mechanism": Mechanism.SKELLAM,
            "sampling_rate": 1.0,
            "population": 100,
        }
    )
    base = np.array([rdp_mod.skellam_rdp(float(a), l2=l2, l1=l1, variance=var) for a in rdp_mod.INTEGER_ORDERS])
    expect = float(rdp_mod.eps_from_rdp(rdp_mod.ORDERS, rdp_mod.interpolate_orders(base * 3), DELTA))
    assert compute_epsilon([ev] * 3, DELTA) == pytest.approx(expect, rel=1e-12)
    assert account([ev], DELTA).engine == "rdp"


def test_dropouts_charge_the_survivors_noise() -> None:
    # 30 of 100 clients drop after masking: the round is charged with the 70 survivors' noise.
    per_client = (1.0 * 1000.0) ** 2 / 100  # sized for z = 1 with 100 clients
    dropped = skellam_event(survivors=70, per_client=per_client)
    assert dropped.noise_variance == pytest.approx(70 * per_client)
    c = charge_of(dropped)
    assert c.variance == pytest.approx(70 * per_client)
    base = lambda a: rdp_mod.skellam_rdp(float(a), l2=1000.0, l1=20_000.0, variance=70 * per_client)  # noqa: E731
    expect = float(
        rdp_mod.eps_from_rdp(rdp_mod.ORDERS, rdp_mod.interpolate_orders(rdp_mod.poisson_general_rdp(0.1, base)), DELTA)
    )
    assert compute_epsilon([dropped], DELTA) == pytest.approx(expect, rel=1e-12)
    full = skellam_event(survivors=100, per_client=per_client)
    assert compute_epsilon([dropped], DELTA) > compute_epsilon([full], DELTA)
    # Colluders' noise is not counted either: 70 survivors, 10 colluders = 60 clients' noise.
    coll = skellam_event(survivors=70, per_client=per_client, colluders=10)
    assert coll.noise_variance == pytest.approx(60 * per_client)
    assert compute_epsilon([coll], DELTA) > compute_epsilon([dropped], DELTA)
    # All survivors colluding: no honest noise, no privacy.
    assert compute_epsilon([skellam_event(survivors=5, per_client=per_client, colluders=5)], DELTA) == math.inf


def test_skellam_fixed_size_substitution_with_wor_amplification() -> None:
    ev = RoundEvent(
        **{
            **skellam_event(survivors=100, per_client=1e4).to_dict(),
            "sampling": Sampling.FIXED_SIZE,
            "mode": DPMode.DISTRIBUTED,
            "mechanism": Mechanism.SKELLAM,
        }
    )
    c = charge_of(ev)
    assert (c.kind, c.q, c.l2, c.l1) == (ChargeKind.SKELLAM_FIXED, 0.1, 2000.0, 40_000.0)
    ells = np.arange(2, max(rdp_mod.INTEGER_ORDERS) + 1, dtype=np.float64)
    base = rdp_mod.skellam_rdp_batch(ells, l2=np.array([2000.0]), l1=np.array([40_000.0]), variance=np.array([1e6]))
    expect = rdp_mod.eps_from_rdp(
        rdp_mod.ORDERS, rdp_mod.interpolate_orders(rdp_mod.wor_general_rdp_batch(np.array([0.1]), base)[0]), DELTA
    )
    assert compute_epsilon([ev], DELTA) == pytest.approx(float(expect), rel=1e-12)
    # Amplification helps, but the same rate as Poisson (add/remove, single sensitivity) is cheaper.
    no_amp = rdp_mod.eps_from_rdp(
        rdp_mod.ORDERS, rdp_mod.interpolate_orders(base[0, [a - 2 for a in rdp_mod.INTEGER_ORDERS]]), DELTA
    )
    assert compute_epsilon([ev], DELTA) < float(no_amp)
    assert compute_epsilon([ev], DELTA) > compute_epsilon([skellam_event(survivors=100, per_client=1e4)], DELTA)


@pytest.mark.parametrize(("q", "z"), [(0.05, 1.0), (0.01, 2.0), (0.3, 0.8)])
def test_wor_general_bound_against_gaussian_specialisation(q: float, z: float) -> None:
    # WBK19 Thm. 9 (general) must be no tighter than dp-accounting's Gaussian-refined Thm. 27, and no
    # worse than not sampling.
    from dp_accounting.rdp import rdp_privacy_accountant as lib

    ells = np.arange(2, max(rdp_mod.INTEGER_ORDERS) + 1, dtype=np.float64)
    mine = rdp_mod.wor_general_rdp_batch(np.array([q]), (ells / (2 * z * z))[None, :])[0]
    ref = np.asarray(lib._compute_rdp_sample_wor_gaussian(q, z, list(rdp_mod.INTEGER_ORDERS)))
    assert np.all(mine >= ref * (1 - 1e-9))
    assert np.all(mine <= np.array(rdp_mod.INTEGER_ORDERS) / (2 * z * z) * (1 + 1e-12))
    assert mine[0] == pytest.approx(ref[0], rel=1e-9)  # at order 2 the two bounds coincide


def test_skellam_default_l1_from_l2() -> None:
    ev = RoundEvent(
        **{
            **skellam_event(survivors=100, per_client=1e4).to_dict(),
            "l1_sensitivity": 0.0,
            "mode": DPMode.DISTRIBUTED,
            "mechanism": Mechanism.SKELLAM,
            "sampling": Sampling.POISSON,
        }
    )
    assert charge_of(ev).l1 == pytest.approx(min(1000.0**2, math.sqrt(400) * 1000.0))


def test_discrete_gaussian_central_and_distributed() -> None:
    dg = gauss(1, q=0.1, z=2.0, mechanism=Mechanism.DISCRETE_GAUSSIAN)
    res = account([dg] * 10, DELTA)
    assert res.engine == "rdp"
    assert res.epsilon == pytest.approx(compute_epsilon([gauss(1, q=0.1, z=2.0)] * 10, DELTA, accountant="rdp"))
    bad = gauss(1, mechanism=Mechanism.DISCRETE_GAUSSIAN, mode=DPMode.DISTRIBUTED)
    with pytest.raises(AccountingError, match="dimension"):
        compute_epsilon([bad], DELTA)


def test_distributed_discrete_gaussian_bound_by_hand() -> None:
    # Kairouz, Liu, Steinke 2021 Prop. 14 / Thm. 1 with n = 3 shares of sigma = 1, d = 4, l2 = 2, l1 = 4.
    n, sigma2, d, l2, l1 = 3, 1.0, 4, 2.0, 4.0
    tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma2 * k / (k + 1)) for k in range(1, n))
    s2, s1 = l2 / math.sqrt(n * sigma2), l1 / math.sqrt(n * sigma2)
    for a in (2.0, 7.0):
        expect = min(a / 2 * s2**2 + tau * d, a / 2 * (s2**2 + 2 * s1 * tau + tau**2 * d), a / 2 * (s2 + 2 * tau) ** 2)
        got = rdp_mod.ddg_rdp_batch(
            np.array([a]),
            l2=np.array([l2]),
            l1=np.array([l1]),
            variance=np.array([n * sigma2]),
            parties=np.array([n]),
            dim=np.array([float(d)]),
        )[0, 0]
        assert got == pytest.approx(expect, rel=1e-12)
    # One share (tau = 0) is the discrete Gaussian: alpha l2^2 / (2 sigma^2).
    one = rdp_mod.ddg_rdp_batch(
        np.array([3.0]),
        l2=np.array([2.0]),
        l1=np.array([4.0]),
        variance=np.array([4.0]),
        parties=np.array([1]),
        dim=np.array([4.0]),
    )[0, 0]
    assert one == pytest.approx(3.0 * 4.0 / (2 * 4.0))


def test_distributed_discrete_gaussian_event_charges_honest_shares() -> None:
    ev = RoundEvent(
        round=1,
        mode=DPMode.DISTRIBUTED,
        mechanism=Mechanism.DISCRETE_GAUSSIAN,
        l2_sensitivity=30.0,
        noise_variance=70 * 4.0,
        clip_norm=1.0,
        sampling=Sampling.POISSON,
        sampling_rate=0.1,
        population=1000,
        cohort=100,
        survivors=80,
        colluders=10,
        dim=100,
    )
    c = charge_of(ev)
    assert (c.kind, c.parties, c.dim) == (ChargeKind.DDG, 70, 100)
    assert c.l1 == pytest.approx(min(900.0, 10 * 30.0))
    # With sigma = 2 per share the tau term is visible: worse than a single Gaussian of the same total variance.
    assert compute_epsilon([ev], DELTA) > compute_epsilon(
        [
            RoundEvent(
                **{
                    **ev.to_dict(),
                    "mode": DPMode.CENTRAL,
                    "mechanism": Mechanism.GAUSSIAN,
                    "sampling": Sampling.POISSON,
                }
            )
        ],
        DELTA,
        accountant="rdp",
    )
    fixed = RoundEvent(
        **{
            **ev.to_dict(),
            "mode": DPMode.DISTRIBUTED,
            "mechanism": Mechanism.DISCRETE_GAUSSIAN,
            "sampling": Sampling.FIXED_SIZE,
        }
    )
    assert charge_of(fixed).kind is ChargeKind.DDG_FIXED and charge_of(fixed).l2 == 60.0
    assert math.isfinite(compute_epsilon([fixed], DELTA))


def test_argument_errors() -> None:
    with pytest.raises(ConfigurationError, match="accountant"):
        compute_epsilon([gauss(1)], DELTA, accountant="gdp")
    with pytest.raises(ConfigurationError, match="delta"):
        compute_epsilon([gauss(1)], 0.0)
    with pytest.raises(ConfigurationError, match="delta"):
        epsilon_curve([gauss(1)], 1.5)


# ------------------------------------------------------------------ properties


@settings(max_examples=8, deadline=None)
@given(zs=st.lists(st.floats(0.6, 2.0), min_size=1, max_size=4), q=st.sampled_from([0.05, 0.2, 1.0]))
def test_permutation_invariance_and_curve(zs: list[float], q: float) -> None:
    evs = [gauss(i + 1, q=q, z=z) for i, z in enumerate(zs)]
    for name in ("pld", "rdp"):
        e = compute_epsilon(evs, DELTA, accountant=name)
        assert compute_epsilon(list(reversed(evs)), DELTA, accountant=name) == pytest.approx(e, rel=1e-9)
    curve = epsilon_curve(evs, DELTA, accountant="rdp")
    assert all(b >= a - 1e-12 for a, b in zip(curve, curve[1:], strict=False))
    assert curve[-1] == pytest.approx(compute_epsilon(evs, DELTA, accountant="rdp"), rel=1e-12)


@settings(max_examples=6, deadline=None)
@given(z=st.floats(0.5, 2.0), factor=st.floats(1.05, 2.0), q=st.floats(0.02, 1.0))
def test_more_noise_less_epsilon(z: float, factor: float, q: float) -> None:
    a = compute_epsilon([gauss(1, q=q, z=z)] * 20, DELTA)
    b = compute_epsilon([gauss(1, q=q, z=z * factor)] * 20, DELTA)
    assert b <= a * (1 + 1e-9)


def test_pld_curve_equals_prefix_epsilons() -> None:
    evs = [gauss(i + 1, q=0.2, z=1.0 + 0.2 * (i % 2)) for i in range(4)]
    evs.insert(3, gauss(4, survivors=0, mechanism=Mechanism.NONE, l2_sensitivity=0.0, z=0.0))
    curve = epsilon_curve(evs, DELTA)
    for k in range(len(evs)):
        assert curve[k] == pytest.approx(compute_epsilon(evs[: k + 1], DELTA), rel=1e-12)
    assert curve[3] == curve[2]
    # A non-PLD round part-way: from there on, prefixes are accounted by RDP, as compute_epsilon does.
    mixed = [*evs[:2], skellam_event(survivors=100, per_client=1e4), evs[3]]
    curve = epsilon_curve(mixed, DELTA)
    for k in range(len(mixed)):
        assert curve[k] == pytest.approx(compute_epsilon(mixed[: k + 1], DELTA), rel=1e-9)
    assert epsilon_curve([], DELTA) == []


def test_grouping_is_conservative() -> None:
    rng = np.random.default_rng(7)
    rounds = [(0.2, float(z)) for z in rng.uniform(0.8, 1.6, 6)]
    exact = pld_mod.pld_epsilon(rounds, DELTA, rough_epsilon=3.0)
    grouped = pld_mod.pld_epsilon(rounds, DELTA, rough_epsilon=3.0, max_groups=2)
    assert grouped >= exact * (1 - 1e-9)
    groups = pld_mod.group_rounds(rounds, max_groups=2)
    assert sum(groups.values()) == 6 and len(groups) <= 2
    assert min(z for _, z in groups) == pytest.approx(min(z for _, z in rounds))
    assert pld_mod.pld_epsilon([], DELTA, rough_epsilon=1.0) == 0.0
    assert pld_mod.pld_epsilon_grouped({}, DELTA, rough_epsilon=1.0) == 0.0


def test_heterogeneous_10k_rounds_fast() -> None:
    rng = np.random.default_rng(0)
    evs = [gauss(i + 1, q=0.01, z=float(z)) for i, z in enumerate(rng.uniform(0.8, 1.5, 10_000))]
    t0 = time.process_time()
    eps_rdp = compute_epsilon(evs, DELTA, accountant="rdp")
    t_rdp = time.process_time() - t0
    t0 = time.process_time()
    eps_pld = compute_epsilon(evs, DELTA)
    t_pld = time.process_time() - t0
    assert t_rdp < 2.0, t_rdp
    assert t_pld < 2.0, t_pld
    assert eps_pld <= eps_rdp
    # Conservative: never below the same rounds with every z replaced by the largest one.
    assert eps_pld >= compute_epsilon([gauss(1, q=0.01, z=1.5)] * 10_000, DELTA)


def test_unknown_mechanism_is_refused() -> None:
    ev = gauss(1)
    object.__setattr__(ev, "mechanism", "laplace")  # a mechanism no engine knows (e.g. a newer record)
    with pytest.raises(AccountingError, match="unsupported mechanism"):
        charge_of(ev)


def test_skellam_batch_equals_scalar_and_is_fast() -> None:
    base = lambda a: rdp_mod.skellam_rdp(float(a), l2=1000.0, l1=2e4, variance=1e6)  # noqa: E731
    scalar = rdp_mod.poisson_general_rdp(0.03, base)
    ells = np.arange(2, max(rdp_mod.INTEGER_ORDERS) + 1, dtype=np.float64)
    batch = rdp_mod.poisson_general_rdp_batch(
        np.array([0.03, 1.0]),
        rdp_mod.skellam_rdp_batch(ells, l2=np.full(2, 1000.0), l1=np.full(2, 2e4), variance=np.full(2, 1e6)),
    )
    assert np.allclose(batch[0], scalar, rtol=1e-12)
    assert np.allclose(batch[1], [base(a) for a in rdp_mod.INTEGER_ORDERS], rtol=1e-12)
    # 10^4 rounds with a different survivor count (noise) each: vectorised, well under 2 s.
    evs = [
        RoundEvent(
            **{
                **skellam_event(survivors=100, per_client=1e4).to_dict(),
                "noise_variance": 1e6 * (0.5 + i / 1e4),
                "round": i + 1,
                "mode": DPMode.DISTRIBUTED,
                "mechanism": Mechanism.SKELLAM,
                "sampling": Sampling.POISSON,
            }
        )
        for i in range(10_000)
    ]
    t0 = time.process_time()
    curve = epsilon_curve(evs, DELTA, accountant="rdp")
    assert time.process_time() - t0 < 2.0
    assert curve[-1] == pytest.approx(compute_epsilon(evs, DELTA), rel=1e-9)


def zhu_wang_reference(q: float, alpha: int, eps: object) -> float:
    """Slow, literal transcription of Zhu & Wang 2019 Thm. 6 with Python floats (small cases only)."""
    e = eps  # callable: order -> base RDP
    total = (1 - q) ** (alpha - 1) * (alpha * q - q + 1)
    total += math.comb(alpha, 2) * q**2 * (1 - q) ** (alpha - 2) * math.exp(e(2))  # type: ignore[operator]
    for ell in range(3, alpha + 1):
        total += 3 * math.comb(alpha, ell) * (1 - q) ** (alpha - ell) * q**ell * math.exp((ell - 1) * e(ell))  # type: ignore[operator]
    return min(math.log(total) / (alpha - 1), e(alpha))  # type: ignore[operator]


@pytest.mark.parametrize(("q", "var"), [(0.01, 1e6), (0.2, 2e6), (0.7, 5e6)])
def test_zhu_wang_batch_against_literal_reference(q: float, var: float) -> None:
    def base(a: int) -> float:
        return rdp_mod.skellam_rdp(float(a), l2=1000.0, l1=2e4, variance=var)

    got = rdp_mod.poisson_general_rdp(q, base)
    for j, alpha in enumerate(rdp_mod.INTEGER_ORDERS):
        if alpha <= 24:  # exp((l - 1) eps(l)) stays within float range
            assert got[j] == pytest.approx(zhu_wang_reference(q, alpha, base), rel=1e-9)


def test_skellam_clip_count_is_charged_as_skellam_coordinate() -> None:
    ev = RoundEvent(
        **{
            **skellam_event(survivors=100, per_client=1e4).to_dict(),
            "clip_query_noise_multiplier": 3.0,
            "mode": DPMode.DISTRIBUTED,
            "mechanism": Mechanism.SKELLAM,
            "sampling": Sampling.POISSON,
        }
    )
    c = charge_of(ev)
    unit = 1000.0 - math.sqrt(400)  # C * scale recovered from l2 = C * scale + sqrt(d)
    assert (c.count_sigma, c.count_unit, c.count_sens) == (3.0, unit, 0.5)

    def base(a: int) -> float:
        upd = rdp_mod.skellam_rdp(float(a), l2=1000.0, l1=20_000.0, variance=1e6)
        cnt = rdp_mod.skellam_rdp(float(a), l2=0.5 * unit, l1=0.5 * unit, variance=(3.0 * unit) ** 2)
        return upd + cnt

    expect = rdp_mod.eps_from_rdp(
        rdp_mod.ORDERS, rdp_mod.interpolate_orders(rdp_mod.poisson_general_rdp(0.1, base)), DELTA
    )
    assert compute_epsilon([ev], DELTA) == pytest.approx(float(expect), rel=1e-12)
    # The Skellam count costs at least the Gaussian count with the same std.
    assert rdp_mod.skellam_rdp(2.0, l2=0.5 * unit, l1=0.5 * unit, variance=(3.0 * unit) ** 2) >= 2.0 / (2 * 6.0**2)
    assert compute_epsilon([ev], DELTA) > compute_epsilon([skellam_event(survivors=100, per_client=1e4)], DELTA)
