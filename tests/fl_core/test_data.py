from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from fl_core.data import federate, load_dataset, load_digits_data, load_fashion_mnist, partition_labels
from fl_core.errors import ConfigError, DataError


def test_digits_default_shapes():
    train, test, shape, classes = load_digits_data()
    assert shape == (1, 8, 8) and classes == 10
    assert len(train) + len(test) == 1797
    x, y = train[0]
    assert x.shape == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0


@given(st.integers(1, 50), st.sampled_from(["iid", "shards"]), st.integers(0, 100))
def test_partitions_cover_every_example_once(n, scheme, seed):
    labels = np.repeat(np.arange(10), 20)
    parts = partition_labels(labels, n, scheme=scheme, seed=seed, shards_per_client=2)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(200))
    assert all(len(p) > 0 for p in parts)


def test_dirichlet_skews_labels_and_covers():
    labels = np.repeat(np.arange(10), 100)
    parts = partition_labels(labels, 10, scheme="dirichlet", alpha=0.1, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    # with alpha = 0.1 most clients are dominated by few labels
    top_share = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert np.median(top_share) > 0.4


def test_partition_errors():
    labels = np.repeat(np.arange(2), 5)
    with pytest.raises(DataError, match="no data"):
        partition_labels(labels, 11)
    with pytest.raises(ConfigError, match="unknown partition"):
        partition_labels(labels, 2, scheme="zipf")
    with pytest.raises(ConfigError, match="alpha"):
        partition_labels(labels, 2, scheme="dirichlet", alpha=0)
    with pytest.raises(DataError, match="received no examples"):
        partition_labels(labels, 10, scheme="dirichlet", alpha=0.001, seed=0)
    with pytest.raises(ConfigError, match="clients"):
        partition_labels(labels, 0)
    with pytest.raises(DataError, match="shards"):
        partition_labels(labels, 6, scheme="shards", shards_per_client=2)
    with pytest.raises(ConfigError, match="shards_per_client"):
        partition_labels(labels, 2, scheme="shards", shards_per_client=0)
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("cifar")


def test_federate_any_dataset_records_sizes():
    x = torch.randn(30, 4)
    y = torch.arange(30) % 3
    fd = federate(TensorDataset(x, y), TensorDataset(x, y), num_clients=4, input_shape=(4,), num_classes=3)
    assert fd.client_sizes == [8, 8, 7, 7] and sum(len(c) for c in fd.clients) == 30

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.zeros(2), i % 2

    fd2 = federate(Plain(), Plain(), num_clients=3, input_shape=(2,), num_classes=2)
    assert [len(c) for c in fd2.clients] == [4, 4, 4]


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    train, test, shape, classes = load_fashion_mnist(tmp_path)
    assert len(train) == 6 and len(test) == 4 and shape == (1, 28, 28)
    assert float(train.tensors[0].max()) <= 1.0


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nope")
    with pytest.raises(DataError, match="not found"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_corrupt_files(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        b"\x00\x00\x08\x03" + struct.pack(">III", 5, 28, 28) + b"\x00" * 10
    )
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02")
    with pytest.raises(DataError, match="too short"):
        load_fashion_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4)
    with pytest.raises(DataError, match="unsigned-byte"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(
    not __import__("fl_core.data", fromlist=["FASHION_MNIST_DIR"]).FASHION_MNIST_DIR.is_dir()
    and not __import__("os").environ.get("CI"),
    reason="dataset-fashion-mnist not installed (CI installs it and runs this test)",
)
def test_real_fashion_mnist_from_the_debian_package():
    train, test, shape, classes = load_fashion_mnist()
    assert len(train) == 60_000 and len(test) == 10_000 and shape == (1, 28, 28) and classes == 10
    labels = train.tensors[1].numpy()
    assert np.bincount(labels).tolist() == [6000] * 10
