"""``privagg bench utility``: a privacy-utility sweep (accuracy vs epsilon per DP mode) with plots and a report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

__all__ = ["register"]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _csv(text: str, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        _fail(f"--{name} needs a comma-separated list")
    return items


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("utility")
    def utility(
        dataset: str = typer.Option("digits", help="digits or fashion-mnist."),
        clients: int = typer.Option(1000, help="Number of clients the training set is split into."),
        per_round: int = typer.Option(100, "--per-round", help="Expected cohort K: Poisson sampling with q = K/N."),
        epsilons: str = typer.Option("1,2,4,8", help="Target epsilons, comma-separated."),
        model: str = typer.Option("logreg", help="Model(s), comma-separated: logreg, mlp, cnn."),
        modes: str = typer.Option(
            "distributed,central", help="DP modes, comma-separated: distributed, central, local, record."
        ),
        rounds: Optional[int] = typer.Option(None, help="Rounds per run (default: per dataset and model)."),
        partition: str = typer.Option(
            "iid", help="How the training set is split: iid, dirichlet, dirichlet-balanced (equal sizes) or shards."
        ),
        alpha: float = typer.Option(0.5, help="Dirichlet concentration of the dirichlet partitions."),
        seeds: int = typer.Option(1, help="Seeds per cell (accuracy is averaged; std reported)."),
        delta: float = typer.Option(1e-5, help="Delta of every guarantee."),
        secure_sum: str = typer.Option(
            "masking",
            "--secure-sum",
            help="Secure sum of the central, distributed and record modes: masking, paillier, plain.",
        ),
        accountant: str = typer.Option(
            "pld", help="pld (tight) or rdp, for the client-level modes (record mode uses Opacus' accountant)."
        ),
        against: str = typer.Option(
            "public",
            "--calibrate-against",
            help="Adversary the client-level cells meet their target against: public (model users) or server.",
        ),
        split: str = typer.Option("test", help="Evaluate on the test or validation half of the held-out set."),
        tune: bool = typer.Option(False, "--tune", help="First search the documented grid on the validation half."),
        workers: int = typer.Option(2, help="Worker processes (one torch thread each)."),
        out: Path = typer.Option(Path("bench-utility"), help="Output folder (finished cells are resumed from it)."),
        report_only: bool = typer.Option(
            False, "--report-only", help="Run nothing: rewrite the outputs from the cells finished so far."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout."),
    ) -> None:
        """Sweep target epsilons per DP mode; write CSV, JSON, PNG plots and a Markdown report to --out."""
        from fl_core.errors import FLError
        from fl_core.utility_bench import Mode, Split, SweepSpec, run_sweep, summarize  # noqa: F401

        try:
            eps = tuple(float(e) for e in _csv(epsilons, "epsilons"))
        except ValueError:
            _fail(f"--epsilons must be numbers, got {epsilons!r}")
        try:
            mode_list = tuple(Mode(m) for m in _csv(modes, "modes"))
        except ValueError:
            _fail(f"--modes must be from distributed, central, local, record; got {modes!r}")
        if Mode.NONE in mode_list:
            _fail("the non-private baseline is always run; do not list 'none' in --modes")
        try:
            split_v = Split(split)
        except ValueError:
            _fail(f"--split must be test or validation, got {split!r}")
        try:
            spec = SweepSpec(
                dataset=dataset,
                clients=clients,
                per_round=per_round,
                epsilons=eps,
                models=tuple(_csv(model, "model")),
                modes=mode_list,
                rounds=rounds,
                seeds=seeds,
                delta=delta,
                secure_sum=secure_sum,
                accountant=accountant,
                against=against,
                split=split_v,
                partition=partition,
                alpha=alpha,
            )
            result = run_sweep(spec, out, workers=workers, tune_grid=tune and not report_only, run=not report_only)
        except FLError as exc:
            _fail(str(exc))
        if as_json:
            sys.stdout.write(json.dumps(result) + "\n")
            return
        from fl_core.utility_bench.outputs import results_table

        typer.echo(results_table({"results": result["results"], "baselines": result["baselines"]}))
        typer.echo(
            f"\nreport: {out / 'report.md'}  ({result['cells']['ran']} cells run, "
            f"{result['cells']['resumed']} resumed, {result['wall_s']:.0f} s)"
        )
        if result["failed"]:
            _fail(f"{len(result['failed'])} cell(s) failed: {', '.join(result['failed'])}", code=1)
