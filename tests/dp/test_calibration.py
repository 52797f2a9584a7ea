"""Calibration: mode -> noise parameters, and the round event charges only the noise really present."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp.accountants import charge_of, compute_epsilon
from dp.calibration import (
    AdaptiveClipConfig,
    DPConfig,
    distributed_noise,
    local_noise_std,
    make_round_event,
    min_scale_for_inflation,
    rounding_l2_bound,
    server_noise_std,
)
from dp.errors import ConfigurationError
from dp.events import DPMode, Mechanism, Sampling
from dp.noise import gaussian_grid

ROUND = dict(round=1, sampling=Sampling.POISSON, sampling_rate=0.1, population=1000, cohort=100)


def test_central_std_and_event() -> None:
    cfg = DPConfig(mode=DPMode.CENTRAL, noise_multiplier=1.1, clip_norm=0.5, expected_cohort=100)
    assert server_noise_std(cfg) == pytest.approx(0.55)
    assert server_noise_std(cfg, clip_norm=2.0) == pytest.approx(2.2)
    e = make_round_event(cfg, survivors=90, dim=1000, **ROUND)
    g = gaussian_grid(0.55, grid_bits=cfg.grid_bits)
    assert e.mechanism is Mechanism.GAUSSIAN and e.mode is DPMode.CENTRAL
    assert e.noise_variance == pytest.approx(g.std**2)
    assert e.l2_sensitivity == pytest.approx(0.5 + g.granularity * math.sqrt(1000))
    # The grid inflation is tiny and makes z slightly smaller than requested, never larger.
    assert 1.1 * (1 - 1e-4) < e.noise_multiplier <= 1.1 * (1 + 2**-19)


def test_central_adaptive_clip_splits_the_noise() -> None:
    cfg = DPConfig(
        mode=DPMode.CENTRAL,
        noise_multiplier=1.0,
        clip_norm=1.0,
        expected_cohort=100,
        adaptive=AdaptiveClipConfig(count_noise_std=5.0),
    )
    z_upd = cfg.update_noise_multiplier
    assert z_upd == pytest.approx((1.0 - 1 / 100) ** -0.5)
    e = make_round_event(cfg, survivors=100, dim=10, granularity=0.0, **ROUND)
    # sigma_b = 5, shrunk by the count grid's snapping: 5 * g.std/5 * 0.5 / (0.5 + g.granularity).
    g = gaussian_grid(5.0, grid_bits=cfg.grid_bits)
    assert e.clip_query_noise_multiplier == pytest.approx(g.std * 0.5 / (0.5 + g.granularity))
    assert 5.0 * (1 - 1e-5) < e.clip_query_noise_multiplier < 5.0
    assert charge_of(e).z == pytest.approx(1.0, rel=1e-5)  # the round as a whole has the target z


def test_local_std_and_event() -> None:
    cfg = DPConfig(mode=DPMode.LOCAL, noise_multiplier=2.0, clip_norm=1.0, expected_cohort=10)
    assert local_noise_std(cfg) == pytest.approx(4.0)
    e = make_round_event(cfg, survivors=10, dim=5, granularity=0.0, **ROUND)
    assert e.l2_sensitivity == 2.0 and e.noise_variance == pytest.approx(gaussian_grid(4.0).std ** 2)
    assert charge_of(e).q == 1.0


def dist_cfg(**kw: object) -> DPConfig:
    args: dict[str, object] = dict(mode=DPMode.DISTRIBUTED, noise_multiplier=1.0, clip_norm=1.0, expected_cohort=100)
    args.update(kw)
    return DPConfig(**args)  # type: ignore[arg-type]


def test_distributed_noise_formula() -> None:
    cfg = dist_cfg(min_survivors=80, colluders=5)
    dn = distributed_noise(cfg, scale=1024.0, dim=400)
    l2 = 1024.0 + 20.0
    assert dn.l2_sensitivity == pytest.approx(l2)
    assert dn.l1_sensitivity == pytest.approx(min(l2 * l2, 20.0 * l2))
    # (min_survivors - colluders) = 75 clients' noise alone gives z = 1.
    assert dn.per_client_variance == pytest.approx(l2**2 / 75)
    assert dn.inflation == pytest.approx(20.0 / 1024.0)
    assert dn.per_client_std_float == pytest.approx(math.sqrt(l2**2 / 75) / 1024.0)
    assert dn.count_variance_per_client == 0.0


def test_dropout_30_percent_charged_with_70_survivors() -> None:
    # Done-when: 30% of a 100-client cohort drops after masking -> charged with the noise of the 70 survivors.
    cfg = dist_cfg(min_survivors=60)
    dn = distributed_noise(cfg, scale=2.0**12, dim=1000)
    e = make_round_event(cfg, survivors=70, dim=1000, scale=2.0**12, **ROUND)
    assert e.noise_variance == pytest.approx(70 * dn.per_client_variance)
    z_present = math.sqrt(70 * dn.per_client_variance) / dn.l2_sensitivity
    assert e.noise_multiplier == pytest.approx(z_present)
    assert z_present == pytest.approx(math.sqrt(70 / 60))  # sized for 60, 70 present
    planned = make_round_event(cfg, survivors=100, dim=1000, scale=2.0**12, **ROUND)
    assert compute_epsilon([e], 1e-5) > compute_epsilon([planned], 1e-5)


def test_colluders_not_counted_and_worst_case_for_budget() -> None:
    cfg = dist_cfg(min_survivors=50, colluders=10)
    dn = distributed_noise(cfg, scale=256.0, dim=100)
    e = make_round_event(cfg, survivors=50, dim=100, scale=256.0, **ROUND)
    assert e.noise_variance == pytest.approx(40 * dn.per_client_variance)
    assert e.noise_multiplier == pytest.approx(1.0)  # the planned worst case gives exactly z
    e2 = make_round_event(cfg, survivors=50, dim=100, scale=256.0, per_client_variance=1.0, **ROUND)
    assert e2.noise_variance == 40.0


def test_distributed_adaptive_count_noise() -> None:
    cfg = dist_cfg(adaptive=AdaptiveClipConfig(count_noise_std=4.0), min_survivors=64)
    dn = distributed_noise(cfg, scale=64.0, dim=16)
    assert dn.count_variance_per_client == pytest.approx(16.0 / 64)
    e = make_round_event(cfg, survivors=64, dim=16, scale=64.0, **ROUND)
    # sqrt(64 * 16 / 64) = 4, shrunk for rounding of the count coordinate (C * scale = 64 units).
    assert e.clip_query_noise_multiplier == pytest.approx(4.0 * 0.5 / (0.5 + 1 / 64))


@settings(max_examples=50, deadline=None)
@given(c=st.floats(1.0, 1e6), d=st.integers(1, 10**6))
def test_rounding_bounds(c: float, d: int) -> None:
    det = rounding_l2_bound(c, d)
    assert det == pytest.approx(c + math.sqrt(d))
    cond = rounding_l2_bound(c, d, conditional_beta=math.exp(-0.5))
    assert c <= cond <= det


def test_min_scale_for_inflation() -> None:
    s = min_scale_for_inflation(0.5, 10_000, max_inflation=0.01)
    assert s == pytest.approx(100 / (0.5 * 0.01))
    assert distributed_noise(dist_cfg(clip_norm=0.5), scale=s, dim=10_000).inflation == pytest.approx(0.01)


def test_none_mode_event() -> None:
    cfg = DPConfig(mode=DPMode.NONE)
    e = make_round_event(cfg, survivors=3, **ROUND)
    assert e.mechanism is Mechanism.NONE
    assert compute_epsilon([e], 1e-5) == math.inf


def test_defaults_and_mechanism_resolution() -> None:
    assert dist_cfg().resolved_mechanism is Mechanism.SKELLAM
    assert DPConfig(mode=DPMode.CENTRAL, noise_multiplier=1.0).resolved_mechanism is Mechanism.GAUSSIAN
    assert dist_cfg().survivors_planned == 100


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(mode="central", noise_multiplier=1.0), "DPMode"),
        (dict(mode=DPMode.CENTRAL, noise_multiplier=1.0, mechanism=Mechanism.SKELLAM), "not available"),
        (dict(mode=DPMode.LOCAL, noise_multiplier=1.0, mechanism=Mechanism.SKELLAM), "not available"),
        (dict(mode=DPMode.CENTRAL, noise_multiplier=0.0), "noise_multiplier"),
        (dict(mode=DPMode.CENTRAL, noise_multiplier=1.0, clip_norm=-1.0), "clip_norm"),
        (dict(mode=DPMode.CENTRAL, noise_multiplier=1.0, expected_cohort=0), "expected_cohort"),
        (dict(mode=DPMode.CENTRAL, noise_multiplier=1.0, colluders=-1), "colluders"),
        (dict(mode=DPMode.CENTRAL, noise_multiplier=1.0, expected_cohort=5, min_survivors=6), "min_survivors"),
        (dict(mode=DPMode.DISTRIBUTED, noise_multiplier=1.0, expected_cohort=5, colluders=5), "colluders"),
        (
            dict(mode=DPMode.LOCAL, noise_multiplier=1.0, adaptive=AdaptiveClipConfig(count_noise_std=9.0)),
            "local mode",
        ),
        (
            dict(mode=DPMode.CENTRAL, noise_multiplier=1.0, adaptive=AdaptiveClipConfig(count_noise_std=0.1)),
            "too small",
        ),
    ],
)
def test_config_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        DPConfig(**kwargs)  # type: ignore[arg-type]


def test_adaptive_config_errors() -> None:
    with pytest.raises(ConfigurationError, match="count_noise_std"):
        AdaptiveClipConfig(count_noise_std=0.0)
    with pytest.raises(ConfigurationError, match="target_quantile"):
        AdaptiveClipConfig(count_noise_std=1.0, target_quantile=1.5)
    with pytest.raises(ConfigurationError, match="learning_rate"):
        AdaptiveClipConfig(count_noise_std=1.0, learning_rate=-1.0)


def test_function_mode_errors() -> None:
    central = DPConfig(mode=DPMode.CENTRAL, noise_multiplier=1.0)
    with pytest.raises(ConfigurationError, match="central mode"):
        server_noise_std(dist_cfg())
    with pytest.raises(ConfigurationError, match="local mode"):
        local_noise_std(central)
    with pytest.raises(ConfigurationError, match="distributed mode"):
        distributed_noise(central, scale=1.0, dim=1)
    with pytest.raises(ConfigurationError, match="scale"):
        distributed_noise(dist_cfg(), scale=0.0, dim=1)
    with pytest.raises(ConfigurationError, match="dim"):
        rounding_l2_bound(1.0, 0)
    with pytest.raises(ConfigurationError, match="conditional_beta"):
        rounding_l2_bound(1.0, 1, conditional_beta=1.0)
    with pytest.raises(ConfigurationError, match="max_inflation"):
        min_scale_for_inflation(1.0, 1, max_inflation=0.0)
    with pytest.raises(ConfigurationError, match="dim"):
        min_scale_for_inflation(1.0, 0)
    with pytest.raises(ConfigurationError, match="scale and dim"):
        make_round_event(dist_cfg(), survivors=1, **ROUND)
    with pytest.raises(ConfigurationError, match="cannot exceed"):
        make_round_event(central, survivors=101, **ROUND)
    with pytest.raises(ConfigurationError, match="per_client_variance"):
        make_round_event(dist_cfg(), survivors=1, dim=1, scale=1.0, per_client_variance=-1.0, **ROUND)
    with pytest.raises(ConfigurationError, match="granularity"):
        make_round_event(central, survivors=1, granularity=float("nan"), **ROUND)
    with pytest.raises(ConfigurationError, match="clip_norm"):
        server_noise_std(central, clip_norm=0.0)


def test_distributed_discrete_gaussian_calibration() -> None:
    cfg = dist_cfg(mechanism=Mechanism.DISCRETE_GAUSSIAN, min_survivors=50)
    dn = distributed_noise(cfg, scale=512.0, dim=100)
    sigma = math.sqrt(dn.per_client_variance)
    assert sigma == int(sigma)  # an integer sigma: the exact sampler's fast path
    assert dn.per_client_variance >= (512.0 + 10.0) ** 2 / 50
    e = make_round_event(cfg, survivors=60, dim=100, scale=512.0, **ROUND)
    assert e.mechanism is Mechanism.DISCRETE_GAUSSIAN and e.noise_variance == pytest.approx(60 * dn.per_client_variance)
    assert charge_of(e).parties == 60
