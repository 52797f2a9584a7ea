"""Shamir over GF(2^256 + 297): primality, fixed-coefficient vectors, threshold properties, errors."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import gmpy2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp.randomness import SeededRandomSource
from secagg.primitives import ShareError, shamir

OURS = json.loads((Path(__file__).parents[1] / "vectors" / "masking" / "masking_vectors.json").read_text())
P = shamir.PRIME


class ScriptedCoefficients:
    """A RandomSource stand-in that returns the given field elements as the 33-byte draws."""

    def __init__(self, values: list[int]) -> None:
        self._values = list(values)

    def random_bytes(self, n: int) -> bytes:
        assert n == shamir.ELEMENT_BYTES
        return self._values.pop(0).to_bytes(n, "little")

    def uniform(self, size: int):  # pragma: no cover - unused
        raise NotImplementedError

    def spawn(self, label: str):  # pragma: no cover - unused
        raise NotImplementedError


def slow_reconstruct(points: dict[int, int]) -> int:
    """Oracle: exact rational Lagrange interpolation at 0, then reduced mod p."""
    total = Fraction(0)
    for xi, yi in points.items():
        term = Fraction(yi)
        for xj in points:
            if xj != xi:
                term *= Fraction(xj, xj - xi)
        total += term
    return total.numerator * pow(total.denominator, -1, P) % P


def test_prime_is_the_smallest_prime_above_2_256() -> None:
    assert P == (1 << 256) + 297 == int(OURS["prime"])
    assert gmpy2.is_prime(P, 64)
    assert gmpy2.next_prime(1 << 256) == P


@pytest.mark.parametrize("case", OURS["shamir"], ids=lambda c: f"t{c['threshold']}")
def test_fixed_coefficient_vectors(case: dict) -> None:
    coeffs = [int(c) for c in case["coefficients"]]
    xs = [int(x) for x in case["shares"]]
    shares = shamir.split(bytes.fromhex(case["secret"]), xs, case["threshold"], ScriptedCoefficients(coeffs))
    assert {str(x): str(y) for x, y in shares.items()} == case["shares"]
    assert shamir.reconstruct(shares, case["threshold"]).hex() == case["secret"]


def test_hand_computed_linear_example() -> None:
    # f(x) = 5 + 3x: shares (1, 8), (2, 11), (4, 17); any two give 5.
    shares = shamir.split((5).to_bytes(32, "little"), [1, 2, 4], 2, ScriptedCoefficients([3]))
    assert shares == {1: 8, 2: 11, 4: 17}
    assert shamir.reconstruct({2: 11, 4: 17}, 2) == (5).to_bytes(32, "little")


@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_any_t_shares_reconstruct_and_match_oracle(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, xs, t, SeededRandomSource(data.draw(st.integers(0, 1000))))
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    picked = {x: shares[x] for x in subset}
    assert shamir.reconstruct(picked, t) == secret
    first_t = dict(sorted(picked.items())[:t])
    assert slow_reconstruct(first_t) == int.from_bytes(secret, "little")


@given(secret=st.binary(min_size=32, max_size=32), seed=st.integers(0, 1000))
def test_fewer_than_t_shares_give_nothing_useful(secret: bytes, seed: int) -> None:
    """With t-1 shares, interpolating a degree-(t-2) polynomial recovers the secret only by chance."""
    shares = shamir.split(secret, [1, 2, 3, 4], 3, SeededRandomSource(seed))
    guess = slow_reconstruct({1: shares[1], 2: shares[2]})
    assert guess != int.from_bytes(secret, "little")


def test_lagrange_weights_are_cached() -> None:
    shamir.lagrange_at_zero.cache_clear()
    shares = shamir.split(bytes(32), [1, 2, 3], 2, SeededRandomSource(1))
    shamir.reconstruct(shares, 2)
    shamir.reconstruct(shares, 2)
    assert shamir.lagrange_at_zero.cache_info().hits >= 1


@pytest.mark.parametrize(
    "secret,holders,t,match",
    [
        (bytes(31), [1, 2], 1, "32 bytes"),
        (bytes(32), [1, 1], 1, "distinct"),
        (bytes(32), [0, 1], 1, "distinct"),
        (bytes(32), [1, 2**32], 1, "distinct"),
        (bytes(32), [1, 2], 3, "threshold"),
        (bytes(32), [1, 2], 0, "threshold"),
    ],
)
def test_split_rejects(secret: bytes, holders: list[int], t: int, match: str) -> None:
    with pytest.raises(ShareError, match=match):
        shamir.split(secret, holders, t, SeededRandomSource(0))


def test_reconstruct_rejects_too_few() -> None:
    with pytest.raises(ShareError, match="need 3"):
        shamir.reconstruct({1: 1, 2: 2}, 3)


def test_reconstruct_rejects_bad_x() -> None:
    with pytest.raises(ShareError, match="x-coordinates"):
        shamir.reconstruct({0: 1, 2: 2}, 2)


def test_reconstruct_rejects_value_outside_field() -> None:
    with pytest.raises(ShareError, match="outside the field"):
        shamir.reconstruct({1: P, 2: 2}, 2)


def test_reconstruct_detects_secret_too_large() -> None:
    # The constant polynomial f = 2^256 + 5 is not a 32-byte secret.
    with pytest.raises(ShareError, match="exceeds 32 bytes"):
        shamir.reconstruct({1: (1 << 256) + 5}, 1)


def test_element_encoding_round_trip_and_rejects() -> None:
    assert shamir.element_from_bytes(shamir.element_to_bytes(P - 1)) == P - 1
    with pytest.raises(ShareError, match="outside the field"):
        shamir.element_to_bytes(P)
    with pytest.raises(ShareError, match="33 bytes"):
        shamir.element_from_bytes(bytes(32))
    with pytest.raises(ShareError, match="canonical"):
        shamir.element_from_bytes(P.to_bytes(33, "little"))


@given(
    secret=st.binary(min_size=32, max_size=32),
    xs=st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=40, unique=True),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_split_equals_term_by_term_evaluation(secret: bytes, xs: list[int], seed: int, data: st.DataObject) -> None:
    """Reference for split's Horner-over-the-integers: each share is sum(c_i x^i) mod p, reduced term by term."""
    import random

    t = data.draw(st.integers(1, len(xs)))

    coeffs = [random.Random(seed).randrange(P) for _ in range(t - 1)]  # test data only, nothing secret
    shares = shamir.split(secret, xs, t, ScriptedCoefficients(coeffs))
    full = [int.from_bytes(secret, "little"), *coeffs]
    for x in xs:
        assert shares[x] == sum(c * pow(x, i, P) % P for i, c in enumerate(full)) % P
