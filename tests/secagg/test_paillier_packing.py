"""Packing ring vectors into Paillier plaintexts: round trip, overflow-free sums, typed errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import EncodingOverflowError, LocalProtocolError
from secagg.paillier.packing import plan_packing
from secagg.ring import RingSpec


def slow_pack(plan, v):
    """Obviously correct reference: sum of v_i << (i * w) per plaintext."""
    out = []
    for k in range(plan.plaintexts):
        acc = 0
        for i in range(plan.slots):
            j = k * plan.slots + i
            if j < plan.dim:
                acc += int(v[j]) << (i * plan.slot_bits)
        out.append(acc)
    return out


def slow_unpack(plan, pts):
    vals = []
    for m in pts:
        for i in range(plan.slots):
            vals.append((int(m) >> (i * plan.slot_bits)) & plan.ring.mask)
    return np.array(vals[: plan.dim], dtype=np.uint64).astype(plan.ring.dtype)


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
    assert all(0 <= m < (1 << (key_bits - 1)) for m in pts)
    out = plan.unpack(pts)
    assert out.dtype == ring.dtype and np.array_equal(out, v)
    assert np.array_equal(slow_unpack(plan, pts), v)


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
    total = [sum(ms) for ms in zip(*(plan.pack(v) for v in vecs))]
    assert all(t < (1 << plan.packed_bits) for t in total)  # no slot carried out
    assert np.array_equal(plan.unpack(total), ring.sum(vecs, dim))


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 40),
    values=st.lists(st.lists(st.integers(-(2**20), 2**20), min_size=4, max_size=4), min_size=1, max_size=8),
)
def test_negative_values_and_noise_sum_in_twos_complement(bits, values):
    ring = RingSpec(bits)
    plan = plan_packing(ring, 4, key_bits=512, max_clients=8)
    vecs = [ring.from_signed(np.array(v, dtype=np.int64)) for v in values]
    total = [sum(ms) for ms in zip(*(plan.pack(v) for v in vecs))]
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
