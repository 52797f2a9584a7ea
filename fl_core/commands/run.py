"""``privagg run``: one federated run end to end, with a progress bar and a summary or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

__all__ = ["register"]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("run")
    def run(
        dataset: Optional[str] = typer.Option(None, help="digits (embedded default) or fashion-mnist."),
        clients: Optional[int] = typer.Option(None, help="Number of clients the data is split into [1000]."),
        rounds: Optional[int] = typer.Option(None, help="Federated rounds [30]."),
        per_round: Optional[int] = typer.Option(None, "--per-round", help="Fixed cohort size per round."),
        sampling_rate: Optional[float] = typer.Option(
            None, "--sampling-rate", help="Poisson sampling rate q [0.1 when --per-round is not given]."
        ),
        partition: Optional[str] = typer.Option(None, help="iid, dirichlet or shards [iid]."),
        alpha: Optional[float] = typer.Option(None, help="Dirichlet concentration for --partition dirichlet [0.5]."),
        model: Optional[str] = typer.Option(None, help="logreg, mlp or cnn [logreg]."),
        local_epochs: Optional[int] = typer.Option(None, "--local-epochs", help="Client epochs per round [2]."),
        lr: Optional[float] = typer.Option(None, help="Client SGD learning rate [0.5]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Client batch size [16]."),
        server_lr: Optional[float] = typer.Option(None, "--server-lr", help="Server learning rate [1.0]."),
        server_momentum: Optional[float] = typer.Option(None, "--server-momentum", help="Server momentum [0.5]."),
        secure_sum: Optional[str] = typer.Option(
            None, "--secure-sum", help="masking (default), paillier, or plain (insecure baseline)."
        ),
        graph: Optional[str] = typer.Option(
            None, help="Masking graph: sparse (SecAgg+, default) or complete (SecAgg)."
        ),
        bits: Optional[int] = typer.Option(None, help="Ring width of the encoding [32]."),
        dp: Optional[str] = typer.Option(None, help="distributed (default), central, local or none."),
        mechanism: Optional[str] = typer.Option(None, help="Distributed noise: skellam or discrete_gaussian."),
        clip: Optional[float] = typer.Option(
            None, help="L2 clip norm of each client update [1.0 with DP, 10 without]."
        ),
        adaptive_clip: Optional[bool] = typer.Option(
            None, "--adaptive-clip/--fixed-clip", help="Track a quantile of update norms (Andrew et al. 2021)."
        ),
        target_quantile: Optional[float] = typer.Option(
            None, "--target-quantile", help="Adaptive clip quantile [0.5]."
        ),
        clip_lr: Optional[float] = typer.Option(None, "--clip-lr", help="Adaptive clip learning rate [0.2]."),
        count_noise_std: Optional[float] = typer.Option(
            None, "--count-noise-std", help="Noise std on the adaptive clip's count [expected cohort / 20]."
        ),
        noise_multiplier: Optional[float] = typer.Option(
            None, "--noise-multiplier", help="Noise std / sensitivity [1.0]."
        ),
        target_epsilon: Optional[float] = typer.Option(
            None,
            "--target-epsilon",
            help="Privacy budget epsilon; without --noise-multiplier it also sets the noise.",
        ),
        budget_against: Optional[str] = typer.Option(
            None,
            "--budget-against",
            help="Adversary the budget holds against: server or public [server; public in central mode].",
        ),
        client_max_epsilon: Optional[float] = typer.Option(
            None,
            "--client-max-epsilon",
            help="Each client's own limit on its epsilon against the server [10; inf: none].",
        ),
        max_participation: Optional[int] = typer.Option(
            None,
            "--max-participation",
            help="Most rounds a client may join [set by the calibration with --target-epsilon].",
        ),
        delta: Optional[float] = typer.Option(None, help="Privacy parameter delta [1e-5]."),
        colluders: Optional[int] = typer.Option(None, help="Clients assumed to collude with the server [0]."),
        record_noise_multiplier: Optional[float] = typer.Option(
            None, "--record-noise-multiplier", help="Also run Opacus DP-SGD in each client (record-level DP)."
        ),
        record_clip: Optional[float] = typer.Option(None, "--record-clip", help="Per-example gradient clip [1.0]."),
        min_survivors: Optional[int] = typer.Option(
            None, "--min-survivors", help="Fewest survivors a DP round may release with [a low quantile of the cohort]."
        ),
        ledger: Optional[Path] = typer.Option(None, help="Path of the epsilon ledger (JSONL)."),
        dropout: Optional[float] = typer.Option(
            None, help="Simulated fraction of each cohort dropping out before sending its masked input."
        ),
        buffers: Optional[str] = typer.Option(None, help="Model buffers: local or aggregate [local]."),
        seed: Optional[int] = typer.Option(
            None, help="Seed for a reproducible run (experiments only: no privacy if published)."
        ),
        threads: Optional[int] = typer.Option(None, help="torch threads per process [1: fastest for small models]."),
        config: Optional[Path] = typer.Option(None, "--config", help="TOML file mirroring these options."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout."),
    ) -> None:
        """Run federated training with private aggregation and print a summary."""
        from fl_core.config import RunConfig, load_config_file
        from fl_core.errors import FLError

        given: dict[str, Any] = {
            k: v
            for k, v in dict(
                dataset=dataset,
                clients=clients,
                rounds=rounds,
                per_round=per_round,
                sampling_rate=sampling_rate,
                partition=partition,
                alpha=alpha,
                model=model,
                local_epochs=local_epochs,
                lr=lr,
                batch_size=batch_size,
                server_lr=server_lr,
                server_momentum=server_momentum,
                secure_sum=secure_sum,
                graph=graph,
                bits=bits,
                dp=dp,
                mechanism=mechanism,
                clip=clip,
                adaptive_clip=adaptive_clip,
                target_quantile=target_quantile,
                clip_lr=clip_lr,
                count_noise_std=count_noise_std,
                noise_multiplier=noise_multiplier,
                target_epsilon=target_epsilon,
                budget_against=budget_against,
                client_max_epsilon=client_max_epsilon,
                max_participation=max_participation,
                delta=delta,
                colluders=colluders,
                min_survivors=min_survivors,
                record_noise_multiplier=record_noise_multiplier,
                record_clip=record_clip,
                ledger=str(ledger) if ledger is not None else None,
                dropout=dropout,
                buffers=buffers,
                seed=seed,
                threads=threads,
            ).items()
            if v is not None
        }
        try:
            options = load_config_file(config) if config is not None else {}
            options.update(given)
            cfg = RunConfig(**options)
        except FLError as exc:
            _fail(str(exc))
        except TypeError as exc:
            _fail(f"bad option value: {exc}")
        _execute(cfg, as_json)


def _execute(cfg: Any, as_json: bool) -> None:
    from fl_core.errors import FLError
    from fl_core.runner import execute

    show_progress = sys.stderr.isatty()
    try:
        if show_progress:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn("[bold]round {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                transient=True,
            ) as progress:
                task = progress.add_task("rounds", total=cfg.rounds, status="")

                def on_round(res: Any) -> None:
                    acc = res.metrics.get("accuracy")
                    status = f"acc {acc:.3f}" if acc is not None else ""
                    if res.epsilon is not None:
                        status += f"  eps {res.epsilon:.3f}"
                    progress.update(task, advance=1, status=status)

                summary = execute(cfg, on_round=on_round)
        else:
            summary = execute(cfg)
    except FLError as exc:
        _fail(str(exc))
    except Exception as exc:  # typed errors from secagg/dp: say what went wrong, no traceback
        from dp.errors import PrivacyError
        from secagg.errors import SecAggError

        if isinstance(exc, (PrivacyError, SecAggError)):
            _fail(f"{type(exc).__name__}: {exc}")
        raise
    out = summary.to_json()
    if as_json:
        sys.stdout.write(json.dumps(out) + "\n")
        return
    acc = out["accuracy"]
    lines = [
        f"privagg run: {cfg.dataset}, {cfg.clients} clients, {out['rounds']} rounds, "
        f"model {cfg.model} ({out['dim']} parameters)",
        f"  secure sum: {cfg.secure_sum}    dp: {cfg.dp}",
        f"  test accuracy: {acc:.4f}   loss: {out['loss']:.4f}" if acc is not None else "  no evaluation",
        f"  upload per client per round: {out['bytes_per_client_per_round']:.0f} bytes   wall: {out['wall_s']:.1f} s",
    ]
    if out.get("epsilon") is not None:
        lines.append(f"  privacy: epsilon = {out['epsilon']:.3f} at delta = {out['delta']:g}")
    rec = out.get("record_level")
    if rec:
        lines.append(
            f"  record-level (Opacus DP-SGD in each client): max epsilon over clients = {rec['epsilon_max']:.3f} "
            f"at delta = {rec['delta']:g}"
        )
    if out.get("ledger"):
        lines.append(f"  ledger: {out['ledger']}")
    if out.get("stopped"):
        lines.append(f"  stopped early: {out['stopped']}")
    if cfg.secure_sum == "plain":
        lines.append("  note: the plain sum is an insecure baseline; the server saw every update")
    typer.echo("\n".join(lines))
