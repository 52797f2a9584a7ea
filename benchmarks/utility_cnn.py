"""Run the Fashion-MNIST CNN privacy-utility sweeps behind the README's CNN table; print one JSON object per sweep.

Each sweep is exactly one ``privagg bench utility`` command (printed in its JSON as
``command``); this script strings them together and adds what the command does not:

* the **clipped-noiseless** cells: the private rows' own configuration (clip, server
  learning rate and momentum) with no noise, one per seed, so that the gap between a
  private row and them is the cost of the noise alone, and the gap between them and
  the clip-free baseline the cost (or gain) of clipping;
* a plot of test accuracy per round (mean over seeds, shaded +- one standard
  deviation) for the private cells at one target epsilon, the clipped-noiseless cells
  and the non-private baseline.

Sweeps (``--which``):

* ``6000x10``: Fashion-MNIST over 6,000 clients x 10 images (IID).
* ``1000x60``: 1,000 clients x 60 images (IID), the same expected sampling rate.
* ``6000x10-dirichlet``: 6,000 x 10 with label proportions drawn from Dirichlet(alpha)
  per client (equal sizes).

Usage::

    python benchmarks/utility_cnn.py [6000x10|1000x60|6000x10-dirichlet|all ...] [--out DIR]
        [--workers 2] [--seeds 3] [--figures docs/figures]

Finished cells are resumed from ``--out`` (their identity is their full configuration).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fl_core.utility_bench import Cell, Mode, SweepSpec, build_cells, default_hyper, run_cells, run_sweep

#: Per sweep: population, expected cohort, epsilons. Every sweep: the CNN, distributed Skellam noise
#: inside the masking secure sum (SecAgg+ sparse graph), calibrated against model users.
SWEEPS: dict[str, dict[str, Any]] = {
    "6000x10": {"clients": 6000, "per_round": 600, "partition": "iid"},
    "1000x60": {"clients": 1000, "per_round": 100, "partition": "iid"},
    "6000x10-dirichlet": {"clients": 6000, "per_round": 600, "partition": "dirichlet-balanced", "alpha": 0.5},
}
EPSILONS = (1.0, 2.0, 4.0)
#: The target epsilon whose cells the per-round plot shows.
CURVE_EPSILON = 2.0


def spec_for(name: str, *, seeds: int, epsilons: tuple[float, ...] = EPSILONS) -> SweepSpec:
    s = SWEEPS[name]
    return SweepSpec(
        dataset="fashion-mnist",
        clients=s["clients"],
        per_round=s["per_round"],
        epsilons=epsilons,
        models=("cnn",),
        modes=(Mode.DISTRIBUTED,),
        seeds=seeds,
        secure_sum="masking",
        partition=s["partition"],
        alpha=s.get("alpha", 0.5),
    )


def command_for(spec: SweepSpec, *, workers: int, out: Path) -> str:
    eps = ",".join(f"{e:g}" for e in spec.epsilons)
    cmd = (
        f"privagg bench utility --dataset fashion-mnist --model cnn --clients {spec.clients} "
        f"--per-round {spec.per_round} --epsilons {eps} --modes distributed --seeds {spec.seeds}"
    )
    if spec.partition != "iid":
        cmd += f" --partition {spec.partition} --alpha {spec.alpha:g}"
    return cmd + f" --workers {workers} --out {out}"


def clipped_cells(spec: SweepSpec, epsilon: float = CURVE_EPSILON) -> list[Cell]:
    """Per model and seed, a non-private cell with the knobs of the private cells at ``epsilon``.

    They differ from those private cells only in having no noise (and so no secure sum,
    ledger or budget): same population, rounds, seed, client training, clip and server
    optimizer.
    """
    cells: list[Cell] = []
    for model in spec.models:
        dp = default_hyper(spec.dataset, model, epsilon, Mode.DISTRIBUTED)
        one = dataclasses.replace(spec, models=(model,), modes=())
        cells += build_cells(one, hyper_for=lambda model, mode, eps, dp=dp: dp)
    return cells


def clipped_noiseless(spec: SweepSpec, out: Path, *, workers: int) -> list[dict[str, Any]]:
    """Run (or resume) :func:`clipped_cells` in ``out``; return their records."""
    records, _counts = run_cells(clipped_cells(spec), out, workers=workers, progress=False, description="clipped")
    return records


def curve(records: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float]]:
    """Rounds, mean accuracy (%) and its standard deviation over the finished seeds that evaluated each round."""
    ok = [r for r in records if r.get("status") == "ok"]
    by_round: dict[int, list[float]] = {}
    for r in ok:
        for p in r["rounds"]:
            if p.get("accuracy") is not None:
                by_round.setdefault(int(p["round"]), []).append(100 * float(p["accuracy"]))
    xs = sorted(k for k, v in by_round.items() if len(v) == len(ok))
    mean = [statistics.fmean(by_round[x]) for x in xs]
    sd = [statistics.stdev(by_round[x]) if len(by_round[x]) > 1 else 0.0 for x in xs]
    return xs, mean, sd


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (label, records), color in zip(curves.items(), ("C0", "C2", "black"), strict=False):
        xs, mean, sd = curve(records)
        if not xs:
            continue
        ax.plot(xs, mean, color=color, linewidth=1.4, label=f"{label} ({len(records)} seeds)")
        ax.fill_between(
            xs,
            [m - s for m, s in zip(mean, sd, strict=True)],
            [m + s for m, s in zip(mean, sd, strict=True)],
            color=color,
            alpha=0.2,
            linewidth=0,
        )
    ax.axhline(85.0, color="grey", linestyle="--", linewidth=0.8, label="85% (issue target)")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%), mean ± sd over seeds")
    ax.set_ylim(60, 90)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _final(records: list[dict[str, Any]]) -> dict[str, Any]:
    accs = [float(r["accuracy"]) for r in records if r.get("status") == "ok"]
    return {
        "accuracy": statistics.fmean(accs) if accs else None,
        "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "seeds": len(accs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", nargs="*", default=["6000x10"], choices=(*SWEEPS, "all"))
    p.add_argument("--out", type=Path, default=Path("bench-utility"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS))
    p.add_argument("--no-clipped", action="store_true", help="skip the clipped-noiseless cells")
    p.add_argument("--figures", type=Path, default=None, help="copy the PNGs the README shows here")
    args = p.parse_args(argv)
    names = list(SWEEPS) if "all" in args.which else list(dict.fromkeys(args.which))
    epsilons = tuple(float(e) for e in args.epsilons.split(","))
    for name in names:
        spec = spec_for(name, seeds=args.seeds, epsilons=epsilons)
        out = args.out / f"fashion-cnn-{name}"
        t0, load0 = time.perf_counter(), os.getloadavg()
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_utime
        cmd = command_for(spec, workers=args.workers, out=out)
        result = run_sweep(spec, out, workers=args.workers, command=cmd)
        sweep_wall = time.perf_counter() - t0
        clipped: list[dict[str, Any]] = []
        if not args.no_clipped:
            clipped = clipped_noiseless(spec, out / "clipped-noiseless", workers=args.workers)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_utime
        records = json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]
        private = [r for r in records if r.get("mode") == "distributed" and r.get("target_epsilon") == CURVE_EPSILON]
        baseline = [r for r in records if r.get("mode") == "none"]
        curves = {f"distributed, ε = {CURVE_EPSILON:g} vs model users": private}
        if clipped:
            curves["clipped, no noise"] = clipped
        curves["non-private, clip-free"] = baseline
        title = f"Fashion-MNIST CNN, {spec.clients} clients, {spec.per_round} per round (q = {spec.sampling_rate:g})"
        plot_curves(curves, out / "curves.png", title=title)
        result.update(
            {
                "sweep": name,
                "command": cmd,
                "sweep_wall_s": round(sweep_wall, 1),
                "elapsed_s": round(time.perf_counter() - t0, 1),
                "user_cpu_s": round(cpu1 - cpu0, 1),
                "loadavg_start": [round(x, 2) for x in load0],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "clipped_noiseless": _final(clipped) if clipped else None,
                "cells_cpu_s": round(sum(float(r.get("cpu_s") or 0.0) for r in records + clipped), 1),
            }
        )
        result["private_cells_mean_cpu_s"] = (
            statistics.fmean(float(r["cpu_s"]) for r in private if r.get("cpu_s")) if private else math.nan
        )
        sys.stdout.write(json.dumps(result) + "\n")
        if args.figures is not None:
            args.figures.mkdir(parents=True, exist_ok=True)
            for png in ("accuracy_vs_epsilon.png", "curves.png"):
                shutil.copyfile(out / png, args.figures / f"fashion-cnn-{name}-{png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
