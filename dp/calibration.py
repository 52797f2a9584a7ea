"""From a DP configuration to noise parameters and the round's privacy event (central, distributed, local).

The round loop calls these functions; the accountant only ever sees the
:class:`~dp.events.RoundEvent` built here, so this is where the rules "charge
the survivors' noise minus the colluders'" and "charge the rounding
inflation" live.

Security:
    Privacy unit: one client's whole update (client-level DP). ``central``
    trusts the server with the exact sum and adds Gaussian noise of std
    ``z * C`` to it; the sum it noises is of stochastically rounded encodings,
    so the charged sensitivity is ``C + sqrt(d) / scale`` (plus the noise grid's
    snapping): the server cannot add its noise before the clients round, so the
    rounding is charged instead, and the charged noise multiplier is a little
    below ``z`` (0.5-1 % at 20-24 ring bits). ``distributed`` adds Skellam noise shares inside the secure
    sum (Agarwal, Kairouz, Liu 2021), or distributed discrete Gaussian shares
    (Kairouz, Liu, Steinke 2021): the per-client variance is sized so that
    the noise of ``min_survivors - colluders`` honest clients alone gives the
    target noise multiplier with respect to the integer sensitivity, which
    includes the stochastic-rounding inflation ``C * scale + sqrt(d)``
    (each coordinate moves by less than one unit, so the rounded vector is
    within sqrt(d) of the scaled one: deterministic, needs no conditional
    rounding). The conditional-rounding bound of Kairouz, Liu, Steinke 2021
    (Thm. 1 / Sec. 4.1) is offered by :func:`rounding_l2_bound` but is valid
    only if the encoder re-rounds until the norm is within it. ``local`` noises
    each update to stand alone (substitution of one client's data: sensitivity
    2C; no amplification by sampling is claimed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dp.clipping import update_noise_multiplier
from dp.errors import ConfigurationError
from dp.events import DPMode, Mechanism, RoundEvent, Sampling
from dp.noise import DEFAULT_GRID_BITS, gaussian_grid

__all__ = [
    "AdaptiveClipConfig",
    "DPConfig",
    "DistributedNoise",
    "distributed_noise",
    "local_noise_std",
    "make_round_event",
    "min_scale_for_inflation",
    "rounding_l2_bound",
    "server_noise_std",
]

_DEFAULT_MECHANISM = {
    DPMode.NONE: Mechanism.NONE,
    DPMode.CENTRAL: Mechanism.GAUSSIAN,
    DPMode.DISTRIBUTED: Mechanism.SKELLAM,
    DPMode.LOCAL: Mechanism.GAUSSIAN,
}
_ALLOWED = {
    DPMode.NONE: {Mechanism.NONE},
    DPMode.CENTRAL: {Mechanism.GAUSSIAN},
    DPMode.DISTRIBUTED: {Mechanism.SKELLAM, Mechanism.DISCRETE_GAUSSIAN},
    DPMode.LOCAL: {Mechanism.GAUSSIAN},
}


def _finite_pos(name: str, v: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ConfigurationError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveClipConfig:
    """Adaptive clipping (Andrew et al. 2021) settings.

    Attributes:
        count_noise_std: sigma_b, std of the noise on the count of clients below the clip.
        target_quantile: gamma in (0, 1).
        learning_rate: eta > 0 of the geometric update.
    """

    count_noise_std: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2

    def __post_init__(self) -> None:
        _finite_pos("count_noise_std", self.count_noise_std)
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigurationError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        _finite_pos("learning_rate", self.learning_rate)


@dataclass(frozen=True, slots=True, kw_only=True)
class DPConfig:
    """Client-level DP configuration of a run.

    Attributes:
        mode: where noise is added.
        noise_multiplier: the target z of each round (noise std / L2 sensitivity),
            including the adaptive clip's query when there is one.
        clip_norm: the (initial) L2 clip C of each update.
        mechanism: defaults to Gaussian (central, local) or Skellam (distributed).
        expected_cohort: clients expected per round.
        min_survivors: the fewest survivors for which a round may release
            (the secure sum's threshold); distributed noise is sized for them.
            Defaults to ``expected_cohort``.
        colluders: clients assumed to collude with the server; their noise is not counted.
        adaptive: adaptive-clip settings, or None for a fixed clip.
        grid_bits: resolution of the float-safe Gaussian (see :func:`dp.noise.gaussian_grid`).
        rounding_beta: distributed mode: None charges the rounding as C * scale + sqrt(d)
            (plain stochastic rounding); a beta in (0, 1) charges Kairouz, Liu, Steinke
            2021's bound (:func:`rounding_l2_bound`), which the encoder must then enforce
            by conditional rounding (``FixedPointEncoder.encode(max_norm=...)``).
    """

    mode: DPMode
    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    mechanism: Mechanism | None = None
    expected_cohort: int = 1
    min_survivors: int | None = None
    colluders: int = 0
    adaptive: AdaptiveClipConfig | None = None
    grid_bits: int = DEFAULT_GRID_BITS
    rounding_beta: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mode, DPMode):
            raise ConfigurationError(f"mode must be a DPMode, got {self.mode!r}")
        mech = self.resolved_mechanism
        if mech not in _ALLOWED[self.mode]:
            raise ConfigurationError(
                f"mechanism {mech.value} is not available in mode {self.mode.value}; "
                f"use one of {sorted(m.value for m in _ALLOWED[self.mode])}"
            )
        _finite_pos("clip_norm", self.clip_norm)
        if self.rounding_beta is not None and not (
            isinstance(self.rounding_beta, float) and 0.0 < self.rounding_beta < 1.0
        ):
            raise ConfigurationError(f"rounding_beta must be a float in (0, 1), got {self.rounding_beta!r}")
        if self.mode is DPMode.NONE:
            return
        _finite_pos("noise_multiplier", self.noise_multiplier)
        if not (isinstance(self.expected_cohort, int) and self.expected_cohort >= 1):
            raise ConfigurationError(f"expected_cohort must be an integer >= 1, got {self.expected_cohort!r}")
        if not (isinstance(self.colluders, int) and self.colluders >= 0):
            raise ConfigurationError(f"colluders must be an integer >= 0, got {self.colluders!r}")
        ms = self.survivors_planned
        if not 1 <= ms <= self.expected_cohort:
            raise ConfigurationError(f"min_survivors must be in [1, expected_cohort], got {ms}")
        if self.mode is DPMode.DISTRIBUTED and ms - self.colluders < 1:
            raise ConfigurationError(
                f"min_survivors ({ms}) must exceed colluders ({self.colluders}): otherwise no honest "
                "client's noise is guaranteed to be in the sum"
            )
        if self.adaptive is not None:
            if self.mode is DPMode.LOCAL:
                raise ConfigurationError(
                    "adaptive clipping needs an aggregate count; it is not available in local mode"
                )
            update_noise_multiplier(self.noise_multiplier, self.adaptive.count_noise_std)  # raises if too small

    @property
    def resolved_mechanism(self) -> Mechanism:
        return self.mechanism if self.mechanism is not None else _DEFAULT_MECHANISM[self.mode]

    @property
    def survivors_planned(self) -> int:
        return self.expected_cohort if self.min_survivors is None else self.min_survivors

    @property
    def count_noise_std(self) -> float:
        return 0.0 if self.adaptive is None else self.adaptive.count_noise_std

    @property
    def update_noise_multiplier(self) -> float:
        """z for the update sum alone, so that with the clip query the round has ``noise_multiplier``."""
        return update_noise_multiplier(self.noise_multiplier, self.count_noise_std)


def _clip(config: DPConfig, clip_norm: float | None) -> float:
    c = config.clip_norm if clip_norm is None else clip_norm
    _finite_pos("clip_norm", c)
    return float(c)


def server_noise_std(config: DPConfig, *, clip_norm: float | None = None) -> float:
    """Central mode: std of the Gaussian noise the server adds to the decoded SUM (float units, z * C).

    Raises:
        ConfigurationError: the config is not central.
    """
    if config.mode is not DPMode.CENTRAL:
        raise ConfigurationError(f"server_noise_std is for central mode, config is {config.mode.value}")
    return config.update_noise_multiplier * _clip(config, clip_norm)


def local_noise_std(config: DPConfig, *, clip_norm: float | None = None) -> float:
    """Local mode: std of the Gaussian noise each client adds to its own clipped update (z * 2C).

    Raises:
        ConfigurationError: the config is not local.
    """
    if config.mode is not DPMode.LOCAL:
        raise ConfigurationError(f"local_noise_std is for local mode, config is {config.mode.value}")
    return config.noise_multiplier * 2.0 * _clip(config, clip_norm)


def rounding_l2_bound(scaled_clip: float, dim: int, *, conditional_beta: float | None = None) -> float:
    """L2 norm bound of a stochastically rounded vector whose scaled norm is <= ``scaled_clip``.

    Args:
        scaled_clip: C * scale.
        dim: d.
        conditional_beta: None for the deterministic bound C*scale + sqrt(d), valid for
            plain stochastic rounding. A beta in (0, 1) gives the Kairouz, Liu, Steinke
            2021 (Thm. 1) bound sqrt(c^2 + d/4 + sqrt(2 log(1/beta)) (c + sqrt(d)/2)),
            valid only with conditional rounding (re-round until within the bound).

    Raises:
        ConfigurationError: a bad argument.
    """
    _finite_pos("scaled_clip", scaled_clip)
    if not (isinstance(dim, int) and dim >= 1):
        raise ConfigurationError(f"dim must be an integer >= 1, got {dim!r}")
    det = scaled_clip + math.sqrt(dim)
    if conditional_beta is None:
        return det
    if not 0.0 < conditional_beta < 1.0:
        raise ConfigurationError(f"conditional_beta must be in (0, 1), got {conditional_beta}")
    c = scaled_clip
    kls = math.sqrt(c * c + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / conditional_beta)) * (c + math.sqrt(dim) / 2.0))
    return min(det, kls)


def min_scale_for_inflation(clip_norm: float, dim: int, *, max_inflation: float = 0.01) -> float:
    """Smallest encoding scale for which rounding inflates the L2 sensitivity by at most ``max_inflation``.

    (C * scale + sqrt(d)) / (C * scale) <= 1 + max_inflation  <=>  scale >= sqrt(d) / (C * max_inflation).
    """
    _finite_pos("clip_norm", clip_norm)
    _finite_pos("max_inflation", max_inflation)
    if not (isinstance(dim, int) and dim >= 1):
        raise ConfigurationError(f"dim must be an integer >= 1, got {dim!r}")
    return math.sqrt(dim) / (clip_norm * max_inflation)


@dataclass(frozen=True, slots=True)
class DistributedNoise:
    """Per-client integer noise for distributed mode, in ring (integer) units.

    Attributes:
        per_client_variance: noise variance each client adds per coordinate (Skellam
            variance; for the discrete Gaussian, sigma^2 of its parameter, sigma an integer).
        l2_sensitivity: C * scale + sqrt(d) (rounding included).
        l1_sensitivity: min(l2^2, sqrt(d) * l2).
        inflation: l2_sensitivity / (C * scale) - 1.
        per_client_std_float: sqrt(per_client_variance) / scale (for the encoding planner).
        count_variance_per_client: integer noise variance each client adds to the clip
            count (adaptive clipping), 0 otherwise.
    """

    per_client_variance: float
    l2_sensitivity: float
    l1_sensitivity: float
    inflation: float
    per_client_std_float: float
    count_variance_per_client: float


def distributed_noise(config: DPConfig, *, scale: float, dim: int, clip_norm: float | None = None) -> DistributedNoise:
    """Size the per-client integer noise so that ``min_survivors - colluders`` clients give z.

    Skellam by default; with ``mechanism=DISCRETE_GAUSSIAN`` each client adds
    N_Z(0, sigma^2) with the integer sigma = ceil(sqrt(per-client variance)), and the
    accountant charges the sum with Kairouz, Liu, Steinke 2021's bound.

    Raises:
        ConfigurationError: the config is not distributed, or a bad scale/dim.
    """
    if config.mode is not DPMode.DISTRIBUTED:
        raise ConfigurationError(f"distributed_noise is for distributed mode, config is {config.mode.value}")
    _finite_pos("scale", scale)
    c = _clip(config, clip_norm) * scale
    l2 = rounding_l2_bound(c, dim, conditional_beta=config.rounding_beta)
    l1 = min(l2 * l2, math.sqrt(dim) * l2)
    honest = config.survivors_planned - config.colluders
    z = config.update_noise_multiplier
    per_client = (z * l2) ** 2 / honest
    if config.resolved_mechanism is Mechanism.DISCRETE_GAUSSIAN:
        # An integer sigma keeps dp.noise.discrete_gaussian on its fast exact path; rounding up adds noise.
        per_client = float(math.ceil(math.sqrt(per_client))) ** 2
    count_var = config.count_noise_std**2 / honest
    return DistributedNoise(
        per_client_variance=per_client,
        l2_sensitivity=l2,
        l1_sensitivity=l1,
        inflation=l2 / c - 1.0,
        per_client_std_float=math.sqrt(per_client) / scale,
        count_variance_per_client=count_var,
    )


def make_round_event(
    config: DPConfig,
    *,
    round: int,  # noqa: A002
    sampling: Sampling,
    sampling_rate: float,
    population: int,
    cohort: int,
    survivors: int,
    dim: int = 0,
    scale: float | None = None,
    clip_norm: float | None = None,
    per_client_variance: float | None = None,
    granularity: float | None = None,
) -> RoundEvent:
    """The privacy event of one round, charging only the noise really present.

    Args:
        config: the run's DP configuration.
        round: 1-based round number.
        sampling, sampling_rate, population, cohort: how the cohort was drawn.
        survivors: clients whose update is in the released sum.
        dim: model dimension (needed for the rounding/grid inflation).
        scale: encoding scale. Distributed mode: needed (the integer units). Central
            mode: the stochastic rounding of the clients' encodings (before the server's
            noise) adds sqrt(d) / scale to the sensitivity; without a scale the sum is
            taken to be unrounded.
        clip_norm: the clip used this round (adaptive clipping); defaults to config.clip_norm.
        per_client_variance: the Skellam variance each client actually added
            (distributed); defaults to :func:`distributed_noise`'s value.
        granularity: grid step of the float-safe Gaussian (central/local); defaults to
            the grid :func:`dp.noise.gaussian_grid` picks for the configured std.

    The adaptive clip's count (a centred bit per client, scaled by C) is charged
    with its noise std relative to sensitivity 1/2, shrunk for the rounding or
    grid snapping of that coordinate: central mode assumes the server adds
    ``add_gaussian_noise(count, sigma_b * C)``; distributed mode assumes each
    client adds Skellam of variance ``count_variance_per_client * (C * scale)^2``.

    For distributed mode the event's noise is ``per_client_variance * max(0,
    survivors - colluders)``: a round where 30 of 100 clients drop after
    masking is charged with the 70 survivors' noise (minus colluders), never
    with the planned cohort's. Use ``survivors=config.survivors_planned`` for
    the pre-round budget check (the worst case that can still release).

    Raises:
        ConfigurationError: inconsistent arguments (e.g. distributed without scale/dim).
    """
    if survivors > cohort:
        raise ConfigurationError(f"survivors ({survivors}) cannot exceed cohort ({cohort})")
    c = _clip(config, clip_norm)
    common = dict(
        round=round,
        mode=config.mode,
        clip_norm=c,
        sampling=sampling,
        sampling_rate=sampling_rate,
        population=population,
        cohort=cohort,
        survivors=survivors,
        colluders=config.colluders,
        dim=dim,
    )
    if config.mode is DPMode.NONE:
        return RoundEvent(mechanism=Mechanism.NONE, l2_sensitivity=0.0, noise_variance=0.0, **common)  # type: ignore[arg-type]
    if config.mode is DPMode.DISTRIBUTED:
        if scale is None or dim < 1:
            raise ConfigurationError("distributed mode needs the encoding scale and dim >= 1")
        dn = distributed_noise(config, scale=scale, dim=dim, clip_norm=c)
        pcv = dn.per_client_variance if per_client_variance is None else per_client_variance
        _finite_pos("per_client_variance", pcv, allow_zero=True)
        honest = max(0, survivors - config.colluders)
        count_sigma = math.sqrt(dn.count_variance_per_client * honest)
        if count_sigma > 0.0:
            # The centred bit is encoded as (b - 1/2) * C * scale ring units and rounded like the
            # rest, so its sensitivity is 1/2 + 1 / (C * scale) count units: charge sigma_b as if
            # the sensitivity were exactly 1/2 by shrinking it by that ratio.
            count_sigma *= 0.5 / (0.5 + 1.0 / (c * scale))
        return RoundEvent(
            mechanism=config.resolved_mechanism,
            l2_sensitivity=dn.l2_sensitivity,
            l1_sensitivity=dn.l1_sensitivity,
            noise_variance=pcv * honest,
            clip_query_noise_multiplier=count_sigma,
            **common,  # type: ignore[arg-type]
        )
    rounding = 0.0
    if config.mode is DPMode.CENTRAL:
        std = server_noise_std(config, clip_norm=c)
        # The clients' encodings are stochastically rounded before the secure sum and the server
        # noises the decoded sum after it: one client's rounded vector is within sqrt(d) / scale
        # of its clipped one (each coordinate moves by less than one quantum), so that much is
        # added to the sensitivity (issue 14, finding 6). Local mode noises before rounding.
        if scale is not None:
            _finite_pos("scale", scale)
            rounding = math.sqrt(max(dim, 0)) / scale
        sens = c + rounding
        count_sigma = config.count_noise_std
    else:
        std = local_noise_std(config, clip_norm=c)
        sens = 2.0 * c
        count_sigma = 0.0
    grid = gaussian_grid(std, grid_bits=config.grid_bits)
    g = grid.granularity if granularity is None else granularity
    _finite_pos("granularity", g, allow_zero=True)
    if count_sigma > 0.0:
        # The server noises the count (scaled by C) on its own grid g_b: snapping adds up to g_b
        # to its sensitivity C / 2, and the grid's std is at least sigma_b * C.
        count_grid = gaussian_grid(count_sigma * c, grid_bits=config.grid_bits)
        count_round = 1.0 / scale if scale is not None else 0.0  # the count is rounded like the rest
        count_sigma = (count_grid.std / c) * 0.5 / (0.5 + (count_grid.granularity + count_round) / c)
    return RoundEvent(
        mechanism=Mechanism.GAUSSIAN,
        l2_sensitivity=sens + g * math.sqrt(max(dim, 0)),
        noise_variance=grid.std**2,
        clip_query_noise_multiplier=count_sigma,
        **common,  # type: ignore[arg-type]
    )
