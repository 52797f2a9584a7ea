"""Privacy-utility sweeps: accuracy against epsilon per DP mode, with the non-private baseline beside it.

Public API::

    from fl_core.utility_bench import SweepSpec, Mode, run_sweep
    result = run_sweep(SweepSpec(dataset="digits", clients=1000, per_round=100,
                                 epsilons=(1, 2, 4, 8), modes=(Mode.DISTRIBUTED, Mode.CENTRAL)),
                       out=Path("bench-utility"), workers=2)
    result["baseline_accuracy"], result["results"]

The command line is ``privagg bench utility`` (:mod:`fl_core.commands.bench_utility`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fl_core.errors import ConfigError
from fl_core.utility_bench.calibrate import (
    RECORD_FAIL_PROB,
    Calibration,
    bisect_noise,
    calibrate_noise,
    calibrate_record_noise,
    participation_bound,
)
from fl_core.utility_bench.engine import build_cells, run_cells
from fl_core.utility_bench.outputs import results_table, summarize, write_outputs
from fl_core.utility_bench.spec import (
    GRID,
    RECORD_DEFAULTS,
    RECORD_GRID,
    Cell,
    Hyper,
    Mode,
    Split,
    SweepSpec,
    base_options,
    default_hyper,
    grid_for,
)

__all__ = [
    "GRID",
    "RECORD_DEFAULTS",
    "RECORD_FAIL_PROB",
    "RECORD_GRID",
    "Calibration",
    "Cell",
    "Hyper",
    "Mode",
    "Split",
    "SweepSpec",
    "bisect_noise",
    "build_cells",
    "calibrate_noise",
    "calibrate_record_noise",
    "default_hyper",
    "participation_bound",
    "results_table",
    "run_cells",
    "run_sweep",
    "summarize",
    "tune",
]


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg()[:1])
    except OSError:  # pragma: no cover - platforms without getloadavg
        return "n/a"


def _constant(h: Hyper) -> Callable[[str, Mode, float | None], Hyper]:
    def hyper_for(model: str, mode: Mode, eps: float | None) -> Hyper:
        return h

    return hyper_for


def tune(
    spec: SweepSpec, out: Path, *, workers: int = 2, progress: bool | None = None
) -> tuple[dict[tuple[str, str, float | None], Hyper], list[dict[str, Any]]]:
    """Search :data:`GRID` on the validation half, one seed; return the best knobs per cell and the runs.

    The non-private baseline is tuned over the same grid, so the comparison is fair.
    Record mode is searched over its own grid (:data:`RECORD_GRID`).
    """
    vspec = dataclasses.replace(spec, split=Split.VALIDATION, seeds=1)
    client_modes = tuple(m for m in spec.modes if m is not Mode.RECORD)
    cells: list[Cell] = []
    for model in spec.models:
        for h in grid_for(spec.dataset, model):
            one = dataclasses.replace(vspec, models=(model,), modes=client_modes)
            cells += build_cells(one, hyper_for=_constant(h), store=out)
        if Mode.RECORD in spec.modes:
            for h in grid_for(spec.dataset, model, Mode.RECORD):
                one = dataclasses.replace(vspec, models=(model,), modes=(Mode.RECORD,))
                built = build_cells(one, hyper_for=_constant(h), store=out)
                cells += [c for c in built if c.mode is Mode.RECORD]
    records, _counts = run_cells(cells, out / "tuning", workers=workers, progress=progress, description="tuning")
    best: dict[tuple[str, str, float | None], tuple[float, Hyper]] = {}
    for cell, rec in zip(cells, records, strict=True):
        if rec.get("status") != "ok" or rec.get("accuracy") is None:
            continue
        key = (cell.model, cell.mode.value, cell.target_epsilon)
        acc = float(rec["accuracy"])
        if key not in best or acc > best[key][0]:
            best[key] = (acc, cell.hyper)
    return {k: v[1] for k, v in best.items()}, records


def run_sweep(
    spec: SweepSpec,
    out: Path,
    *,
    workers: int = 2,
    tune_grid: bool = False,
    progress: bool | None = None,
    command: str | None = None,
    run: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the sweep, write every output into ``out`` and return the summary object.

    The returned object has ``baseline_accuracy`` (of the first model), ``baselines`` per
    model, ``results`` (one entry per model x mode x target epsilon, averaged over seeds:
    ``target_epsilon``, ``epsilon``, ``accuracy``, ``mode``, ...), ``monotone`` and
    ``out``. ``run=False`` only rewrites the outputs from the finished cells.

    Raises:
        ConfigError: an invalid option, an unavailable mode, or an unreachable epsilon.
    """
    from dp.accountants import ACCOUNTANT_VERSIONS

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}", option="workers")
    t0 = time.perf_counter()
    load_start = _load()
    out.mkdir(parents=True, exist_ok=True)
    chosen: dict[tuple[str, str, float | None], Hyper] = {}
    if tune_grid:
        chosen, _tuning_runs = tune(spec, out, workers=workers, progress=progress)
        tuning_note = (
            f"chosen per cell on the validation half (seed 0) from the grid clip factor "
            f"{GRID['clip_factor']} x server lr {GRID['server_lr']} x momentum {GRID['server_momentum']}"
        )
        if Mode.RECORD in spec.modes:
            tuning_note += (
                f"; record mode: record clip {RECORD_GRID['record_clip']} x server lr {RECORD_GRID['server_lr']} "
                f"x momentum {RECORD_GRID['server_momentum']}"
            )
    else:
        tuning_note = (
            "built-in defaults of fl_core.utility_bench.spec (the same for every ε; where they were chosen on "
            "the validation half, the comment there lists the points tried); --tune searches the grid instead"
        )

    def hyper_for(model: str, mode: Mode, eps: float | None) -> Hyper:
        return chosen.get((model, mode.value, eps)) or default_hyper(spec.dataset, model, eps, mode)

    cells = build_cells(spec, hyper_for=hyper_for, store=out)
    records, counts = run_cells(cells, out, workers=workers, progress=progress, description="sweep", run=run)
    meta: dict[str, Any] = {
        "spec": spec.to_dict(),
        "command": command or "privagg " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "accountant_version": ACCOUNTANT_VERSIONS.get(spec.accountant, spec.accountant),
        "rounds": {m: spec.rounds_for(m) for m in spec.models},
        "client_training": {
            m: {k: v for k, v in base_options(spec.dataset, m).items() if k in ("lr", "local_epochs", "batch_size")}
            for m in spec.models
        },
        "tuning_note": tuning_note,
        "tuned": [
            {"model": k[0], "mode": k[1], "target_epsilon": k[2], **h.to_dict()}
            for k, h in sorted(chosen.items(), key=str)
        ],
        "counts": counts,
        "workers": workers,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_start": load_start,
    }
    meta["wall_s"] = time.perf_counter() - t0
    meta["load_end"] = _load()
    summary = write_outputs(out, meta, records)
    first = spec.models[0]
    return {
        "dataset": spec.dataset,
        "baseline_accuracy": summary["baselines"].get(first, {}).get("accuracy"),
        "baselines": summary["baselines"],
        "results": summary["results"],
        "monotone": summary["monotone"],
        "failed": [r["label"] for r in records if r.get("status") == "error"],
        "pending": [r["label"] for r in records if r.get("status") == "pending"],
        "cells": counts,
        "wall_s": round(meta["wall_s"], 2),
        "out": str(out),
    }
