"""Run the documented privacy-utility sweeps and print one JSON object per sweep.

The two sweeps behind the README section on accuracy vs privacy (each is exactly one
``privagg bench utility`` command; this script only strings them together):

* ``digits``: 1,000 clients (1-2 examples each), Poisson q = 0.1, 4 epsilons x
  {distributed, central, record}, logistic regression.
* ``fashion``: Fashion-MNIST, 1,000 clients x 60 examples (IID), Poisson
  q = 0.05 (50 clients per round), 4 epsilons x {logreg, mlp}, distributed
  Skellam noise inside the masking secure sum, delta = 1e-5.
* ``fashion-record``: the same setting, logreg, record mode (Opacus DP-SGD
  inside each client, record-level epsilon); its baseline is the same cell as
  the ``fashion`` sweep's logreg baseline.

Usage::

    python benchmarks/utility_sweep.py [digits|fashion|fashion-record|all] [--out DIR] [--workers 2]
        [--seeds 1] [--figures docs/figures]

``--figures`` copies the plots the README shows (the Fashion-MNIST ones and the
digits accuracy plot) to that folder.
Finished cells are resumed from ``--out``, so an interrupted sweep continues.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from fl_core.utility_bench import Mode, SweepSpec, run_sweep

SWEEPS: dict[str, SweepSpec] = {
    "digits": SweepSpec(
        dataset="digits",
        clients=1000,
        per_round=100,
        epsilons=(1.0, 2.0, 4.0, 8.0),
        models=("logreg",),
        modes=(Mode.DISTRIBUTED, Mode.CENTRAL, Mode.RECORD),
        secure_sum="masking",
    ),
    "fashion": SweepSpec(
        dataset="fashion-mnist",
        clients=1000,
        per_round=50,
        epsilons=(1.0, 2.0, 4.0, 8.0),
        models=("logreg", "mlp"),
        modes=(Mode.DISTRIBUTED,),
        secure_sum="masking",
    ),
    "fashion-record": SweepSpec(
        dataset="fashion-mnist",
        clients=1000,
        per_round=50,
        epsilons=(1.0, 2.0, 4.0, 8.0),
        models=("logreg",),
        modes=(Mode.RECORD,),
        secure_sum="masking",
    ),
}

COMMANDS = {
    "digits": "privagg bench utility --dataset digits --clients 1000 --per-round 100 --epsilons 1,2,4,8 "
    "--model logreg --modes distributed,central,record",
    "fashion": "privagg bench utility --dataset fashion-mnist --clients 1000 --per-round 50 --epsilons 1,2,4,8 "
    "--model logreg,mlp --modes distributed",
    "fashion-record": "privagg bench utility --dataset fashion-mnist --clients 1000 --per-round 50 "
    "--epsilons 1,2,4,8 --model logreg --modes record",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", nargs="?", default="all", choices=(*SWEEPS, "all"))
    p.add_argument("--out", type=Path, default=Path("bench-utility"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--figures", type=Path, default=None, help="copy the PNGs the README shows here")
    args = p.parse_args(argv)
    names = list(SWEEPS) if args.which == "all" else [args.which]
    for name in names:
        spec = SWEEPS[name]
        if args.seeds != 1:
            from dataclasses import replace

            spec = replace(spec, seeds=args.seeds)
        out = args.out / name
        t0 = time.perf_counter()
        cmd = f"{COMMANDS[name]} --seeds {args.seeds} --workers {args.workers} --out {out}"
        result = run_sweep(spec, out, workers=args.workers, command=cmd)
        result["sweep"] = name
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        sys.stdout.write(json.dumps(result) + "\n")
        if args.figures is not None and name in ("digits", "fashion"):
            args.figures.mkdir(parents=True, exist_ok=True)
            pngs = (
                ("accuracy_vs_epsilon.png", "rounds.png", "cost.png")
                if name == "fashion"
                else ("accuracy_vs_epsilon.png",)
            )
            for png in pngs:
                shutil.copyfile(out / png, args.figures / f"{name}-{png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
