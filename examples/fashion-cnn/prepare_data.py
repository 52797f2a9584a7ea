"""Write one Fashion-MNIST shard per client (and a test set for the server) from the Debian package's files.

    python prepare_data.py --clients 10 --per-client 300

reads the IDX files of the ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``;
nothing is downloaded) and writes, under ``--out`` (default: ``data/`` next to this script):

    shards/client-K/train.npz   client K's examples only (images uint8 [n, 28, 28], labels uint8 [n])
    test.npz                    held-out examples for the server's evaluation

Copy ``shards/client-K`` to the machine of the node with ``partition-id=K`` and point that node's
``data-dir`` at it: no node ever needs another node's shard or the whole dataset.
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

SOURCE = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format) as a uint8 array."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000, help="shards to write (privagg run's default population)")
    ap.add_argument("--per-client", type=int, default=50, help="training examples per client")
    ap.add_argument("--test", type=int, default=1000, help="examples in the server's test set")
    ap.add_argument("--source", type=Path, default=SOURCE, help="folder of the four *-idx*-ubyte.gz files")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    ap.add_argument("--seed", type=int, default=0, help="seed of the (public) shuffle that deals the examples")
    args = ap.parse_args(argv)

    images = read_idx(args.source / "train-images-idx3-ubyte.gz")
    labels = read_idx(args.source / "train-labels-idx1-ubyte.gz")
    need = args.clients * args.per_client
    if need > len(labels):
        raise SystemExit(f"{args.clients} clients x {args.per_client} examples exceed the {len(labels)} available")
    order = np.random.default_rng(args.seed).permutation(len(labels))[:need]
    for k in range(args.clients):
        mine = order[k * args.per_client : (k + 1) * args.per_client]
        shard = args.out / "shards" / f"client-{k}"
        shard.mkdir(parents=True, exist_ok=True)
        np.savez(shard / "train.npz", images=images[mine], labels=labels[mine])
    test_images = read_idx(args.source / "t10k-images-idx3-ubyte.gz")[: args.test]
    test_labels = read_idx(args.source / "t10k-labels-idx1-ubyte.gz")[: args.test]
    np.savez(args.out / "test.npz", images=test_images, labels=test_labels)
    n_test = len(test_labels)
    print(f"wrote {args.clients} shards of {args.per_client} examples and {n_test} test examples to {args.out}")


if __name__ == "__main__":
    main()
