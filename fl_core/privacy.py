"""Turn a run's DP options into the round loop's privacy policy and accounting hooks.

:class:`DPPolicy` adapts :mod:`dp.calibration` (noise sizes and round events),
:mod:`dp.noise` (samplers) and :mod:`dp.clipping` to the pipeline's
:class:`~fl_core.pipeline.PrivacyPolicy`; :func:`build_privacy` wires a
:class:`~fl_core.config.RunConfig` into a Federation (policy, accountant, budget, ledger).

Security:
    ``central``: the server adds float-safe Gaussian noise (a discrete Gaussian on a
    power-of-two grid, :func:`dp.noise.add_gaussian_noise`) to the decoded sum.
    ``distributed``: each client adds a Skellam share inside the ring before the secure
    sum; the shares are sized so that ``min_survivors - colluders`` clients alone reach
    the noise multiplier, a round with fewer survivors aborts before release, and each
    round is charged with the survivors' noise (minus colluders) only.
    ``local``: each client adds Gaussian noise for sensitivity 2C to its own update.
    The average divides by a data-independent denominator (the expected cohort), so it
    is post-processing of the noisy sum.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from scipy.stats import binom
from torch import nn

from dp.accountants import ACCOUNTANT_VERSIONS
from dp.adversary import Adversary, epsilon_vs_public, epsilon_vs_server
from dp.calibration import (
    AdaptiveClipConfig,
    DPConfig,
    distributed_noise,
    local_noise_std,
    make_round_event,
    rounding_l2_bound,
    server_noise_std,
)
from dp.client_record import DEFAULT_CLIENT_MAX_EPSILON, client_round_event
from dp.clipping import AdaptiveClip, clip_l2
from dp.events import DPMode, Mechanism, Sampling
from dp.ledger import Ledger
from dp.noise import add_gaussian_noise, discrete_gaussian, skellam
from dp.randomness import RandomSource as DPRandomSource
from fl_core.accounting import LedgerBooks, RunAccounting
from fl_core.client_guard import ClientGuard
from fl_core.config import RunConfig
from fl_core.errors import ConfigError
from fl_core.noise_sizing import (
    MAX_AVERAGE_NOISE,
    calibrate_noise_multiplier,
    default_min_survivors,
    noise_share,
    participation_cap,
    quantile_min_survivors,
)
from fl_core.pipeline import ClipOutcome, NoPrivacy, plan_for
from fl_core.sampling import Cohort, Sampler, SamplingScheme
from secagg import RandomSource

__all__ = ["DPPolicy", "NoiseSizingWarning", "build_privacy", "default_min_survivors"]

_SAMPLING = {
    SamplingScheme.POISSON: Sampling.POISSON,
    SamplingScheme.FIXED_SIZE: Sampling.FIXED_SIZE,
    SamplingScheme.FULL: Sampling.FULL,
}


class NoiseSizingWarning(UserWarning):
    """A DP configuration that runs, at a cost the message states (e.g. clients carrying extra noise)."""


# Conditional rounding: a rounding exceeds the charged norm bound with probability <= this
# (the encoder then rounds again), so about one client in a thousand rounds twice.
ROUNDING_BETA = 2.0**-10
# Headroom for local noise in the encoding: P(|N(0,1)| > 12) < 2^-100 per coordinate.
_LOCAL_TAIL = 12.0


class DPPolicy:
    """Client-level DP for the round loop (central, distributed or local; fixed clip).

    Args:
        config: the :class:`dp.calibration.DPConfig` of the run.
        sampler: how cohorts are drawn.
        dim: model dimension.
        delta: the run's delta.
        dropout: the per-client dropout probability the run plans for (recorded in each
            event with ``min_survivors``: :mod:`dp.accountants.aborts`).
        secure_floor: the fewest inputs the secure sum adds (2 for masking: its clients never
            help unmask one update alone). Central mode releases the noise alone for an empty
            sample only when this is 1; otherwise it is the round's abort rule.

    ``eligible_of(round)``, when set (by :func:`build_privacy`, from the participation cap's
    books), gives how many clients a round's cohorts were drawn from; each event records it.
    """

    eligible_of: Callable[[int], int] | None = None

    def __init__(
        self,
        config: DPConfig,
        *,
        sampler: Sampler,
        dim: int,
        delta: float,
        max_clip_factor: float = 8.0,
        dropout: float = 0.0,
        secure_floor: int = 1,
    ) -> None:
        if config.mode is DPMode.NONE:
            raise ConfigError("DPPolicy needs a DP mode; use NoPrivacy for none", option="dp")
        self.config = config
        self.sampler = sampler
        self.dim = dim
        self._delta = delta
        self.dropout = float(dropout)
        self.secure_floor = max(1, int(secure_floor))
        self._adaptive: AdaptiveClip | None = None
        self._pending_fraction: float | None = None
        if config.adaptive is not None:
            self._adaptive = AdaptiveClip(
                config.clip_norm,
                target_quantile=config.adaptive.target_quantile,
                learning_rate=config.adaptive.learning_rate,
                count_noise_std=config.adaptive.count_noise_std,
                min_clip=config.clip_norm / max_clip_factor,
                max_clip=config.clip_norm * max_clip_factor,
            )
        self._max_clip = config.clip_norm * (max_clip_factor if self._adaptive is not None else 1.0)
        self._min_clip = config.clip_norm / (max_clip_factor if self._adaptive is not None else 1.0)
        self._announced_clip: float | None = None

    # -- PrivacyPolicy -------------------------------------------------------

    @property
    def mode(self) -> str:
        return self.config.mode.value

    @property
    def clip_norm(self) -> float:
        """The clip of the current round (it moves between rounds under adaptive clipping)."""
        if self._announced_clip is not None:
            return self._announced_clip
        return self._adaptive.clip_norm if self._adaptive is not None else self.config.clip_norm

    def use_clip(self, clip_norm: float) -> None:
        """Clip, and size noise, at the round's clip ``clip_norm`` announced by the party that adapts it.

        For a party that does not run the adaptive update itself (a Flower node takes the
        clip the server's ledger charges). Accepted only if it is the configured clip
        (fixed clipping) or within the adaptive clip's bounds, which the encoding is sized for.

        Raises:
            ConfigError: any other clip.
        """
        c = float(clip_norm)
        if not (math.isfinite(c) and self._min_clip <= c <= self._max_clip):
            raise ConfigError(
                f"clip {clip_norm!r} is outside [{self._min_clip}, {self._max_clip}], the clips this run's "
                "encoding is sized for",
                option="clip",
            )
        self._announced_clip = c

    @property
    def delta(self) -> float:
        return self._delta

    @property
    def min_survivors(self) -> int:
        """Distributed: the survivors the clients' noise is sized for; central under Poisson
        sampling with a secure sum that adds one input: 0 (no abort rule, :attr:`releases_empty`);
        otherwise the secure sum's floor (1, or 2 for masking)."""
        if self.config.mode is DPMode.DISTRIBUTED:
            return self.config.survivors_planned
        return 0 if self.releases_empty else self.secure_floor

    @property
    def releases_empty(self) -> bool:
        """Central mode under Poisson sampling: an empty sample, or a cohort nobody survived,
        releases the server's noise alone instead of aborting and being redrawn.

        Security:
            The released value is the Gaussian noise at the round's sigma on a zero sum, through
            the same fixed denominator (the expected cohort) and server optimizer as any round:
            exactly the outcome of the rate-q Poisson subsampled Gaussian mechanism for an empty
            sample, which the accountant charges for every round; with no abort rule the release
            decision never hinges on one client (no abort term, :mod:`dp.accountants.aborts`).
            Distributed and local modes keep their abort rule: the noise is the clients'. So does
            central mode over a secure sum that needs two inputs (masking): releasing the noise
            alone for a cohort of one would let the target, joining another client's singleton
            cohort, turn a noise-alone release into a two-update sum (sensitivity 2C, not the C
            charged); the cohort of one aborts instead and the abort term (m = 2) is charged.
        """
        return (
            self.config.mode is DPMode.CENTRAL
            and self.sampler.scheme is SamplingScheme.POISSON
            and self.secure_floor <= 1
        )

    def clip(self, vec: npt.NDArray[Any]) -> ClipOutcome:
        r = clip_l2(vec, self.clip_norm)
        return ClipOutcome(np.asarray(r.vector, dtype=np.float64), float(r.norm), bool(r.clipped))

    def encoding_bound(self) -> float:
        if self.config.mode is DPMode.LOCAL:
            return self.config.clip_norm + _LOCAL_TAIL * local_noise_std(self.config)
        return self._max_clip

    def encoding_noise_std(self, sampler: Sampler) -> float:
        if self.config.mode is not DPMode.DISTRIBUTED:
            return 0.0
        # Per-client Skellam std in float units; 5% over the unrounded value covers the
        # rounding inflation (checked once the scale is known, in client_integer_noise).
        honest = self.config.survivors_planned - self.config.colluders
        return 1.05 * self.config.update_noise_multiplier * self._max_clip / math.sqrt(honest)

    def local_noise(self, vec: npt.NDArray[np.float64], rng: RandomSource) -> npt.NDArray[np.float64]:
        if self.config.mode is not DPMode.LOCAL:
            return vec
        return add_gaussian_noise(
            vec, local_noise_std(self.config), cast(DPRandomSource, rng), grid_bits=self.config.grid_bits
        ).values

    def client_integer_noise(
        self, dim: int, scale: float, sampler: Sampler, rng: RandomSource
    ) -> npt.NDArray[np.int64] | None:
        if self.config.mode is not DPMode.DISTRIBUTED:
            return None
        extra = self.extra_coordinates
        c = self.clip_norm
        dn = distributed_noise(self.config, scale=scale, dim=dim, clip_norm=c)
        if self.config.resolved_mechanism is Mechanism.DISCRETE_GAUSSIAN:
            sigma = round(math.sqrt(dn.per_client_variance))  # an integer by construction (ceil'd sigma)
            noise = discrete_gaussian(dim - extra, sigma, cast(DPRandomSource, rng))
        else:
            noise = skellam(dim - extra, dn.per_client_variance, cast(DPRandomSource, rng))
        if extra:
            # The centred clip bit is encoded as (b - 1/2) * C, so one count unit is C * scale
            # ring units: the count noise std sigma_b becomes sigma_b * C * scale.
            count = skellam(extra, dn.count_variance_per_client * (c * scale) ** 2, cast(DPRandomSource, rng))
            noise = np.concatenate([noise, count])
        return noise

    def rounding_norm_bound(self, scale: float, dim: int) -> float | None:
        """Distributed mode with ``rounding_beta``: the conditional-rounding bound the accountant
        charges (Kairouz, Liu, Steinke 2021, Thm. 1), which the encoder enforces; else None."""
        beta = self.config.rounding_beta
        if self.config.mode is not DPMode.DISTRIBUTED or beta is None:
            return None
        return rounding_l2_bound(self.clip_norm * scale, dim, conditional_beta=beta)

    def server_release(
        self, total: npt.NDArray[np.float64], sampler: Sampler, rng: RandomSource
    ) -> npt.NDArray[np.float64]:
        if self.config.mode is not DPMode.CENTRAL:
            return total
        c = self.clip_norm
        extra = self.extra_coordinates
        body = total[: total.shape[0] - extra]
        out = add_gaussian_noise(
            body, server_noise_std(self.config, clip_norm=c), cast(DPRandomSource, rng), grid_bits=self.config.grid_bits
        ).values
        if extra:
            count = add_gaussian_noise(
                total[-extra:],
                self.config.count_noise_std * c,
                cast(DPRandomSource, rng.spawn("count")),
                grid_bits=self.config.grid_bits,
            ).values
            out = np.concatenate([out, count])
        return out

    def round_event(
        self,
        *,
        round: int,
        cohort: Cohort,
        survivors: int,
        scale: float,
        dim: int,
        planned: bool,  # noqa: A002
        survivor_ids: tuple[int, ...] | None = None,
    ) -> Any:
        """The round's event, with the cohort's ids and (when known) the survivors' ids.

        A planned event (before the round runs) charges the worst case that can still release
        (``min_survivors`` honest shares) and names no survivors: against the server it is
        charged to every cohort member.
        """
        if planned:
            survivors = (
                min(len(cohort.members), self.config.survivors_planned)
                if self.config.mode is DPMode.DISTRIBUTED
                else len(cohort.members)
            )
        event = make_round_event(
            self.config,
            round=round,
            sampling=_SAMPLING[cohort.scheme],
            sampling_rate=cohort.rate,
            population=cohort.population,
            cohort=len(cohort.members),
            survivors=survivors,
            dim=dim + self.extra_coordinates,
            scale=scale if self.config.mode in (DPMode.DISTRIBUTED, DPMode.CENTRAL) else None,
            clip_norm=self.clip_norm,
        )
        ids = () if planned or survivor_ids is None else tuple(sorted(survivor_ids))
        # The round's abort rule (it releases only with min_survivors survivors) and the pool its
        # cohort was drawn from: under Poisson sampling the accountant charges the chance that the
        # release decision hinged on one client (dp.accountants.aborts). A central Poisson round
        # has none: it records that an empty sample releases the noise alone.
        if self.releases_empty and cohort.scheme is SamplingScheme.POISSON:
            return dataclasses.replace(
                event, cohort_ids=tuple(sorted(cohort.members)), survivor_ids=ids, releases_empty=True
            )
        eligible = self.eligible_of(round) if self.eligible_of is not None else 0
        return dataclasses.replace(
            event,
            cohort_ids=tuple(sorted(cohort.members)),
            survivor_ids=ids,
            min_survivors=self.min_survivors,
            eligible=min(max(eligible, 0), cohort.population),
            dropout=self.dropout,
        )

    # -- checkpoints --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The state that changes between rounds (the adaptive clip), to store in a checkpoint."""
        return {"clip_norm": self._adaptive.clip_norm} if self._adaptive is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned (the policy must be built from the same config)."""
        if self._adaptive is None or "clip_norm" not in state:
            return
        a = self._adaptive
        self._adaptive = AdaptiveClip(
            float(state["clip_norm"]),
            target_quantile=a.target_quantile,
            learning_rate=a.learning_rate,
            count_noise_std=a.count_noise_std,
            min_clip=a._lo,
            max_clip=a._hi,
        )
        self._pending_fraction = None

    # -- adaptive clipping (Andrew et al. 2021) -------------------------------

    @property
    def extra_coordinates(self) -> int:
        return 1 if self._adaptive is not None else 0

    def client_extra(self, clip: ClipOutcome) -> npt.NDArray[np.float64]:
        """The centred bit ``[norm <= C] - 1/2``, scaled by C (sensitivity 1/2 of a count unit)."""
        if self._adaptive is None:
            return np.zeros(0)
        bit = 1.0 if clip.norm <= self.clip_norm else 0.0
        return np.asarray([(bit - 0.5) * self.clip_norm])

    def observe_extra(self, values: npt.NDArray[np.float64]) -> None:
        if self._adaptive is None:
            return
        centred_count = float(values[0]) / self.clip_norm
        expected = max(self.sampler.expected_cohort(), 1.0)
        self._pending_fraction = centred_count / expected + 0.5

    def after_round(self, clipped_fraction_estimate: float) -> None:
        """Apply the pending clip update once the round has been committed."""
        if self._adaptive is not None and self._pending_fraction is not None:
            self._adaptive.update(self._pending_fraction)
        self._pending_fraction = None

    def check_inflation(self, scale: float, *, max_inflation: float = 0.05) -> float:
        """The rounding inflation of the sensitivity at ``scale``; a typed error above ``max_inflation``."""
        if self.config.mode is not DPMode.DISTRIBUTED:
            return 0.0
        infl = distributed_noise(self.config, scale=scale, dim=self.dim).inflation
        if infl > max_inflation:
            raise ConfigError(
                f"stochastic rounding would inflate the sensitivity by {infl:.1%} at this encoding scale; "
                "raise --bits or lower the cohort size",
                option="bits",
            )
        return infl


def _enforced_adversary(cfg: RunConfig, mode: DPMode) -> Adversary:
    if cfg.budget_against is not None:
        against = Adversary(cfg.budget_against)
    else:
        against = Adversary.PUBLIC if mode is DPMode.CENTRAL else Adversary.SERVER
    if mode is DPMode.CENTRAL and against is Adversary.SERVER:
        raise ConfigError(
            "--budget-against server cannot hold in central mode: the server sees the exact sum, so epsilon "
            "against it is unbounded. Use --dp distributed (clients noise inside the secure sum), or "
            "--budget-against public",
            option="budget_against",
        )
    return against


def _client_limit(cfg: RunConfig, mode: DPMode) -> float | None:
    """Each in-process client's own limit (None: no guard, central mode)."""
    if mode is DPMode.CENTRAL:
        if cfg.client_max_epsilon is not None and math.isfinite(cfg.client_max_epsilon):
            raise ConfigError(
                "--client-max-epsilon cannot hold in central mode: each client's update reaches the server "
                "un-noised. Use --dp distributed or --dp local for a limit the clients enforce themselves",
                option="client_max_epsilon",
            )
        return None
    return cfg.client_max_epsilon if cfg.client_max_epsilon is not None else DEFAULT_CLIENT_MAX_EPSILON


def build_privacy(
    cfg: RunConfig,
    sampler: Sampler,
    model: nn.Module,
    *,
    open_ledger: bool = True,
    run_description: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (Federation keyword arguments, extra summary fields) for ``cfg``'s DP mode.

    The noise multiplier is ``cfg.noise_multiplier`` when given. Otherwise it is
    calibrated: for ``cfg.target_epsilon`` against the enforced adversary, or, without a
    target, for the clients' own limit against the server (distributed and local modes;
    central mode falls back to 1.0). Against the server the calibration also fixes a
    participation cap (:func:`fl_core.noise_sizing.participation_cap`) that the round
    loop enforces by leaving capped clients out of later cohorts. Every route that
    builds a run from a :class:`RunConfig` (CLI, user objects, Flower) goes through here.

    ``open_ledger=False`` is for parties that never charge rounds (e.g. a client node of a
    networked run): no ledger file is opened or created, and no in-process client guard
    is installed (a node keeps its own record). ``run_description``: what the run
    actually is (:func:`fl_core.provenance.describe_run`), written as the header of a new
    ledger; without it the header holds ``cfg``'s options.

    Raises:
        ConfigError: an inconsistent or unusable configuration; the message names the fix.
    """
    if cfg.dp == "none":
        return {"privacy": NoPrivacy(clip_norm=cfg.clip if cfg.clip is not None else 10.0)}, {}
    from fl_core.params import ParamCodec

    dim = ParamCodec(model, buffers=cfg.buffers).dim  # type: ignore[arg-type]
    mode = DPMode(cfg.dp)
    enforced = _enforced_adversary(cfg, mode)
    client_limit = _client_limit(cfg, mode)
    if cfg.noise_multiplier is not None and cfg.noise_multiplier <= 0:
        raise ConfigError("--noise-multiplier must be > 0 with DP on", option="noise_multiplier")
    expected = max(1, int(round(sampler.expected_cohort())))
    min_surv = (
        cfg.min_survivors
        if cfg.min_survivors is not None
        else default_min_survivors(sampler, cfg.dropout, rounds=cfg.rounds, delta=cfg.delta)
    )
    if mode is DPMode.DISTRIBUTED and min_surv - cfg.colluders < 1:
        raise ConfigError(
            f"with {min_surv} planned survivors and {cfg.colluders} colluders no honest noise is guaranteed; "
            "raise the cohort size or lower --colluders",
            option="colluders",
        )
    if cfg.adaptive_clip and mode is DPMode.LOCAL:
        raise ConfigError(
            "--adaptive-clip needs an aggregate count: not available with --dp local", option="adaptive_clip"
        )
    extra_coords = 1 if cfg.adaptive_clip else 0

    def build(z: float) -> tuple[DPConfig, DPPolicy, float]:
        adaptive = None
        if cfg.adaptive_clip:
            sigma_b = cfg.count_noise_std if cfg.count_noise_std is not None else max(expected / 20.0, 0.5 * z + 1e-3)
            adaptive = AdaptiveClipConfig(
                count_noise_std=sigma_b, target_quantile=cfg.target_quantile, learning_rate=cfg.clip_lr
            )
        try:
            config = DPConfig(
                mode=mode,
                noise_multiplier=z,
                clip_norm=cfg.clip if cfg.clip is not None else 1.0,
                expected_cohort=max(expected, min_surv),
                min_survivors=min_surv,
                colluders=cfg.colluders,
                adaptive=adaptive,
                mechanism=Mechanism(cfg.mechanism) if mode is DPMode.DISTRIBUTED else None,
                # Distributed: the encoder rounds conditionally and the accountant charges the
                # tighter bound (Kairouz, Liu, Steinke 2021), so narrow rings lose ~0.4%, not ~15%.
                rounding_beta=ROUNDING_BETA if mode is DPMode.DISTRIBUTED else None,
            )
        except Exception as exc:
            raise ConfigError(f"invalid DP configuration: {exc}", option="dp") from exc
        policy = DPPolicy(config, sampler=sampler, dim=dim, delta=cfg.delta, dropout=cfg.dropout,
                          secure_floor=2 if cfg.secure_sum == "masking" else 1)
        return config, policy, plan_for(policy, sampler, dim, cfg.bits).scale

    cap = cfg.max_participation
    calibration: dict[str, Any] = {"source": "given"}
    if cfg.noise_multiplier is not None:
        z = float(cfg.noise_multiplier)
    else:
        target, on = cfg.target_epsilon, enforced
        if target is None and client_limit is not None and math.isfinite(client_limit):
            target, on = client_limit, Adversary.SERVER  # the clients' own limit sizes the noise
        if target is None:
            z = 1.0
            calibration = {"source": "default"}
        elif on is Adversary.SERVER:
            k = cap if cap is not None else participation_cap(sampler.population, sampler.rate, cfg.rounds)

            limit = client_limit if client_limit is not None else math.inf

            def views(zz: float) -> tuple[float, float]:
                # The server's books: a client that joins k rounds, k - 1 typical ones (the expected
                # cohort survives) and a last one admitted on the worst case (min_survivors).
                # The client's own record: k rounds, each charged at its floor's worst case.
                config, policy, scale = build(zz)
                worst = client_round_event(config, round=1, dim=dim + extra_coords, scale=scale)
                typical_cohort = Cohort(
                    tuple(range(1, expected + 1)), sampler.scheme, sampler.rate, sampler.population
                )
                typical = policy.round_event(
                    round=1, cohort=typical_cohort, survivors=expected, scale=scale, dim=dim, planned=False
                )
                typical = dataclasses.replace(typical, cohort_ids=(), survivor_ids=())
                books = epsilon_vs_server([typical] * (k - 1) + [worst], cfg.delta)
                own = epsilon_vs_server([worst] * k, cfg.delta) if math.isfinite(limit) else 0.0
                return books, own

            def eps_server(zz: float) -> float:
                books, own = views(zz)
                return target * max(books / target, own / limit)  # both within their bound iff <= target

            z, _ = calibrate_noise_multiplier(eps_server, target)
            predicted = views(z)[0]
            cap = k
            calibration = {"source": "calibrated", "against": "server", "target_epsilon": target,
                           "predicted_epsilon": predicted, "participation_cap": k}
        else:

            def eps_public(zz: float) -> float:
                # rounds - 1 rounds with the 5 % quantile of the survivors (few rounds carry less noise)
                # and a last one admitted on its worst case (min_survivors), each with the run's abort
                # rule, so the abort term's share of delta is paid for (dp.accountants.aborts). Every
                # round at its worst case would oversize distributed noise once min_survivors sits
                # well below the quantile, as the abort term's default puts it.
                _config, policy, scale = build(zz)
                cohort = Cohort(tuple(range(1, expected + 1)), sampler.scheme, sampler.rate, sampler.population)
                low = min(expected, max(min_surv, quantile_min_survivors(sampler, cfg.dropout)))
                events = [
                    policy.round_event(round=r, cohort=cohort, survivors=low, scale=scale, dim=dim,
                                       planned=r == cfg.rounds)
                    for r in range(1, cfg.rounds + 1)
                ]
                return epsilon_vs_public(events, cfg.delta)

            z, predicted = calibrate_noise_multiplier(eps_public, target)
            calibration = {"source": "calibrated", "against": "public", "target_epsilon": target,
                           "predicted_epsilon": predicted}
    config, policy, scale = build(z)
    warnings_out: list[str] = []
    share = noise_share(mode.value, noise_multiplier=z, expected=expected, min_survivors=min_surv,
                        colluders=cfg.colluders)
    message = share.overhead_message()
    if message is not None:
        warnings_out.append(message)
    if open_ledger and calibration["source"] == "calibrated" and share.average_noise > MAX_AVERAGE_NOISE:
        raise ConfigError(
            f"the noise that meets epsilon <= {calibration['target_epsilon']:g} against "
            f"{'the server' if calibration['against'] == 'server' else 'model users'} (noise multiplier {z:.3g}"
            + (f", each client in at most {cap} rounds" if calibration["against"] == "server" else "")
            + f") would leave noise of {share.average_noise:.3g} x the clip per coordinate on each round's "
            f"average of about {expected} updates (above {MAX_AVERAGE_NOISE}): this federation is too small for "
            "that guarantee and the model would not learn. Fix: more clients per round (--clients, "
            "--sampling-rate, --per-round), fewer --rounds, a larger --target-epsilon or --client-max-epsilon, "
            "or choose --noise-multiplier yourself (clients are then left out once they reach their limit)",
            option="noise_multiplier" if cfg.target_epsilon is None else "target_epsilon",
        )
    guard = None
    if client_limit is not None and open_ledger:
        guard = ClientGuard(
            config,
            dim=dim + extra_coords,
            scale=scale,
            delta=cfg.delta,
            max_epsilon=client_limit,
            clip_norm=lambda: policy.clip_norm,
        )
    if client_limit is not None and math.isfinite(client_limit):
        probe = guard or ClientGuard(config, dim=dim + extra_coords, scale=scale, delta=cfg.delta,
                                     max_epsilon=client_limit)
        within = probe.rounds_within_limit(cap=cfg.rounds + 1)
        if within == 0:
            raise ConfigError(
                f"at noise multiplier {z:g} one round already takes a client past its own limit "
                f"(epsilon <= {client_limit:g} against the server): every client would refuse. Raise "
                "--noise-multiplier (or drop it: privagg then sizes the noise for the limit), or raise "
                "--client-max-epsilon",
                option="noise_multiplier",
            )
        if within <= cfg.rounds:
            cap = within if cap is None else min(cap, within)
    if cap is not None and sampler.rate < 1.0:
        joins = cfg.rounds * sampler.rate
        last = sampler.population * sampler.rate * float(binom.cdf(cap - 1, max(cfg.rounds - 1, 1), sampler.rate))
        if joins > cap and last < min_surv:
            warnings_out.append(
                f"each client may join at most {cap} rounds (its limit), but the plan has it join "
                f"{joins:.1f} on average: cohorts shrink to about {last:.0f} by the last round, below "
                f"min-survivors {min_surv}, and such rounds abort. Fix: drop --noise-multiplier (privagg then "
                "sizes the noise for the limit), fewer --rounds, more --clients, or --client-max-epsilon"
            )
    accountant = "pld"
    accounting = RunAccounting(
        delta=cfg.delta,
        enforced=enforced,
        target=cfg.target_epsilon,
        accountant=accountant,
        cap=cap,
        min_cohort=policy.min_survivors,
        planned=lambda r, cohort: policy.round_event(
            round=r, cohort=cohort, survivors=len(cohort.members), scale=scale, dim=dim, planned=True
        ),
    )
    policy.eligible_of = accounting.eligible_of
    ledger = None
    books = None
    ledger_path = Path(cfg.ledger) if cfg.ledger is not None else _default_ledger_path()
    if open_ledger:
        ledger_path.parent.mkdir(parents=True, exist_ok=True)
        ledger = Ledger.open(
            ledger_path,
            create_meta=_json_safe(
                dict(run_description)
                if run_description is not None
                else {k: v for k, v in cfg.to_dict().items() if k != "ledger"}
            ),
            accountant=accountant,
            accountant_version=ACCOUNTANT_VERSIONS.get(accountant, ""),
        )
        accounting.resume(ledger.events)
        books = LedgerBooks(ledger, accounting)
    for w in warnings_out:
        warnings.warn(w, NoiseSizingWarning, stacklevel=2)
    extra = {
        "adaptive_clip": config.adaptive is not None,
        "mechanism": config.resolved_mechanism.value,
        "ledger": str(ledger_path) if ledger is not None else None,
        "noise_multiplier": z,
        "noise_calibration": calibration,
        "noise_share": share.to_dict(),
        "clip": config.clip_norm,
        # Central mode releases with any number of survivors (0 under Poisson: the noise alone).
        "min_survivors": policy.min_survivors if mode is DPMode.CENTRAL else min_surv,
        "accountant": accountant,
        "epsilon_enforced_on": enforced.value,
        "participation_cap": cap,
        "warnings": warnings_out,
    }
    kwargs: dict[str, Any] = {
        "privacy": policy,
        "epsilon_fn": accounting.epsilon,
        "budget": accounting,
        "ledger": books,
        "admit": accounting.admit,
        "client_guard": guard,
    }
    return kwargs, extra


def _json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with infinite floats written as the string ``"inf"`` (canonical JSON has no Infinity)."""
    return {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in meta.items()}


def _default_ledger_path() -> Path:
    import os
    import time

    return Path("privagg-runs") / f"ledger-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}.jsonl"
