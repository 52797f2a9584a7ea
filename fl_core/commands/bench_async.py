"""``privagg bench async``: time to accuracy on the simulated clock, buffered async against synchronous FedAvg."""

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


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @bench_app.command("async")
    def bench_async(
        dataset: str = typer.Option("fashion-mnist", help="digits or fashion-mnist."),
        clients: int = typer.Option(300, help="Number of clients the training set is split into."),
        model: str = typer.Option("logreg", help="logreg, mlp or cnn."),
        buffer: int = typer.Option(20, help="K: updates per release (the async buffer and the sync cohort)."),
        concurrency: int = typer.Option(40, help="C: clients the async server keeps checked in at once."),
        sync_rounds: int = typer.Option(60, "--sync-rounds", help="Rounds of the synchronous run."),
        noise_multiplier: float = typer.Option(2.0, "--noise-multiplier", help="DP noise multiplier of every release."),
        clip: float = typer.Option(1.0, help="L2 clip of each update."),
        dp: str = typer.Option("distributed", help="distributed, local, central or none."),
        secure_sum: str = typer.Option("masking", "--secure-sum", help="masking, paillier or plain."),
        staleness: str = typer.Option(
            "constant", help="constant (default here: see README), fedbuff (1/sqrt(1+s)), polynomial:A, hinge:A:B."
        ),
        speed_median: float = typer.Option(10.0, "--speed-median", help="Median simulated seconds per client task."),
        speed_sigma: float = typer.Option(
            1.25, "--speed-sigma", help="Log-normal sigma across clients (tail weight; 1.25: p99 = 18x the median)."
        ),
        jitter_sigma: float = typer.Option(0.25, "--jitter-sigma", help="Log-normal sigma of each task's jitter."),
        stage_s: float = typer.Option(0.5, "--stage-s", help="Simulated seconds per secure-sum exchange."),
        client_max_epsilon: Optional[float] = typer.Option(
            None, "--client-max-epsilon", help="Each client's own limit on its epsilon against the server."
        ),
        seed: int = typer.Option(0, help="Seed of both runs (experiments only)."),
        out: Optional[Path] = typer.Option(None, help="Folder for results.json, the plot and both ledgers."),
        plot: Optional[Path] = typer.Option(
            None, help="Where to write the accuracy-vs-time plot [OUT/async-vs-sync.png]."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout."),
    ) -> None:
        """Synchronous FedAvg, then buffered async at the same epsilon against the server: time to accuracy."""
        from fl_core.asynchronous import SpeedModel, parse_staleness
        from fl_core.asynchronous.bench import AsyncBenchSpec, plot_curves, run_async_bench
        from fl_core.errors import FLError

        try:
            spec = AsyncBenchSpec(
                dataset=dataset,
                clients=clients,
                model=model,
                buffer=buffer,
                concurrency=concurrency,
                sync_rounds=sync_rounds,
                noise_multiplier=noise_multiplier,
                clip=clip,
                dp=dp,
                secure_sum=secure_sum,
                staleness=parse_staleness(staleness),
                speed=SpeedModel.lognormal(
                    median_s=speed_median, sigma=speed_sigma, jitter_sigma=jitter_sigma, stage_s=stage_s
                ),
                seed=seed,
                client_max_epsilon=client_max_epsilon,
            )
            report = run_async_bench(
                spec,
                work_dir=out,
                log=(lambda msg: typer.echo(msg, err=True)),
            )
        except FLError as exc:
            _fail(str(exc))
        target = plot or (out / "async-vs-sync.png" if out is not None else None)
        if target is not None:
            plot_curves(report, target)
            report["plot"] = str(target)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        if as_json:
            sys.stdout.write(json.dumps(report) + "\n")
            return
        sp = report["speedup_time_to_accuracy"]
        s, a = report["sync"], report["async"]
        typer.echo(
            f"target accuracy {report['target_accuracy']:.4f} (synchronous final, mean of {report['window']})\n"
            f"  sync : {s['time_to_target_s'] or float('nan'):.0f} simulated s to target, "
            f"eps vs server {s['epsilon_vs_server']}\n"
            f"  async: {a['time_to_target_s'] or float('nan'):.0f} simulated s to target, "
            f"eps vs server {a['epsilon_vs_server']}\n"
            f"  speedup: {sp:.2f}x" if sp is not None else "  async did not reach the target"
        )
