"""The public randomised Hadamard rotation: orthogonal, invertible, public, and flattening."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import hadamard

from secagg.errors import ConfigurationError
from secagg.rotation import HadamardRotation, _fwht


def slow_rotate(rot: HadamardRotation, x: np.ndarray) -> np.ndarray:
    """Obviously correct reference: dense H_m diag(s) / sqrt(m) applied to each window in turn."""
    y = np.array(x, dtype=np.float64)
    m = rot.window
    dense = hadamard(m).astype(np.float64) / math.sqrt(m)
    for (lo, hi), s in zip(rot.windows, rot._signs, strict=False):
        y[lo:hi] = dense @ (s * y[lo:hi])
    return y


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 600), seed=st.integers(0, 2**32))
def test_matches_dense_reference_is_orthogonal_and_inverts(dim: int, seed: int) -> None:
    rot = HadamardRotation(dim)
    x = np.random.default_rng(seed).standard_normal(dim)
    y = rot.forward(x)
    np.testing.assert_allclose(y, slow_rotate(rot, x), rtol=0, atol=1e-12 * max(1.0, np.abs(x).max()))
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    np.testing.assert_allclose(rot.inverse(y), x, rtol=0, atol=1e-12 * max(1.0, np.abs(x).max()))


def textbook_fwht(x: np.ndarray) -> np.ndarray:
    """Obviously correct reference: the in-place butterfly (a + b, a - b) at strides 1, 2, 4, ..."""
    y = np.array(x, dtype=np.float64)
    h = 1
    while h < y.shape[0]:
        for i in range(0, y.shape[0], 2 * h):
            a, b = y[i : i + h].copy(), y[i + h : i + 2 * h].copy()
            y[i : i + h], y[i + h : i + 2 * h] = a + b, a - b
        h *= 2
    return y


@pytest.mark.parametrize("k", range(18))
def test_fast_hadamard_transform_matches_the_butterfly(k: int) -> None:
    """Every window size up to 2^17 (each split into small Kronecker factors differently)."""
    x = np.random.default_rng(k).standard_normal(1 << k)
    np.testing.assert_allclose(_fwht(x), textbook_fwht(x), rtol=0, atol=1e-13 * (1 << k) ** 0.5 * np.abs(x).max())


def test_windows_cover_any_dimension_without_padding() -> None:
    assert HadamardRotation(101_770).windows == ((0, 65_536), (36_234, 101_770))
    assert HadamardRotation(4096).windows == ((0, 4096),)
    assert HadamardRotation(1).windows == ((0, 1),)


def test_signs_come_from_public_data_only() -> None:
    """Every party recomputes the same signs from the dimension (and an optional public seed);
    nothing secret or server-sent goes in. Regression vector: the first 16 signs at d = 1000."""
    a, b = HadamardRotation(1000), HadamardRotation(1000)
    assert np.array_equal(a._signs[0], b._signs[0]) and np.array_equal(a._signs[1], b._signs[1])
    assert not np.array_equal(HadamardRotation(1000, public_seed=b"beacon")._signs[0], a._signs[0])
    assert set(np.unique(a._signs[0]).tolist()) <= {-1.0, 1.0}
    first = "".join("+" if s > 0 else "-" for s in a._signs[0][:16])
    assert first == FIRST_SIGNS_1000


FIRST_SIGNS_1000 = "++-+-+-+---++-+-"  # HKDF(label rotation, d = 1000) -> AES-128-CTR bits, recorded once


def test_a_spike_is_flattened_within_the_coordinate_bound() -> None:
    """All the norm in one coordinate (the worst case without rotation) comes out flat."""
    dim = 101_770
    rot = HadamardRotation(dim)
    bound = rot.coordinate_bound(1.0, 2.0**-20)
    assert bound == pytest.approx(math.sqrt(2 * math.log(2 * dim * 2**20) / 65_536))
    assert bound < 0.03
    for i in (0, 1, 40_000, dim - 1):
        x = np.zeros(dim)
        x[i] = 1.0
        assert np.abs(rot.forward(x)).max() <= bound


def test_coordinate_bound_holds_for_random_directions() -> None:
    dim = 3000
    rot = HadamardRotation(dim)
    bound = rot.coordinate_bound(2.0, 1e-6)
    g = np.random.default_rng(7)
    for _ in range(200):
        x = g.standard_normal(dim) * g.exponential(size=dim) ** 3  # heavy-tailed directions
        x *= 2.0 / np.linalg.norm(x)
        assert np.abs(rot.forward(x)).max() <= bound


def test_errors() -> None:
    with pytest.raises(ConfigurationError, match="dim"):
        HadamardRotation(0)
    rot = HadamardRotation(8)
    with pytest.raises(ConfigurationError, match="length 8"):
        rot.forward(np.zeros(7))
    with pytest.raises(ConfigurationError, match="norm"):
        rot.coordinate_bound(0.0, 0.1)
    with pytest.raises(ConfigurationError, match="failure_prob"):
        rot.coordinate_bound(1.0, 1.0)
