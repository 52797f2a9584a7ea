"""Impossible asynchronous settings get a typed error before anything runs; the weights and speeds behave."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_async_support import make_async, make_fed

from dp.randomness import SeededRandomSource
from fl_core.asynchronous import AsyncOptions, SpeedModel, StalenessWeight, parse_staleness, session_floor
from fl_core.asynchronous.speeds import standard_normal
from fl_core.errors import ConfigError


@pytest.mark.parametrize(
    ("kw", "option"),
    [
        ({"buffer": 5, "concurrency": 4}, "buffer"),
        ({"buffer": 0}, "buffer"),
        ({"concurrency": 0, "buffer": 1}, "concurrency"),
        ({"buffer": 2, "concurrency": 3, "max_staleness": -1}, "max_staleness"),
        ({"buffer": 2, "concurrency": 3, "max_contributions": 0}, "max_contributions"),
        ({"buffer": 2, "concurrency": 3, "dropout": 1.0}, "dropout"),
        ({"buffer": 2, "concurrency": 3, "max_time_s": -5.0}, "max_time_s"),
        ({"buffer": 2, "concurrency": 3, "client_max_epsilon": 0.0}, "client_max_epsilon"),
        ({"buffer": 2, "concurrency": 3, "staleness": "fedbuff"}, "staleness"),
        ({"buffer": 2, "concurrency": 3, "speed": "fast"}, "speed"),
        ({"buffer": 2, "concurrency": 3, "max_consecutive_aborts": 0}, "max_consecutive_aborts"),
    ],
)
def test_impossible_options_are_refused_typed(kw, option):
    with pytest.raises(ConfigError) as e:
        AsyncOptions(**kw)
    assert e.value.option == option


def test_buffer_larger_than_concurrency_names_both():
    with pytest.raises(ConfigError, match="can never fill with concurrency 4"):
        AsyncOptions(buffer=5, concurrency=4)


def test_concurrency_above_the_population_is_refused():
    with pytest.raises(ConfigError) as e:
        make_async(fed=make_fed(buffer=3, n_clients=4), buffer=3, concurrency=5)
    assert e.value.option == "concurrency"


def test_buffer_below_the_secure_sum_threshold_or_min_survivors_is_refused():
    # A one-update buffer with a secure backend would release that update alone.
    with pytest.raises(ConfigError, match="never one update alone") as e:
        make_async(fed=make_fed(buffer=1, secure_sum="masking"), buffer=1, concurrency=2)
    assert e.value.option == "buffer"
    # min_survivors above the buffer: the session could never release.
    with pytest.raises(ConfigError, match="below what its secure-sum session needs"):
        make_async(fed=make_fed(buffer=3, secure_sum="masking", min_survivors=4), buffer=3, concurrency=4)
    # The plain (insecure) sum may run FedAsync-style buffers of one.
    make_async(fed=make_fed(buffer=1, secure_sum="plain", min_survivors=None), buffer=1, concurrency=2).fit(1)


def test_a_masking_backend_whose_clients_would_unmask_one_update_is_refused():
    # Buffer of 2 on the complete graph: threshold 1, so only min_survivors >= 2 stops a lone unmasking.
    fed = make_fed(buffer=2, secure_sum="masking", min_survivors=1)
    with pytest.raises(ConfigError, match="survivor list of 1") as e:
        make_async(fed=fed, buffer=2, concurrency=3)
    assert e.value.option == "min_survivors"


def test_federation_not_sized_for_the_buffer_is_refused():
    with pytest.raises(ConfigError, match="sized for buffers of 2"):
        make_async(fed=make_fed(buffer=3), buffer=2, concurrency=3)


def test_session_floor():
    fed = make_fed(buffer=5, secure_sum="masking", min_survivors=2)
    assert session_floor(fed.secure_sum, 5, 1) == 3  # the complete graph's threshold for 5
    assert session_floor(fed.secure_sum, 5, 4) == 4  # the DP minimum survivors
    plain = make_fed(buffer=5, min_survivors=None)
    assert session_floor(plain.secure_sum, 5, 1) == 1


def test_staleness_weights():
    fedbuff = StalenessWeight()
    assert [fedbuff(s) for s in (0, 3, 8)] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert StalenessWeight("constant")(50) == 1.0
    hinge = StalenessWeight("hinge", 0.5, 2)
    assert [hinge(s) for s in (0, 2, 4)] == [1.0, 1.0, 0.5]
    for w in (fedbuff, hinge, StalenessWeight("polynomial", 2.0)):
        vals = [w(s) for s in range(200)]
        assert all(0 < v <= 1 for v in vals) and vals == sorted(vals, reverse=True)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError):
            fedbuff(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "msg"),
    [({"kind": "exp"}, "not known"), ({"exponent": -1.0}, "exponent"), ({"kind": "hinge", "hinge_at": -1}, "hinge_at")],
)
def test_bad_staleness_weight_is_refused(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        StalenessWeight(**kw)


def test_parse_staleness():
    assert parse_staleness("fedbuff") == StalenessWeight("polynomial", 0.5)
    assert parse_staleness("polynomial:1") == StalenessWeight("polynomial", 1.0)
    assert parse_staleness("constant").kind == "constant"
    assert parse_staleness("hinge:0.5:3") == StalenessWeight("hinge", 0.5, 3)
    for bad in ("polynomial:x", "hinge:1", "linear", "constant:2"):
        with pytest.raises(ConfigError, match="cannot read staleness"):
            parse_staleness(bad)


def test_speed_model_is_seeded_and_heavy_tailed():
    m = SpeedModel.lognormal(median_s=10.0, sigma=1.0)
    a = m.base_times(20_000, SeededRandomSource(3))
    np.random.seed(0)
    b = m.base_times(20_000, SeededRandomSource(3))
    np.testing.assert_array_equal(a, b)
    assert np.median(a) == pytest.approx(10.0, rel=0.05)
    assert np.quantile(a, 0.99) == pytest.approx(10.0 * math.exp(2.326), rel=0.1)
    z = standard_normal(SeededRandomSource(4), 50_001)
    assert abs(z.mean()) < 0.02 and z.std() == pytest.approx(1.0, abs=0.02)
    assert m.describe()["p99_s"] == pytest.approx(10.0 * math.exp(2.3263478740408408))
    assert SpeedModel.lognormal(jitter_sigma=0.0).jitter(SeededRandomSource(1)) == 1.0


def test_speed_trace_cycles_and_bad_speeds_are_refused():
    t = SpeedModel.trace([1.0, 2.0, 3.0])
    assert t.base_times(5, SeededRandomSource(0)).tolist() == [1.0, 2.0, 3.0, 1.0, 2.0]
    assert t.describe()["clients_in_trace"] == 3
    for bad in (
        lambda: SpeedModel.trace([]),
        lambda: SpeedModel.trace([1.0, 0.0]),
        lambda: SpeedModel.lognormal(median_s=0.0),
        lambda: SpeedModel.lognormal(sigma=-1.0),
        lambda: SpeedModel.lognormal(stage_s=float("nan")),
        lambda: SpeedModel.lognormal().base_times(0, SeededRandomSource(0)),
    ):
        with pytest.raises(ConfigError):
            bad()
