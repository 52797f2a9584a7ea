"""Accuracy of the auto-sized (narrow) ring against the 32-bit ring at the same epsilon, paired by seed.

For each seed, runs ``privagg run`` twice with the same options: once with the ring the
encoding solver picks (``bits`` auto: 16 bits for the Fashion-MNIST MLP) and once with
``--bits 32``. Both runs calibrate their noise to the same epsilon target (the clients'
own limit, against the server), use the same cohorts, dropouts and training seeds, and
differ only in the ring (its scale, so its rounding and the noise's integer grid). The two
rings' noise draws are different random variables, so one seed says little: the script
reports the paired differences, their mean and standard error, and each run's upload
bytes per parameter and accounted epsilon.

Usage::

    python benchmarks/ring_accuracy.py [--seeds 1-8] [--rounds 30] [--dataset fashion-mnist]
        [--model mlp] [--clients 1000] [--per-round 50] [-- EXTRA RUN OPTIONS]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def _seeds(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _run(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", "run", "--json", *args], check=True, capture_output=True, text=True
    )
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1-8", help="e.g. 1-8 or 1,3,5")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("extra", nargs="*", help="extra options for both runs (after --)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in _seeds(a.seeds):
            common = [
                "--dataset", a.dataset, "--model", a.model, "--clients", str(a.clients),
                "--per-round", str(a.per_round), "--rounds", str(a.rounds), "--seed", str(seed), *a.extra,
            ]  # fmt: skip
            row: dict[str, Any] = {"seed": seed}
            for name, bits in (("auto", []), ("b32", ["--bits", "32"])):
                out = _run([*common, *bits, "--ledger", str(Path(tmp) / f"{name}-{seed}.jsonl")])
                row[name] = {
                    "accuracy": out["accuracy"],
                    "epsilon": out["epsilon"],
                    "noise_multiplier": out.get("noise_multiplier"),
                    "rounding_inflation": out.get("rounding_inflation"),
                    "bytes_per_parameter": round(out["bytes_per_client_per_round"] / out["dim"], 4),
                }
            row["difference_points"] = round(100.0 * (row["auto"]["accuracy"] - row["b32"]["accuracy"]), 3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    diffs = [r["difference_points"] for r in rows]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.inf
    print(
        json.dumps(
            {
                "command": {k: v for k, v in vars(a).items()},
                "seeds": n,
                "mean_accuracy_auto": round(statistics.fmean(r["auto"]["accuracy"] for r in rows), 4),
                "mean_accuracy_b32": round(statistics.fmean(r["b32"]["accuracy"] for r in rows), 4),
                "mean_difference_points": round(mean, 3),
                "standard_error_points": round(se, 3),
                "ci95_points": [round(mean - 1.96 * se, 3), round(mean + 1.96 * se, 3)],
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
