"""Clipping: the L2 bound always holds, adaptive clip follows Andrew et al.'s geometric rule, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dp.clipping import AdaptiveClip, FixedClip, clip_l2, effective_noise_multiplier, update_noise_multiplier
from dp.errors import ConfigurationError

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(v=arrays(np.float64, st.integers(1, 50), elements=finite), c=st.floats(1e-6, 1e3))
def test_clip_bounds_norm_and_keeps_direction(v: np.ndarray, c: float) -> None:
    r = clip_l2(v, c)
    assert np.linalg.norm(r.vector) <= c
    assert r.norm == pytest.approx(float(np.linalg.norm(v)))
    if r.norm <= c:
        assert not r.clipped and np.array_equal(r.vector, v)
    else:
        assert r.clipped
        # Same direction: the clipped vector is a positive multiple of the input.
        k = float(np.dot(r.vector, v)) / float(np.dot(v, v))
        assert k > 0 and np.allclose(r.vector, k * v, rtol=1e-9, atol=1e-12 * c)


def test_clip_slow_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.normal(size=20) * rng.uniform(0.1, 10)
        c = 1.5
        norm = math.sqrt(sum(float(x) ** 2 for x in v))
        expect = [float(x) * min(1.0, c / norm) for x in v]
        assert np.allclose(clip_l2(v, c).vector, expect, rtol=1e-12, atol=1e-15)


def test_clip_does_not_alias_input() -> None:
    v = np.array([0.1, 0.2])
    out = clip_l2(v, 10.0).vector
    out[0] = 5.0
    assert v[0] == 0.1


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "1"])
def test_clip_norm_errors(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="clip_norm"):
        clip_l2(np.ones(3), bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="clip_norm"):
        FixedClip(bad)  # type: ignore[arg-type]


def test_clip_rejects_nan_update() -> None:
    with pytest.raises(ConfigurationError, match="NaN or Inf"):
        clip_l2(np.array([1.0, float("nan")]), 1.0)


def test_fixed_clip() -> None:
    f = FixedClip(2.0)
    assert f.clip_norm == 2.0 and f.count_noise_std == 0.0
    assert f.clip(np.array([3.0, 4.0])).vector.tolist() == pytest.approx([1.2, 1.6])
    assert "2.0" in repr(f)


def test_adaptive_geometric_update() -> None:
    a = AdaptiveClip(1.0, target_quantile=0.5, learning_rate=0.2, count_noise_std=5.0)
    # Everyone below the clip (b = 1): shrink by exp(-0.2 * 0.5).
    assert a.update(1.0) == pytest.approx(math.exp(-0.1))
    # Nobody below (b = 0): grow by exp(0.1).
    assert a.update(0.0) == pytest.approx(1.0)
    r = a.clip(np.array([3.0, 4.0]))
    assert r.clipped and AdaptiveClip.below_bit(r, a.clip_norm) == 0
    assert AdaptiveClip.below_bit(a.clip(np.array([0.1])), a.clip_norm) == 1
    assert "AdaptiveClip" in repr(a)


@settings(max_examples=50, deadline=None)
@given(fracs=st.lists(st.floats(-1.0, 2.0), min_size=1, max_size=30))
def test_adaptive_clip_stays_in_bounds(fracs: list[float]) -> None:
    a = AdaptiveClip(1.0, learning_rate=5.0, count_noise_std=1.0, min_clip=0.5, max_clip=2.0)
    for f in fracs:
        c = a.update(f)
        assert 0.5 <= c <= 2.0


def test_adaptive_tracks_the_quantile() -> None:
    # Noise-free tracking on norms uniform in [0, 10]: converges near the median 5.
    rng = np.random.default_rng(1)
    a = AdaptiveClip(0.5, target_quantile=0.5, learning_rate=0.2)
    for _ in range(400):
        norms = rng.uniform(0, 10, 200)
        a.update(float(np.mean(norms <= a.clip_norm)))
    assert a.clip_norm == pytest.approx(5.0, rel=0.15)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(target_quantile=0.0), "target_quantile"),
        (dict(target_quantile=1.0), "target_quantile"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(count_noise_std=-1.0), "count_noise_std"),
        (dict(min_clip=2.0), "min_clip"),
        (dict(max_clip=0.0), "max_clip"),
    ],
)
def test_adaptive_errors(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        AdaptiveClip(1.0, **kwargs)  # type: ignore[arg-type]


def test_adaptive_update_rejects_nan() -> None:
    with pytest.raises(ConfigurationError, match="finite"):
        AdaptiveClip(1.0).update(float("nan"))


def test_initial_clip_error() -> None:
    with pytest.raises(ConfigurationError, match="initial_clip"):
        AdaptiveClip(0.0)


@settings(max_examples=100, deadline=None)
@given(z=st.floats(0.1, 20.0), sb=st.one_of(st.just(0.0), st.floats(0.01, 100.0)))
def test_effective_and_update_multipliers_round_trip(z: float, sb: float) -> None:
    eff = effective_noise_multiplier(z, sb)
    assert eff <= z * (1 + 1e-12)
    if sb > 0:
        # Andrew et al. Thm 1 by hand.
        assert eff == pytest.approx((z**-2 + (2 * sb) ** -2) ** -0.5)
        assert update_noise_multiplier(eff, sb) == pytest.approx(z, rel=1e-6)
    else:
        assert eff == z


def test_multiplier_edge_cases_and_errors() -> None:
    assert effective_noise_multiplier(0.0, 3.0) == 0.0
    assert update_noise_multiplier(1.0, 0.0) == 1.0
    with pytest.raises(ConfigurationError, match="too small"):
        update_noise_multiplier(1.0, 0.5)
    with pytest.raises(ConfigurationError, match="finite"):
        effective_noise_multiplier(-1.0, 1.0)
    with pytest.raises(ConfigurationError, match="finite"):
        update_noise_multiplier(0.0, 1.0)
