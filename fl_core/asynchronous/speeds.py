"""Per-client speed models of the simulated clock: how long one client takes to train and report.

A client's time for one task (download the model, train, upload) is its own base time,
drawn once per client, times a per-task jitter. The default base distribution is
log-normal, whose right tail puts a few clients an order of magnitude behind the median
(the stragglers that set the pace of a synchronous round); a measured trace of per-client
times can be given instead. Every draw comes from the injected random source (seeded for
experiments), never from global state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fl_core.errors import ConfigError
from secagg import RandomSource

__all__ = ["SpeedModel", "parse_speed", "standard_normal"]


def standard_normal(rng: RandomSource, size: int) -> npt.NDArray[np.float64]:
    """``size`` independent N(0, 1) draws from ``rng`` (Box-Muller on its uniforms)."""
    if size <= 0:
        return np.zeros(0)
    half = (size + 1) // 2
    u = rng.uniform(2 * half)
    radius = np.sqrt(-2.0 * np.log1p(-u[:half]))  # 1 - u is in (0, 1]: no log(0)
    angle = 2.0 * math.pi * u[half:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]


@dataclass(frozen=True, slots=True)
class SpeedModel:
    """Simulated seconds a client needs for one task (download, local training, upload).

    Build one with :meth:`lognormal` or :meth:`trace`.

    Attributes:
        kind: ``"lognormal"`` or ``"trace"``.
        median_s: median per-client base time (log-normal).
        sigma: log-normal shape of the per-client base time (heavier tail when larger).
        jitter_sigma: log-normal shape of the per-task factor (0: every task of a client
            takes exactly its base time).
        trace_s: per-client base times of a trace, cycled over the clients.
        stage_s: network time of one secure-sum exchange (a message each way).
    """

    kind: str
    median_s: float = 10.0
    sigma: float = 1.0
    jitter_sigma: float = 0.25
    trace_s: tuple[float, ...] = ()
    stage_s: float = 0.5

    @classmethod
    def lognormal(
        cls, *, median_s: float = 10.0, sigma: float = 1.0, jitter_sigma: float = 0.25, stage_s: float = 0.5
    ) -> SpeedModel:
        """Base time ``median_s * exp(sigma * N(0,1))`` per client; each task times ``exp(jitter_sigma * N(0,1))``."""
        _positive("median_s", median_s)
        _non_negative("sigma", sigma)
        _non_negative("jitter_sigma", jitter_sigma)
        _non_negative("stage_s", stage_s)
        return cls("lognormal", median_s=float(median_s), sigma=float(sigma), jitter_sigma=float(jitter_sigma),
                   stage_s=float(stage_s))

    @classmethod
    def trace(cls, times_s: Sequence[float], *, jitter_sigma: float = 0.0, stage_s: float = 0.5) -> SpeedModel:
        """Per-client base times from a measured trace (client ``i`` gets ``times_s[(i - 1) % len]``)."""
        times = tuple(float(t) for t in times_s)
        if not times:
            raise ConfigError("a speed trace needs at least one time", option="speed")
        for t in times:
            _positive("trace time", t)
        _non_negative("jitter_sigma", jitter_sigma)
        _non_negative("stage_s", stage_s)
        return cls("trace", trace_s=times, jitter_sigma=float(jitter_sigma), stage_s=float(stage_s))

    def base_times(self, population: int, rng: RandomSource) -> npt.NDArray[np.float64]:
        """Each client's base time (index ``i`` is client ``i + 1``), drawn once per run."""
        if population < 1:
            raise ConfigError(f"population must be >= 1, got {population}", option="clients")
        if self.kind == "trace":
            reps = -(-population // len(self.trace_s))
            return np.tile(np.asarray(self.trace_s, dtype=np.float64), reps)[:population]
        return self.median_s * np.exp(self.sigma * standard_normal(rng, population))

    def jitter(self, rng: RandomSource) -> float:
        """The factor of one task (1.0 without jitter)."""
        if self.jitter_sigma == 0.0:
            return 1.0
        return float(math.exp(self.jitter_sigma * standard_normal(rng, 1)[0]))

    def describe(self) -> dict[str, Any]:
        """The parameters, for reports (JSON-serialisable)."""
        if self.kind == "trace":
            t = sorted(self.trace_s)
            return {"kind": "trace", "clients_in_trace": len(t), "median_s": t[len(t) // 2], "max_s": t[-1],
                    "jitter_sigma": self.jitter_sigma, "stage_s": self.stage_s}
        return {
            "kind": "lognormal",
            "median_s": self.median_s,
            "sigma": self.sigma,
            "mean_s": self.median_s * math.exp(self.sigma**2 / 2.0),
            "p99_s": self.median_s * math.exp(self.sigma * 2.3263478740408408),
            "jitter_sigma": self.jitter_sigma,
            "stage_s": self.stage_s,
        }


def _positive(name: str, v: float) -> None:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {v!r}", option="speed")


def _non_negative(name: str, v: float) -> None:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}", option="speed")


def parse_speed(text: str) -> SpeedModel:
    """Parse the CLI form: ``lognormal[:MEDIAN_S[:SIGMA[:JITTER_SIGMA]]]`` or ``trace:FILE``.

    A trace file holds per-client seconds, one number per line or a JSON list.

    Raises:
        ConfigError: an unreadable form or file.
    """
    kind, _, rest = str(text).partition(":")
    kind = kind.strip().lower()
    if kind == "lognormal":
        parts = [p for p in rest.split(":") if p.strip()] if rest else []
        if len(parts) <= 3:
            try:
                nums = [float(p) for p in parts]
            except ValueError:
                nums = None
            if nums is not None:
                keys = ("median_s", "sigma", "jitter_sigma")
                return SpeedModel.lognormal(**dict(zip(keys, nums, strict=False)))
    elif kind == "trace" and rest:
        import json
        from pathlib import Path

        try:
            raw = Path(rest).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read speed trace {rest}: {exc}", option="speed") from exc
        try:
            values = json.loads(raw) if raw.lstrip().startswith("[") else [float(x) for x in raw.split()]
            times = [float(v) for v in values]
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"speed trace {rest} must hold numbers (seconds per client): {exc}",
                              option="speed") from exc
        return SpeedModel.trace(times)
    raise ConfigError(
        f"cannot read speed model {text!r}: use lognormal[:MEDIAN_S[:SIGMA[:JITTER_SIGMA]]] or trace:FILE",
        option="speed",
    )
