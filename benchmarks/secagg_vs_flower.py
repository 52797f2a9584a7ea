"""privagg's masking secure sum against Flower's SecAgg+ on the same (N, D, dropout), in one run.

Prints one JSON object: privagg's figures (``privagg bench secagg``), Flower's
(``benchmarks/flower_secaggplus_driver.py`` run by the Python that has flwr), and
the ratios. Both sides are pinned to the same single CPU core and metered in
process CPU seconds. When flwr is not importable by that Python, the Flower part
is ``{"skipped": ...}`` and the script still succeeds.

Flower's graph: ``complete`` runs Flower with ``num_shares = N``; ``sparse`` runs
it with its log-degree graph, ``num_shares = 2 * ceil(log2 N) + 1`` (itself
included), and threshold a majority of the shares. privagg runs (a) its default
parameters, whose degree k comes from the security analysis in
``secagg.masking.params`` and is usually larger than log-degree, and (b) with the
sparse degree forced to Flower's, i.e. the same graph size. ``--same-degree`` also
runs Flower with privagg's default k. Flower's clients quantize floats inside
SecAgg+, privagg's encoding happens before the secure sum, so ratios are given
with and without Flower's quantization time.

Usage::

    python benchmarks/secagg_vs_flower.py --clients 100 --dim 1000000 --dropout 0.1 --graph sparse \\
        --flower-python /path/to/venv-with-flwr/bin/python

``--flower-python`` defaults to ``$PRIVAGG_FLOWER_PYTHON`` or the current interpreter.
flwr 1.41 pins a newer ``cryptography`` than privagg's environment, so it is
best installed in its own virtualenv.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

DRIVER = Path(__file__).with_name("flower_secaggplus_driver.py")


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def run_flower(
    python: str, *, clients: int, dim: int, dropout: float, num_shares: int, threshold: int, seed: int, cpu: int | None
) -> dict[str, Any]:
    probe = subprocess.run([python, "-c", "import flwr; print(flwr.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        return {"skipped": f"flwr is not importable by {python}; install flwr>=1.41 there or pass --flower-python"}
    cmd = [
        python, str(DRIVER), "--clients", str(clients), "--dim", str(dim), "--dropout", str(dropout),
        "--num-shares", str(num_shares), "--threshold", str(threshold), "--seed", str(seed),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=(lambda: _pin(cpu)))  # noqa: PLW1509
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "driver failed"}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _ratio(a: dict[str, Any], b: dict[str, Any], key_a: str = "total_cpu_s") -> float | None:
    if key_a not in a or "total_cpu_s" not in b or not b["total_cpu_s"]:
        return None
    return float(a[key_a]) / float(b["total_cpu_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--graph", choices=["complete", "sparse"], default="sparse")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=0, help="core both sides are pinned to (-1: no pinning)")
    ap.add_argument("--flower-python", default=os.environ.get("PRIVAGG_FLOWER_PYTHON", sys.executable))
    ap.add_argument("--same-degree", action="store_true", help="also run Flower with privagg's default degree")
    args = ap.parse_args()
    cpu = None if args.cpu < 0 else args.cpu
    _pin(cpu)

    from fl_core.commands.bench_secagg import bench_secagg

    n = args.clients
    common = {"clients": n, "dim": args.dim, "dropout": args.dropout, "seed": args.seed}
    ours = bench_secagg(graph=args.graph, **common)
    if args.graph == "complete":
        fl_shares, fl_threshold = n, ours["threshold"]
    else:
        fl_shares = min(n, 2 * math.ceil(math.log2(n)) + 1)
        fl_threshold = fl_shares // 2 + 1
    result: dict[str, Any] = {
        "benchmark": "secagg_vs_flower",
        "config": {**common, "graph": args.graph, "pinned_cpu": cpu},
        "privagg": ours,
    }
    flower = run_flower(
        args.flower_python, num_shares=fl_shares, threshold=fl_threshold, cpu=cpu,
        clients=n, dim=args.dim, dropout=args.dropout, seed=args.seed,
    )
    result["flower"] = flower
    ratios: dict[str, Any] = {
        "flower_over_privagg_total_cpu": _ratio(flower, ours),
        "flower_excl_quantization_over_privagg_total_cpu": _ratio(
            flower, ours, "total_cpu_s_excluding_quantization"
        ),
    }
    if args.graph == "sparse" and fl_shares - 1 < ours["degree"]:
        same = bench_secagg(graph="sparse", degree=max(2, (fl_shares - 1) // 2 * 2), threshold=fl_threshold, **common)
        result["privagg_at_flower_degree"] = same
        ratios["flower_over_privagg_same_graph"] = _ratio(flower, same)
        ratios["flower_excl_quantization_over_privagg_same_graph"] = _ratio(
            flower, same, "total_cpu_s_excluding_quantization"
        )
    if args.same_degree and args.graph == "sparse":
        f2 = run_flower(
            args.flower_python, num_shares=ours["degree"] + 1, threshold=ours["threshold"], cpu=cpu,
            clients=n, dim=args.dim, dropout=args.dropout, seed=args.seed,
        )
        result["flower_at_privagg_degree"] = f2
        ratios["flower_at_privagg_degree_over_privagg"] = _ratio(f2, ours)
    result["ratios"] = ratios
    result["upload_bytes_per_parameter"] = {
        "privagg": ours["upload_bytes_per_parameter"],
        "flower": flower.get("upload_bytes_per_parameter"),
    }
    result["server_unmasking"] = {
        "privagg_server_cpu_s": ours["server_cpu_s"],
        "privagg_server_unmask_cpu_s": ours["server_unmask_cpu_s"],
        "floor_cpu_s": ours["server_floor_cpu_s"],
        "privagg_server_over_floor": ours["server_over_floor"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
