"""``privagg audit``: verify an epsilon ledger (or a client's own record), recompute epsilon, or run a canary audit.

Exit codes: 0 the ledger verifies and every recorded epsilon agrees with its
recomputation (or the empirical audit found nothing); 1 the chain does not verify
(the message names the first bad round); 3 the chain verifies but a recorded
epsilon disagrees with the recomputation; 4 the empirical audit refutes the
claimed epsilon; 2 usage errors. With ``--client-record FILE`` the same codes apply to a
client's own hash-chained record (:mod:`dp.client_record`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer

__all__ = ["register", "EXIT_BROKEN_CHAIN", "EXIT_DISAGREEMENT", "EXIT_EMPIRICAL_VIOLATION"]

EXIT_BROKEN_CHAIN = 1
EXIT_USAGE = 2
EXIT_DISAGREEMENT = 3
EXIT_EMPIRICAL_VIOLATION = 4


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return "inf" if math.isinf(x) else f"{x:.4f}"


def plot_epsilon(report: Any, path: Path) -> None:
    """Plot recorded and recomputed cumulative epsilon against rounds (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in report.per_round]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(rounds, [r.recorded for r in report.per_round], label="recorded", lw=2)
    for acc, style in (("rdp", "--"), ("pld", "o")):
        pts = [(r.round, r.cumulative[acc]) for r in report.per_round if acc in r.cumulative]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, style, label=f"recomputed ({acc})", ms=4)
    for d in report.disagreements:
        ax.axvline(d.round, color="red", alpha=0.3)
    ax.set_xlabel("round")
    ax.set_ylabel(f"cumulative epsilon (delta = {report.delta:g})" if report.delta else "epsilon")
    ax.set_title(f"ledger {report.ledger_id[:12]}: {report.rounds} rounds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _ledger_audit(ledger: Path, *, as_json: bool, plot: Optional[Path], accountant: str,
                  head: Optional[str], rtol: float, verify_only: bool, every_round: bool) -> None:
    from dp.audit.report import DEFAULT_CHECKPOINTS, audit_ledger
    from dp.errors import PrivacyError

    accountants = ("pld", "rdp") if accountant == "pld" else ("rdp", "pld")
    try:
        report = audit_ledger(ledger, accountants=accountants, expected_head=head,
                              recompute=not verify_only, rtol=rtol,
                              checkpoints=None if every_round else DEFAULT_CHECKPOINTS)
    except PrivacyError as exc:
        _fail(str(exc), EXIT_BROKEN_CHAIN if getattr(exc, "round", None) is not None else EXIT_USAGE)
        return
    if plot is not None and report.per_round:
        plot_epsilon(report, plot)
    main_eps = report.recomputed.get(accountant)
    if as_json:
        d = report.to_dict()
        d["accountant"] = accountant
        d["epsilon_recomputed"] = d["recomputed"].get(accountant)
        if plot is not None:
            d["plot"] = str(plot)
        typer.echo(json.dumps(d, sort_keys=True))
    else:
        if report.head_mismatch:
            status = f"HEAD DOES NOT MATCH (the chain itself is intact: {report.rounds} rounds)"
        elif report.verified:
            status = "VERIFIED"
        else:
            status = f"BROKEN at round {report.first_bad_round}"
        typer.echo(f"ledger {ledger} ({report.ledger_id}): {status}")
        typer.echo(f"  rounds verified: {report.rounds}   delta: {report.delta}")
        typer.echo(f"  epsilon against model users: recorded {_fmt(report.epsilon)}   recomputed: "
                   + "   ".join(f"{a} {_fmt(v)}" for a, v in report.recomputed.items()))
        if report.vs_server_reason is not None:
            typer.echo(f"  epsilon against the server: unbounded ({report.vs_server_reason})")
        elif report.recomputed_vs_server is not None or report.epsilon_vs_server is not None:
            typer.echo(f"  epsilon against the server (largest over clients, no amplification): recorded "
                       f"{_fmt(report.epsilon_vs_server)}   recomputed {_fmt(report.recomputed_vs_server)}")
        if report.anchor_round is not None:
            typer.echo(f"  anchor (published model) at round {report.anchor_round}; charged but "
                       f"unpublished rounds: {list(report.unpublished_rounds)}")
        for note in report.accountant_notes:
            typer.echo(f"  note: {note}")
        for dis in report.disagreements:
            typer.echo(f"  DISAGREEMENT round {dis.round}: recorded {_fmt(dis.recorded)} vs "
                       f"{dis.accountant} {_fmt(dis.recomputed)} ({dis.relative_error:+.2%})")
        if plot is not None:
            typer.echo(f"  plot: {plot}")
        if main_eps is None and not verify_only and report.rounds:
            typer.echo(f"  ({accountant} could not account these events)")
    if report.torn_tail is not None:
        typer.echo(f"warning: the last line (round {report.torn_tail.round}, "
                   f"{report.torn_tail.length} bytes) is torn by a crash mid-write; it is not "
                   "counted (its model update was never published)", err=True)
    if report.head_mismatch:
        typer.echo(f"error: the head given with --head is not in this ledger, which is intact as far as it "
                   f"goes ({report.rounds} rounds): either records after round {report.rounds} were removed, or "
                   "the head belongs to another ledger", err=True)
        raise typer.Exit(EXIT_BROKEN_CHAIN)
    if not report.verified:
        typer.echo(f"error: ledger does not verify at round {report.first_bad_round}: "
                   f"{report.error}", err=True)
        raise typer.Exit(EXIT_BROKEN_CHAIN)
    if report.disagreements:
        typer.echo(f"error: {len(report.disagreements)} recorded epsilon value(s) disagree with "
                   f"the recomputation beyond rtol={rtol:g}", err=True)
        raise typer.Exit(EXIT_DISAGREEMENT)


def _empirical_audit(*, canaries: int, epsilon: Optional[float], noise_multiplier: Optional[float],
                     clip: float, dim: Optional[int], delta: float, seed: Optional[int],
                     mode: str, as_json: bool, plant_bug: str) -> None:
    from dp.randomness import RandomSource, SeededRandomSource, SystemRandomSource
    from fl_core.canary_audit import (
        AuditMode,
        CanaryAuditConfig,
        PlantedBug,
        noise_multiplier_for_epsilon,
        run_canary_audit,
    )
    from fl_core.errors import FLError

    if (epsilon is None) == (noise_multiplier is None):
        _fail("give exactly one of --epsilon (the claimed epsilon) or --noise-multiplier")
    try:
        z = noise_multiplier if noise_multiplier is not None else noise_multiplier_for_epsilon(
            float(epsilon or 0.0), delta)
        cfg = CanaryAuditConfig(canaries=canaries, noise_multiplier=z, clip=clip, dim=dim,
                                delta=delta, mode=AuditMode(mode), bug=PlantedBug(plant_bug))
        rng: RandomSource = SeededRandomSource(seed) if seed is not None else SystemRandomSource()
        result = run_canary_audit(cfg, rng)
    except (FLError, ValueError) as exc:
        _fail(str(exc))
        return
    if as_json:
        d = result.to_dict()
        d["seed"] = seed
        typer.echo(json.dumps(d, sort_keys=True))
    else:
        typer.echo(f"empirical audit ({cfg.mode.value}, {canaries} canaries, z = {z:.4f}, "
                   f"C = {clip}, dim = {cfg.resolved_dim}, delta = {delta:g})")
        typer.echo(f"  epsilon accounted:           {result.epsilon_accounted:.4f}")
        typer.echo(f"  epsilon lower bound (95%):   {result.epsilon_lower:.4f}   "
                   f"({result.one_run.v}/{result.one_run.r} correct guesses)")
        typer.echo(f"  noise std claimed/measured:  {result.noise_std_claimed:.4g} / "
                   f"{result.noise_std_measured:.4g}   (p = {result.noise_p_value:.3g})")
        typer.echo(f"  seconds: {result.seconds:.1f}")
    if result.flagged:
        why = []
        if result.violation:
            why.append(f"epsilon_lower {result.epsilon_lower:.3f} > accounted "
                       f"{result.epsilon_accounted:.3f}")
        if result.noise_too_small:
            why.append(f"noise std {result.noise_std_measured:.4g} is below the claimed "
                       f"{result.noise_std_claimed:.4g}")
        typer.echo("error: the privacy claim is refuted: " + "; ".join(why), err=True)
        raise typer.Exit(EXIT_EMPIRICAL_VIOLATION)


def _client_record_audit(path: Path, *, as_json: bool, head: Optional[str]) -> None:
    """Verify a client's hash-chained privacy record (``dp.client_record``) and recompute its epsilon."""
    from dp.client_record import verify_client_record
    from dp.errors import PrivacyError

    try:
        report = verify_client_record(path, expected_head=head)
    except PrivacyError as exc:
        _fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps({"kind": "client-record", **report.to_dict()}))
    else:
        state = "verified" if report.verified else "NOT verified"
        typer.echo(
            f"client record {path}: client {report.client}, {len(report.charges)} rounds charged, {state}; "
            f"epsilon against the server {_fmt(report.epsilon_recomputed)} (delta={report.delta})"
        )
        if report.error:
            typer.echo(f"error: {report.error}", err=True)
    if report.error is not None or report.head_matches is False:
        raise typer.Exit(EXIT_BROKEN_CHAIN)
    if report.disagreements:
        raise typer.Exit(EXIT_DISAGREEMENT)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("audit")
    def audit(
        ledger: Optional[Path] = typer.Argument(None, help="The epsilon ledger (JSONL) to verify."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        plot: Optional[Path] = typer.Option(None, help="Write a PNG of epsilon against rounds."),
        accountant: str = typer.Option("pld", help="Accountant whose epsilon is reported: pld or rdp."),
        head: Optional[str] = typer.Option(
            None, help="Head hash stored with the published model: must be in the chain."),
        rtol: float = typer.Option(1e-3, help="Relative tolerance recorded vs recomputed epsilon."),
        verify_only: bool = typer.Option(False, "--verify-only", help="Check the chain only."),
        every_round: bool = typer.Option(
            False, "--every-round", help="Recompute PLD at every round (slow), not at checkpoints."),
        empirical: bool = typer.Option(
            False, "--empirical", help="Run a canary audit instead of reading a ledger."),
        canaries: int = typer.Option(1000, help="Empirical: number of canary clients."),
        epsilon: Optional[float] = typer.Option(None, help="Empirical: the claimed epsilon."),
        noise_multiplier: Optional[float] = typer.Option(
            None, "--noise-multiplier", help="Empirical: the claimed noise multiplier."),
        clip: float = typer.Option(1.0, help="Empirical: clip norm."),
        dim: Optional[int] = typer.Option(None, help="Empirical: model dimension [= canaries]."),
        delta: float = typer.Option(1e-5, help="Empirical: delta of the claim."),
        mode: str = typer.Option("central", help="Empirical: central or distributed."),
        seed: Optional[int] = typer.Option(
            None, help="Empirical: seed (reproducible; default OS randomness)."),
        plant_bug: str = typer.Option("none", "--plant-bug", hidden=True),
        client_record: Optional[Path] = typer.Option(
            None, "--client-record",
            help="Verify a client's own privacy record (e.g. a Flower node's privacy-record file)."),
    ) -> None:
        """Verify a ledger's hash chain and recompute its epsilon, or audit empirically with canaries."""
        if accountant not in ("pld", "rdp"):
            _fail(f"--accountant must be pld or rdp, got {accountant!r}")
        if empirical:
            if ledger is not None:
                _fail("--empirical does not read a ledger; drop the LEDGER argument")
            if mode not in ("central", "distributed"):
                _fail(f"--mode must be central or distributed, got {mode!r}")
            if plant_bug not in ("none", "halve-noise"):
                _fail(f"--plant-bug must be none or halve-noise, got {plant_bug!r}")
            _empirical_audit(canaries=canaries, epsilon=epsilon, noise_multiplier=noise_multiplier,
                             clip=clip, dim=dim, delta=delta, seed=seed, mode=mode,
                             as_json=as_json, plant_bug=plant_bug)
            return
        if client_record is not None:
            if ledger is not None:
                _fail("give a LEDGER or --client-record, not both")
            if not client_record.exists():
                _fail(f"no such client record: {client_record}")
            _client_record_audit(client_record, as_json=as_json, head=head)
            return
        if ledger is None:
            _fail("give a LEDGER to verify, --client-record, or --empirical")
            return
        if not ledger.exists():
            _fail(f"no such ledger: {ledger}")
        _ledger_audit(ledger, as_json=as_json, plot=plot, accountant=accountant, head=head,
                      rtol=rtol, verify_only=verify_only, every_round=every_round)
        sys.stdout.flush()
