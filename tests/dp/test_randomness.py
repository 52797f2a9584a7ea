from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource, SystemRandomSource, uniform_from_bytes
from secagg import RandomSource as RandomSourceProtocol


def test_sources_satisfy_the_secagg_protocol():
    assert isinstance(SystemRandomSource(), RandomSourceProtocol)
    assert isinstance(SeededRandomSource(1), RandomSourceProtocol)


def test_seeded_is_deterministic_and_chunking_invariant():
    a, b = SeededRandomSource(7), SeededRandomSource(7)
    whole = a.random_bytes(200_000)
    parts = b.random_bytes(3) + b.random_bytes(70_000) + b.random_bytes(129_997)
    assert whole == parts
    assert SeededRandomSource(8).random_bytes(32) != SeededRandomSource(7).random_bytes(32)


def test_spawn_is_independent_of_position_and_label_specific():
    a = SeededRandomSource("s")
    c1 = a.spawn("x").random_bytes(16)
    a.random_bytes(1000)
    assert a.spawn("x").random_bytes(16) == c1
    assert a.spawn("y").random_bytes(16) != c1


def test_uniform_range_and_resolution():
    u = SeededRandomSource(1).uniform(100_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert uniform_from_bytes(b"\xff" * 8, 1)[0] == (2**53 - 1) / 2**53


@given(st.integers(1, 10**6))
def test_randbelow_in_range(n):
    assert 0 <= SeededRandomSource(n).randbelow(n) < n


def test_randbelow_unbiased_small_n():
    r = SeededRandomSource(3)
    counts = np.bincount([r.randbelow(3) for _ in range(30_000)], minlength=3)
    assert np.all(np.abs(counts - 10_000) < 400)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        SeededRandomSource(1).randbelow(0)
    with pytest.raises(ValueError):
        SeededRandomSource(1).random_bytes(-1)


def test_system_source_draws_fresh_bytes():
    s = SystemRandomSource()
    assert s.random_bytes(32) != s.random_bytes(32)
    assert isinstance(s.spawn("a"), SystemRandomSource)
    assert len(s.uint64(5)) == 5


def test_base_source_is_abstract():
    from dp.randomness import RandomSource

    with pytest.raises(TypeError, match="abstract"):
        RandomSource()  # type: ignore[abstract]
