"""Noise calibration: the smallest noise multiplier whose accounted epsilon meets a target.

Client-level modes are calibrated by the round loop itself: :func:`calibrate_noise`
builds the run with a target and no noise multiplier, and
:func:`fl_core.privacy.build_privacy` bisects on the events the round loop will
charge (against model users: the planned rounds at their worst case, ``min_survivors``
honest shares; against the server: a participation cap and the rounds one client
joins), so the predicted epsilon is computed exactly as the run will charge it. This
covers the Skellam scale and rounding inflation of the distributed mode and the
adaptive clip's count query. :func:`bisect_noise` is the bisection both use; it is
monotone because more noise never costs more epsilon.

Record mode (Opacus DP-SGD inside each client, :mod:`fl_core.record_dp`) is
calibrated by :func:`calibrate_record_noise` on Opacus' own accountant instead:
see its docstring for how a client's number of local steps is bounded.

Security:
    Assumption: the events the calibration composes are the ones the round loop
    records (it builds them with the round loop's own policy); the run's own
    ledger epsilon is reported beside the prediction. Guarantee: with the
    calibrated noise the planned worst case meets the target; a run's budget
    (when one is enforced) refuses any round that would not, before it runs.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fl_core.config import RunConfig
from fl_core.errors import ConfigError

__all__ = [
    "RECORD_FAIL_PROB",
    "Calibration",
    "bisect_noise",
    "calibrate_noise",
    "calibrate_record_noise",
    "cohort_schedule",
    "participation_bound",
    "predicted_epsilon",
    "record_epsilon",
    "record_mechanism",
    "record_steps",
]

_Z_LO, _Z_HI = 0.05, 1e4

#: Record mode without a seeded schedule: the chance, over the client sampling, that any
#: client takes part in more rounds than the calibration assumed (union bound over clients).
RECORD_FAIL_PROB = 1e-3


@dataclass(frozen=True, slots=True)
class Calibration:
    """The result of calibrating one cell.

    Attributes:
        noise_multiplier: the chosen noise std / clip.
        predicted_epsilon: the accountant's epsilon for the run with that noise.
        target_epsilon: what was asked for.
        accountant: accountant name.
        source: ``"policy"`` (the round loop's own events), ``"gaussian"`` (built here) or
            ``"opacus-record"`` (record mode: DP-SGD inside each client, Opacus' accountant).
        details: how a record-mode calibration was made (participation rule, steps, versions);
            empty for the client-level modes.
    """

    noise_multiplier: float
    predicted_epsilon: float
    target_epsilon: float
    accountant: str
    source: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "noise_multiplier": self.noise_multiplier,
            "predicted_epsilon": self.predicted_epsilon,
            "target_epsilon": self.target_epsilon,
            "accountant": self.accountant,
            "source": self.source,
        }
        if self.details:
            out["details"] = dict(self.details)
        return out


def bisect_noise(
    epsilon_of: Callable[[float], float], target: float, *, rel_tol: float = 1e-3, max_iter: int = 60
) -> tuple[float, float]:
    """Smallest noise multiplier z (to ``rel_tol``) with ``epsilon_of(z) <= target``.

    ``epsilon_of`` must be non-increasing in z. The bracket grows by doubling from
    z = 1 (never below 0.05, where accountants get slow and epsilon is useless,
    nor above 1e4), then shrinks geometrically. Returns ``(z, epsilon_of(z))``.

    Raises:
        ConfigError: the target is not reachable with z <= 1e4.
    """
    if not (target > 0 and math.isfinite(target)):
        raise ConfigError(f"target epsilon must be a positive number, got {target}", option="epsilons")
    z = 1.0
    e = epsilon_of(z)
    if e <= target:
        hi, eps_hi, lo = z, e, z / 2
        while True:
            lo = max(lo, _Z_LO)  # the last step down lands exactly on the floor
            e = epsilon_of(lo)
            if e > target:
                break  # the answer is in (lo, hi]: bisect below
            if lo <= _Z_LO:
                return lo, e  # the floor itself meets the target
            hi, eps_hi, lo = lo, e, lo / 2
    else:
        lo, hi = z, 2 * z
        while True:
            if lo >= _Z_HI:
                raise ConfigError(
                    f"target epsilon {target} is not reachable even with noise multiplier {_Z_HI}; "
                    "raise the target or use fewer rounds",
                    option="epsilons",
                )
            hi = min(hi, _Z_HI)
            eps_hi = epsilon_of(hi)
            if eps_hi <= target:
                break
            lo, hi = hi, 2 * hi
    for _ in range(max_iter):
        if hi / lo <= 1.0 + rel_tol:
            break
        mid = math.sqrt(lo * hi)
        e = epsilon_of(mid)
        if e <= target:
            hi, eps_hi = mid, e
        else:
            lo = mid
    return hi, eps_hi


def _gaussian_events(cfg: RunConfig, z: float) -> list[Any]:
    """Gaussian events for ``cfg`` (the accountant applies the mode's rules, e.g. no amplification for local)."""
    from dp.events import DPMode, Mechanism, RoundEvent, Sampling

    n = cfg.clients
    if cfg.sampling_rate is not None and cfg.sampling_rate < 1.0:
        sampling, q, k = Sampling.POISSON, cfg.sampling_rate, max(1, round(cfg.sampling_rate * n))
    elif cfg.per_round is not None and cfg.per_round < n:
        sampling, q, k = Sampling.FIXED_SIZE, cfg.per_round / n, cfg.per_round
    else:
        sampling, q, k = Sampling.FULL, 1.0, n
    clip = cfg.clip if cfg.clip is not None else 1.0
    mode = {"local": DPMode.LOCAL, "distributed": DPMode.DISTRIBUTED}.get(cfg.dp, DPMode.CENTRAL)
    return [
        RoundEvent(
            round=r,
            mode=mode,
            mechanism=Mechanism.GAUSSIAN,
            l2_sensitivity=clip,
            noise_variance=(z * clip) ** 2,
            clip_norm=clip,
            sampling=sampling,
            sampling_rate=q,
            population=n,
            cohort=k,
            survivors=k,
        )
        for r in range(1, cfg.rounds + 1)
    ]


def predicted_epsilon(events: list[Any], delta: float, accountant: str) -> float:
    from dp.accountants import compute_epsilon

    return float(compute_epsilon(events, delta, accountant=accountant))


def calibrate_noise(
    cfg: RunConfig,
    target_epsilon: float,
    *,
    data: Any,
    accountant: str = "pld",
    rel_tol: float = 1e-3,
    against: str | None = None,
) -> Calibration:
    """Calibrate ``cfg``'s noise multiplier so the run's accounted epsilon is at most ``target_epsilon``.

    The calibration is the round loop's own (:func:`fl_core.privacy.build_privacy` with a
    target and no noise multiplier): against model users it composes the planned rounds
    (each at its worst case, ``min_survivors`` honest shares) with the run's PLD
    accountant; against the server it fixes a participation cap k and meets the target
    for a client that joins k rounds (:mod:`fl_core.noise_sizing`). ``details`` records
    the adversary and the cap.

    Args:
        cfg: the run (its ``dp`` mode, sampling, rounds, clip, delta are used).
        target_epsilon: the epsilon to meet at ``cfg.delta``.
        data: the run's :class:`~fl_core.data.FederatedData` (to build the run's policy).
        accountant: recorded with the result (the round loop accounts model users with ``pld``).
        rel_tol: kept for callers; the round loop's bisection works to 1e-3.
        against: ``"server"`` or ``"public"`` (default: the run's default for its mode).

    Raises:
        ConfigError: ``cfg.dp`` is ``none``, or the target cannot be reached.
    """
    from fl_core.runner import build_federation

    if cfg.dp == "none":
        raise ConfigError("a non-private run has no noise to calibrate", option="dp")
    with tempfile.TemporaryDirectory(prefix="privagg-calibration-") as scratch:
        c = cfg.replace(
            noise_multiplier=None,
            target_epsilon=target_epsilon,
            budget_against=against if against is not None else cfg.budget_against,
            secure_sum="plain",
            ledger=str(Path(scratch) / "ledger.jsonl"),
        )
        fed, _data, extra = build_federation(c, data)
        fed.close()
    cal = extra["noise_calibration"]
    details = {"against": cal["against"], "participation_cap": cal.get("participation_cap")}
    return Calibration(
        float(extra["noise_multiplier"]),
        float(cal["predicted_epsilon"]),
        target_epsilon,
        accountant if cal["against"] == "public" else "server: exact Gaussian DP / RDP, per client",
        "policy",
        details,
    )


# -- record mode: Opacus DP-SGD inside each client ---------------------------------


def participation_bound(clients: int, rate: float, rounds: int, *, fail_prob: float = RECORD_FAIL_PROB) -> int:
    """k*: the smallest k with ``clients * P[Binomial(rounds, rate) > k] <= fail_prob``.

    A client's number of participations is Binomial(R, q), both under Poisson sampling at
    rate q and under fixed-size cohorts of K = qN clients (each round includes a given
    client with probability K/N, independently of the other rounds). By the union bound
    over the N clients, the chance that *any* client takes part in more than k* rounds is
    at most ``N * P[Bin(R, q) > k*] <= fail_prob``. The tail is summed exactly (log-space
    binomial terms, smallest first); with q = 1 every client takes part in every round.

    Raises:
        ConfigError: ``clients`` or ``rounds`` below 1, ``rate`` outside (0, 1], or
            ``fail_prob`` outside (0, 1).
    """
    if clients < 1:
        raise ConfigError(f"clients must be >= 1, got {clients}", option="clients")
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}", option="rounds")
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"sampling rate must be in (0, 1], got {rate}", option="sampling_rate")
    if not 0.0 < fail_prob < 1.0:
        raise ConfigError(f"fail_prob must be in (0, 1), got {fail_prob}", option="fail_prob")
    if rate == 1.0:
        return rounds
    log_q, log_p = math.log(rate), math.log1p(-rate)
    log_n = math.lgamma(rounds + 1)
    budget = fail_prob / clients
    k, tail = rounds, 0.0  # tail = P[X > k]
    while k > 0:
        log_pmf = log_n - math.lgamma(k + 1) - math.lgamma(rounds - k + 1) + k * log_q + (rounds - k) * log_p
        wider = tail + math.exp(log_pmf)  # P[X > k - 1] = P[X > k] + P[X = k]
        if wider > budget:
            break
        k, tail = k - 1, wider
    return k


def cohort_schedule(cfg: RunConfig) -> list[tuple[int, ...]]:
    """The cohort of every round of the seeded run ``cfg``, computed without running it.

    The round loop draws round r's cohort as ``sampler.sample(rng.spawn(f"sample/{r}"))``
    with ``rng = make_rng(cfg.seed)`` (:meth:`fl_core.federation.Federation.begin_round`);
    a seeded source's children are keyed by (seed, label) alone, so the schedule depends on
    the seed, the sampler and the round number and never on training. The sweep's record
    cells check the cohorts they actually ran against this schedule.

    Raises:
        ConfigError: ``cfg.seed`` is None (cohorts come from the OS CSPRNG: nothing to precompute).
    """
    from fl_core.runner import make_rng, make_sampler

    if cfg.seed is None:
        raise ConfigError(
            "an unseeded run's cohorts are drawn from the OS CSPRNG; no schedule to compute", option="seed"
        )
    rng = make_rng(cfg.seed)
    sampler = make_sampler(cfg)
    return [sampler.sample(rng.spawn(f"sample/{r}")).members for r in range(1, cfg.rounds + 1)]


def record_mechanism(cfg: RunConfig) -> str:
    """The Opacus accountant (``rdp`` or ``prv``) the round loop's RecordDP uses for ``cfg``.

    Built exactly as :func:`fl_core.runner.build_federation` builds it, so a change there
    shows up here (and in the sweep's check that the measured epsilon equals the predicted one).
    """
    from fl_core.record_dp import RecordDPConfig

    z = cfg.record_noise_multiplier if cfg.record_noise_multiplier is not None else 1.0
    return RecordDPConfig(noise_multiplier=z, max_grad_norm=cfg.record_clip, delta=cfg.delta).accountant


def record_steps(size: int, *, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate, DP-SGD steps) of one participation of a client holding ``size`` records.

    Mirrors Opacus' ``make_private`` on the built-in train_fn's loader: sample rate
    ``1 / len(loader)`` with ``len(loader) = ceil(size / batch_size)``, and
    ``int(1 / sample_rate)`` Poisson batches per epoch (Opacus' own float expression).
    """
    batches = -(-size // batch_size)
    q = 1 / batches
    return q, epochs * int(1 / q)


def record_groups(
    sizes: Sequence[int], participations: Sequence[int], *, batch_size: int, epochs: int
) -> list[tuple[float, int]]:
    """The distinct (sample rate, total steps) a client accountant can hold, the largest per rate.

    ``participations[i]`` is how many rounds client ``i + 1`` (holding ``sizes[i]`` records)
    trains in; clients without records or participations are left out. For one sample rate
    more steps never cost less epsilon, so only the largest total is kept per rate.
    """
    most: dict[float, int] = {}
    for n, k in zip(sizes, participations, strict=True):
        if n <= 0 or k <= 0:
            continue
        q, per = record_steps(n, batch_size=batch_size, epochs=epochs)
        most[q] = max(most.get(q, 0), per * k)
    return sorted(most.items())


def record_epsilon(z: float, groups: Sequence[tuple[float, int]], delta: float, mechanism: str) -> float:
    """Max over ``groups`` of Opacus' epsilon for ``steps`` DP-SGD steps at noise ``z`` and rate q.

    This is what :meth:`fl_core.record_dp.RecordDP.epsilon` returns for a client whose
    accountant history is ``[(z, q, steps)]`` (Opacus merges identical consecutive steps).
    """
    from opacus.accountants import create_accountant

    worst = 0.0
    for q, steps in groups:
        acc = create_accountant(mechanism=mechanism)
        acc.history = [(z, q, steps)]
        worst = max(worst, float(acc.get_epsilon(delta=delta)))
    return worst


def calibrate_record_noise(
    cfg: RunConfig,
    target_epsilon: float,
    *,
    sizes: Sequence[int],
    fail_prob: float = RECORD_FAIL_PROB,
    rel_tol: float = 1e-3,
) -> Calibration:
    """The smallest record noise multiplier whose Opacus epsilon meets ``target_epsilon`` for every client.

    A client's record-level epsilon is that of Opacus' accountant (the one
    :func:`record_mechanism` names) after all its local DP-SGD steps: steps per
    participation (:func:`record_steps`, from its number of records, the batch size
    and the local epochs) times its number of participations. Participations are
    random, so the calibration needs a count k for every client:

    * seeded run (``cfg.seed`` set, as in every sweep cell): the cohort schedule is a
      function of the seed alone (:func:`cohort_schedule`), so each client's *exact*
      count of this run is used; the calibrated epsilon is then exactly the largest
      epsilon any client's accountant will report.
    * unseeded run: every client is assumed to take part k* times, k* from
      :func:`participation_bound` (union bound over the N clients, so with probability
      at least ``1 - fail_prob`` no client takes part more often).

    k* is computed and recorded in both cases. The bisection is :func:`bisect_noise`
    on the maximum over clients of Opacus' epsilon.

    Args:
        cfg: the run (sampling, rounds, clients, local epochs, batch size, record clip, delta, seed).
        target_epsilon: record-level epsilon to meet at ``cfg.delta``.
        sizes: records held by each client (``FederatedData.client_sizes``).
        fail_prob: the union bound's failure probability (unseeded runs).
        rel_tol: relative precision of the noise multiplier.

    Security:
        Assumption: Opacus' DP-SGD and accountant (Abadi et al. 2016; Mironov 2017)
        with Poisson sampling of records inside each client; the unit is one record of
        one client (add/remove) at ``cfg.delta``. Guarantee: with the returned noise
        multiplier every client's Opacus epsilon is at most the target (seeded: for
        this run's schedule; unseeded: except with probability ``fail_prob``). The
        client sampling is *not* credited as amplification (a client's epsilon is
        conditional on the rounds it took part in), so this is conservative there.

    Raises:
        ConfigError: ``sizes`` does not have one entry per client, no client holds a
            record, or the target cannot be reached (from :func:`bisect_noise`,
            :func:`participation_bound`).
    """
    import opacus

    from fl_core.runner import make_sampler

    if len(sizes) != cfg.clients:
        raise ConfigError(f"sizes has {len(sizes)} entries for {cfg.clients} clients", option="clients")
    if not any(n > 0 for n in sizes):
        raise ConfigError("no client holds a record: nothing to train with DP-SGD", option="clients")
    sampler = make_sampler(cfg)
    k_star = participation_bound(cfg.clients, sampler.rate, cfg.rounds, fail_prob=fail_prob)
    k_max: int | None = None
    if cfg.seed is not None:
        counts = [0] * cfg.clients
        for members in cohort_schedule(cfg):
            for c in members:
                counts[c - 1] += 1
        k_max = max(n for n, size in zip(counts, sizes, strict=True) if size > 0)
        rule = "exact"
    else:
        counts = [k_star] * cfg.clients
        rule = "union-bound"
    mechanism = record_mechanism(cfg)
    # Empty only if this seeded schedule never samples a client with records: no record is
    # ever used, every epsilon is 0 and the bisection returns its floor.
    groups = record_groups(sizes, counts, batch_size=cfg.batch_size, epochs=cfg.local_epochs)

    def eps(z: float) -> float:
        return record_epsilon(z, groups, cfg.delta, mechanism)

    z, e = bisect_noise(eps, target_epsilon, rel_tol=rel_tol)
    per_participation = sorted(
        {record_steps(n, batch_size=cfg.batch_size, epochs=cfg.local_epochs) for n in sizes if n > 0}
    )
    details = {
        "privacy_unit": "record",
        "opacus_version": opacus.__version__,
        "mechanism": mechanism,
        "record_clip": cfg.record_clip,
        "local_epochs": cfg.local_epochs,
        "batch_size": cfg.batch_size,
        "participation_rule": rule,
        "k_calibrated": k_max if k_max is not None else k_star,
        "k_max": k_max,
        "k_star": k_star,
        "fail_prob": fail_prob,
        "steps_per_participation": [{"sample_rate": q, "steps": s} for q, s in per_participation],
        "max_steps": max((s for _, s in groups), default=0),
    }
    return Calibration(z, e, target_epsilon, f"opacus-{mechanism}", "opacus-record", details)
