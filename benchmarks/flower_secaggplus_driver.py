"""Drive Flower's SecAgg+ (flwr >= 1.41) in one process and print its costs as JSON.

Run with the Python that has flwr installed (it may live in its own virtualenv:
flwr pins a newer ``cryptography`` than privagg's environment). Called by
``benchmarks/secagg_vs_flower.py``; usable alone::

    python benchmarks/flower_secaggplus_driver.py --clients 50 --dim 100000 --dropout 0.1 --num-shares 50 --threshold 25

Clients: Flower's own client-side SecAgg+ stage functions (``_setup``,
``_share_keys``, ``_collect_masked_vectors``, ``_unmask`` of
``flwr.client.mod.secure_aggregation.secaggplus_mod``) are called directly, with
their state object kept in memory: the per-message ConfigRecord/protobuf
serialization of a real deployment is skipped, which only flatters Flower.

Server: Flower's ``SecAggPlusWorkflow`` talks to a Grid, so this driver performs
the same steps as its stages with Flower's own primitives (random-permutation
neighbour ring of ``num_shares``, ciphertext forwarding, ``bytes_to_ndarray`` +
``parameters_addition`` + ``parameters_mod`` for the masked sum,
``combine_shares`` + ``pseudo_rand_gen`` for unmasking, ``factor_extract`` +
``dequantize``). Clients in the dropout set leave right after sending their
masked vectors (they are then "active" for Flower, as for privagg).
CPU is process time (all threads of this process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--num-shares", type=int, required=True, help="Flower's num_shares (includes self)")
    ap.add_argument("--threshold", type=int, required=True, help="Flower's reconstruction_threshold")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import importlib

    import numpy as np
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    cm = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    n, dim = args.clients, args.dim
    clip, qrange, mod = 8.0, 1 << 22, 1 << 32  # SecAggPlusWorkflow defaults
    rnd = random.Random(args.seed)
    gen = np.random.default_rng(args.seed)
    ids = list(range(1, n + 1))
    params = {c: ndarrays_to_parameters([gen.uniform(-1, 1, dim).astype(np.float32)]) for c in ids}
    dropped = set(rnd.sample(ids, round(args.dropout * n)))
    cpu = {c: 0.0 for c in ids}
    up = {c: 0 for c in ids}
    server_cpu = 0.0

    def on_client(c, fn, *a):  # type: ignore[no-untyped-def]
        t = time.process_time()
        out = fn(*a)
        cpu[c] += time.process_time() - t
        return out

    # Stage 0: setup
    t = time.process_time()
    num_shares = args.num_shares
    if num_shares != n and num_shares % 2 == 0:
        num_shares += 1
    order = list(ids)
    rnd.shuffle(order)
    half = num_shares >> 1
    nbrs = {u: {order[(i + off) % n] for off in range(-half, half + 1)} for i, u in enumerate(order)}
    setup_cfg = {
        Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: num_shares, Key.THRESHOLD: args.threshold,
        Key.CLIPPING_RANGE: clip, Key.TARGET_RANGE: qrange, Key.MOD_RANGE: mod, Key.MAX_WEIGHT: 1000.0,
    }
    server_cpu += time.process_time() - t
    states = {}
    pks = {}
    for c in ids:
        st = cm.SecAggPlusState()
        st.nid = c
        res = on_client(c, cm._setup, st, dict(setup_cfg))
        states[c] = st
        pks[c] = [res[Key.PUBLIC_KEY_1], res[Key.PUBLIC_KEY_2]]
        up[c] += 64

    # Stage 1: share keys
    fwd: dict[int, list[tuple[int, bytes]]] = {c: [] for c in ids}
    for c in ids:
        res = on_client(c, cm._share_keys, states[c], {str(v): pks[v] for v in nbrs[c]})
        t = time.process_time()
        for dst, ct in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST], strict=True):
            fwd[dst].append((c, ct))
            up[c] += len(ct) + 8
        server_cpu += time.process_time() - t

    # Stage 2: collect masked vectors (clients quantize and mask; the server sums)
    masked = None
    for c in ids:
        cfg = {Key.CIPHERTEXT_LIST: [ct for _, ct in fwd[c]], Key.SOURCE_LIST: [s for s, _ in fwd[c]]}
        res = on_client(c, cm._collect_masked_vectors, states[c], cfg, 10, params[c])
        blobs = res[Key.MASKED_PARAMETERS]
        up[c] += sum(len(b) for b in blobs)
        t = time.process_time()
        vec = [bytes_to_ndarray(b) for b in blobs]
        masked = vec if masked is None else parameters_addition(masked, vec)
        server_cpu += time.process_time() - t
    t = time.process_time()
    masked = parameters_mod(masked, mod)
    server_cpu += time.process_time() - t
    active = set(ids)  # every client sent its masked vector

    # Stage 3: unmask (dropped clients are gone)
    shares: dict[int, list[bytes]] = {c: [] for c in ids}
    responders = [c for c in ids if c not in dropped]
    for c in responders:
        req = {Key.ACTIVE_NODE_ID_LIST: sorted(nbrs[c] & active), Key.DEAD_NODE_ID_LIST: sorted(nbrs[c] - active)}
        res = on_client(c, cm._unmask, states[c], req)
        up[c] += sum(len(s) for s in res[Key.SHARE_LIST])
        t = time.process_time()
        for owner, sh in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST], strict=True):
            shares[owner].append(sh)
        server_cpu += time.process_time() - t
    t = time.process_time()
    ok = all(len(s) >= args.threshold for s in shares.values())
    for owner, share_list in shares.items():
        secret = combine_shares(share_list)
        if owner in active:
            mask = pseudo_rand_gen(secret, mod, get_parameters_shape(masked))
            masked = parameters_subtraction(masked, mask)
        else:  # not reached when clients drop only after their masked vectors
            for v in nbrs[owner] - {owner}:
                key = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(pks[v][0]))
                m = pseudo_rand_gen(key, mod, get_parameters_shape(masked))
                masked = parameters_addition(masked, m) if owner > v else parameters_subtraction(masked, m)
    recon = parameters_mod(masked, mod)
    q_total, recon = factor_extract(recon)
    agg = dequantize(recon, clip, qrange)
    agg[0] += -(len(active) - 1) * clip
    agg[0] *= qrange / q_total
    server_cpu += time.process_time() - t

    # Flower's clients quantize inside the SecAgg+ mod; privagg's encoding happens before the
    # secure sum. Measure Flower's quantization alone so the comparison can exclude it.
    from flwr.common import parameters_to_ndarrays
    from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_combine, parameters_multiply
    from flwr.common.secure_aggregation.quantization import quantize

    t = time.process_time()
    reps = min(n, 5)
    for c in ids[:reps]:
        q = quantize(parameters_multiply(parameters_to_ndarrays(params[c]), 1.0), clip, qrange)
        factor_combine(10, q)
    quantize_per_client = (time.process_time() - t) / reps

    expect = sum(np.asarray(bytes_to_ndarray(params[c].tensors[0]), dtype=np.float64) for c in ids) / len(ids)
    err = float(np.max(np.abs(agg[0] - expect)))
    client = sorted(cpu.values())
    import flwr

    print(
        json.dumps(
            {
                "implementation": "flwr SecAgg+",
                "flwr": flwr.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
                "clients": n,
                "dim": dim,
                "dropped": len(dropped),
                "num_shares": num_shares,
                "threshold": args.threshold,
                "total_cpu_s": sum(client) + server_cpu,
                "server_cpu_s": server_cpu,
                "client_cpu_s_median": client[len(client) // 2],
                "quantize_cpu_s_per_client": quantize_per_client,
                "total_cpu_s_excluding_quantization": sum(client) + server_cpu - n * quantize_per_client,
                "bytes_per_client": sum(up.values()) / n,
                "upload_bytes_per_parameter": max(up.values()) / dim,
                "verified": bool(ok and err < 1e-3),
                "max_abs_error_of_mean": err,
                "pid": os.getpid(),
            }
        )
    )


if __name__ == "__main__":
    main()
