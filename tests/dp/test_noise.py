"""Noise samplers: exact distributions (vs pmf and vs a slow reference), grid safety, injected randomness, errors."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dp import noise
from dp.errors import ConfigurationError
from dp.randomness import RandomSource, SeededRandomSource

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "dp"
P_MIN = 1e-4  # fixed seeds: each test is deterministic; this only guards against a wrong distribution


def chi2_pvalue(samples: np.ndarray, pmf: dict[int, float]) -> float:
    """Goodness of fit against an exact pmf; bins with expected count < 5 are pooled into one."""
    n = samples.shape[0]
    values, counts = np.unique(samples, return_counts=True)
    observed = dict(zip(values.tolist(), counts.tolist(), strict=True))
    obs, exp = [], []
    pooled_o, pooled_e = 0.0, 0.0
    for y, p in pmf.items():
        e = n * p
        if e >= 5:
            obs.append(observed.get(y, 0))
            exp.append(e)
        else:
            pooled_o += observed.get(y, 0)
            pooled_e += e
    outside = n - sum(observed.get(y, 0) for y in pmf)
    pooled_o += outside
    pooled_e += max(0.0, n - n * sum(pmf.values()))
    if pooled_e >= 5 or pooled_o > 0:
        obs.append(pooled_o)
        exp.append(max(pooled_e, 1e-12))
    exp_arr = np.array(exp) * (n / sum(exp))
    return float(stats.chisquare(np.array(obs), exp_arr).pvalue)


def dg_pmf(sigma: float | Fraction, top: int) -> dict[int, float]:
    s2 = float(Fraction(sigma) ** 2)
    ys = np.arange(-top * 3, top * 3 + 1)
    w = np.exp(-(ys.astype(np.float64) ** 2) / (2 * s2))
    w /= w.sum()
    return {int(y): float(p) for y, p in zip(ys, w, strict=True) if abs(y) <= top}


def reference_discrete_gaussian(n: int, sigma: float, rng: RandomSource) -> np.ndarray:
    """Slow, obviously correct reference: inverse cdf of the pmf on |y| <= 14 sigma + 3 (tail < 1e-40)."""
    pmf = dg_pmf(sigma, int(14 * sigma) + 3)
    ys = np.array(list(pmf))
    cdf = np.cumsum(np.array(list(pmf.values())))
    u = rng.uniform(n)
    return np.array([ys[min(int(np.searchsorted(cdf, x, side="right")), len(ys) - 1)] for x in u])


# ------------------------------------------------------------------ discrete Gaussian


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0, 10.5])
def test_discrete_gaussian_matches_exact_pmf(sigma: float) -> None:
    vec = next(v for v in json.loads((VECTORS / "discrete_gaussian_pmf.json").read_text()) if v["sigma"] == sigma)
    pmf = {int(k): float(p) for k, p in vec["pmf"].items()}
    x = noise.discrete_gaussian(100_000, sigma, SeededRandomSource(f"dg{sigma}"))
    assert x.dtype == np.int64
    assert chi2_pvalue(x, pmf) > P_MIN
    assert x.var() == pytest.approx(vec["variance"], rel=0.03)


def test_discrete_gaussian_matches_slow_reference() -> None:
    fast = noise.discrete_gaussian(20_000, 3.0, SeededRandomSource("fast"))
    ref = reference_discrete_gaussian(20_000, 3.0, SeededRandomSource("ref"))
    values = np.union1d(fast, ref)
    table = np.array([[np.sum(fast == v) for v in values], [np.sum(ref == v) for v in values]])
    keep = table.sum(axis=0) >= 10
    table = np.concatenate([table[:, keep], table[:, ~keep].sum(axis=1, keepdims=True)], axis=1)
    assert stats.chi2_contingency(table).pvalue > P_MIN
    assert stats.ks_2samp(fast, ref).pvalue > P_MIN


def test_discrete_gaussian_exact_slow_path_for_awkward_sigma() -> None:
    # 1.2 as a float has a 53-bit mantissa: its exact rational constants overflow 62 bits,
    # so every draw takes the Python-integer path; the law is still N_Z(0, 1.2^2).
    x = noise.discrete_gaussian(3000, 1.2, SeededRandomSource("slow"))
    assert chi2_pvalue(x, dg_pmf(1.2, 12)) > P_MIN
    # A simple fraction takes the fast path and gives the same law.
    y = noise.discrete_gaussian(30_000, Fraction(6, 5), SeededRandomSource("frac"))
    assert chi2_pvalue(y, dg_pmf(Fraction(6, 5), 12)) > P_MIN


def test_discrete_gaussian_large_sigma() -> None:
    s = 2**20
    x = noise.discrete_gaussian(200_000, s, SeededRandomSource("big"))
    assert abs(x.mean()) < 5 * s / math.sqrt(x.shape[0])
    assert x.var() / s**2 == pytest.approx(1.0, rel=0.02)
    assert stats.kstest(x / s, "norm").pvalue > P_MIN


def test_far_tail_candidates_are_decided_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force the exact Python-integer decision on every candidate beyond |y| = 2 and check the law.
    real = noise.math.isqrt

    def tiny_cap(n: int) -> int:
        # sigma = 2: t = 2, a = 1, b = 2, so ycap = (root - b) // a = 2.
        return real(n) if n < (1 << 40) else 4

    monkeypatch.setattr(noise.math, "isqrt", tiny_cap)
    x = noise.discrete_gaussian(20_000, 2, SeededRandomSource("tail"))
    monkeypatch.undo()
    assert np.abs(x).max() > 2
    assert chi2_pvalue(x, dg_pmf(2.0, 20)) > P_MIN


@pytest.mark.parametrize(("num", "den"), [(0, 1), (1, 1), (1, 3), (7, 2), (5, 1000)])
def test_bernoulli_exp_is_exact(num: int, den: int) -> None:
    n = 200_000
    hits = noise._bern_exp(np.full(n, num, dtype=np.uint64), den, SeededRandomSource(f"b{num}/{den}")).mean()
    p = math.exp(-num / den)
    assert abs(hits - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_discrete_laplace_pmf() -> None:
    t = 3
    x = noise.discrete_laplace(100_000, t, SeededRandomSource("dlap"))
    r = math.exp(-1 / t)
    pmf = {y: (1 - r) / (1 + r) * r ** abs(y) for y in range(-60, 61)}
    assert chi2_pvalue(x, pmf) > P_MIN
    assert noise.discrete_laplace(0, 2, SeededRandomSource(1)).shape == (0,)


def test_discrete_gaussian_million_draws_at_sigma_2_16() -> None:
    x = noise.discrete_gaussian(1_000_000, 2**16, SeededRandomSource("speed"))
    assert x.shape == (1_000_000,) and x.dtype == np.int64
    assert x.var() / 2**32 == pytest.approx(1.0, rel=0.01)


# ------------------------------------------------------------------ Skellam / Poisson


@pytest.mark.parametrize("lam", [0.5, 7.0, 12.0, 1000.0, 3.0e6])
def test_poisson_matches_pmf(lam: float) -> None:
    """numpy's sampler on the AES stream up to 2^20; the centred PTRS beyond (3e6)."""
    x = noise.poisson(100_000, lam, SeededRandomSource(f"p{lam}"))
    top = int(lam + 12 * math.sqrt(lam) + 20)
    low = max(0, int(lam - 12 * math.sqrt(lam) - 20))
    pmf = {k: float(stats.poisson.pmf(k, lam)) for k in range(low, top)}
    assert chi2_pvalue(x, pmf) > P_MIN


@pytest.mark.parametrize("variance", [3.0, 50.0, 2.0e6, 6.0e6, 1.0e13])
def test_skellam_matches_pmf(variance: float) -> None:
    """Both paths: numpy's Poisson (lam <= 2^20) and the centred PTRS offsets (6e6, 1e13)."""
    x = noise.skellam(100_000, variance, SeededRandomSource(f"sk{variance}"))
    mu = variance / 2
    top = int(12 * math.sqrt(variance) + 10)
    if variance < 1e5:
        pmf = {k: float(stats.skellam.pmf(k, mu, mu)) for k in range(-top, top + 1)}
        assert chi2_pvalue(x, pmf) > P_MIN
    else:  # very wide: excess kurtosis 1/variance, indistinguishable from N(0, variance) at this n
        assert stats.kstest(x / math.sqrt(variance), "norm").pvalue > P_MIN
    assert x.var() == pytest.approx(variance, rel=0.03)


def test_skellam_and_poisson_zero_and_empty() -> None:
    assert not noise.skellam(10, 0.0, SeededRandomSource(1)).any()
    assert noise.poisson(0, 3.0, SeededRandomSource(1)).shape == (0,)
    assert noise.skellam(0, 3.0e9, SeededRandomSource(1)).shape == (0,)


def reference_skellam(n: int, variance: float, rng: RandomSource) -> np.ndarray:
    """Slow, obviously correct reference: inverse cdf of scipy's exact Skellam pmf (tail < 1e-30)."""
    mu = variance / 2
    top = int(14 * math.sqrt(variance) + 20)
    ys = np.arange(-top, top + 1)
    cdf = np.cumsum(stats.skellam.pmf(ys, mu, mu))
    u = rng.uniform(n)
    return ys[np.minimum(np.searchsorted(cdf, u, side="right"), len(ys) - 1)]


@pytest.mark.parametrize("variance", [5.0, 5000.0, 4.0e6])
def test_skellam_matches_slow_reference(variance: float) -> None:
    fast = noise.skellam(30_000, variance, SeededRandomSource(f"fast{variance}"))
    ref = reference_skellam(30_000, variance, SeededRandomSource(f"ref{variance}"))
    assert stats.ks_2samp(fast, ref).pvalue > P_MIN
    # Same spread: the squared values (folded around the common mean 0) have the same law.
    assert stats.ks_2samp(fast.astype(np.float64) ** 2, ref.astype(np.float64) ** 2).pvalue > P_MIN


@pytest.mark.parametrize("lam", [40.0, 2.0**21, 3.0e12, 1.0e17])
def test_centred_log_pmf_matches_high_precision(lam: float) -> None:
    """The centred log-pmf of the large-lam sampler against mpmath at 50 digits."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    s = math.sqrt(lam)
    ks = np.array([math.floor(lam + j * s) for j in (-6, -2.5, -1, 0, 0.3, 1, 2.5, 6)], dtype=np.float64)
    got = noise.log_poisson_pmf_centred(ks, ks - lam, lam)
    L = mpmath.mpf(lam)
    for k, g in zip(ks.tolist(), got.tolist(), strict=True):
        K = mpmath.mpf(int(k))
        exact = -L + K * mpmath.log(L) - mpmath.loggamma(K + 1)
        assert abs(g - float(exact)) < 1e-6, (lam, k)


def test_direct_log_pmf_cancels_at_large_lam() -> None:
    """Why the centred form exists: the direct float64 log-pmf (what PTRS used for every lam, and
    numpy uses) is off by far more than 1e-6 at lam = 3e12, the Skellam lam of a 32-bit ring."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    lam = 3.0e12
    worst = 0.0
    for j in range(-30, 31):
        k = float(math.floor(lam + j * 1e5))
        direct = -lam + k * math.log(lam) - float(noise.gammaln(k + 1.0))
        exact = float(-mpmath.mpf(lam) + mpmath.mpf(int(k)) * mpmath.log(lam) - mpmath.loggamma(int(k) + 1))
        worst = max(worst, abs(direct - exact))
    assert worst > 1e-3


# ------------------------------------------------------------------ float Gaussian on a grid


def test_gaussian_grid_choice() -> None:
    g = noise.gaussian_grid(0.37, grid_bits=20)
    assert math.frexp(g.granularity)[0] == 0.5  # a power of two
    assert g.sigma_int >= 2**20
    assert 0.37 <= g.std <= 0.37 * (1 + 2**-19)


def test_gaussian_float_on_grid_and_std() -> None:
    x = noise.gaussian_float(200_000, 0.37, SeededRandomSource("gf"))
    g = noise.gaussian_grid(0.37).granularity
    assert np.all(np.mod(x, g) == 0)
    assert x.std() == pytest.approx(0.37, rel=0.01)
    assert stats.kstest(x / 0.37, "norm").pvalue > P_MIN


@settings(max_examples=40, deadline=None)
@given(
    x=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=8),
    std=st.floats(1e-3, 10.0),
)
def test_release_support_is_a_fixed_grid(x: list[float], std: float) -> None:
    # Floating-point attack resistance: whatever the clean value, every released coordinate is an
    # exact multiple of the same power-of-two grid, so the low bits carry no information about x.
    rel = noise.add_gaussian_noise(np.array(x), std, SeededRandomSource("rel"), grid_bits=12)
    k = rel.values / rel.granularity
    assert np.all(k == np.round(k))
    snapped = noise.snap_to_grid(np.array(x), rel.granularity)
    assert np.all(np.abs(snapped - np.array(x)) <= rel.granularity / 2)
    assert rel.std >= std


def test_naive_float_noise_would_leak() -> None:
    # Why the grid matters: with plain float noise the lattice of attainable outputs depends on x.
    a = 1.0 + np.float64(2.0**-40)
    assert (a + 1e-3) - 1e-3 != 1.0 + 1e-3 - 1e-3  # the clean value's low bits survive
    g = noise.gaussian_grid(1e-3).granularity
    assert noise.snap_to_grid(np.array([a]), g)[0] == noise.snap_to_grid(np.array([1.0]), g)[0]


# ------------------------------------------------------------------ randomness and errors


def test_no_global_numpy_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("global numpy randomness used")

    for name in ("normal", "standard_normal", "random", "poisson", "randint", "default_rng", "uniform"):
        monkeypatch.setattr(np.random, name, boom)
    rng = SeededRandomSource("no-global")
    noise.discrete_gaussian(100, 3, rng)
    noise.skellam(100, 40.0, rng)
    noise.gaussian_float(100, 1.0, rng)


def test_seeded_determinism() -> None:
    a = noise.discrete_gaussian(1000, 5, SeededRandomSource(42))
    b = noise.discrete_gaussian(1000, 5, SeededRandomSource(42))
    c = noise.discrete_gaussian(1000, 5, SeededRandomSource(43))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(noise.skellam(50, 9.0, SeededRandomSource(1)), noise.skellam(50, 9.0, SeededRandomSource(1)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: noise.discrete_gaussian(-1, 1.0, r), "size"),
        (lambda r: noise.discrete_gaussian(3, 0.0, r), "sigma"),
        (lambda r: noise.discrete_gaussian(3, float("nan"), r), "sigma"),
        (lambda r: noise.discrete_gaussian(3, "1", r), "sigma"),
        (lambda r: noise.discrete_gaussian(3, True, r), "sigma"),
        (lambda r: noise.discrete_laplace(3, 0, r), "t must"),
        (lambda r: noise.gaussian_grid(0.0), "std"),
        (lambda r: noise.gaussian_grid(1.0, grid_bits=2), "grid_bits"),
        (lambda r: noise.gaussian_float(3, -1.0, r), "std"),
        (lambda r: noise.snap_to_grid([1.0], 0.3), "power of two"),
        (lambda r: noise.snap_to_grid([float("inf")], 0.5), "NaN or Inf"),
        (lambda r: noise.poisson(3, -1.0, r), "lam"),
        (lambda r: noise.poisson(3, 2.0**63, r), "below 2"),
        (lambda r: noise.poisson(3, True, r), "lam"),
        (lambda r: noise.skellam(3, float("inf"), r), "variance"),
    ],
)
def test_errors(call: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        call(SeededRandomSource(0))  # type: ignore[operator]


@pytest.mark.parametrize("variance", [3.0, 84_000.0])
def test_skellam_table_pmf_matches_high_precision(variance: float) -> None:
    """The table's pmf (scipy ive) against mpmath's exp(-v) I_k(v) at 30 digits, bulk and tail,
    and its cdf against the exact cumulative sum."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    cdf, _ = noise._skellam_table(variance)
    s = math.sqrt(variance)

    def exact(k: int) -> float:
        return float(mpmath.exp(-variance) * mpmath.besseli(k, variance, maxterms=10**7))

    for k in sorted({0, 1, int(s), int(3 * s), int(8 * s)}):
        assert float(noise.ive(k, variance)) == pytest.approx(exact(k), rel=1e-12), k
    if variance < 100:
        ks = range(int(4 * s) + 1)
        exact_cdf = np.cumsum([exact(k) * (1 if k == 0 else 2) for k in ks])
        assert np.allclose(cdf[: len(exact_cdf)], exact_cdf, rtol=0, atol=1e-14)


def test_skellam_table_lookup_is_the_inverse_cdf() -> None:
    """White box: the guide-table lookup returns exactly np.searchsorted's inverse cdf."""
    variance = 84_000.0
    cdf, guide = noise._skellam_table(variance)
    u = np.concatenate([SeededRandomSource("u").uniform(50_000), [0.0, cdf[0], np.nextafter(1.0, 0.0)]])
    idx = guide[(u * guide.shape[0]).astype(np.intp)]
    for _ in range(3):
        idx += cdf[idx] <= u
    rest = np.flatnonzero(cdf[idx] <= u)
    idx[rest] = np.searchsorted(cdf, u[rest], side="right")
    assert np.array_equal(idx, np.searchsorted(cdf, u, side="right"))


@pytest.mark.parametrize("variance", [0.3, 5.0, 400.0, 84_000.0, 2.0**24])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 10_001])
def test_skellam_table_sampler_equals_the_plain_inverse_cdf_on_the_same_coins(variance: float, n: int) -> None:
    """The fast table sampler (guide, in-place steps, branch-free sign) draws exactly what the
    obvious one draws from the same AES-CTR coins: np.searchsorted's inverse cdf of each uniform,
    then a fair sign from the next bits, negated with np.where."""
    cdf, _ = noise._skellam_table(variance)

    def obvious(coins: noise._Coins) -> np.ndarray:
        u = coins.gen.random(n)
        mag = np.searchsorted(cdf, u, side="right").astype(np.int64)
        signs = np.unpackbits(coins.uint64((n + 63) // 64).view(np.uint8))[:n].astype(np.bool_)
        return np.where(signs, -mag, mag)

    key = f"table{variance}/{n}"
    fast = noise._skellam_by_table(n, variance, noise._Coins(SeededRandomSource(key)))
    assert fast.dtype == np.int64
    assert np.array_equal(fast, obvious(noise._Coins(SeededRandomSource(key))))


@pytest.mark.parametrize("variance", [0.3, 400.0, 2.0**24])
def test_skellam_cells_hold_the_inverse_cdf_of_every_uniform_in_them(variance: float) -> None:
    """White box: a cell with a value maps both its ends (and so everything between: the inverse
    cdf is monotone) to that value; the cells with none are few."""
    cdf, _ = noise._skellam_table(variance)
    shift, cell = noise._skellam_cells(variance)
    size = cell.shape[0]
    assert size == 1 << (64 - shift) and np.mean(cell < 0) < 0.02
    j = np.unique(np.concatenate([SeededRandomSource("cells").uint64(5000) % np.uint64(size), [0, size - 1]]))
    j = j.astype(np.int64)
    lo = j.astype(np.float64) / size
    hi = np.nextafter((j + 1).astype(np.float64) / size, 0.0)
    known = cell[j] >= 0
    assert np.array_equal(np.searchsorted(cdf, lo[known], side="right"), cell[j][known])
    assert np.array_equal(np.searchsorted(cdf, hi[known], side="right"), cell[j][known])


class _ScriptedWords(noise._Coins):
    """Coins whose 64-bit words are given (the table sampler reads only ``uint64``)."""

    def __init__(self, words: np.ndarray, signs: np.ndarray) -> None:
        self._queue = [np.asarray(words, dtype=np.uint64), np.asarray(signs, dtype=np.uint64)]

    def uint64(self, size: int) -> np.ndarray:
        out = self._queue.pop(0)
        assert out.shape == (size,)
        return out


@pytest.mark.parametrize("variance", [0.3, 84_000.0, 2.0**24])
def test_skellam_table_sampler_is_exact_at_the_far_tail(variance: float) -> None:
    """The sampler keeps its table in a narrow integer type (int16 or int32, see _index_dtype): words
    at the very top of [0, 2^64) (the largest magnitude any uniform reaches: about 7.6 sigma, 31,093
    at variance 2^24), at zero and at 2^63 still give np.searchsorted's inverse cdf, with either sign."""
    cdf, _ = noise._skellam_table(variance)
    shift, cell = noise._skellam_cells(variance)
    assert np.iinfo(cell.dtype).max >= cdf.shape[0] - 1
    top = np.uint64(2**64 - 1)
    words = np.array([top, top - np.uint64(2**11), top - np.uint64(2**40), 0, 2**63], dtype=np.uint64)
    n = words.shape[0]
    sign_word = np.array([0b01010], dtype=np.uint64)  # draws 1 and 3 negative
    got = noise._skellam_by_table(n, variance, _ScriptedWords(words, sign_word))
    u = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    mag = np.searchsorted(cdf, u, side="right").astype(np.int64)
    want = np.where(np.unpackbits(sign_word.view(np.uint8))[:n].astype(bool), -mag, mag)
    assert got.dtype == np.int64
    assert np.array_equal(got, want)


def test_index_dtype_holds_every_index_and_its_negation() -> None:
    for n in (1, 2, 32_767, 32_768, 61_481, 1 << 20):
        dt = noise._index_dtype(n)
        assert np.iinfo(dt).min <= -(n - 1) and n - 1 <= np.iinfo(dt).max
    assert noise._index_dtype(32_767) is np.int16 and noise._index_dtype(40_000) is np.int32
