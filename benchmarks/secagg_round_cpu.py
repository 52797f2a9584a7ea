"""Whole-process CPU of a private round against the same round without privacy, and where it goes.

Runs ``privagg run`` as a subprocess, alternating the private configuration (the default
distributed Skellam noise inside the masking secure sum) with the plain one (``--dp none
--secure-sum plain``), and reads each child's user + system CPU from the operating system.
Prints one JSON object: the median whole-process CPU of each, their ratio, the median of
each phase of the run's own CPU record (``cpu_s_by_phase``), upload bytes per parameter
and accuracy.

Usage::

    python benchmarks/secagg_round_cpu.py [--rounds 10] [--repeats 3] [--dataset fashion-mnist]
        [--model mlp] [--clients 1000] [--per-round 50] [--seed 1] [-- EXTRA RUN OPTIONS]

Timing figures on a shared machine are noisy: quote the medians and the ratio measured
in the same invocation (alternating runs see the same load).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def _run(args: list[str]) -> tuple[float, dict[str, Any]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "fl_core.cli", "run", "--json", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, json.loads(proc.stdout.strip().splitlines()[-1])


def _median_phases(outs: list[dict[str, Any]]) -> dict[str, float]:
    keys = sorted({k for o in outs for k in o.get("cpu_s_by_phase", {})})
    return {k: round(statistics.median(o.get("cpu_s_by_phase", {}).get(k, 0.0) for o in outs), 3) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("extra", nargs="*", help="extra options for the private run (after --)")
    a = ap.parse_args()
    common = [
        "--dataset", a.dataset, "--model", a.model, "--clients", str(a.clients),
        "--per-round", str(a.per_round), "--rounds", str(a.rounds), "--seed", str(a.seed),
    ]  # fmt: skip
    runs: dict[str, list[tuple[float, dict[str, Any]]]] = {"private": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            ledger = str(Path(tmp) / f"ledger-{i}.jsonl")
            runs["private"].append(_run([*common, "--ledger", ledger, *a.extra]))
            runs["plain"].append(_run([*common, "--dp", "none", "--secure-sum", "plain"]))
    out: dict[str, Any] = {"command": common, "extra": a.extra, "repeats": a.repeats, "pid": os.getpid()}
    for name, rs in runs.items():
        cpus = [c for c, _ in rs]
        js = [j for _, j in rs]
        out[name] = {
            "cpu_s_median": round(statistics.median(cpus), 2),
            "cpu_s_all": [round(c, 2) for c in cpus],
            "cpu_s_by_phase_median": _median_phases(js),
            "bytes_per_client_per_round": js[0]["bytes_per_client_per_round"],
            "bytes_per_parameter": round(js[0]["bytes_per_client_per_round"] / js[0]["dim"], 3),
            "accuracy": js[0]["accuracy"],
            "epsilon": js[0].get("epsilon"),
            "dim": js[0]["dim"],
        }
    ratios = [p / q for (p, _), (q, _) in zip(runs["private"], runs["plain"], strict=True)]
    out["ratio_of_medians"] = round(out["private"]["cpu_s_median"] / out["plain"]["cpu_s_median"], 3)
    out["ratio_per_pair"] = [round(r, 3) for r in ratios]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
