"""The populations of the CNN utility rows: equal-size clients with Dirichlet label skew."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.config import RunConfig
from fl_core.data import partition_labels
from fl_core.errors import ConfigError, DataError


def _top_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 60),
    st.floats(0.01, 100.0),
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(1, 40), min_size=2, max_size=10),
)
def test_dirichlet_balanced_is_an_exact_cover_at_equal_sizes(n, alpha, seed, per_class):
    labels = np.repeat(np.arange(len(per_class)), per_class)
    np.random.default_rng(seed).shuffle(labels)
    if n > len(labels):
        with pytest.raises(DataError):
            partition_labels(labels, n, scheme="dirichlet-balanced", alpha=alpha, seed=seed)
        return
    parts = partition_labels(labels, n, scheme="dirichlet-balanced", alpha=alpha, seed=seed)
    assert len(parts) == n
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1  # sizes as in iid: the population is N x (examples / N)
    assert sorted(sizes) == sorted(len(p) for p in partition_labels(labels, n, scheme="iid", seed=seed))


def test_dirichlet_balanced_skew_follows_alpha():
    # Clients of 10 examples, as in the CNN rows' 6,000 x 10 population (here 2,000 x 10).
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), 2000))
    iid = _top_share(labels, partition_labels(labels, 2000, scheme="iid", seed=0))
    skew = {a: _top_share(labels, partition_labels(labels, 2000, scheme="dirichlet-balanced", alpha=a, seed=0))
            for a in (0.1, 0.5, 100.0)}
    # Smaller alpha, fewer labels per client; a very large alpha is close to iid.
    assert skew[0.1] > skew[0.5] > skew[100.0]
    assert skew[0.1] > 0.6 and skew[0.5] > iid + 0.1
    assert abs(skew[100.0] - iid) < 0.03


def test_dirichlet_balanced_works_where_the_size_skewed_scheme_leaves_clients_empty():
    # Many clients of 10 examples: splitting each class by Dir(0.1) over 600 clients leaves
    # about a fifth of them with nothing, on every one of the scheme's 20 draws.
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 600))
    with pytest.raises(DataError, match="received no examples"):
        partition_labels(labels, 600, scheme="dirichlet", alpha=0.1, seed=0)
    parts = partition_labels(labels, 600, scheme="dirichlet-balanced", alpha=0.1, seed=0)
    assert {len(p) for p in parts} == {10}


def test_dirichlet_balanced_is_reproducible_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    a = partition_labels(labels, 25, scheme="dirichlet-balanced", alpha=0.3, seed=7)
    b = partition_labels(labels, 25, scheme="dirichlet-balanced", alpha=0.3, seed=7)
    c = partition_labels(labels, 25, scheme="dirichlet-balanced", alpha=0.3, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_balanced_refuses_a_bad_alpha():
    labels = np.repeat(np.arange(2), 5)
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="alpha"):
            partition_labels(labels, 2, scheme="dirichlet-balanced", alpha=alpha)


def test_run_config_accepts_the_balanced_partition():
    assert RunConfig(partition="dirichlet-balanced", alpha=0.5).partition == "dirichlet-balanced"
