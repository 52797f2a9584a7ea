"""The sweep engine: plans cells, calibrates their noise, runs them in worker processes and resumes.

Each cell is one :func:`fl_core.runner.execute` call. Cells run in up to
``workers`` processes (spawned, one torch thread each); the dataset is loaded
once per process and split once. A finished cell is written atomically to
``OUT/cells/<cell_id>.json`` and is never rerun: a later invocation with the
same options reads it back (the cell id hashes the full run configuration, so
any change of option reruns exactly the cells it affects). A failed cell is
reported and not stored, so it is retried next time.

The held-out set is split once, by a fixed permutation, into a validation half
(hyperparameter choice, ``--tune``) and a test half (every reported number).

Record cells (Opacus DP-SGD inside each client, no client-level noise) report as
their ``epsilon`` the largest record-level epsilon any client's Opacus accountant
holds at the end of the run (the run's ``record_level`` report), beside its median
and the number of clients that trained; their noise multiplier is calibrated per
seed on that seed's exact cohort schedule (:func:`~fl_core.utility_bench.calibrate.calibrate_record_noise`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from fl_core.config import RunConfig
from fl_core.errors import ConfigError
from fl_core.utility_bench.calibrate import Calibration, calibrate_noise, calibrate_record_noise
from fl_core.utility_bench.spec import (
    BENCH_VERSION,
    RECORD_DEFAULTS,
    Cell,
    Hyper,
    Mode,
    Split,
    SweepSpec,
    base_options,
    default_hyper,
)

__all__ = [
    "HELDOUT_SPLIT_SEED",
    "build_cells",
    "run_cells",
    "run_cell",
    "split_heldout",
    "load_cell_data",
]

#: Seed of the fixed permutation that splits the held-out set into validation and test halves.
HELDOUT_SPLIT_SEED = 20210401

_SECURE_SUM_OF: dict[Mode, str | None] = {
    Mode.NONE: "plain",
    Mode.CENTRAL: None,  # the spec's secure sum
    Mode.DISTRIBUTED: None,
    Mode.LOCAL: "plain",  # each update is private alone: no secure aggregation needed
    Mode.RECORD: None,  # no client-level noise: the secure sum is what hides each update
}


def _cell_config(spec: SweepSpec, mode: Mode, model: str, seed: int, hyper: Hyper) -> RunConfig:
    base = base_options(spec.dataset, model)
    secure_sum = _SECURE_SUM_OF[mode] or spec.secure_sum
    record: dict[str, Any] = {}
    if mode is Mode.RECORD:
        # The record noise multiplier is set after calibration (build_cells).
        record["record_clip"] = hyper.record_clip if hyper.record_clip is not None else RECORD_DEFAULTS["record_clip"]
    return RunConfig(
        dataset=spec.dataset,
        clients=spec.clients,
        rounds=spec.rounds_for(model),
        sampling_rate=spec.sampling_rate if spec.per_round < spec.clients else None,
        partition=spec.partition,
        alpha=spec.alpha,
        model=model,
        local_epochs=int(hyper.local_epochs if hyper.local_epochs is not None else base["local_epochs"]),
        lr=float(hyper.lr if hyper.lr is not None else base["lr"]),
        batch_size=int(base["batch_size"]),
        server_lr=hyper.server_lr,
        server_momentum=hyper.server_momentum,
        secure_sum=secure_sum,
        graph="sparse",
        dp=mode.value if mode in (Mode.CENTRAL, Mode.DISTRIBUTED, Mode.LOCAL) else "none",
        # A sweep measures utility at the guarantee it calibrates for: no client-held limit
        # leaves clients out of its cohorts (both epsilons are reported per row).
        client_max_epsilon=math.inf if mode in (Mode.DISTRIBUTED, Mode.LOCAL) else None,
        # Central mode cannot hold a budget against the server (it sees the exact sum).
        budget_against=None if mode is Mode.RECORD else ("public" if mode is Mode.CENTRAL else spec.against),
        clip=hyper.clip,
        adaptive_clip=hyper.adaptive_clip and mode is not Mode.NONE,
        delta=spec.delta,
        seed=seed,
        threads=1,
        **record,
    )


def build_cells(
    spec: SweepSpec,
    *,
    hyper_for: Callable[[str, Mode, float | None], Hyper] | None = None,
    calibrations: dict[tuple[str, str, float], Calibration] | None = None,
    store: Path | None = None,
) -> list[Cell]:
    """Every cell of ``spec``: the baseline per (model, seed), then model x mode x epsilon x seed.

    Args:
        spec: the sweep.
        hyper_for: ``(model, mode, epsilon) -> Hyper``; default: :func:`default_hyper`.
        calibrations: a cache of calibrations keyed by (mode, configuration, epsilon), filled in place.
        store: a folder whose ``calibrations.json`` keeps calibrations across invocations
            (keyed by the hash of the run configuration, target and accountant).

    Record cells are calibrated per seed (their noise depends on the seed's cohort
    schedule); every other mode once per configuration.

    Raises:
        ConfigError: a target epsilon that cannot be reached.
    """
    hyper_for = hyper_for or (lambda model, mode, eps: default_hyper(spec.dataset, model, eps, mode))
    cache = calibrations if calibrations is not None else {}
    cells: list[Cell] = []
    for model in spec.models:
        for seed in range(spec.seeds):
            hyper = hyper_for(model, Mode.NONE, None)
            cfg = _cell_config(spec, Mode.NONE, model, seed, hyper)
            cells.append(Cell(Mode.NONE, model, None, seed, spec.split, cfg, hyper))
        for mode in spec.modes:
            for eps in spec.epsilons:
                hyper = hyper_for(model, mode, eps)
                for seed in range(spec.seeds):
                    cfg = _cell_config(spec, mode, model, seed, hyper)
                    # Client-level noise does not depend on the seed: one calibration per configuration.
                    # Record noise does (each seed has its own cohort schedule): one per seed.
                    ident = cfg if mode is Mode.RECORD else cfg.replace(seed=None)
                    key = (mode.value, json.dumps(ident.to_dict(), sort_keys=True), float(eps))
                    if key not in cache:
                        cache[key] = _calibrate_cached(cfg, float(eps), spec, store, mode=mode)
                    cal = cache[key]
                    if mode is Mode.RECORD:
                        # Rounded up, so the rounding never costs epsilon.
                        cfg = cfg.replace(record_noise_multiplier=math.ceil(cal.noise_multiplier * 1e6) / 1e6)
                    else:
                        # Rounded up, so the rounding never costs epsilon. Against the server the run
                        # enforces the target (admission) and the cap the calibration assumed.
                        z = math.ceil(cal.noise_multiplier * 1e6) / 1e6
                        if cfg.budget_against == "server":
                            cap = cal.details.get("participation_cap")
                            cfg = cfg.replace(noise_multiplier=z, target_epsilon=float(eps), max_participation=cap)
                        else:
                            cfg = cfg.replace(noise_multiplier=z)
                    cells.append(Cell(mode, model, float(eps), seed, spec.split, cfg, hyper, cal.to_dict()))
    return cells


def _calibrate_cached(
    cfg: RunConfig, eps: float, spec: SweepSpec, store: Path | None, *, mode: Mode | None = None
) -> Calibration:
    ident: dict[str, Any] = {"v": BENCH_VERSION, "config": cfg.replace(noise_multiplier=None).to_dict(), "eps": eps}
    ident["accountant"] = spec.accountant
    if mode is Mode.RECORD:  # Opacus' accountant, not the spec's (--accountant does not apply)
        del ident["accountant"]
        ident["mode"] = mode.value
        ident["config"] = cfg.replace(noise_multiplier=None, record_noise_multiplier=None).to_dict()
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = store / "calibrations.json" if store is not None else None
    saved: dict[str, Any] = {}
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
    if key in saved:
        try:
            return Calibration(**saved[key])
        except TypeError:
            pass
    data = load_cell_data(cfg, spec.split)
    if mode is Mode.RECORD:
        cal = calibrate_record_noise(cfg, eps, sizes=_client_sizes(data))
    else:
        cal = calibrate_noise(cfg, eps, data=data, accountant=spec.accountant, against=cfg.budget_against)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        saved[key] = cal.to_dict()
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(saved, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    return cal


# -- data, per process -----------------------------------------------------------

_DATA_CACHE: dict[tuple[Any, ...], Any] = {}


def _client_sizes(data: Any) -> list[int]:
    return list(data.client_sizes) or [len(c) for c in data.clients]


def split_heldout(n: int) -> tuple[list[int], list[int]]:
    """Indices of the validation and test halves of a held-out set of ``n`` examples (fixed permutation)."""
    import numpy as np

    # A public, fixed split (nothing secret depends on it): a seeded non-cryptographic generator is right here.
    order = np.random.default_rng(HELDOUT_SPLIT_SEED).permutation(n)
    half = n // 2
    return sorted(int(i) for i in order[:half]), sorted(int(i) for i in order[half:])


def load_cell_data(cfg: RunConfig, split: Split) -> Any:
    """The federated data of ``cfg`` with ``test`` replaced by the requested half (cached per process)."""
    from torch.utils.data import Subset, TensorDataset

    from fl_core.runner import load_federated_data

    key = (cfg.dataset, cfg.clients, cfg.partition, cfg.alpha, cfg.seed)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one dataset at a time per process
        _DATA_CACHE[key] = load_federated_data(cfg)
    data = _DATA_CACHE[key]
    val_idx, test_idx = split_heldout(len(data.test))
    idx = val_idx if split is Split.VALIDATION else test_idx
    test = data.test
    if isinstance(test, TensorDataset):
        x, y = test.tensors
        part: Any = TensorDataset(x[idx], y[idx])
    else:
        part = Subset(test, idx)
    return dataclasses.replace(data, test=part)


# -- one cell ----------------------------------------------------------------------


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def run_cell(cell: Cell, ledger_dir: str) -> dict[str, Any]:
    """Run one cell and return its record (never raises: a failure is returned as ``error``).

    If another invocation sharing the output folder has finished the cell meanwhile,
    its stored record is returned instead of running the cell again.
    """
    stored = load_finished(Path(ledger_dir).parent, [cell])
    if cell.cell_id in stored:
        return stored[cell.cell_id]
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    try:
        from fl_core.runner import execute

        ledger = Path(ledger_dir) / f"{cell.cell_id}.jsonl"
        if ledger.exists():
            ledger.unlink()  # an unfinished earlier attempt of this cell: start a fresh chain
        cfg = cell.config.replace(ledger=str(ledger)) if cell.mode is not Mode.NONE else cell.config
        data = load_cell_data(cfg, cell.split)
        rounds: list[dict[str, Any]] = []
        last = [time.process_time()]
        record_eps = _record_epsilon_tracker(cfg, data) if cell.mode is Mode.RECORD else None

        def on_round(res: Any) -> None:
            now = time.process_time()
            eps = res.epsilon if record_eps is None else record_eps(res.cohort)
            rounds.append(
                {
                    "round": res.round,
                    "accuracy": res.metrics.get("accuracy"),
                    "loss": res.metrics.get("loss"),
                    "epsilon": None if eps is None or not math.isfinite(eps) else eps,
                    "cohort": len(res.cohort),
                    "survivors": len(res.survivors),
                    "bytes_up_per_client": res.bytes_up_per_client,
                    "bytes_down_per_client": res.bytes_down_per_client,
                    "clipped_fraction": res.clipped_fraction,
                    "wall_s": res.wall_s,
                    "cpu_s": now - last[0],
                    "skipped": res.skipped,
                }
            )
            last[0] = now

        with warnings.catch_warnings():
            # Opacus warns once per client that secure_mode is off; fl_core.record_dp documents it
            # and the report repeats it.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            summary = execute(cfg, data=data, on_round=on_round)
        out = summary.to_json()
        for k in ("per_round_accuracy", "client_sizes"):
            out.pop(k, None)
        record = cell.to_dict()
        epsilon = out.get("epsilon")
        if cell.mode is Mode.RECORD:
            # The measured record-level epsilon: the largest any client's Opacus accountant holds.
            level = out["record_level"]
            epsilon = level["epsilon_max"]
            counts = _participations(summary.results)
            record["record_level"] = {
                "epsilon_max": level["epsilon_max"],
                "epsilon_median": level["epsilon_median"],
                "clients_trained": level["clients_trained"],
                "accountant": level["accountant"],
                "noise_multiplier": level["noise_multiplier"],
                "max_grad_norm": level["max_grad_norm"],
                "participations_max": max(counts.values(), default=0),
            }
        record.update(
            {
                "label": cell.label,
                "status": "ok",
                "accuracy": out.get("accuracy"),
                "loss": out.get("loss"),
                "epsilon": epsilon,
                "epsilon_vs_server": out.get("epsilon_vs_server"),
                "epsilon_vs_public": out.get("epsilon_vs_public"),
                "epsilon_enforced_on": out.get("epsilon_enforced_on"),
                "summary": out,
                "rounds": rounds,
                "wall_s": time.perf_counter() - t0,
                "cpu_s": time.process_time() - cpu0,
                "evaluated_on": f"{cell.split.value} half of the held-out set ({len(data.test)} examples)",
                "n_eval": len(data.test),
            }
        )
        return record
    except Exception as exc:  # reported, not stored: the cell is retried on the next invocation
        record = cell.to_dict()
        record.update(
            {
                "label": cell.label,
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8),
                "wall_s": time.perf_counter() - t0,
            }
        )
        return record


def _participations(results: Iterable[Any]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for res in results:
        for c in res.cohort:
            counts[c] = counts.get(c, 0) + 1
    return counts


def _record_epsilon_tracker(cfg: RunConfig, data: Any) -> Callable[[Sequence[int]], float]:
    """A function cohort -> the largest record-level epsilon of any client after that round.

    It charges each cohort member one participation and asks Opacus' accountant (the one
    the run's RecordDP uses) for the worst client, so the per-round curve ends at the
    epsilon the run reports.
    """
    from fl_core.utility_bench.calibrate import record_epsilon, record_groups, record_mechanism

    sizes = _client_sizes(data)
    counts = [0] * len(sizes)
    mechanism = record_mechanism(cfg)
    z = float(cfg.record_noise_multiplier or 0.0)

    def after(cohort: Sequence[int]) -> float:
        for c in cohort:
            counts[c - 1] += 1
        groups = record_groups(sizes, counts, batch_size=cfg.batch_size, epochs=cfg.local_epochs)
        return record_epsilon(z, groups, cfg.delta, mechanism)

    return after


# -- the store and the pool --------------------------------------------------------


def _cell_path(out: Path, cell_id: str) -> Path:
    return out / "cells" / f"{cell_id}.json"


def load_finished(out: Path, cells: Iterable[Cell]) -> dict[str, dict[str, Any]]:
    """Stored records of the finished ``cells`` (a torn or foreign file is ignored and rerun)."""
    done: dict[str, dict[str, Any]] = {}
    for cell in cells:
        p = _cell_path(out, cell.cell_id)
        if not p.is_file():
            continue
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("cell_id") == cell.cell_id and rec.get("status") == "ok":
            done[cell.cell_id] = rec
    return done


def _store(out: Path, record: dict[str, Any]) -> None:
    p = _cell_path(out, record["cell_id"])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


_COST = {"logreg": 1.0, "mlp": 2.0, "cnn": 8.0}


def _cost(cell: Cell) -> float:
    c = _COST.get(cell.model, 1.0) * cell.config.rounds
    c *= 2.5 if cell.mode is Mode.RECORD else 1.0  # Opacus' per-sample gradients and setup per client
    return c * (1.5 if cell.config.secure_sum == "masking" else 1.0)


def run_cells(
    cells: Sequence[Cell],
    out: Path,
    *,
    workers: int = 2,
    progress: bool | None = None,
    description: str = "cells",
    run: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Run every unfinished cell of ``cells`` and return (records in ``cells`` order, counts).

    With ``run=False`` nothing is run: unfinished cells come back with status ``"pending"``
    (to write the outputs of a sweep that is still running or was cut short).

    Args:
        cells: the cells.
        out: output folder (``cells/`` and ``ledgers/`` live below it).
        workers: worker processes (1: in this process).
        progress: show a progress bar on stderr (default: only when stderr is a terminal).
        description: progress bar label.

    Raises:
        ConfigError: ``workers`` < 1.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}", option="workers")
    out.mkdir(parents=True, exist_ok=True)
    ledger_dir = out / "ledgers"
    ledger_dir.mkdir(exist_ok=True)
    unique: dict[str, Cell] = {}
    for c in cells:
        unique.setdefault(c.cell_id, c)
    done = load_finished(out, unique.values())
    todo = sorted((c for cid, c in unique.items() if cid not in done), key=_cost, reverse=True)
    results: dict[str, dict[str, Any]] = dict(done)
    if not run:
        for c in todo:
            results[c.cell_id] = {**c.to_dict(), "label": c.label, "status": "pending"}
        counts = {"total": len(unique), "resumed": len(done), "ran": 0, "pending": len(todo)}
        return [results[c.cell_id] for c in cells], counts
    show = sys.stderr.isatty() if progress is None else progress

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=len(unique), completed=len(done), status=f"{len(done)} resumed")

        def finish(rec: dict[str, Any]) -> None:
            results[rec["cell_id"]] = rec
            if rec["status"] == "ok":
                _store(out, rec)
                acc = rec.get("accuracy")
                status = f"{rec['label']}: acc {acc:.3f}" if isinstance(acc, float) else rec["label"]
            else:
                status = f"{rec['label']}: FAILED"
            bar.update(task, advance=1, status=status)

        if workers == 1 or len(todo) <= 1:
            for c in todo:
                finish(run_cell(c, str(ledger_dir)))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_init_worker
            ) as pool:
                futures: list[Future[dict[str, Any]]] = [pool.submit(run_cell, c, str(ledger_dir)) for c in todo]
                for fut in as_completed(futures):
                    finish(fut.result())
    counts = {"total": len(unique), "resumed": len(done), "ran": len(todo), "pending": 0}
    return [results[c.cell_id] for c in cells], counts
