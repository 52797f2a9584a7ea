"""Datasets (digits, Fashion-MNIST, any torch Dataset) and their partition across clients."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from fl_core.errors import ConfigError, DataError

__all__ = [
    "FASHION_MNIST_DIR",
    "FederatedData",
    "load_digits_data",
    "load_fashion_mnist",
    "load_dataset",
    "partition_labels",
    "federate",
    "load_federated_data",
]

PartitionName = Literal["iid", "dirichlet", "dirichlet-balanced", "shards"]

FASHION_MNIST_DIR = Path(os.environ.get("PRIVAGG_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
_FASHION_HELP = (
    "Fashion-MNIST is read from the IDX files of the Debian package 'dataset-fashion-mnist'. "
    "Install it with: sudo apt-get install dataset-fashion-mnist "
    "(or set PRIVAGG_FASHION_MNIST_DIR to a folder holding the four *-idx*-ubyte.gz files)"
)


@dataclass(frozen=True)
class FederatedData:
    """Client datasets, a held-out test set, and how they were made.

    Attributes:
        clients: one dataset per client (client ``i + 1`` owns ``clients[i]``).
        test: the evaluation set.
        input_shape: shape of one example (no batch axis).
        num_classes: number of labels.
        name: dataset name.
        partition: how the training set was split.
        client_sizes: examples per client (recorded for reports).
    """

    clients: list[Dataset[Any]]
    test: Dataset[Any]
    input_shape: tuple[int, ...]
    num_classes: int
    name: str
    partition: str
    client_sizes: list[int] = field(default_factory=list)


def _split(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], test_fraction: float, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    rng = np.random.default_rng(seed)  # data split: reproducible and public, not a secret, so not the CSPRNG
    order = rng.permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    te, tr = order[:n_test], order[n_test:]
    return (
        TensorDataset(torch.from_numpy(x[tr]), torch.from_numpy(y[tr])),
        TensorDataset(torch.from_numpy(x[te]), torch.from_numpy(y[te])),
    )


def load_digits_data(
    *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[TensorDataset, TensorDataset, tuple[int, ...], int]:
    """scikit-learn's 8x8 digits (1,797 images), scaled to [0, 1], split train/test by ``seed``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = _split(x, y, test_fraction, seed)
    return train, test, (1, 8, 8), 10


def _read_idx(path: Path) -> npt.NDArray[np.uint8]:
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}. {_FASHION_HELP}") from exc
    if len(data) < 8:
        raise DataError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {body.size} bytes")
    return body.reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"Fashion-MNIST file {stem}(.gz) not found in {directory}. {_FASHION_HELP}")


def load_fashion_mnist(
    directory: Path | None = None,
) -> tuple[TensorDataset, TensorDataset, tuple[int, ...], int]:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 images) from IDX files, scaled to [0, 1]."""
    d = directory or FASHION_MNIST_DIR
    if not d.is_dir():
        raise DataError(f"Fashion-MNIST folder {d} does not exist. {_FASHION_HELP}")
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find(d, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(d, f"{prefix}-labels-idx1-ubyte"))
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{split} images and labels disagree in count")
        x = (images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        parts[split] = TensorDataset(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)))
    return parts["train"], parts["test"], (1, 28, 28), 10


def load_dataset(name: str, *, seed: int = 0) -> tuple[TensorDataset, TensorDataset, tuple[int, ...], int]:
    if name == "digits":
        return load_digits_data(seed=seed)
    if name == "fashion-mnist":
        return load_fashion_mnist()
    raise ConfigError(f"unknown dataset {name!r}; choose digits or fashion-mnist", option="dataset")


def _labels_of(ds: Dataset[Any]) -> npt.NDArray[np.int64]:
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].numpy().astype(np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)  # type: ignore[arg-type]


def partition_labels(
    labels: npt.NDArray[np.int64],
    num_clients: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
) -> list[npt.NDArray[np.int64]]:
    """Split example indices among ``num_clients`` clients.

    Schemes: ``iid`` (uniform shuffle, near-equal sizes); ``dirichlet`` (label and
    size skew: each class split by proportions ~ Dirichlet(alpha), redrawn up to 20
    times until no client is empty); ``dirichlet-balanced`` (label skew at equal
    sizes, see :func:`_dirichlet_balanced`: it works for many small clients, e.g.
    6,000 x 10, where ``dirichlet`` leaves clients empty); ``shards`` (sort by label,
    cut into ``num_clients * shards_per_client`` shards, deal each client some).

    Raises:
        ConfigError: unknown scheme or bad parameters.
        DataError: a client would receive no examples.
    """
    n = len(labels)
    if num_clients < 1:
        raise ConfigError(f"clients must be >= 1, got {num_clients}", option="clients")
    if num_clients > n:
        raise DataError(f"{num_clients} clients but only {n} examples: some clients would have no data")
    rng = np.random.default_rng(seed)  # partitioning: reproducible and public, not a secret, so not the CSPRNG
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}", option="alpha")
        # Redraw (up to 20 times) until every client has at least one example.
        for _attempt in range(20):
            buckets: list[list[int]] = [[] for _ in range(num_clients)]
            for cls in np.unique(labels):
                idx = rng.permutation(np.flatnonzero(labels == cls))
                props = rng.dirichlet(np.full(num_clients, alpha))
                cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
                for b, chunk in zip(buckets, np.split(idx, cuts), strict=True):
                    b.extend(chunk.tolist())
            if all(buckets):
                break
        parts = [np.asarray(sorted(b), dtype=np.int64) for b in buckets]
    elif scheme == "dirichlet-balanced":
        if not alpha > 0:
            raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}", option="alpha")
        parts = _dirichlet_balanced(labels, num_clients, alpha, rng)
    elif scheme == "shards":
        if shards_per_client < 1:
            raise ConfigError("shards_per_client must be >= 1", option="shards_per_client")
        n_shards = num_clients * shards_per_client
        if n_shards > n:
            raise DataError(f"{n_shards} shards but only {n} examples")
        order = np.argsort(labels, kind="stable")
        shards = np.array_split(order, n_shards)
        deal = rng.permutation(n_shards).reshape(num_clients, shards_per_client)
        parts = [np.concatenate([shards[s] for s in row]) for row in deal]
    else:
        raise ConfigError(
            f"unknown partition {scheme!r}; choose iid, dirichlet, dirichlet-balanced or shards", option="partition"
        )
    out = [np.asarray(p, dtype=np.int64) for p in parts]
    empty = [i + 1 for i, p in enumerate(out) if len(p) == 0]
    if empty:
        raise DataError(
            f"clients {empty[:5]} received no examples under {scheme} (alpha={alpha}); "
            "raise alpha, use fewer clients, or choose iid"
        )
    return out


def _dirichlet_balanced(
    labels: npt.NDArray[np.int64], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[npt.NDArray[np.int64]]:
    """Equal-size clients (sizes differ by at most one) whose label mix is ~ Dirichlet(alpha).

    Hsu, Qi and Brown (2019), "Measuring the effects of non-identical data distribution
    for federated visual classification", Section 3: each client draws class proportions
    ``p ~ Dir(alpha * prior)`` (``prior``: the label frequencies) and fills its quota from
    them, drawing without replacement from what is left; a class that runs out is
    dropped from ``p`` and the rest renormalised. Clients are filled in a random order,
    so no client id is favoured when classes run out. Every example is used once.
    """
    classes, counts = np.unique(labels, return_counts=True)
    prior = counts / counts.sum()
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    left = counts.astype(np.int64).copy()
    used = np.zeros(len(classes), dtype=np.int64)
    quotas = np.array([len(a) for a in np.array_split(np.arange(len(labels)), num_clients)], dtype=np.int64)
    parts: list[npt.NDArray[np.int64]] = [np.empty(0, dtype=np.int64)] * num_clients
    for client in rng.permutation(num_clients):
        p = rng.dirichlet(alpha * prior * len(classes))
        need = int(quotas[client])
        take = np.zeros(len(classes), dtype=np.int64)
        while need > 0:
            avail = left - take
            w = np.where(avail > 0, p, 0.0)
            if not w.sum() > 0:  # every class this client favours is exhausted: draw from what is left
                w = (avail > 0).astype(np.float64)
            draw = np.minimum(rng.multinomial(need, w / w.sum()), avail)
            take += draw
            need -= int(draw.sum())
        chunks = [pools[k][used[k] : used[k] + take[k]] for k in range(len(classes)) if take[k]]
        used += take
        left -= take
        parts[client] = np.sort(np.concatenate(chunks)) if chunks else np.empty(0, dtype=np.int64)
    return parts


def federate(
    train: Dataset[Any],
    test: Dataset[Any],
    *,
    num_clients: int,
    input_shape: tuple[int, ...],
    num_classes: int,
    name: str = "custom",
    scheme: str = "iid",
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
) -> FederatedData:
    """Partition any torch ``Dataset`` of (x, label) pairs into client datasets."""
    parts = partition_labels(
        _labels_of(train), num_clients, scheme=scheme, alpha=alpha, shards_per_client=shards_per_client, seed=seed
    )
    clients: list[Dataset[Any]]
    if isinstance(train, TensorDataset):
        x, y = train.tensors
        clients = [TensorDataset(x[p], y[p]) for p in parts]
    else:
        clients = [Subset(train, p.tolist()) for p in parts]
    return FederatedData(
        clients=clients,
        test=test,
        input_shape=input_shape,
        num_classes=num_classes,
        name=name,
        partition=scheme,
        client_sizes=[len(p) for p in parts],
    )


def sizes(datasets: Sequence[Dataset[Any]]) -> list[int]:
    return [len(d) for d in datasets]  # type: ignore[arg-type]


def load_federated_data(cfg: Any) -> FederatedData:
    """privagg's demo data for a run config: ``cfg.dataset`` split over ``cfg.clients`` by ``cfg.partition``."""
    data_seed = 0 if cfg.seed is None else cfg.seed
    train, test, shape, classes = load_dataset(cfg.dataset, seed=data_seed)
    return federate(
        train,
        test,
        num_clients=cfg.clients,
        input_shape=shape,
        num_classes=classes,
        name=cfg.dataset,
        scheme=cfg.partition,
        alpha=cfg.alpha,
        seed=data_seed,
    )
