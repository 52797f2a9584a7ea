from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource
from secagg import EncodingOverflowError, FixedPointEncoder, RingSpec, plan_encoding

finite = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=50), st.integers(16, 64), st.integers(1, 1000), st.integers(0, 2**32))
def test_encode_decode_within_one_quantum(xs, bits, n, seed):
    try:
        plan = plan_encoding(clip_norm=1.0, dim=len(xs), max_clients=n, bits=bits)
    except EncodingOverflowError:
        assume(False)
    enc = FixedPointEncoder(plan)
    x = np.asarray(xs)
    back = enc.decode(enc.encode(x, SeededRandomSource(seed)))
    assert np.all(np.abs(back - x) <= plan.quantum + 1e-15)


@given(st.integers(1, 30), st.integers(1, 20), st.integers(20, 64), st.integers(0, 2**32))
def test_ring_sum_decodes_within_n_quanta(n, dim, bits, seed):
    try:
        plan = plan_encoding(clip_norm=1.0, dim=dim, max_clients=n, bits=bits)
    except EncodingOverflowError:
        assume(False)
    rng = SeededRandomSource(seed)
    enc = FixedPointEncoder(plan)
    xs = [np.clip(rng.uniform(dim) * 2 - 1, -1, 1) for _ in range(n)]
    total = plan.ring.sum((enc.encode(x, rng.spawn(str(i))) for i, x in enumerate(xs)), dim)
    assert np.all(np.abs(enc.decode(total) - np.sum(xs, axis=0)) <= n * plan.quantum + 1e-9)


@given(
    st.floats(1e-3, 1e3),
    st.integers(1, 10**6),
    st.integers(1, 10**5),
    st.integers(2, 64),
    st.one_of(st.none(), st.floats(1e-6, 1e12)),
    st.floats(0, 10),
)
def test_solver_never_accepts_a_wrapping_configuration(clip, dim, n, bits, scale, noise):
    try:
        plan = plan_encoding(clip_norm=clip, dim=dim, max_clients=n, bits=bits, scale=scale, noise_std=noise)
    except EncodingOverflowError:
        return
    # Independent worst case: n clients at +-clip, each rounded up, plus the noise tail.
    tail = math.sqrt(2 * math.log(2 * dim / plan.failure_prob)) if noise > 0 else 0.0
    worst = n * math.ceil(clip * plan.scale) + tail * math.sqrt(n) * noise * plan.scale
    assert worst <= 2 ** (bits - 1) - 1


def test_worst_case_sum_does_not_wrap_at_the_boundary():
    plan = plan_encoding(clip_norm=1.0, dim=4, max_clients=7, bits=16)
    enc = FixedPointEncoder(plan)
    rng = SeededRandomSource(0)
    x = np.asarray([1.0, -1.0, 1.0, -1.0])
    total = plan.ring.sum((enc.encode(x, rng) for _ in range(7)), 4)
    assert np.allclose(enc.decode(total), 7 * x, atol=7 * plan.quantum)


def test_stochastic_rounding_is_unbiased():
    plan = plan_encoding(clip_norm=1.0, dim=200_000, max_clients=1, bits=16, scale=4.0)
    enc = FixedPointEncoder(plan)
    x = np.full(200_000, 0.3)  # 1.2 quanta: rounds to 1 or 2 with P(2) = 0.2
    mean = enc.decode(enc.encode(x, SeededRandomSource(3))).mean()
    assert abs(mean - 0.3) < 0.003


def test_encode_rejects_out_of_bound_nan_and_shape():
    plan = plan_encoding(clip_norm=1.0, dim=3, max_clients=2)
    enc = FixedPointEncoder(plan)
    rng = SeededRandomSource(0)
    with pytest.raises(EncodingOverflowError, match="exceeds the encoding bound") as e:
        enc.encode(np.asarray([0.0, 1.5, 0.0]), rng)
    assert e.value.knob == "clip_norm"
    with pytest.raises(EncodingOverflowError, match="NaN"):
        enc.encode(np.asarray([0.0, np.nan, 0.0]), rng)
    with pytest.raises(EncodingOverflowError, match="length 3"):
        enc.encode(np.zeros(4), rng)


@pytest.mark.parametrize(
    "kwargs,knob",
    [
        (dict(clip_norm=0.0, dim=3, max_clients=2), "clip_norm"),
        (dict(clip_norm=float("nan"), dim=3, max_clients=2), "clip_norm"),
        (dict(clip_norm=1.0, dim=0, max_clients=2), "dim"),
        (dict(clip_norm=1.0, dim=3, max_clients=0), "max_clients"),
        (dict(clip_norm=1.0, dim=3, max_clients=2, noise_std=-1.0), "noise_std"),
        (dict(clip_norm=1.0, dim=3, max_clients=2, failure_prob=0.0), "failure_prob"),
        (dict(clip_norm=1.0, dim=3, max_clients=2, coordinate_bound=2.0), "coordinate_bound"),
        (dict(clip_norm=1.0, dim=3, max_clients=2, scale=-1.0), "scale"),
        (dict(clip_norm=1.0, dim=3, max_clients=1000, bits=16), "bits"),
        (dict(clip_norm=1.0, dim=3, max_clients=40000, bits=16), "bits"),
        (dict(clip_norm=1.0, dim=3, max_clients=100, bits=32, scale=2.0**30), "scale"),
    ],
)
def test_refusals_name_the_knob(kwargs, knob):
    with pytest.raises(EncodingOverflowError) as e:
        plan_encoding(**kwargs)
    assert e.value.knob == knob


def test_noise_headroom_shrinks_scale():
    quiet = plan_encoding(clip_norm=1.0, dim=1000, max_clients=100)
    noisy = plan_encoding(clip_norm=1.0, dim=1000, max_clients=100, noise_std=5.0)
    assert noisy.scale < quiet.scale
    assert noisy.headroom_bits() >= 0


def test_decode_checks_the_vector():
    plan = plan_encoding(clip_norm=1.0, dim=3, max_clients=2)
    from secagg import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        FixedPointEncoder(plan).decode(np.zeros(3, dtype=np.uint64))
    assert RingSpec(32).dtype == plan.ring.dtype


# -- the ring solver and conditional rounding ---------------------------------------------


def test_smallest_plan_picks_the_narrowest_ring_that_reaches_the_scale() -> None:
    from secagg.encoding import smallest_plan

    common = dict(clip_norm=1.0, dim=101_770, max_clients=50, noise_std=1.05 / math.sqrt(50), coordinate_bound=0.0283)
    plan = smallest_plan(min_scale=1024.0, **common)
    assert plan.ring.bits == 16 and plan.scale >= 1024.0 and plan.worst_case() <= plan.limit
    assert smallest_plan(min_scale=2.0**20, **common).ring.bits == 32
    with pytest.raises(EncodingOverflowError) as exc:
        smallest_plan(min_scale=2.0**80, **common)
    assert exc.value.knob == "bits"


@settings(max_examples=50, deadline=None)
@given(
    clip=st.floats(0.01, 100.0),
    dim=st.integers(1, 10**6),
    clients=st.integers(1, 5000),
    noise=st.floats(0.0, 10.0),
    min_scale=st.floats(1e-3, 1e6),
)
def test_smallest_plan_never_accepts_a_wrapping_configuration(clip, dim, clients, noise, min_scale) -> None:
    from secagg.encoding import smallest_plan

    try:
        plan = smallest_plan(clip_norm=clip, dim=dim, max_clients=clients, noise_std=noise, min_scale=min_scale)
    except EncodingOverflowError as exc:
        assert exc.knob == "bits"
        return
    assert plan.worst_case() <= plan.limit and plan.scale >= min_scale
    narrower = [b for b in (8, 16, 32, 64) if b < plan.ring.bits]
    for bits in narrower:  # no narrower ring would have done
        try:
            other = plan_encoding(
                clip_norm=clip, dim=dim, max_clients=clients, noise_std=noise, bits=bits, min_levels=1
            )
        except EncodingOverflowError:
            continue
        assert other.scale < min_scale


def test_conditional_rounding_keeps_every_output_within_the_norm_bound() -> None:
    """Kairouz, Liu, Steinke 2021, Sec. 4.1: re-round until the rounded norm is within the bound; every
    output then satisfies it (the DP layer charges that bound), and each coordinate stays within a quantum."""
    dim, c = 4096, 40.0
    plan = plan_encoding(clip_norm=1.0, dim=dim, max_clients=4, bits=32, scale=c)
    enc = FixedPointEncoder(plan)
    g = np.random.default_rng(3)
    x = g.standard_normal(dim)
    x /= np.linalg.norm(x)
    beta = 0.5
    bound = math.sqrt(c * c + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(dim) / 2))
    tight = math.sqrt(c * c + dim / 4)  # below the typical norm: forces re-rounding often
    rng = SeededRandomSource("cond")
    for max_norm in (bound, tight * 1.002):
        for _ in range(20):
            ints = plan.ring.to_signed(enc.encode(x, rng, max_norm=max_norm)).astype(np.float64)
            assert float(ints @ ints) <= max_norm * max_norm
            assert np.all(np.abs(ints - x * c) < 1.0)
    with pytest.raises(EncodingOverflowError, match="conditional rounding"):
        enc.encode(x, rng, max_norm=c * 0.5)  # below the vector's own scaled norm: impossible


def test_conditional_rounding_checks_only_the_named_prefix() -> None:
    plan = plan_encoding(clip_norm=1.0, dim=3, max_clients=2, bits=32, scale=8.0)
    enc = FixedPointEncoder(plan)
    out = enc.encode(np.array([0.0, 0.0, 1.0]), SeededRandomSource(1), max_norm=0.5, norm_coordinates=2)
    assert plan.ring.to_signed(out).tolist() == [0, 0, 8]
