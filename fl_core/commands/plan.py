"""``privagg plan``: epsilon for a noise multiplier, or the noise multiplier for a target epsilon, per adversary.

Both numbers of a run are planned: against model users (amplified by the Poisson
sampling at rate q over the T rounds) and against the server (no amplification: the
rounds one client joins, composed; at most ``--max-participation`` of them, by default
the participation cap for ``--clients`` or, without it, every round). A target is met
against ``--against`` (default: the server for ``skellam``, the distributed mode; model
users for ``gaussian``, the central mode, where epsilon against the server is unbounded).
With ``--clients`` the plan also shows each client's noise share
(:mod:`fl_core.noise_sizing`), and epsilon against model users pays for the run's abort
rule (a Poisson round releases only with ``min_survivors`` survivors and is redrawn
otherwise: :mod:`dp.accountants.aborts`); without ``--clients`` it is planned for rounds
without an abort rule and says so (``epsilon_vs_public_assumes``). Central mode
(``gaussian``) has no abort rule under Poisson sampling: an empty sample releases the
noise alone, so its rounds are planned as plain subsampled Gaussian rounds.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any, Optional

import typer

from dp.accountants import ACCOUNTANT_VERSIONS, account
from dp.adversary import capped_by_server, epsilon_vs_server, public_unbounded_reason
from dp.errors import PrivacyError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling

__all__ = ["plan_epsilon", "plan_noise_multiplier", "register"]


class PlanMechanism(str, Enum):
    gaussian = "gaussian"
    skellam = "skellam"


class PlanAccountant(str, Enum):
    pld = "pld"
    rdp = "rdp"


class PlanAdversary(str, Enum):
    server = "server"
    public = "public"


def default_adversary(mechanism: PlanMechanism) -> PlanAdversary:
    """As ``privagg run``: the server for distributed noise (skellam), model users for central (gaussian)."""
    return PlanAdversary.server if mechanism is PlanMechanism.skellam else PlanAdversary.public


def _events(
    *, z: float, q: float, rounds: int, mechanism: PlanMechanism, clip: float, scale: float, dim: int,
    population: int | None = None, min_survivors: int = 0,
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
        population=population or 1,
        cohort=1,
        survivors=1,
        dim=dim,
        # The run's abort rule (dp.accountants.aborts): central mode has none under Poisson sampling
        # (an empty sample releases the noise alone); distributed releases with min_survivors.
        min_survivors=min_survivors if (population and mechanism is PlanMechanism.skellam) else 0,
        releases_empty=mechanism is PlanMechanism.gaussian and sampling is Sampling.POISSON,
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
    participation: int | None = None,
    against: PlanAdversary | None = None,
    population: int | None = None,
    min_survivors: int = 0,
) -> dict[str, Any]:
    """Epsilon of ``rounds`` identical Poisson-sampled rounds, against model users and against the server.

    ``epsilon_vs_public``: the tight accountant over all rounds, amplified by sampling
    (``epsilon_rdp``: the RDP cross-check). ``epsilon_vs_server``: ``participation``
    rounds (default: all) composed without amplification (central mode, gaussian:
    unbounded, ``None``). ``epsilon`` is the one against ``against`` (default:
    :func:`default_adversary`). With ``population`` (the run's clients) and ``min_survivors``
    the rounds carry privagg's abort rule and ``epsilon_vs_public`` pays for it (``math.inf``
    with ``epsilon_vs_public_reason`` when the abort term alone spends delta).
    """
    evs = _events(
        z=noise_multiplier, q=sampling_rate, rounds=rounds, mechanism=mechanism, clip=clip, scale=scale, dim=dim,
        population=population, min_survivors=min_survivors,
    )
    tight = account(evs, delta, accountant=accountant.value)
    rdp = account(evs, delta, accountant="rdp")
    k = rounds if participation is None else min(participation, rounds)
    adversary = against if against is not None else default_adversary(mechanism)
    if mechanism is PlanMechanism.gaussian:
        # The plan's Gaussian is the central mode: the server holds the exact sum.
        server = None
        server_as_distributed = epsilon_vs_server(evs[:k], delta)
    else:
        server = epsilon_vs_server(evs[:k], delta)
        server_as_distributed = server
    if adversary is PlanAdversary.server and server is None:
        raise typer.BadParameter(
            "the gaussian mechanism plans central mode, where epsilon against the server is unbounded; "
            "use --mechanism skellam (distributed) or --against public",
            param_hint="--against",
        )
    # Capped by the server's number only where nobody's participation hides behind an abort rule.
    public = min(tight.epsilon, server_as_distributed) if capped_by_server(evs) else tight.epsilon
    out: dict[str, Any] = {
        "epsilon": server if adversary is PlanAdversary.server else public,
        "epsilon_enforced_on": adversary.value,
        "epsilon_vs_public": public,
        "epsilon_vs_server": server,
        "epsilon_vs_server_rounds": k,
        "epsilon_vs_server_if_noised_by_clients": None if server is not None else server_as_distributed,
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
    if population is None and sampling_rate < 1.0 and mechanism is PlanMechanism.skellam:
        out["epsilon_vs_public_assumes"] = (
            "rounds without an abort rule; privagg's Poisson rounds release only with min-survivors survivors and "
            "pay for it against model users (give --clients to plan that)"
        )
    reason = public_unbounded_reason(evs, delta) if math.isinf(public) else None
    if reason is not None:
        out["epsilon_vs_public_reason"] = reason
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
    participation: int | None = None,
    against: PlanAdversary | None = None,
    population: int | None = None,
    min_survivors: int = 0,
) -> dict[str, Any]:
    """Smallest noise multiplier (to ``rel_tol``) whose epsilon against ``against`` is <= ``target_epsilon``.

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
                participation=participation,
                against=against,
                population=population,
                min_survivors=min_survivors,
            )["epsilon"]
        )

    hi = 1.0
    e_hi = eps(hi)
    if math.isinf(e_hi):
        why = plan_epsilon(
            noise_multiplier=hi, sampling_rate=sampling_rate, rounds=rounds, delta=delta, mechanism=mechanism,
            accountant=accountant, clip=clip, scale=scale, dim=dim, participation=participation, against=against,
            population=population, min_survivors=min_survivors,
        ).get("epsilon_vs_public_reason")
        if why is not None:  # no noise helps: the abort term alone spends delta
            raise typer.BadParameter(why, param_hint="--target-epsilon")
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
        participation=participation,
        against=against,
        population=population,
        min_survivors=min_survivors,
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
        against: Optional[PlanAdversary] = typer.Option(
            None, "--against", help="Adversary the target holds against [server for skellam, public for gaussian]."
        ),
        clients: Optional[int] = typer.Option(
            None, "--clients", help="Population N: adds the participation cap and each client's noise share."
        ),
        max_participation: Optional[int] = typer.Option(
            None, "--max-participation", help="Rounds one client may join [the cap for --clients, else all]."
        ),
        min_survivors: Optional[int] = typer.Option(
            None, "--min-survivors", help="With --clients: survivors the noise is sized for [5% cohort quantile]."
        ),
        colluders: int = typer.Option(0, "--colluders", help="With --clients: clients colluding with the server."),
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
        if clients is not None and clients < 1:
            _fail(f"--clients must be >= 1, got {clients}")
        if max_participation is not None and max_participation < 1:
            _fail(f"--max-participation must be >= 1, got {max_participation}")
        participation = max_participation
        share: dict[str, Any] | None = None
        if clients is not None:
            from fl_core.noise_sizing import default_min_survivors, participation_cap
            from fl_core.sampling import Sampler

            sampler = Sampler.poisson(clients, sampling_rate) if sampling_rate < 1.0 else Sampler.full(clients)
            if participation is None:
                participation = participation_cap(clients, sampling_rate, rounds)
            if mechanism is PlanMechanism.gaussian and sampling_rate < 1.0:
                m = 0  # central mode under Poisson sampling: no minimum (an empty sample releases the noise alone)
            else:
                m = (
                    min_survivors
                    if min_survivors is not None
                    else default_min_survivors(sampler, rounds=rounds, delta=delta)
                )
            share = {"clients": clients, "min_survivors": m, "colluders": colluders}
        common: dict[str, Any] = dict(
            sampling_rate=sampling_rate,
            rounds=rounds,
            delta=delta,
            mechanism=mechanism,
            accountant=accountant,
            clip=clip,
            scale=scale,
            dim=dim,
            participation=participation,
            against=against,
            population=clients,
            min_survivors=int(share["min_survivors"]) if share is not None else 0,
        )
        try:
            if target_epsilon is not None:
                result = plan_noise_multiplier(target_epsilon=target_epsilon, **common)
            else:
                result = plan_epsilon(noise_multiplier=float(noise_multiplier or 0.0), **common)
        except (PrivacyError, typer.BadParameter) as exc:
            _fail(str(exc))
            return
        if share is not None:
            from fl_core.noise_sizing import noise_share

            ns = noise_share(
                "distributed" if mechanism is PlanMechanism.skellam else "central",
                noise_multiplier=float(result["noise_multiplier"]),
                expected=int(share["clients"]) * sampling_rate,
                min_survivors=int(share["min_survivors"]),
                colluders=colluders,
            )
            result["noise_share"] = ns.to_dict()
            result["participation_cap"] = participation
            warning = ns.overhead_message()
            if warning:
                result["warnings"] = [warning]
        if as_json:
            # JSON has no infinity: an unbounded epsilon is null, with its reason beside it.
            for key in ("epsilon", "epsilon_vs_public", "epsilon_rdp"):
                if isinstance(result.get(key), float) and math.isinf(result[key]):
                    result[key] = None
            typer.echo(json.dumps(result, sort_keys=True))
            return
        head = (
            f"noise multiplier {result['noise_multiplier']:.4g} meets epsilon <= {target_epsilon:g}"
            if target_epsilon is not None
            else f"noise multiplier {result['noise_multiplier']:g}"
        )
        server = result["epsilon_vs_server"]
        lines = [
            head,
            f"  {mechanism.value}, q = {sampling_rate:g}, T = {rounds}, delta = {delta:g}",
            "  epsilon against the server = "
            + (
                f"{server:.6g}  (a client in {result['epsilon_vs_server_rounds']} rounds, no amplification)"
                if server is not None
                else "unbounded (central mode: the server sees the exact sum)"
            ),
            f"  epsilon against model users = {result['epsilon_vs_public']:.6g}  "
            f"({result['engine']}: {result['accountant_version']})",
            f"  epsilon against model users (RDP cross-check) = {result['epsilon_rdp']:.6g}",
            f"  epsilon = {result['epsilon']:.6g}  (against the {result['epsilon_enforced_on']})",
        ]
        for key in ("epsilon_vs_public_reason", "epsilon_vs_public_assumes"):
            if key in result:
                lines.append(f"  note (against model users): {result[key]}")
        if "noise_share" in result:
            ns = result["noise_share"]
            lines.append(
                f"  each client adds {ns['per_client_share']:.3g} of a round's noise (min-survivors "
                f"{ns['min_survivors']}); a typical round carries {ns['noise_overhead']:.3g}x the noise std it "
                f"needs; noise on the average update: {ns['average_noise']:.3g} x clip per coordinate"
            )
            lines += [f"  warning: {w}" for w in result.get("warnings", [])]
        typer.echo("\n".join(lines))
