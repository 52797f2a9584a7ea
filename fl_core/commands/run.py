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
        clients: Optional[int] = typer.Option(None, help="Number of clients the data is split into \\[1000]."),
        rounds: Optional[int] = typer.Option(None, help="Federated rounds \\[30]."),
        per_round: Optional[int] = typer.Option(None, "--per-round", help="Fixed cohort size per round."),
        sampling_rate: Optional[float] = typer.Option(
            None, "--sampling-rate", help="Poisson sampling rate q \\[0.1 when --per-round is not given]."
        ),
        partition: Optional[str] = typer.Option(None, help="iid, dirichlet, dirichlet-balanced or shards \\[iid]."),
        alpha: Optional[float] = typer.Option(
            None, help="Dirichlet concentration for --partition dirichlet(-balanced) \\[0.5]."
        ),
        model: Optional[str] = typer.Option(None, help="logreg, mlp or cnn \\[logreg]."),
        local_epochs: Optional[int] = typer.Option(None, "--local-epochs", help="Client epochs per round \\[2]."),
        lr: Optional[float] = typer.Option(None, help="Client SGD learning rate \\[0.5]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Client batch size \\[16]."),
        server_lr: Optional[float] = typer.Option(None, "--server-lr", help="Server learning rate \\[1.0]."),
        server_momentum: Optional[float] = typer.Option(None, "--server-momentum", help="Server momentum \\[0.5]."),
        secure_sum: Optional[str] = typer.Option(
            None, "--secure-sum", help="masking (default), paillier, or plain (insecure baseline)."
        ),
        graph: Optional[str] = typer.Option(
            None, help="Masking graph: sparse (SecAgg+, default) or complete (SecAgg)."
        ),
        bits: Optional[int] = typer.Option(
            None, help="Ring width of the encoding [auto: the narrowest ring that cannot overflow; 32 without DP]."
        ),
        dp: Optional[str] = typer.Option(None, help="distributed (default), central, local or none."),
        mechanism: Optional[str] = typer.Option(None, help="Distributed noise: skellam or discrete_gaussian."),
        clip: Optional[float] = typer.Option(
            None, help="L2 clip norm of each client update \\[1.0 with DP, 10 without]."
        ),
        adaptive_clip: Optional[bool] = typer.Option(
            None, "--adaptive-clip/--fixed-clip", help="Track a quantile of update norms (Andrew et al. 2021)."
        ),
        target_quantile: Optional[float] = typer.Option(
            None, "--target-quantile", help="Adaptive clip quantile \\[0.5]."
        ),
        clip_lr: Optional[float] = typer.Option(None, "--clip-lr", help="Adaptive clip learning rate \\[0.2]."),
        count_noise_std: Optional[float] = typer.Option(
            None, "--count-noise-std", help="Noise std on the adaptive clip's count \\[expected cohort / 20]."
        ),
        noise_multiplier: Optional[float] = typer.Option(
            None, "--noise-multiplier", help="Noise std / sensitivity \\[1.0]."
        ),
        target_epsilon: Optional[float] = typer.Option(
            None,
            "--target-epsilon",
            help="Privacy budget epsilon; without --noise-multiplier it also sets the noise.",
        ),
        budget_against: Optional[str] = typer.Option(
            None,
            "--budget-against",
            help="Adversary the budget holds against: server or public \\[server; public in central mode].",
        ),
        client_max_epsilon: Optional[float] = typer.Option(
            None,
            "--client-max-epsilon",
            help="Each client's own limit on its epsilon against the server \\[10; inf: none].",
        ),
        max_participation: Optional[int] = typer.Option(
            None,
            "--max-participation",
            help="Most rounds a client may join \\[set by the calibration with --target-epsilon].",
        ),
        delta: Optional[float] = typer.Option(None, help="Privacy parameter delta \\[1e-5]."),
        colluders: Optional[int] = typer.Option(None, help="Clients assumed to collude with the server \\[0]."),
        record_noise_multiplier: Optional[float] = typer.Option(
            None, "--record-noise-multiplier", help="Also run Opacus DP-SGD in each client (record-level DP)."
        ),
        record_clip: Optional[float] = typer.Option(None, "--record-clip", help="Per-example gradient clip \\[1.0]."),
        min_survivors: Optional[int] = typer.Option(
            None,
            "--min-survivors",
            help="Fewest survivors a DP round may release with \\[a low quantile of the cohort].",
        ),
        ledger: Optional[Path] = typer.Option(None, help="Path of the epsilon ledger (JSONL)."),
        dropout: Optional[float] = typer.Option(
            None, help="Simulated fraction of each cohort dropping out before sending its masked input."
        ),
        buffers: Optional[str] = typer.Option(None, help="Model buffers: local or aggregate \\[local]."),
        seed: Optional[int] = typer.Option(
            None, help="Seed for a reproducible run (experiments only: no privacy if published)."
        ),
        threads: Optional[int] = typer.Option(None, help="torch threads per process \\[1: fastest for small models]."),
        task: Optional[str] = typer.Option(
            None,
            "--task",
            help="Your task module (a .py file or dotted name) defining make_model, train_fn, load_data "
            "and optionally evaluate; default: privagg's own demo.",
        ),
        node_config: Optional[str] = typer.Option(
            None,
            "--node-config",
            help="Keys for your load_data, 'key=value ...'; {partition-id} is replaced per client "
            "(e.g. 'data-dir=shards/client-{partition-id}').",
        ),
        device: Optional[str] = typer.Option(
            None, help="Where clients train: cpu (default), cuda, or auto (cuda when available)."
        ),
        max_consecutive_aborts: Optional[int] = typer.Option(
            None,
            "--max-consecutive-aborts",
            help="Exit 3 after this many aborts in a row \\[10].",
        ),
        out: Optional[Path] = typer.Option(
            None,
            "--out",
            help="Run folder: model.pt, metrics.jsonl, summary.json, a checkpoint after every round, "
            "and the ledger (unless --ledger).",
        ),
        resume: Optional[Path] = typer.Option(
            None, "--resume", help="Continue the run stored in this --out folder where it left off."
        ),
        mode: Optional[str] = typer.Option(
            None, help="sync (rounds, default) or async (buffered asynchronous training, FedBuff-style)."
        ),
        buffer: Optional[int] = typer.Option(None, help="Async: updates per applied buffer K [10]."),
        concurrency: Optional[int] = typer.Option(None, help="Async: clients checked in at once C [2K]."),
        max_staleness: Optional[int] = typer.Option(
            None, "--max-staleness", help="Async: refuse updates older than this many versions [no bound]."
        ),
        staleness: Optional[str] = typer.Option(
            None, help="Async staleness weight: fedbuff (1/sqrt(1+s)), constant, polynomial:A, hinge:A:B."
        ),
        speed: Optional[str] = typer.Option(
            None, help="Simulated client speeds: lognormal[:MEDIAN_S[:SIGMA[:JITTER]]] or trace:FILE [lognormal:10:1]."
        ),
        config: Optional[Path] = typer.Option(None, "--config", help="TOML file mirroring these options."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout."),
    ) -> None:
        """Run federated training with private aggregation and print a summary.

        Exit status: 0 done (or stopped early by the budget); 2 invalid options or a failed run;
        3 too many consecutive aborted rounds; 130 / 143 interrupted by SIGINT / SIGTERM (the
        finished rounds are summarised and, with --out, resumable).
        """
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
                task=task,
                node_config=node_config,
                device=device,
                max_consecutive_aborts=max_consecutive_aborts,
                schedule=mode,
                buffer=buffer,
                concurrency=concurrency,
                max_staleness=max_staleness,
                staleness=staleness,
                speed=speed,
            ).items()
            if v is not None
        }
        if resume is not None:
            from fl_core.runner import resume_config

            if config is not None or out is not None:
                _fail("--resume continues the run stored in its folder: drop --config and --out")
            try:
                cfg = resume_config(resume, **given)
            except FLError as exc:
                _fail(str(exc))
            _execute(cfg, as_json, out=resume, resume=True)
            return
        try:
            options = load_config_file(config) if config is not None else {}
            options.update(given)
            cfg = RunConfig(**options)
        except FLError as exc:
            _fail(str(exc))
        except TypeError as exc:
            _fail(f"bad option value: {exc}")
        if cfg.ledger is not None and cfg.dp == "none":
            _fail(
                "--ledger records client-level DP rounds, and --dp none has none to record: drop --ledger or choose "
                "--dp distributed|central|local"
            )
        if cfg.task is not None:
            from fl_core.provenance import BUILTIN_ONLY_OPTIONS

            demo_only = [k for k in BUILTIN_ONLY_OPTIONS if k in options]
            if demo_only:
                _fail(
                    "--task brings its own model, data and training loop; "
                    + ", ".join("--" + k.replace("_", "-") for k in demo_only)
                    + " configure privagg's demo only: drop them (set them in your task module)"
                )
        if cfg.schedule == "async":
            from fl_core.asynchronous.command import execute_async_command

            try:
                execute_async_command(cfg, as_json, out=out)
            except FLError as exc:
                _fail(str(exc))
            return
        _execute(cfg, as_json, out=out, resume=False)


def _execute(cfg: Any, as_json: bool, *, out: Path | None, resume: bool) -> None:
    from fl_core.errors import FLError, TooManyAbortsError
    from fl_core.interrupt import Interrupted, InterruptGuard
    from fl_core.runner import execute

    planned = cfg.rounds
    try:
        with InterruptGuard() as guard:
            if sys.stderr.isatty():
                summary = _with_progress_bar(cfg, planned, lambda cb: execute(
                    cfg, on_round=cb, out=out, resume=resume, guard=guard))
            else:
                summary = execute(cfg, on_round=_progress_line(planned), out=out, resume=resume, guard=guard)
    except Interrupted as exc:  # before the round loop started: nothing ran
        typer.echo(f"privagg run: {exc}; no round ran", err=True)
        raise typer.Exit(exc.exit_code) from None
    except TooManyAbortsError as exc:
        _fail(str(exc), code=3)
    except FLError as exc:
        _fail(str(exc))
    except Exception as exc:  # typed errors from secagg/dp: say what went wrong, no traceback
        from dp.errors import PrivacyError
        from secagg.errors import SecAggError

        if isinstance(exc, (PrivacyError, SecAggError)):
            _fail(f"{type(exc).__name__}: {exc}")
        raise
    result = summary.to_json()
    from fl_core.asynchronous.command import sync_simulated_time

    result["simulated_time_s"] = sync_simulated_time(cfg, summary.results)  # the async mode's clock
    if out is not None:
        result["out"] = str(out)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    else:
        typer.echo(_text_summary(cfg, result))
    if summary.interrupted is not None:
        hint = f"; continue with: privagg run --resume {out}" if out is not None else ""
        typer.echo(
            f"privagg run: interrupted by {result['interrupted']} after {result['rounds_completed']} of "
            f"{planned} rounds (the round in flight was rolled back or committed whole){hint}",
            err=True,
        )
        raise typer.Exit(128 + summary.interrupted)
    if summary.failure is not None:
        _fail(summary.failure, code=3)


def _with_progress_bar(cfg: Any, planned: int, run: Any) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]round {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("rounds", total=planned, status="")

        def on_round(res: Any) -> None:
            if res.aborted:
                progress.update(task, status=f"round {res.round} aborted (attempt {res.attempt + 1}), retrying")
                return
            acc = res.metrics.get("accuracy")
            status = f"acc {acc:.3f}" if acc is not None else ""
            if res.epsilon is not None:
                status += f"  eps {res.epsilon:.3f}"
            progress.update(task, completed=res.round, status=status)

        return run(on_round)


def _progress_line(planned: int) -> Any:
    """One line per round attempt on stderr (used when stderr is not a terminal)."""

    def on_round(res: Any) -> None:
        if res.aborted:
            line = f"round {res.round}/{planned} aborted (attempt {res.attempt + 1}): {res.reason}"
        else:
            parts = [f"round {res.round}/{planned}"]
            if res.skipped:
                parts.append("skipped (empty cohort)")
            acc, loss = res.metrics.get("accuracy"), res.metrics.get("loss")
            if acc is not None:
                parts.append(f"acc {acc:.4f}")
            if loss is not None:
                parts.append(f"loss {loss:.4f}")
            if res.epsilon is not None:
                parts.append(f"eps {res.epsilon:.3f}")
            if not res.skipped:
                parts.append(f"cohort {len(res.cohort)} survivors {len(res.survivors)}")
            if res.dropouts:
                parts.append(f"failed {len(res.dropouts)}")
            parts.append(f"{res.wall_s:.2f}s")
            line = "  ".join(parts)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return on_round


def _text_summary(cfg: Any, out: dict[str, Any]) -> str:
    acc = out["accuracy"]
    what = out.get("task") or cfg.dataset
    if str(what).startswith("builtin:"):
        what = f"{cfg.dataset}, model {cfg.model}"
    else:
        what = f"task {what}, model {out.get('model_class')}"
    lines = [
        f"privagg run: {what} ({out['dim']} parameters), {cfg.clients} clients",
        f"  rounds: {out['rounds_completed']} of {out['rounds_planned']} completed, {out['rounds_aborted']} aborted "
        "attempts (each released nothing and was retried with a fresh cohort)",
        f"  secure sum: {cfg.secure_sum}    dp: {cfg.dp}",
        f"  test accuracy: {acc:.4f}   loss: {out['loss']:.4f}" if acc is not None and out.get("loss") is not None
        else "  no evaluation",
        f"  upload per client per round: {out['bytes_per_client_per_round']:.0f} bytes   wall: {out['wall_s']:.1f} s",
    ]
    if out.get("epsilon") is not None:
        kind = "record-level " if cfg.dp == "none" else ""
        lines.append(f"  privacy: {kind}epsilon = {out['epsilon']:.3f} at delta = {out['delta']:g}")
        if out.get("epsilon_enforced_on"):
            srv = out.get("epsilon_vs_server")
            lines.append(
                f"    against the server: {'unbounded (it sees the exact sum)' if srv is None else f'{srv:.3f}'}"
                f"   against model users: {out['epsilon_vs_public']:.3f}"
                f"   (the budget holds against the {out['epsilon_enforced_on']})"
            )
    rec = out.get("record_level")
    if rec:
        lines.append(
            f"  record-level (Opacus DP-SGD in each client): max epsilon over clients = {rec['epsilon_max']:.3f} "
            f"at delta = {rec['delta']:g}"
        )
    if out.get("ledger"):
        lines.append(f"  ledger: {out['ledger']}")
    if out.get("out"):
        lines.append(f"  run folder: {out['out']} (model.pt, metrics.jsonl, summary.json, checkpoint.pt)")
    if out.get("stopped"):
        lines.append(f"  stopped early: {out['stopped']}")
    if cfg.secure_sum == "plain":
        lines.append("  note: the plain sum is an insecure baseline; the server saw every update")
    return "\n".join(lines)
