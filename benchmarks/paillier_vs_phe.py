"""Packed Paillier (privagg) against python-paillier (phe) per-element encryption, in one run.

Usage (from the repository root):

    python benchmarks/paillier_vs_phe.py --dim 1000000 --phe-sample 300 > paillier_vs_phe.json

privagg runs the whole ``--dim`` vector (one full round of ``--clients`` clients through
``privagg bench paillier``). phe encrypts and decrypts ``--phe-sample`` values one by one
under the SAME 2048-bit key; its totals for ``--dim`` values are extrapolated linearly
from that sample and labelled ``*_extrapolated``. phe's upload is counted at the
fixed width of one ciphertext per value (``len(n^2)`` bytes), which is smaller than
phe's own JSON serialization, so the upload ratio is conservative. All times are
CPU seconds (``time.process_time``) on one core. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

from dp.randomness import SeededRandomSource
from fl_core.commands.bench_paillier import bench_paillier, machine_info
from secagg.primitives.paillier_core import generate_keypair
from secagg.primitives.paillier_phe import to_phe_private


def phe_per_element(key_bits: int, sample: int, value_bits: int, seed: int) -> dict[str, float]:
    sk = generate_keypair(SeededRandomSource(seed).spawn("keys").spawn("paillier keygen"), key_bits=key_bits)
    phe_sk = to_phe_private(sk)
    phe_pk = phe_sk.public_key
    src = SeededRandomSource("phe sample")
    values = [int.from_bytes(src.random_bytes(4), "big") % (1 << value_bits) for _ in range(sample)]
    t = time.process_time()
    cts = [phe_pk.encrypt(v) for v in values]
    enc = (time.process_time() - t) / sample
    t = time.process_time()
    out = [phe_sk.decrypt(c) for c in cts]
    dec = (time.process_time() - t) / sample
    if out != values:
        raise SystemExit("phe did not round-trip its own sample")
    return {
        "encrypt_cpu_s_per_value": enc,
        "decrypt_cpu_s_per_value": dec,
        "bytes_per_value": (int(phe_pk.nsquare).bit_length() + 7) // 8,
        "json_bytes_per_value_phe_serialized": len(json.dumps(str(cts[0].ciphertext()))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--value-bits", type=int, default=16)
    ap.add_argument("--max-clients", type=int, default=100)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--phe-sample", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ours = bench_paillier(
        clients=args.clients,
        dim=args.dim,
        key_bits=args.key_bits,
        value_bits=args.value_bits,
        max_clients=args.max_clients,
        window=args.window,
        seed=args.seed,
    )
    phe = phe_per_element(args.key_bits, args.phe_sample, args.value_bits, args.seed)
    phe_enc_total = phe["encrypt_cpu_s_per_value"] * args.dim
    phe_dec_total = phe["decrypt_cpu_s_per_value"] * args.dim
    phe_bytes = phe["bytes_per_value"] * args.dim
    result = {
        "benchmark": "paillier_vs_phe",
        "dim": args.dim,
        "key_bits": args.key_bits,
        "value_bits": args.value_bits,
        "max_clients": args.max_clients,
        "privagg": {
            "encrypt_cpu_s_per_client": ours["encrypt_cpu_s_per_client"],
            "decrypt_cpu_s": ours["decrypt_cpu_s"],
            "sum_cpu_s": ours["sum_cpu_s"],
            "bytes_per_client": ours["bytes_per_client"],
            "slots_per_ciphertext": ours["slots_per_ciphertext"],
            "table_build_cpu_s": ours["table_build_cpu_s"],
            "verified": ours["verified"],
        },
        "phe": {
            "sample_values": args.phe_sample,
            "encrypt_cpu_s_per_value": phe["encrypt_cpu_s_per_value"],
            "decrypt_cpu_s_per_value": phe["decrypt_cpu_s_per_value"],
            "encrypt_cpu_s_extrapolated": phe_enc_total,
            "decrypt_cpu_s_extrapolated": phe_dec_total,
            "bytes_per_client_fixed_width": phe_bytes,
            "json_bytes_per_value_phe_serialized": phe["json_bytes_per_value_phe_serialized"],
            "note": "phe totals are extrapolated linearly from the sample",
        },
        "ratio_encrypt": phe_enc_total / ours["encrypt_cpu_s_per_client"],
        "ratio_decrypt": phe_dec_total / ours["decrypt_cpu_s"],
        "ratio_upload": phe_bytes / ours["bytes_per_client"],
        "machine": machine_info(),
    }
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
