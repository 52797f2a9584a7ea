from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg import ConfigurationError, LocalProtocolError, RingSpec


@pytest.mark.parametrize(
    "bits,dtype", [(1, np.uint8), (8, np.uint8), (9, np.uint16), (32, np.uint32), (33, np.uint64), (64, np.uint64)]
)
def test_dtype_is_narrowest(bits, dtype):
    assert RingSpec(bits).dtype == np.dtype(dtype)


@pytest.mark.parametrize("bits", [0, 65, -3])
def test_bits_out_of_range_raise(bits):
    with pytest.raises(ConfigurationError, match="1..64"):
        RingSpec(bits)


def test_bits_must_be_int():
    with pytest.raises(ConfigurationError, match="int"):
        RingSpec(32.0)  # type: ignore[arg-type]


@given(st.integers(1, 64), st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=20))
def test_signed_round_trip_mod_2b(bits, values):
    ring = RingSpec(bits)
    v = ring.from_signed(np.asarray(values, dtype=np.int64))
    back = ring.to_signed(v)
    half = 1 << (bits - 1)
    for x, y in zip(values, back.tolist()):
        expected = ((x + half) % (1 << bits)) - half  # the representative in [-2^(b-1), 2^(b-1))
        assert y == expected


@given(st.integers(1, 64), st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20))
def test_from_signed_is_the_value_mod_2b(bits, values):
    """The one-cast conversion against the definition, over the whole int64 range: x mod 2^b."""
    v = RingSpec(bits).from_signed(np.asarray(values, dtype=np.int64))
    assert v.dtype == RingSpec(bits).dtype
    assert v.tolist() == [x % (1 << bits) for x in values]


@given(
    st.integers(1, 64), st.lists(st.lists(st.integers(0, 2**64 - 1), min_size=3, max_size=3), min_size=1, max_size=8)
)
def test_sum_matches_python_modular_sum(bits, rows):
    ring = RingSpec(bits)
    vecs = [np.asarray([x & ring.mask for x in r], dtype=np.uint64).astype(ring.dtype) for r in rows]
    total = ring.sum(vecs, 3)
    for j in range(3):
        assert int(total[j]) == sum(int(v[j]) for v in vecs) % ring.modulus
    # subtraction undoes addition
    acc = total.copy()
    for v in vecs:
        ring.sub_into(acc, v)
    assert not acc.any()


def test_bytes_round_trip_and_errors():
    ring = RingSpec(12)
    v = np.asarray([0, 1, 4095], dtype=np.uint16)
    assert np.array_equal(ring.from_bytes(ring.to_bytes(v), 3), v)
    with pytest.raises(LocalProtocolError, match="bytes"):
        ring.from_bytes(b"\x00" * 5, 3)
    with pytest.raises(LocalProtocolError, match="outside"):
        ring.from_bytes(np.asarray([0, 0, 4096], dtype="<u2").tobytes(), 3)


def test_check_rejects_wrong_arrays():
    ring = RingSpec(32)
    with pytest.raises(LocalProtocolError, match="numpy array"):
        ring.check([1, 2, 3])
    with pytest.raises(LocalProtocolError, match="uint32"):
        ring.check(np.zeros(3, dtype=np.int64))
    with pytest.raises(LocalProtocolError, match="length"):
        ring.check(np.zeros(3, dtype=np.uint32), 4)
    with pytest.raises(LocalProtocolError, match="outside"):
        RingSpec(5).check(np.asarray([32], dtype=np.uint8))


@pytest.mark.parametrize("bits", [1, 2, 31, 32, 33, 62, 63, 64])
def test_to_signed_extremes(bits):
    """Regression: bits = 63 once overflowed while sign-extending."""
    ring = RingSpec(bits)
    half = 1 << (bits - 1)
    values = np.asarray([0, 1, -1, half - 1, -half], dtype=np.int64) if bits > 1 else np.asarray([0, -1])
    assert ring.to_signed(ring.from_signed(values)).tolist() == values.tolist()
