"""Packing ring vectors into Paillier plaintexts: round trip, overflow-free sums, typed errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import EncodingOverflowError, LocalProtocolError
from secagg.paillier.packing import plan_packing
from secagg.ring import RingSpec


def signed(ring, x):
    x = int(x)
    return x - ring.modulus if x >= ring.modulus // 2 else x


def slow_pack(plan, v):
    """Obviously correct reference: sum of (signed(v_i) + 2^(b-1)) << (i * w) per plaintext;
    unused slots hold the offset 2^(b-1) alone."""
    half = plan.ring.modulus // 2
    out = []
    for k in range(plan.plaintexts):
        acc = 0
        for i in range(plan.slots):
            j = k * plan.slots + i
            value = signed(plan.ring, v[j]) if j < plan.dim else 0
            acc += (value + half) << (i * plan.slot_bits)
        out.append(acc)
    return out


def slow_completion(plan, inputs):
    per_slot = (plan.max_clients - inputs) * (plan.ring.modulus // 2)
    return sum(per_slot << (i * plan.slot_bits) for i in range(plan.slots))


def slow_unpack(plan, pts):
    """Each slot minus max_clients offsets, mod 2^b."""
    base = plan.max_clients * (plan.ring.modulus // 2)
    vals = []
    for m in pts:
        for i in range(plan.slots):
            vals.append(((int(m) >> (i * plan.slot_bits)) - base) % plan.ring.modulus)
    return np.array(vals[: plan.dim], dtype=np.uint64).astype(plan.ring.dtype)


def completed_sum(plan, vecs):
    """What the key holders decrypt: the packed vectors' sum plus the server's completion."""
    pad = plan.completion(len(vecs))
    return [sum(ms) + pad for ms in zip(*(plan.pack(v) for v in vecs))]


def ring_vectors(draw, ring, dim):
    return np.array(draw(st.lists(st.integers(0, ring.mask), min_size=dim, max_size=dim)), dtype=np.uint64).astype(
        ring.dtype
    )


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 64),
    dim=st.integers(1, 300),
    key_bits=st.sampled_from([128, 256, 512, 2048]),
    max_clients=st.integers(1, 1000),
    data=st.data(),
)
def test_pack_unpack_round_trip_matches_reference(bits, dim, key_bits, max_clients, data):
    ring = RingSpec(bits)
    try:
        plan = plan_packing(ring, dim, key_bits=key_bits, max_clients=max_clients)
    except EncodingOverflowError:
        assert (max_clients * ring.mask).bit_length() > key_bits - 1
        return
    v = ring_vectors(data.draw, ring, dim)
    pts = plan.pack(v)
    assert [int(m) for m in pts] == slow_pack(plan, v)
    assert int(plan.completion(1)) == slow_completion(plan, 1)
    done = completed_sum(plan, [v])
    assert all(0 <= m < (1 << (key_bits - 1)) for m in done)
    out = plan.unpack(done)
    assert out.dtype == ring.dtype and np.array_equal(out, v)
    assert np.array_equal(slow_unpack(plan, done), v)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 64),
    dim=st.integers(1, 120),
    max_clients=st.integers(1, 300),
    data=st.data(),
)
def test_sum_of_packed_vectors_unpacks_to_ring_sum(bits, dim, max_clients, data):
    """Worst case included: every value may be 2^b - 1 and all max_clients vectors are summed."""
    ring = RingSpec(bits)
    plan = plan_packing(ring, dim, key_bits=2048, max_clients=max_clients)
    n = data.draw(st.integers(1, max_clients))
    if data.draw(st.booleans()):
        vecs = [np.full(dim, ring.mask, dtype=np.uint64).astype(ring.dtype) for _ in range(n)]
    else:
        vecs = [ring_vectors(data.draw, ring, dim) for _ in range(min(n, 5))]
        n = len(vecs)
    total = completed_sum(plan, vecs)
    assert all(t < (1 << plan.packed_bits) for t in total)  # no slot carried out
    assert np.array_equal(plan.unpack(total), ring.sum(vecs, dim))
    assert np.array_equal(slow_unpack(plan, total), ring.sum(vecs, dim))


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 40),
    values=st.lists(st.lists(st.integers(-(2**20), 2**20), min_size=4, max_size=4), min_size=1, max_size=8),
)
def test_negative_values_and_noise_sum_in_twos_complement(bits, values):
    ring = RingSpec(bits)
    plan = plan_packing(ring, 4, key_bits=512, max_clients=8)
    vecs = [ring.from_signed(np.array(v, dtype=np.int64)) for v in values]
    total = completed_sum(plan, vecs)
    expected = ring.from_signed(np.array(values, dtype=np.int64).sum(axis=0))
    assert np.array_equal(plan.unpack(total), expected)


def test_slot_geometry_for_the_headline_configuration():
    plan = plan_packing(RingSpec(16), 10**6, key_bits=2048, max_clients=100)
    assert plan.slot_bits == 23  # 100 * (2^16 - 1) < 2^23
    assert plan.slots == 89  # floor(2047 / 23)
    assert plan.plaintexts == 11236


def test_plan_refuses_what_cannot_fit():
    with pytest.raises(EncodingOverflowError) as ei:
        plan_packing(RingSpec(64), 10, key_bits=128, max_clients=2**70)
    assert ei.value.knob == "max_clients"
    with pytest.raises(EncodingOverflowError) as ei:
        plan_packing(RingSpec(16), 0, key_bits=2048, max_clients=2)
    assert ei.value.knob == "dim"
    with pytest.raises(EncodingOverflowError) as ei:
        plan_packing(RingSpec(16), 5, key_bits=2048, max_clients=0)
    assert ei.value.knob == "max_clients"


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 32),
    max_clients=st.integers(2, 40),
    data=st.data(),
)
def test_plaintext_is_a_function_of_the_ring_sum_alone(bits, max_clients, data):
    """Two cohorts (of any sizes, any split between positive and negative values) whose signed
    sums agree, and do not wrap the ring, decrypt to the same plaintexts (issue 14, finding 2)."""
    ring = RingSpec(bits)
    dim = 3
    plan = plan_packing(ring, dim, key_bits=2048, max_clients=max_clients)
    half = ring.modulus // 2
    target = data.draw(st.lists(st.integers(-half + 1, half - 1), min_size=dim, max_size=dim))

    def cohort():
        n = data.draw(st.integers(1, max_clients))
        per = max(1, (half - 1) // max_clients)
        rows = [data.draw(st.lists(st.integers(-per, per), min_size=dim, max_size=dim)) for _ in range(n - 1)]
        last = [t - sum(r[i] for r in rows) for i, t in enumerate(target)]
        if any(not -half <= x < half for x in last):
            rows, last = [], list(target)
        return [ring.from_signed(np.array(r, dtype=np.int64)) for r in [*rows, last]]

    a, b = cohort(), cohort()
    assert np.array_equal(ring.sum(a, dim), ring.sum(b, dim))
    assert [int(m) for m in completed_sum(plan, a)] == [int(m) for m in completed_sum(plan, b)]


def test_completion_refuses_a_count_outside_the_plan():
    plan = plan_packing(RingSpec(8), 10, key_bits=256, max_clients=4)
    for bad in (0, 5):
        with pytest.raises(LocalProtocolError, match="this plan sums 1..4"):
            plan.completion(bad)


def test_unpack_refuses_out_of_range_and_wrong_count():
    plan = plan_packing(RingSpec(8), 10, key_bits=256, max_clients=4)
    pts = plan.pack(np.arange(10, dtype=np.uint8))
    with pytest.raises(EncodingOverflowError, match="packed range"):
        plan.unpack([pts[0] + (1 << plan.packed_bits)])
    with pytest.raises(EncodingOverflowError, match="packed range"):
        plan.unpack([-1])
    with pytest.raises(LocalProtocolError, match="expected"):
        plan.unpack(pts + pts)


def test_pack_checks_the_vector():
    plan = plan_packing(RingSpec(8), 10, key_bits=256, max_clients=4)
    with pytest.raises(LocalProtocolError):
        plan.pack(np.arange(9, dtype=np.uint8))
    with pytest.raises(LocalProtocolError):
        plan.pack(np.arange(10, dtype=np.uint16))
