"""``privagg plan``: epsilon for a noise multiplier, or the noise multiplier for a target epsilon."""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any, Optional

import typer

from dp.accountants import ACCOUNTANT_VERSIONS, account
from dp.errors import PrivacyError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling

__all__ = ["plan_epsilon", "plan_noise_multiplier", "register"]


class PlanMechanism(str, Enum):
    gaussian = "gaussian"
    skellam = "skellam"


class PlanAccountant(str, Enum):
    pld = "pld"
    rdp = "rdp"


def _events(
    *, z: float, q: float, rounds: int, mechanism: PlanMechanism, clip: float, scale: float, dim: int
) -> list[RoundEvent]:
    sampling = Sampling.FULL if q >= 1.0 else Sampling.POISSON
    if mechanism is PlanMechanism.gaussian:
        l2, l1, var, mech, mode = 1.0, 0.0, z * z, Mechanism.GAUSSIAN, DPMode.CENTRAL
    else:
        l2 = clip * scale + math.sqrt(dim)  # stochastic-rounding inflation, as dp.calibration charges it
        l1 = min(l2 * l2, math.sqrt(dim) * l2)
        var, mech, mode = (z * l2) ** 2, Mechanism.SKELLAM, DPMode.DISTRIBUTED
    one = RoundEvent(
        round=1,
        mode=mode,
        mechanism=mech,
        l2_sensitivity=l2,
        l1_sensitivity=l1,
        noise_variance=var,
        clip_norm=clip,
        sampling=sampling,
        sampling_rate=1.0 if q >= 1.0 else q,
        population=1,
        cohort=1,
        survivors=1,
        dim=dim,
    )
    # Identical rounds: the accountants group equal events, so repeating one object is cheap.
    return [one] * rounds


def plan_epsilon(
    *,
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    mechanism: PlanMechanism = PlanMechanism.gaussian,
    accountant: PlanAccountant = PlanAccountant.pld,
    clip: float = 1.0,
    scale: float = 2.0**16,
    dim: int = 10_000,
) -> dict[str, Any]:
    """Epsilon (tight accountant and RDP) of ``rounds`` identical Poisson-sampled rounds."""
    evs = _events(
        z=noise_multiplier, q=sampling_rate, rounds=rounds, mechanism=mechanism, clip=clip, scale=scale, dim=dim
    )
    tight = account(evs, delta, accountant=accountant.value)
    rdp = account(evs, delta, accountant="rdp")
    out: dict[str, Any] = {
        "epsilon": tight.epsilon,
        "epsilon_rdp": rdp.epsilon,
        "delta": delta,
        "noise_multiplier": noise_multiplier,
        "sampling_rate": sampling_rate,
        "rounds": rounds,
        "mechanism": mechanism.value,
        "accountant": accountant.value,
        "engine": tight.engine,
        "accountant_version": ACCOUNTANT_VERSIONS[tight.engine if tight.engine in ACCOUNTANT_VERSIONS else "rdp"],
    }
    if mechanism is PlanMechanism.skellam:
        out.update(clip=clip, scale=scale, dim=dim)
    return out


def plan_noise_multiplier(
    *,
    target_epsilon: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    mechanism: PlanMechanism = PlanMechanism.gaussian,
    accountant: PlanAccountant = PlanAccountant.pld,
    clip: float = 1.0,
    scale: float = 2.0**16,
    dim: int = 10_000,
    rel_tol: float = 1e-3,
) -> dict[str, Any]:
    """Smallest noise multiplier (to ``rel_tol``) whose epsilon is <= ``target_epsilon`` (bisection).

    The returned ``noise_multiplier`` is the upper end of the final bracket, so its
    epsilon (also returned) never exceeds the target.
    """

    def eps(z: float) -> float:
        return float(
            plan_epsilon(
                noise_multiplier=z,
                sampling_rate=sampling_rate,
                rounds=rounds,
                delta=delta,
                mechanism=mechanism,
                accountant=accountant,
                clip=clip,
                scale=scale,
                dim=dim,
            )["epsilon"]
        )

    hi = 1.0
    e_hi = eps(hi)
    while e_hi > target_epsilon:
        hi *= 2.0
        if hi > 1e6:
            raise typer.BadParameter("no noise multiplier up to 1e6 meets it", param_hint="--target-epsilon")
        e_hi = eps(hi)
    lo = hi / 2.0
    while eps(lo) <= target_epsilon and lo > 1e-3:
        hi, lo = lo, lo / 2.0
    e_hi = eps(hi)
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        e_mid = eps(mid)
        if e_mid <= target_epsilon:
            hi, e_hi = mid, e_mid
        else:
            lo = mid
    out = plan_epsilon(
        noise_multiplier=hi,
        sampling_rate=sampling_rate,
        rounds=rounds,
        delta=delta,
        mechanism=mechanism,
        accountant=accountant,
        clip=clip,
        scale=scale,
        dim=dim,
    )
    out["target_epsilon"] = target_epsilon
    return out


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("plan")
    def plan(
        noise_multiplier: Optional[float] = typer.Option(
            None, "--noise-multiplier", help="Noise std / L2 sensitivity (give this or --target-epsilon)."
        ),
        target_epsilon: Optional[float] = typer.Option(
            None, "--target-epsilon", help="Find the noise multiplier that meets this epsilon."
        ),
        sampling_rate: float = typer.Option(..., "--sampling-rate", help="Poisson sampling rate q in (0, 1]."),
        rounds: int = typer.Option(..., "--rounds", help="Number of rounds T >= 1."),
        delta: float = typer.Option(..., "--delta", help="Target delta in (0, 1)."),
        mechanism: PlanMechanism = typer.Option(PlanMechanism.gaussian, "--mechanism", help="Noise distribution."),
        accountant: PlanAccountant = typer.Option(PlanAccountant.pld, "--accountant", help="Tight accountant."),
        clip: float = typer.Option(1.0, "--clip", help="Skellam only: L2 clip norm C."),
        scale: float = typer.Option(2.0**16, "--scale", help="Skellam only: encoding scale (ring units per unit)."),
        dim: int = typer.Option(10_000, "--dim", help="Skellam only: model dimension d."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Plan a DP run: epsilon from the noise, or the noise from a target epsilon."""
        if (noise_multiplier is None) == (target_epsilon is None):
            _fail("give exactly one of --noise-multiplier and --target-epsilon")
        if not (math.isfinite(sampling_rate) and 0.0 < sampling_rate <= 1.0):
            _fail(f"--sampling-rate must be in (0, 1], got {sampling_rate}")
        if rounds < 1:
            _fail(f"--rounds must be >= 1, got {rounds}")
        if not (math.isfinite(delta) and 0.0 < delta < 1.0):
            _fail(f"--delta must be in (0, 1), got {delta}")
        if noise_multiplier is not None and not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            _fail(f"--noise-multiplier must be a finite number > 0, got {noise_multiplier}")
        if target_epsilon is not None and not (math.isfinite(target_epsilon) and target_epsilon > 0):
            _fail(f"--target-epsilon must be a finite number > 0, got {target_epsilon}")
        if not (math.isfinite(clip) and clip > 0):
            _fail(f"--clip must be a finite number > 0, got {clip}")
        if not (math.isfinite(scale) and scale > 0):
            _fail(f"--scale must be a finite number > 0, got {scale}")
        if dim < 1:
            _fail(f"--dim must be >= 1, got {dim}")
        common: dict[str, Any] = dict(
            sampling_rate=sampling_rate,
            rounds=rounds,
            delta=delta,
            mechanism=mechanism,
            accountant=accountant,
            clip=clip,
            scale=scale,
            dim=dim,
        )
        try:
            if target_epsilon is not None:
                result = plan_noise_multiplier(target_epsilon=target_epsilon, **common)
            else:
                result = plan_epsilon(noise_multiplier=float(noise_multiplier or 0.0), **common)
        except (PrivacyError, typer.BadParameter) as exc:
            _fail(str(exc))
            return
        if as_json:
            typer.echo(json.dumps(result, sort_keys=True))
            return
        head = (
            f"noise multiplier {result['noise_multiplier']:.4g} meets epsilon <= {target_epsilon:g}"
            if target_epsilon is not None
            else f"noise multiplier {result['noise_multiplier']:g}"
        )
        typer.echo(
            f"{head}\n"
            f"  {mechanism.value}, q = {sampling_rate:g}, T = {rounds}, delta = {delta:g}\n"
            f"  epsilon = {result['epsilon']:.6g}  ({result['engine']}: {result['accountant_version']})\n"
            f"  epsilon (RDP cross-check) = {result['epsilon_rdp']:.6g}"
        )
