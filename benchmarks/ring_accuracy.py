"""Accuracy of the auto-sized (narrow) ring against the 32-bit ring at the same epsilon, paired by seed.

For each seed, runs ``privagg run`` twice with the same options: once with the ring the
encoding solver picks (``bits`` auto: 16 bits for the Fashion-MNIST MLP) and once with
``--bits 32``. Both runs calibrate their noise to the same epsilon target (the clients'
own limit, against the server), use the same cohorts, dropouts and training seeds, and
differ only in the ring (its scale, so its rounding and the noise's integer grid). The two
rings' noise draws are different random variables, so one seed says little: the script
reports the paired differences, their mean and standard error, and each run's upload
bytes per parameter and accounted epsilon.

``decoded_sums`` compares the two rings where the accuracy comes from, with training
taken out: the same clipped updates of a full cohort go through each run's own client
pipeline (rotation, conditional rounding, Skellam share, ring), are summed in the ring and
decoded by its server pipeline; the error of the decoded average against the exact
average of the clipped updates is the noise the model receives. Its energy per
coordinate on each ring, over ``--sum-repeats`` cohorts, and their ratio say how much
more (or less) noise the narrow ring's model gets; the rounding's own share is predicted
too (cohort / (4 scale^2) per coordinate).

Usage::

    python benchmarks/ring_accuracy.py [--seeds 1-8] [--rounds 30] [--dataset fashion-mnist]
        [--model mlp] [--clients 1000] [--per-round 50] [--sum-repeats 10] [-- EXTRA RUN OPTIONS]

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


def _decoded_sums(a: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Error energy of the decoded average on each ring, same updates (see the module docstring)."""
    import numpy as np

    from dp.randomness import SeededRandomSource
    from fl_core.config import RunConfig
    from fl_core.runner import build_federation

    out: dict[str, Any] = {}
    for name, bits in (("auto", None), ("b32", 32)):
        cfg = RunConfig(
            dataset=a.dataset, model=a.model, clients=a.clients, per_round=a.per_round, rounds=a.rounds, seed=0,
            bits=bits, ledger=str(Path(tmp) / f"sums-{name}.jsonl"),
        )  # fmt: skip
        fed, _, _ = build_federation(cfg)
        ring, g = fed.plan.ring, np.random.default_rng(0)
        errors = []
        for rep in range(a.sum_repeats):
            total, exact = ring.zeros(fed.plan.dim), np.zeros(fed.dim)
            for c in range(a.per_round):
                delta = g.standard_normal(fed.dim) * (g.uniform(0.5, 1.5) / np.sqrt(fed.dim))  # norms around C = 1
                vec, clip = fed.client_pipeline.run(delta.astype(np.float32), SeededRandomSource(f"{rep}/{c}"))
                ring.add_into(total, vec)
                exact += clip.vector
            avg = fed.server_pipeline.run(total, a.per_round, SeededRandomSource(f"server/{rep}"))
            errors.append(float(np.mean((avg - exact / fed.server_pipeline.denominator(a.per_round)) ** 2)))
        scale = fed.plan.scale
        out[name] = {
            "ring_bits": ring.bits,
            "scale": scale,
            "noise_multiplier": float(fed.privacy.config.noise_multiplier),  # type: ignore[attr-defined]
            "error_energy_per_coordinate": statistics.fmean(errors),
            "error_energy_se": statistics.stdev(errors) / math.sqrt(len(errors)) if len(errors) > 1 else None,
            "rounding_share_predicted": a.per_round / (4.0 * scale * scale) / (a.per_round**2),
        }
        fed.close()
    out["ratio_auto_to_b32"] = out["auto"]["error_energy_per_coordinate"] / out["b32"]["error_energy_per_coordinate"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1-8", help="e.g. 1-8 or 1,3,5 ('' : only decoded_sums)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--sum-repeats", type=int, default=10, help="cohorts for decoded_sums (0: skip)")
    ap.add_argument("extra", nargs="*", help="extra options for both runs (after --)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sums = _decoded_sums(a, tmp) if a.sum_repeats > 0 else None
        print(json.dumps({"decoded_sums": sums}), file=sys.stderr, flush=True)
        for seed in _seeds(a.seeds) if a.seeds else []:
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
    mean = statistics.fmean(diffs) if diffs else None
    se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else None
    ci = None if mean is None or se is None else [round(mean - 1.96 * se, 3), round(mean + 1.96 * se, 3)]
    print(
        json.dumps(
            {
                "command": {k: v for k, v in vars(a).items()},
                "seeds": n,
                "mean_accuracy_auto": round(statistics.fmean(r["auto"]["accuracy"] for r in rows), 4) if rows else None,
                "mean_accuracy_b32": round(statistics.fmean(r["b32"]["accuracy"] for r in rows), 4) if rows else None,
                "mean_difference_points": None if mean is None else round(mean, 3),
                "standard_error_points": None if se is None else round(se, 3),
                "ci95_points": ci,
                "rows": rows,
                "decoded_sums": sums,
            }
        )
    )


if __name__ == "__main__":
    main()
